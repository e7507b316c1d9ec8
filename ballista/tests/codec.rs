//! The codecs alone: a plan with an index scan of a sharded table, encoded as Ballista
//! ships it and decoded in a session that never opened the indexes, gives the same rows.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::*;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use datafusion_faiss::Metric;
use datafusion_proto::physical_plan::AsExecutionPlan;
use datafusion_proto::protobuf::PhysicalPlanNode;

const D: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_scans_survive_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = pyarrow_table(&folder, 6_000, D, 3, 2);
    for f in 0..2 {
        let bytes = build_pip_positions(&x[f * 2000 * D..(f + 1) * 2000 * D], D, "IVF8,Flat", Metric::L2);
        std::fs::write(folder.join(format!("part-{f:02}.faiss")), bytes).unwrap();
    }
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let location = format!("{}/", folder.display());
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{location}' OPTIONS ('index' '{location}', 'vector' 'embedding')"
    ))
    .await
    .unwrap();
    ctx.sql("SET faiss.nprobe = 8").await.unwrap();
    let q: Vec<String> = clustered(1, D, 12, 3).iter().map(|v| v.to_string()).collect();
    let sql = format!(
        "SELECT id, label, vec_distance(embedding, '[{}]') AS d FROM docs WHERE label <> 4 ORDER BY d, id LIMIT 10",
        q.join(", ")
    );
    let plan = ctx.sql(&sql).await.unwrap().create_physical_plan().await.unwrap();
    let want = pretty_format_batches(&collect(plan.clone(), ctx.task_ctx()).await.unwrap()).unwrap().to_string();

    let codec = datafusion_faiss_ballista::physical_codec();
    let node = PhysicalPlanNode::try_from_physical_plan(plan, codec.as_ref()).unwrap();
    let fresh = SessionContext::new();
    datafusion_faiss::sql::register_all(&fresh);
    let decoded = node.try_into_physical_plan(&fresh.task_ctx(), codec.as_ref()).unwrap();
    let got = pretty_format_batches(&collect(decoded, fresh.task_ctx()).await.unwrap()).unwrap().to_string();
    assert_eq!(got, want);
}
