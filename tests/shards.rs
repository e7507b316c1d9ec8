//! A table sharded by file, as FAISS users shard: a pyarrow-written folder, one index per
//! file written by pip's faiss-cpu (no sidecar), one file never indexed, then one file
//! rewritten after its index. Every answer equals the exact plan, and EXPLAIN ANALYZE
//! counts the rows searched through indexes and exactly.
mod common;

use common::*;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use datafusion_faiss::Metric;

const D: usize = 16;
const ROWS: usize = 8_000;
const FILES: usize = 4;

fn query(i: u64) -> String {
    let q = clustered(1, D, 12, 700 + i);
    format!("'[{}]'", q.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

async fn text(ctx: &SessionContext, sql: &str) -> String {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The index plan's rows equal the exact plan's.
async fn same_as_exact(ctx: &SessionContext, sql: &str) {
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    let indexed = text(ctx, sql).await;
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    let exact = text(ctx, sql).await;
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    assert!(exact.lines().count() > 4, "{sql}: {exact}");
    assert_eq!(indexed, exact, "{sql}");
}

fn top_k(q: u64, filter: &str) -> String {
    format!("SELECT id, label, vec_distance(embedding, {}) AS d FROM docs {filter} ORDER BY d, id LIMIT 10", query(q))
}

const BATCH: &str = "SELECT * FROM (SELECT q.qid, d.id, vec_distance(d.embedding, q.vec) AS dist, \
     row_number() OVER (PARTITION BY q.qid ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r \
     FROM (SELECT id AS qid, embedding AS vec FROM docs WHERE id % 997 = 0) q CROSS JOIN docs d) \
     WHERE r <= 5 ORDER BY qid, r";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unindexed_and_rewritten_files_are_searched_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = pyarrow_table(&folder, ROWS, D, FILES, 5);
    let per_file = ROWS / FILES;
    // Every file but the last gets an index of its rows, numbered by position.
    for f in 0..FILES - 1 {
        let rows = &x[f * per_file * D..(f + 1) * per_file * D];
        let bytes = build_pip_positions(rows, D, "IVF8,Flat", Metric::L2);
        std::fs::write(folder.join(format!("part-{f:02}.faiss")), bytes).unwrap();
    }
    // DataFusion keeps a folder's listing (sizes, dates) forever by default; the exact plan
    // must see the rewritten file too.
    let caches = CacheManagerConfig::default().with_list_files_cache_limit(0);
    let runtime = RuntimeEnvBuilder::new().with_cache_manager(caches).build_arc().unwrap();
    let ctx = SessionContext::new_with_config_rt(Default::default(), runtime);
    datafusion_faiss::sql::register_all(&ctx);
    let location = format!("{}/", folder.display());
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{location}' \
         OPTIONS ('index' '{location}', 'vector' 'embedding')"
    ))
    .await
    .unwrap();
    // Every list probed: each shard's search is exact, so the merged top-k must be too.
    ctx.sql("SET faiss.nprobe = 8").await.unwrap();

    let plan = text(&ctx, &format!("EXPLAIN {}", top_k(0, ""))).await;
    assert!(plan.contains("indexes=3 covered_files=3 covered_rows=6000 uncovered_files=1 stale_files=0"), "{plan}");
    for q in 0..4 {
        same_as_exact(&ctx, &top_k(q, "")).await;
        same_as_exact(&ctx, &top_k(q, "WHERE label = 3")).await;
    }
    same_as_exact(&ctx, BATCH).await;
    assert_eq!(metric(&ctx, &top_k(0, ""), "indexed_rows").await, 3 * per_file);
    assert_eq!(metric(&ctx, &top_k(0, ""), "unindexed_rows").await, per_file);
    // The batch search reads the unindexed rows once per partition of its queries.
    ctx.sql("SET datafusion.execution.target_partitions = 1").await.unwrap();
    assert_eq!(metric(&ctx, BATCH, "unindexed_rows").await, per_file);
    ctx.sql("SET datafusion.execution.target_partitions = 2").await.unwrap();

    // Rewritten after its index (its rows shuffled): the index's positions would name
    // other rows now, so the file is read exactly.
    let part = folder.join("part-01.parquet");
    let shuffled = dir.path().join("shuffled.parquet");
    let python = root().join(".work/venv/bin/python");
    let script = root().join("tests/python/write_pyarrow.py");
    let status = std::process::Command::new(&python)
        .args([script.as_os_str(), shuffled.as_os_str(), "0".as_ref(), "0".as_ref(), "1".as_ref(), "9".as_ref()])
        .arg(&part)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::rename(&shuffled, &part).unwrap();
    let plan = text(&ctx, &format!("EXPLAIN {}", top_k(0, ""))).await;
    assert!(plan.contains("indexes=2 covered_files=2 covered_rows=4000 uncovered_files=2 stale_files=0"), "{plan}");
    for q in 0..4 {
        same_as_exact(&ctx, &top_k(q, "")).await;
    }
    same_as_exact(&ctx, BATCH).await;
    assert_eq!(metric(&ctx, &top_k(0, ""), "indexed_rows").await, 2 * per_file);
    assert_eq!(metric(&ctx, &top_k(0, ""), "unindexed_rows").await, 2 * per_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_without_indexes_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    pyarrow_table(&folder, 1_000, D, 2, 5);
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let location = format!("{}/", folder.display());
    let err = ctx
        .sql(&format!(
            "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{location}' \
             OPTIONS ('index' '{location}', 'vector' 'embedding')"
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no FAISS index (*.faiss) under") && err.contains("--per-file"), "{err}");
}
