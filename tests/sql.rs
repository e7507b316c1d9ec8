//! The SQL extension end to end: Parquet base tables and FAISS indexes on the S3 test
//! server and on local disk, results against the exact plan, shared opens, replaced
//! index objects, and concurrent queries.
mod common;

use std::sync::Arc;

use common::tables::Docs;
use common::*;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use datafusion_faiss::Metric;
use object_store::{ObjectStore, ObjectStoreExt};

const D: usize = 16;

fn query(i: usize) -> String {
    let q = clustered(1, D, 12, 500 + i as u64);
    let q: Vec<String> = q.iter().map(|v| format!("{v}")).collect();
    format!("[{}]", q.join(", "))
}

async fn ids(ctx: &SessionContext, sql: &str) -> Vec<i64> {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect()
}

fn context(store: Arc<dyn ObjectStore>, url: &str) -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_object_store(ObjectStoreUrl::parse(url).unwrap().as_ref(), store);
    datafusion_faiss::sql::register_all(&ctx);
    ctx
}

async fn create(ctx: &SessionContext, name: &str, table: &str, index: &str) {
    let sql = format!(
        "CREATE EXTERNAL TABLE {name} STORED AS FAISS LOCATION '{table}' \
         OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding')"
    );
    ctx.sql(&sql).await.unwrap();
}

/// `docs` and its index on the S3 test server under a fresh prefix, registered as table
/// `docs` on a new context: (context, store, prefix).
async fn s3_docs(docs: &Docs, factory: &str) -> (SessionContext, Arc<dyn ObjectStore>, String) {
    let store = s3_store();
    let prefix = unique_path("sql").to_string();
    docs.write(store.as_ref(), &prefix, "docs", factory, Metric::L2).await;
    let base = format!("s3://{}/{prefix}", s3_bucket());
    let ctx = context(store.clone(), &format!("s3://{}", s3_bucket()));
    create(&ctx, "docs", &format!("{base}/docs.parquet"), &format!("{base}/docs.faiss")).await;
    (ctx, store, prefix)
}

/// Index plan and exact plan agree for `queries` queries (nprobe = nlist: IVF is exact).
async fn check_against_exact(ctx: &SessionContext, table: &str, filter: &str, queries: usize) {
    for i in 0..queries {
        let sql =
            format!("SELECT id FROM {table} {filter} ORDER BY vec_distance(embedding, {}), id LIMIT 10", query(i));
        ctx.sql("SET faiss.enabled = true").await.unwrap();
        let indexed = ids(ctx, &sql).await;
        ctx.sql("SET faiss.enabled = false").await.unwrap();
        let exact = ids(ctx, &sql).await;
        ctx.sql("SET faiss.enabled = true").await.unwrap();
        assert_eq!(indexed, exact, "query {i} {filter}");
        assert_eq!(indexed.len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_tables_match_the_exact_plan_and_share_one_open_index() {
    let docs = Docs::new(20_000, D, 41);
    let (ctx, _, prefix) = s3_docs(&docs, "IVF32,Flat").await;
    ctx.sql("SET faiss.nprobe = 32").await.unwrap();

    check_against_exact(&ctx, "docs", "", 5).await;
    check_against_exact(&ctx, "docs", "WHERE bucket < 100", 3).await;
    check_against_exact(&ctx, "docs", "WHERE lang = 'en'", 3).await;
    check_against_exact(&ctx, "docs", "WHERE bucket < 1", 3).await;

    // A second table on the same index object shares the open index and its cache.
    let base = format!("s3://{}/{prefix}", s3_bucket());
    create(&ctx, "again", &format!("{base}/docs.parquet"), &format!("{base}/docs.faiss")).await;
    let sql = |t: &str| format!("SELECT id FROM {t} ORDER BY vec_distance(embedding, {}) LIMIT 10", query(0));
    assert_eq!(metric(&ctx, &sql("again"), "gets").await, 0, "lists cached by the first table's queries");
    assert_eq!(metric(&ctx, &sql("again"), "lists_probed").await, 32);

    // Concurrent queries on one table.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let sql =
                    format!("SELECT id FROM docs ORDER BY vec_distance(embedding, {}), id LIMIT 10", query(i % 5));
                ids(&ctx, &sql).await
            })
        })
        .collect();
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    for (i, got) in results.iter().enumerate() {
        let sql = format!("SELECT id FROM docs ORDER BY vec_distance(embedding, {}), id LIMIT 10", query(i % 5));
        assert_eq!(got, &ids(&ctx, &sql).await, "concurrent query {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_index_object_is_reopened_not_mixed() {
    let docs = Docs::new(5_000, D, 42);
    let (ctx, store, prefix) = s3_docs(&docs, "IVF16,Flat").await;
    check_against_exact(&ctx, "docs", "", 2).await;

    // Same rows, a differently trained index (another nlist): a cached header of the old
    // object would read the new lists at the wrong offsets.
    let index = docs.index("IVF8,Flat", Metric::L2).await;
    let path = object_store::path::Path::from(format!("{prefix}/docs.faiss"));
    store.put(&path, index.into()).await.unwrap();
    ctx.sql("SET faiss.nprobe = 8").await.unwrap();
    check_against_exact(&ctx, "docs", "", 2).await;
}

#[tokio::test]
async fn register_all_keeps_the_context_and_is_idempotent() {
    let ctx = SessionContext::new();
    ctx.sql("CREATE TABLE kept (x BIGINT) AS VALUES (1), (2)").await.unwrap();
    ctx.sql("SET datafusion.execution.batch_size = 123").await.unwrap();
    datafusion_faiss::sql::register_all(&ctx);
    ctx.sql("SET faiss.nprobe = 7").await.unwrap();
    datafusion_faiss::sql::register_all(&ctx);
    assert_eq!(ids(&ctx, "SELECT x FROM kept ORDER BY x").await, [1, 2]);
    let state = ctx.state();
    assert_eq!(state.config_options().execution.batch_size.to_string(), "123");
    assert_eq!(state.config_options().extensions.get::<datafusion_faiss::sql::FaissConfig>().unwrap().nprobe, 7);
    assert_eq!(state.optimizers().iter().filter(|r| r.name() == "faiss_ivf_top_k").count(), 1);
    assert!(state.scalar_functions().contains_key("array_distance"), "DataFusion's functions stay");
    assert!(state.scalar_functions().contains_key("vec_distance"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_parquet_and_memory_mapped_index() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let docs = Docs::new(10_000, D, 43);
    docs.write(local.as_ref(), "t", "docs", "IVF16,SQ8", Metric::L2).await;
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let base = dir.path().join("t");
    let (table, index) = (base.join("docs.parquet"), base.join("docs.faiss"));
    create(&ctx, "docs", table.to_str().unwrap(), index.to_str().unwrap()).await;
    // SQ8 distances are approximate; the exact re-rank makes the final order exact.
    check_against_exact(&ctx, "docs", "WHERE bucket < 500", 3).await;
    let sql = format!("SELECT id FROM docs ORDER BY vec_distance(embedding, {}) LIMIT 10", query(1));
    assert_eq!(metric(&ctx, &sql, "gets").await, 0, "a local index is memory-mapped, not fetched");
    assert_eq!(metric(&ctx, &sql, "rows_reranked").await, 40);
    // 40 keys in 64-row pages: the page index skips the rest of the 10,000 rows.
    let read = metric(&ctx, &sql, "base_rows_read").await;
    assert!(read <= 40 * 64, "key lookup read {read} rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_of_other_ids_is_an_error_not_an_empty_answer() {
    let dir = tempfile::tempdir().unwrap();
    let docs = Docs::new(2_000, D, 44);
    let table = dir.path().join("docs.parquet");
    std::fs::write(&table, docs.parquet()).unwrap();
    // The same vectors indexed under ids the table does not have.
    let x = docs.vectors();
    let mut b = datafusion_faiss::IvfIndexBuilder::new(D, "IVF8,Flat", Metric::L2).unwrap();
    b.train(&x).unwrap();
    b.add(&x, &(0..2_000).map(|i| 1_000_000 + i).collect::<Vec<i64>>()).unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    b.write(store, &object_store::path::Path::from("other.faiss")).await.unwrap();
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let index = dir.path().join("other.faiss");
    create(&ctx, "docs", table.to_str().unwrap(), index.to_str().unwrap()).await;
    let sql = format!("SELECT id FROM docs ORDER BY vec_distance(embedding, {}) LIMIT 10", query(0));
    let err = ctx.sql(&sql).await.unwrap().collect().await.unwrap_err().to_string();
    assert!(err.contains("index ids do not match key column 'id'"), "{err}");
    assert!(err.contains("only 0 of them"), "{err}");
    // The exact plan still answers.
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    assert_eq!(ids(&ctx, &sql).await.len(), 10);
}

#[tokio::test]
async fn replaced_functions_give_datafusions_values_to_the_bit() {
    // DataFusion's own inner_product / cosine_distance / array_distance on a context
    // without ours, against ours, on Float32 and Float64 columns and literals.
    let theirs = SessionContext::new();
    let ours = SessionContext::new();
    datafusion_faiss::sql::register_all(&ours);
    let mut rng = Rng(77);
    let mut rows = Vec::new();
    for _ in 0..200 {
        let v: Vec<String> = (0..7).map(|_| format!("{:e}", rng.unit() as f64 * 1e3 / 7.0)).collect();
        let w: Vec<String> = (0..7).map(|_| format!("{:e}", rng.unit() as f64 / 3.0)).collect();
        rows.push(format!("([{}], [{}])", v.join(", "), w.join(", ")));
    }
    let table = format!(
        "CREATE TABLE t AS SELECT column1 AS a64, column2 AS b64, \
         arrow_cast(column1, 'List(Float32)') AS a32, arrow_cast(column2, 'FixedSizeList(7, Float32)') AS b32 \
         FROM (VALUES {})",
        rows.join(", ")
    );
    for ctx in [&theirs, &ours] {
        ctx.sql(&table).await.unwrap().collect().await.unwrap();
    }
    for (f, theirs_f) in
        [("inner_product", "inner_product"), ("cosine_distance", "cosine_distance"), ("vec_distance", "array_distance")]
    {
        for (a, b) in [("a64", "b64"), ("a32", "b32"), ("a32", "b64"), ("a64", "[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]")] {
            let values = |ctx: &SessionContext, f: &str| {
                let sql = format!("SELECT {f}({a}, {b}) FROM t");
                let ctx = ctx.clone();
                async move {
                    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
                    batches
                        .iter()
                        .flat_map(|b| {
                            b.column(0).as_primitive::<datafusion::arrow::datatypes::Float64Type>().values().to_vec()
                        })
                        .map(f64::to_bits)
                        .collect::<Vec<u64>>()
                }
            };
            assert_eq!(values(&ours, f).await, values(&theirs, theirs_f).await, "{f}({a}, {b})");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_at_the_kth_place_are_broken_as_the_exact_plan_breaks_them() {
    // Rows 0 and 4000..4029 share one vector; the query is that vector.
    let docs = Docs { copies_of_first: (4000..4030).collect(), ..Docs::new(6_000, D, 45) };
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let v: Vec<String> = docs.vectors()[..D].iter().map(|x| x.to_string()).collect();
    let v = format!("'[{}]'", v.join(", "));
    for factory in ["IVF16,Flat", "IVF16,SQ8"] {
        let name = factory.replace(',', "-");
        docs.write(local.as_ref(), &name, "docs", factory, Metric::L2).await;
        let ctx = SessionContext::new();
        datafusion_faiss::sql::register_all(&ctx);
        let base = dir.path().join(&name);
        let (table, index) = (base.join("docs.parquet"), base.join("docs.faiss"));
        create(&ctx, "docs", table.to_str().unwrap(), index.to_str().unwrap()).await;
        ctx.sql("SET faiss.nprobe = 16").await.unwrap();
        for (order, limit) in [("d, id", 5), ("d, id DESC", 5), ("d, id", 12), ("d, title", 3)] {
            let sql = format!("SELECT id FROM (SELECT id, title, vec_distance(embedding, {v}) AS d FROM docs) ORDER BY {order} LIMIT {limit}");
            let indexed = ids(&ctx, &sql).await;
            assert!(metric(&ctx, &sql, "candidates").await > 0, "{factory}: the index answered");
            ctx.sql("SET faiss.enabled = false").await.unwrap();
            let exact = ids(&ctx, &sql).await;
            ctx.sql("SET faiss.enabled = true").await.unwrap();
            assert_eq!(indexed, exact, "{factory} ORDER BY {order} LIMIT {limit}");
        }
    }
}
