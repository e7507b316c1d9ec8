//! An index replaced under a running session is noticed on the next query, however it
//! was published: renamed over (`cp new tmp && mv tmp docs.faiss`, as `build` does),
//! rebuilt by `datafusion-faiss build`, a non-FAISS file renamed or copied into place,
//! rewritten in place, truncated, deleted; on local files and on S3. The new index is
//! used (its nlist shows in `lists_probed`) or the query fails naming the file; the old,
//! still mapped or cached index never answers.
#[path = "../../tests/common/mod.rs"]
mod common;

use common::tables::Docs;
use common::*;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::SessionContext;
use datafusion_faiss::Metric;
use object_store::{ObjectStoreExt, PutPayload};

const D: usize = 16;

fn sql() -> String {
    let q: Vec<String> = clustered(1, D, 12, 600).iter().map(|v| v.to_string()).collect();
    format!("SELECT id FROM docs ORDER BY vec_distance(embedding, '[{}]'), id LIMIT 10", q.join(", "))
}

async fn ids(ctx: &SessionContext) -> datafusion::error::Result<Vec<i64>> {
    let batches: Vec<RecordBatch> = ctx.sql(&sql()).await?.collect().await?;
    Ok(batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect())
}

/// `lists_probed` of the index scan: the nlist of the index answering (nprobe = 64).
async fn lists_probed(ctx: &SessionContext) -> usize {
    metric(ctx, &sql(), "lists_probed").await
}

/// The query answers from an index of `nlist` lists, with the exact plan's rows.
async fn answers_from(ctx: &SessionContext, nlist: usize, what: &str) {
    assert_eq!(lists_probed(ctx).await, nlist, "{what}: the index answering");
    let indexed = ids(ctx).await.unwrap();
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    let exact = ids(ctx).await.unwrap();
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    assert_eq!(indexed, exact, "{what}");
}

async fn fails(ctx: &SessionContext, what: &str, expected: &[&str]) {
    let err = ids(ctx).await.expect_err(what).to_string();
    for e in expected {
        assert!(err.contains(e), "{what}: {err:?} should say {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_index_replaced_every_way_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let docs = Docs::new(3_000, D, 61);
    let table = dir.path().join("docs.parquet");
    let index = dir.path().join("docs.faiss");
    std::fs::write(&table, docs.parquet()).unwrap();
    let (i16, i8, i4) = (
        docs.index("IVF16,Flat", Metric::L2).await,
        docs.index("IVF8,Flat", Metric::L2).await,
        docs.index("IVF4,Flat", Metric::L2).await,
    );
    std::fs::write(&index, &i16).unwrap();
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{}' OPTIONS ('index' '{}', 'key' 'id', 'vector' 'embedding')",
        table.display(),
        index.display()
    ))
    .await
    .unwrap();
    ctx.sql("SET faiss.nprobe = 64").await.unwrap();
    answers_from(&ctx, 16, "as created").await;

    let publish = |bytes: &[u8]| {
        let tmp = dir.path().join("docs.faiss.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &index).unwrap();
    };
    publish(&i8);
    answers_from(&ctx, 8, "renamed over").await;

    let status = std::process::Command::new(env!("CARGO_BIN_EXE_datafusion-faiss"))
        .args(["build", "--input", table.to_str().unwrap(), "--factory", "IVF4,Flat", "--output"])
        .arg(&index)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    answers_from(&ctx, 4, "rebuilt by datafusion-faiss build").await;

    let shown = index.display().to_string();
    assert!(shown.starts_with('/'));
    publish(b"junk");
    fails(&ctx, "a non-FAISS file renamed into place", &[&shown, "not a FAISS"]).await;
    publish(&i16);
    answers_from(&ctx, 16, "a good index again").await;

    ctx.sql(&format!("COPY (SELECT 1) TO '{shown}' STORED AS CSV")).await.unwrap().collect().await.unwrap();
    // The CSV starts with its header, `Int64(1)`: a tag FAISS does not know.
    fails(&ctx, "COPY ... STORED AS CSV over it", &[&shown, "Int6"]).await;
    publish(&i16);
    answers_from(&ctx, 16, "a good index again").await;

    // In place: same inode, other bytes.
    std::fs::write(&index, &i4).unwrap();
    answers_from(&ctx, 4, "rewritten in place").await;

    std::fs::OpenOptions::new().write(true).open(&index).unwrap().set_len(100).unwrap();
    fails(&ctx, "truncated in place", &[&shown, "truncated"]).await;

    std::fs::remove_file(&index).unwrap();
    fails(&ctx, "deleted", &[&shown, "not found"]).await;
    publish(&i8);
    answers_from(&ctx, 8, "published again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_index_replaced_while_every_list_is_cached_is_noticed() {
    let store = s3_store();
    let prefix = unique_path("replaced").to_string();
    let docs = Docs::new(3_000, D, 62);
    docs.write(store.as_ref(), &prefix, "docs", "IVF16,Flat", Metric::L2).await;
    let base = format!("s3://{}/{prefix}", s3_bucket());
    let ctx = SessionContext::new();
    ctx.register_object_store(ObjectStoreUrl::parse(format!("s3://{}", s3_bucket())).unwrap().as_ref(), store.clone());
    datafusion_faiss::sql::register_all(&ctx);
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{base}/docs.parquet' \
         OPTIONS ('index' '{base}/docs.faiss', 'key' 'id', 'vector' 'embedding')"
    ))
    .await
    .unwrap();
    ctx.sql("SET faiss.nprobe = 64").await.unwrap();
    answers_from(&ctx, 16, "as created").await;
    // Every list is cached now: a search alone makes no GET that could see a new ETag.
    answers_from(&ctx, 16, "warm").await;

    let path = object_store::path::Path::from(format!("{prefix}/docs.faiss"));
    store.put(&path, PutPayload::from(docs.index("IVF8,Flat", Metric::L2).await)).await.unwrap();
    answers_from(&ctx, 8, "replaced").await;

    store.put(&path, PutPayload::from(&b"junk"[..])).await.unwrap();
    fails(&ctx, "a non-FAISS object", &["docs.faiss", "not a FAISS"]).await;

    store.delete(&path).await.unwrap();
    fails(&ctx, "deleted", &["docs.faiss", "not found"]).await;

    store.put(&path, PutPayload::from(docs.index("IVF4,Flat", Metric::L2).await)).await.unwrap();
    answers_from(&ctx, 4, "published again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_check_sees_a_rename_over_a_mapped_file() {
    let dir = tempfile::tempdir().unwrap();
    let docs = Docs::new(1_000, D, 63);
    let file = dir.path().join("i.faiss");
    std::fs::write(&file, docs.index("IVF8,Flat", Metric::L2).await).unwrap();
    let index = datafusion_faiss::IvfIndex::open_file(&file).await.unwrap();
    index.check().await.unwrap();
    let tmp = dir.path().join("i.tmp");
    std::fs::write(&tmp, docs.index("IVF4,Flat", Metric::L2).await).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let err = index.check().await.unwrap_err();
    assert!(matches!(err, datafusion_faiss::Error::Changed { .. }), "{err}");
    assert!(err.to_string().starts_with(&file.display().to_string()), "{err}");
    let err = index.search(&clustered(1, D, 12, 1), 5, 4).await.unwrap_err();
    assert!(matches!(err, datafusion_faiss::Error::Changed { .. }), "{err}");
}
