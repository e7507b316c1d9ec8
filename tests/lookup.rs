//! Row lookup on Parquet written as users write it (pyarrow's defaults: keys in random
//! order, one large row group, 1 MiB pages, no page index): the index plan equals the
//! exact plan, reads the candidate rows' pages only, and costs one wave of GETs for
//! them once the footers are known.
mod common;

use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const D: usize = 32;

fn query(i: usize) -> String {
    let q = clustered(1, D, 12, 900 + i as u64);
    format!("'[{}]'", q.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

async fn rows(ctx: &SessionContext, sql: &str) -> Vec<(i64, f64)> {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let id = cast(b.column(0), &DataType::Int64).unwrap().as_primitive::<Int64Type>().clone();
            let d = b.column(1).as_primitive::<Float64Type>().clone();
            (0..b.num_rows()).map(move |i| (id.value(i), d.value(i)))
        })
        .collect()
}

/// The index plan's rows and distances equal the exact plan's, bit for bit.
async fn same_as_exact(ctx: &SessionContext, sql: &str) {
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    let indexed = rows(ctx, sql).await;
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    let exact = rows(ctx, sql).await;
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    assert!(!exact.is_empty(), "{sql}");
    assert_eq!(indexed, exact, "{sql}");
}

fn context(store: Option<(&str, Arc<dyn ObjectStore>)>) -> SessionContext {
    let ctx = SessionContext::new();
    if let Some((url, store)) = store {
        ctx.register_object_store(ObjectStoreUrl::parse(url).unwrap().as_ref(), store);
    }
    datafusion_faiss::sql::register_all(&ctx);
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_default_table_by_key_and_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.parquet");
    let (x, ids) = pyarrow_table(&file, 30_000, D, 1, 7);
    let by_key = dir.path().join("by_key.faiss");
    let by_position = dir.path().join("by_position.faiss");
    std::fs::write(&by_key, index_bytes(&x, D, Some(&ids), "IVF64,Flat").await).unwrap();
    std::fs::write(&by_position, index_bytes(&x, D, None, "IVF64,Flat").await).unwrap();
    let ctx = context(None);
    create(&ctx, "keyed", file.to_str().unwrap(), by_key.to_str().unwrap(), true).await;
    create(&ctx, "positional", file.to_str().unwrap(), by_position.to_str().unwrap(), false).await;
    ctx.sql("SET faiss.nprobe = 64").await.unwrap();
    let file_size = std::fs::metadata(&file).unwrap().len() as usize;
    for table in ["keyed", "positional"] {
        for i in 0..4 {
            let q = query(i);
            let select = format!("SELECT id, vec_distance(embedding, {q}) AS d, label, title FROM {table}");
            same_as_exact(&ctx, &format!("{select} ORDER BY d, id LIMIT 10")).await;
            same_as_exact(&ctx, &format!("{select} WHERE label = 3 ORDER BY d, id LIMIT 10")).await;
            same_as_exact(&ctx, &format!("{select} WHERE title LIKE 'doc 1%' ORDER BY d, id LIMIT 7")).await;
            // The vector column selected: read from the table.
            let sql =
                format!("SELECT id, vec_distance(embedding, {q}) AS d, embedding FROM {table} ORDER BY d LIMIT 5");
            same_as_exact(&ctx, &sql).await;
        }
        let sql =
            format!("SELECT id, vec_distance(embedding, {}) AS d, title FROM {table} ORDER BY d LIMIT 10", query(9));
        // Footers (and the key map) are read by the first query; then a lookup reads
        // the 10 rows: one wave, pages of title only, not the vectors (nor the keys,
        // which are the ids found).
        let _ = rows(&ctx, &sql).await;
        assert_eq!(metric(&ctx, &sql, "base_rows_read").await, 10, "{table}");
        assert_eq!(metric(&ctx, &sql, "table_waves").await, 1, "{table}");
        let bytes = metric(&ctx, &sql, "table_bytes").await;
        assert!(bytes < file_size / 10, "{table}: lookup read {bytes} of the file's {file_size} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_rows_are_the_ids_found() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.parquet");
    let (x, ids) = pyarrow_table(&file, 8_000, D, 1, 9);
    let index_file = dir.path().join("docs.faiss");
    std::fs::write(&index_file, index_bytes(&x, D, Some(&ids), "IVF16,Flat").await).unwrap();
    let ctx = context(None);
    // The same table with a 32-bit key, as DataFusion writes it.
    let narrow = dir.path().join("narrow.parquet");
    ctx.register_parquet("wide", file.to_str().unwrap(), Default::default()).await.unwrap();
    let copy = format!(
        "COPY (SELECT CAST(id AS INT) AS id, label, embedding FROM wide) TO '{}' STORED AS PARQUET",
        narrow.display()
    );
    ctx.sql(&copy).await.unwrap().collect().await.unwrap();
    create(&ctx, "docs", file.to_str().unwrap(), index_file.to_str().unwrap(), true).await;
    create(&ctx, "narrow", narrow.to_str().unwrap(), index_file.to_str().unwrap(), true).await;
    ctx.sql("SET faiss.nprobe = 16").await.unwrap();
    for table in ["docs", "narrow"] {
        for i in 0..3 {
            let select = format!("SELECT id, vec_distance(embedding, {}) AS d", query(i));
            same_as_exact(&ctx, &format!("{select} FROM {table} ORDER BY d, id LIMIT 10")).await;
            same_as_exact(&ctx, &format!("{select}, label FROM {table} ORDER BY d, id LIMIT 10")).await;
        }
        // Keys and distances only: no row of the table is read.
        let sql = format!("SELECT id, vec_distance(embedding, {}) AS d FROM {table} ORDER BY d LIMIT 10", query(5));
        let _ = rows(&ctx, &sql).await;
        assert_eq!(metric(&ctx, &sql, "table_gets").await, 0, "{table}");
        assert_eq!(metric(&ctx, &sql, "base_rows_read").await, 0, "{table}");
    }
    let sql = format!("SELECT id, vec_distance(embedding, {}) AS d FROM narrow ORDER BY d LIMIT 3", query(0));
    let batches: Vec<RecordBatch> = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Int32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_of_files_by_position_on_s3() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = pyarrow_table(&folder, 24_000, D, 5, 8);
    let store = s3_store();
    let prefix = unique_path("lookup").to_string();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let entry = entry.unwrap();
        let key = format!("{prefix}/docs/{}", entry.file_name().to_str().unwrap());
        store.put(&key.into(), PutPayload::from(std::fs::read(entry.path()).unwrap())).await.unwrap();
    }
    let index_key = format!("{prefix}/docs.faiss");
    store.put(&index_key.clone().into(), PutPayload::from(index_bytes(&x, D, None, "IVF32,Flat").await)).await.unwrap();
    let bucket = format!("s3://{}", s3_bucket());
    let ctx = context(Some((&bucket, store.clone())));
    create(&ctx, "docs", &format!("{bucket}/{prefix}/docs/"), &format!("{bucket}/{index_key}"), false).await;
    ctx.sql("SET faiss.nprobe = 32").await.unwrap();
    for i in 0..4 {
        let select = format!("SELECT id, vec_distance(embedding, {}) AS d, title FROM docs", query(i));
        same_as_exact(&ctx, &format!("{select} ORDER BY d, id LIMIT 10")).await;
        same_as_exact(&ctx, &format!("{select} WHERE label < 5 ORDER BY d, id LIMIT 10")).await;
    }
    // Metadata known: the rows of 10 candidates in several files cost one wave.
    let sql = format!("SELECT id, vec_distance(embedding, {}) AS d, title FROM docs ORDER BY d LIMIT 10", query(11));
    let _ = rows(&ctx, &sql).await;
    assert_eq!(metric(&ctx, &sql, "table_waves").await, 1);
    assert!(metric(&ctx, &sql, "table_gets").await <= 20, "two columns of at most 10 rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_table_file_is_read_anew() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.parquet");
    let index_file = dir.path().join("docs.faiss");
    let ctx = context(None);
    for seed in [21, 22] {
        let (x, ids) = pyarrow_table(&file, 8_000, D, 1, seed);
        std::fs::write(&index_file, index_bytes(&x, D, Some(&ids), "IVF16,Flat").await).unwrap();
        if seed == 21 {
            create(&ctx, "docs", file.to_str().unwrap(), index_file.to_str().unwrap(), true).await;
        }
        // The second round: other keys at other positions, the same path; the stale key
        // map and footer must not answer.
        for i in 0..3 {
            let sql =
                format!("SELECT id, vec_distance(embedding, {}) AS d FROM docs ORDER BY d, id LIMIT 10", query(i));
            same_as_exact(&ctx, &sql).await;
        }
    }
}

/// The vector column as pyarrow writes it: a list per row (repetition levels) in v1 pages
/// with no page index, whose headers hold no row count. The levels are counted once to
/// find the row each page starts; a lookup then reads the rows' pages only. pyarrow starts
/// every page on a row, at 64 floats as at 48 (which does not divide the 1024 levels it
/// writes at a time). Both answer as the exact plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_column_of_a_pyarrow_table_is_read_by_page() {
    let dir = tempfile::tempdir().unwrap();
    for d in [64, 48] {
        let file = dir.path().join(format!("docs-{d}.parquet"));
        let (x, ids) = pyarrow_table(&file, 100_000, d, 1, 31);
        let index = dir.path().join(format!("docs-{d}.faiss"));
        std::fs::write(&index, index_bytes(&x, d, Some(&ids), "IVF32,Flat").await).unwrap();
        let ctx = context(None);
        create(&ctx, "docs", file.to_str().unwrap(), index.to_str().unwrap(), true).await;
        ctx.sql("SET faiss.nprobe = 32").await.unwrap();
        let q = clustered(1, d, 12, 77);
        let q = format!("'[{}]'", q.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "));
        let sql = format!("SELECT id, vec_distance(embedding, {q}) AS d, embedding FROM docs ORDER BY d, id LIMIT 5");
        same_as_exact(&ctx, &sql).await;
        let indexed: Vec<RecordBatch> = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        ctx.sql("SET faiss.enabled = false").await.unwrap();
        let exact: Vec<RecordBatch> = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        ctx.sql("SET faiss.enabled = true").await.unwrap();
        let shown = |b: &[RecordBatch]| datafusion::arrow::util::pretty::pretty_format_batches(b).unwrap().to_string();
        assert_eq!(shown(&indexed), shown(&exact), "d = {d}: the vectors read");
        let file_size = std::fs::metadata(&file).unwrap().len() as usize;
        let bytes = metric(&ctx, &sql, "table_bytes").await;
        // 5 rows: at most 5 of the chunk's 19 to 25 pages of 1 MiB.
        assert!(bytes < file_size / 3, "d = {d}: lookup read {bytes} of the file's {file_size} bytes");
    }
}
