//! A real Ballista cluster on 127.0.0.1: this crate's scheduler and two executors as
//! processes, a table sharded by file on the S3 test server (pyarrow-written Parquet,
//! pip-written indexes, one file unindexed). The SQL shapes of `sql-tests/` (top-k,
//! WHERE, the batch form) give through Ballista what the local plan gives.
mod cluster;
#[path = "../../tests/common/mod.rs"]
mod common;


use cluster::Cluster;
use common::*;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use datafusion_faiss::Metric;
use object_store::{ObjectStoreExt, PutPayload};

const D: usize = 16;
const ROWS: usize = 8_000;
const FILES: usize = 4;

async fn text(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}")).collect().await;
    pretty_format_batches(&batches.unwrap_or_else(|e| panic!("{sql}: {e}"))).unwrap().to_string()
}

/// The index scan's `lists_probed` in an EXPLAIN ANALYZE (Ballista's prints each stage).
fn lists_probed(plan: &str) -> usize {
    let counts: Vec<usize> = plan
        .match_indices("lists_probed=")
        .map(|(at, m)| plan[at + m.len()..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 1, "one index scan in {plan}");
    counts[0]
}

fn query(i: u64) -> String {
    let q = clustered(1, D, 12, 700 + i);
    format!("'[{}]'", q.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_table_through_ballista_equals_the_local_plan() {
    // The table: pyarrow's files, pip's indexes of all but the last, on the S3 server.
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = pyarrow_table(&folder, ROWS, D, FILES, 11);
    let per_file = ROWS / FILES;
    let store = s3_store();
    let prefix = unique_path("docs");
    for f in 0..FILES {
        let name = format!("part-{f:02}.parquet");
        let bytes = std::fs::read(folder.join(&name)).unwrap();
        store.put(&prefix.clone().join(name.as_str()), PutPayload::from(bytes)).await.unwrap();
    }
    // Written after the data, as a build does: indexes newer than their files are current.
    for f in 0..FILES - 1 {
        let bytes = build_pip_positions(&x[f * per_file * D..(f + 1) * per_file * D], D, "IVF8,Flat", Metric::L2);
        store.put(&prefix.clone().join(format!("part-{f:02}.faiss").as_str()), PutPayload::from(bytes)).await.unwrap();
    }
    let location = format!("s3://{}/{prefix}/", s3_bucket());

    let create = format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{location}' OPTIONS ('index' '{location}', 'vector' 'embedding')"
    );

    let local = SessionContext::new();
    local.register_object_store(ObjectStoreUrl::parse(format!("s3://{}", s3_bucket())).unwrap().as_ref(), store.clone());
    datafusion_faiss::sql::register_all(&local);

    // The client resolves s3:// as the cluster does, from the environment.
    let env = [
        ("AWS_ENDPOINT", s3_var("DFF_S3_ENDPOINT")),
        ("AWS_ACCESS_KEY_ID", s3_var("DFF_S3_KEY")),
        ("AWS_SECRET_ACCESS_KEY", s3_var("DFF_S3_SECRET")),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ];
    env.iter().for_each(|(k, v)| std::env::set_var(k, v));
    let cluster = Cluster::start(2, &env);
    let remote = cluster.client().await;

    for (ctx, name) in [(&local, "local"), (&remote, "Ballista")] {
        ctx.sql(&create).await.unwrap_or_else(|e| panic!("{name}: {e}")).collect().await.unwrap();
        ctx.sql("SET faiss.nprobe = 8").await.unwrap().collect().await.unwrap();
    }
    let plan = text(&local, &format!("EXPLAIN SELECT id FROM docs ORDER BY vec_distance(embedding, {}) LIMIT 3", query(0))).await;
    assert!(plan.contains("indexes=3 covered_files=3") && plan.contains("uncovered_files=1"), "{plan}");

    let mut statements = vec![];
    for q in 0..3 {
        let distance = format!("vec_distance(embedding, {})", query(q));
        statements.push(format!("SELECT id, label, {distance} AS d FROM docs ORDER BY d, id LIMIT 10"));
        statements.push(format!("SELECT id, title, {distance} AS d FROM docs WHERE label = 3 ORDER BY d, id LIMIT 10"));
    }
    statements.push(
        "SELECT * FROM (SELECT q.qid, d.id, vec_distance(d.embedding, q.vec) AS dist, \
         row_number() OVER (PARTITION BY q.qid ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r \
         FROM (SELECT id AS qid, embedding AS vec FROM docs WHERE id % 997 = 0) q CROSS JOIN docs d) \
         WHERE r <= 5 ORDER BY qid, r"
            .to_string(),
    );
    for sql in &statements {
        let ours = text(&local, sql).await;
        assert!(ours.lines().count() > 4, "{sql}: {ours}");
        assert_eq!(text(&remote, sql).await, ours, "{sql}");
    }
    // At nprobe = nlist the setting cannot show; at one list per shard it must: the
    // cluster's index scan probes what the local one probes (3 shards × 1 list), not
    // what its own defaults would (3 × 8).
    let analyze = format!("EXPLAIN ANALYZE {}", statements[0]);
    assert_eq!(lists_probed(&text(&local, &analyze).await), 24);
    assert_eq!(lists_probed(&text(&remote, &analyze).await), 24, "Ballista at nprobe 8");
    let top: Vec<&String> = statements.iter().step_by(2).take(3).collect();
    let mut at_nlist = vec![];
    for sql in &top {
        at_nlist.push(text(&local, sql).await);
    }
    for ctx in [&local, &remote] {
        ctx.sql("SET faiss.nprobe = 1").await.unwrap().collect().await.unwrap();
    }
    assert_eq!(lists_probed(&text(&local, &analyze).await), 3);
    assert_eq!(lists_probed(&text(&remote, &analyze).await), 3, "Ballista at nprobe 1");
    // And the rows: the cluster's are the local plan's at one list per shard, which are
    // not those at eight for every query.
    let mut differs = false;
    for (sql, full) in top.iter().zip(&at_nlist) {
        let ours = text(&local, sql).await;
        differs |= &ours != full;
        assert_eq!(text(&remote, sql).await, ours, "nprobe 1: {sql}");
    }
    assert!(differs, "nprobe 1 found what nprobe 8 found for every query: the rows show nothing");
    // The exact plan through Ballista too: the cluster's index plan is not what it compares with.
    for ctx in [&local, &remote] {
        ctx.sql("SET faiss.enabled = false").await.unwrap().collect().await.unwrap();
    }
    assert_eq!(text(&remote, &statements[0]).await, text(&local, &statements[0]).await);
}
