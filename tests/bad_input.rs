//! Bad files, bad queries and bad build input give typed errors that say what and where.
mod common;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use common::*;
use datafusion_faiss::{Error, IvfIndex, IvfIndexBuilder, Metric};
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

const D: usize = 16;

async fn ivf_bytes(factory: &str) -> Vec<u8> {
    build_ours(&clustered(2000, D, 8, 7), D, factory, Metric::L2).await
}

async fn open_err(bytes: &[u8]) -> Error {
    let (store, path) = memory_store_with(bytes, "bad.faiss").await;
    IvfIndex::open(store, &path).await.expect_err("open should fail")
}

#[tokio::test]
async fn missing_and_empty_objects() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let err = IvfIndex::open(store, &Path::from("nope.faiss")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("nope.faiss"), "{err}");

    let err = open_err(b"").await;
    assert!(matches!(err, Error::NotFaiss { .. }), "{err}");
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn not_a_faiss_file() {
    let err = open_err(b"PAR1 this is a parquet file, not an index").await;
    assert!(matches!(err, Error::NotFaiss { .. }), "{err}");
    assert!(err.to_string().contains("offset 0"), "{err}");
    let err = open_err(b"Iw").await;
    assert!(matches!(err, Error::Truncated { .. }), "{err}");
}

#[tokio::test]
async fn truncated_header() {
    let bytes = ivf_bytes("IVF64,Flat").await;
    let err = open_err(&bytes[..1000]).await;
    let Error::Truncated { needed, size, .. } = &err else { panic!("{err}") };
    assert_eq!(*size, 1000);
    assert!(needed.end > 1000, "{err}");
    assert!(err.to_string().contains("bad.faiss"), "{err}");
}

fn lists_start(bytes: &[u8]) -> usize {
    // `ilar` tag, nlist, code_size, `full`, m, then m sizes.
    let at = bytes.windows(4).rposition(|w| w == b"ilar").unwrap();
    let m = u64::from_le_bytes(bytes[at + 24..at + 32].try_into().unwrap()) as usize;
    at + 32 + 8 * m
}

#[tokio::test]
async fn truncated_lists() {
    let bytes = ivf_bytes("IVF64,Flat").await;
    let cut = lists_start(&bytes) + 100;
    let err = open_err(&bytes[..cut]).await;
    let Error::ListsBeyondEnd { lists, size, .. } = &err else { panic!("{err}") };
    assert_eq!(*size, cut as u64);
    assert_eq!(lists.end, bytes.len() as u64);

    // With an IDMap, the id map after the lists is missing too.
    let bytes = ivf_bytes("IDMap,IVF64,Flat").await;
    let err = open_err(&bytes[..bytes.len() - 100]).await;
    assert!(matches!(err, Error::ListsBeyondEnd { .. } | Error::Truncated { .. }), "{err}");
}

#[tokio::test]
async fn size_table_claims_more_than_the_object() {
    let mut bytes = ivf_bytes("IVF64,Flat").await;
    let table = lists_start(&bytes) - 8 * 64;
    let first = u64::from_le_bytes(bytes[table..table + 8].try_into().unwrap());
    bytes[table..table + 8].copy_from_slice(&(first + 10).to_le_bytes());
    let err = open_err(&bytes).await;
    assert!(matches!(err, Error::ListsBeyondEnd { .. }), "{err}");

    bytes[table..table + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let err = open_err(&bytes).await;
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[tokio::test]
async fn unsupported_types_are_named() {
    let x = clustered(2000, D, 8, 8);
    for (factory, name) in [
        ("Flat", "IndexFlat"),
        ("HNSW8", "IndexHNSWFlat"),
        ("IVF16,PQ4x4fs", "IndexIVFPQFastScan"),
        ("IVF16,PQ4+8", "IndexIVFPQR"),
        ("IDMap,Flat", "IndexFlat"),
        ("PCA8,IVF16,PQ4x4fs", "IndexIVFPQFastScan"),
    ] {
        for (writer, bytes) in [
            ("python3-faiss", build_python(&x, D, factory, Metric::L2)),
            ("pip", build_pip(&x, D, factory, Metric::L2)),
        ] {
            let err = open_err(&bytes).await;
            let Error::Unsupported { type_name, .. } = &err else { panic!("{writer} {factory}: {err}") };
            assert!(type_name.contains(name), "{writer} {factory}: {err}");
        }
    }
    // Types newer than the FAISS linked here.
    for (factory, name) in [("IVF16,RaBitQ4", "IndexIVFRaBitQ with multi-bit codes"), ("RaBitQ", "IndexRaBitQ")] {
        let err = open_err(&build_pip(&x, D, factory, Metric::L2)).await;
        let Error::Unsupported { type_name, .. } = &err else { panic!("pip {factory}: {err}") };
        assert!(type_name.contains(name), "pip {factory}: {err}");
    }
}

#[tokio::test]
async fn bad_queries() {
    let bytes = ivf_bytes("IVF16,Flat").await;
    let (store, path) = memory_store_with(&bytes, "q.faiss").await;
    let index = IvfIndex::open(store, &path).await.unwrap();
    let q = clustered(2, D, 8, 9);
    let msg = |r: Result<_, Error>| match r {
        Err(e @ Error::InvalidSearch(_)) => e.to_string(),
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("search should fail"),
    };
    assert!(msg(index.search(&q[..D + 3], 5, 4).await).contains("dimension 16"));
    assert!(msg(index.search(&[], 5, 4).await).contains("no query"));
    let mut nan = q.clone();
    nan[D + 5] = f32::NAN;
    let m = msg(index.search(&nan, 5, 4).await);
    assert!(m.contains("query 1") && m.contains("component 5"), "{m}");
    let mut inf = q.clone();
    inf[2] = f32::INFINITY;
    assert!(msg(index.search(&inf, 5, 4).await).contains("non-finite"));
    assert!(msg(index.search(&q, 0, 4).await).contains("k must"));
    assert!(msg(index.search(&q, 5, 0).await).contains("nprobe must"));
    assert!(msg(index.search(&q, usize::MAX, 4).await).contains("exceeds"));
}

#[tokio::test]
async fn index_replaced_after_open_is_detected() {
    let bytes = ivf_bytes("IVF16,Flat").await;
    let (store, path) = memory_store_with(&bytes, "moving.faiss").await;
    let index = IvfIndex::open(store.clone(), &path).await.unwrap();
    let other = ivf_bytes("IVF16,SQ8").await;
    store.put(&path, PutPayload::from(other)).await.unwrap();
    let err = index.search(&clustered(1, D, 8, 10), 5, 16).await.unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
    assert!(err.to_string().contains("changed since it was opened"), "{err}");
}

#[tokio::test]
async fn short_list_read_names_list_and_range() {
    let bytes = ivf_bytes("IVF16,Flat").await;
    let (inner, path) = memory_store_with(&bytes, "short.faiss").await;
    let header_end = lists_start(&bytes) as u64;
    let store: Arc<dyn ObjectStore> = Arc::new(ShortReads { inner, after: header_end });
    let index = IvfIndex::open(store, &path).await.unwrap();
    let err = index.search(&clustered(1, D, 8, 11), 5, 4).await.unwrap_err();
    let Error::ShortRead { list, range, .. } = &err else { panic!("{err}") };
    assert_eq!(index.list_range(*list).start, range.start);
    assert!(err.to_string().contains(&format!("list {list}")), "{err}");
}

#[tokio::test]
async fn builder_rejects_bad_input() {
    let build = |f: &str| IvfIndexBuilder::new(D, f, Metric::L2).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(build("IVF16,Nonsense").contains("IVF16,Nonsense"));
    assert!(build("HNSW16").contains("cannot be searched in place"));
    let mut b = IvfIndexBuilder::new(D, "IVF64,Flat", Metric::L2).unwrap();
    let few = clustered(10, D, 2, 12);
    assert!(b.train(&few).unwrap_err().to_string().contains("training"));
    assert!(b.train(&few[..D + 1]).unwrap_err().to_string().contains("dimension 16"));
    let mut nan = clustered(100, D, 2, 13);
    nan[3 * D + 4] = f32::NAN;
    assert!(b.train(&nan).unwrap_err().to_string().contains("row 3"));
    let mut b = IvfIndexBuilder::new(D, "IVF4,Flat", Metric::L2).unwrap();
    let x = clustered(200, D, 4, 14);
    b.train(&x).unwrap();
    assert!(b.add(&x, &ids(10)).unwrap_err().to_string().contains("10 ids for 200 vectors"));
}

/// Serves range reads past `after` one byte short, like a connection cut mid-body.
#[derive(Debug)]
struct ShortReads {
    inner: Arc<dyn ObjectStore>,
    after: u64,
}

impl fmt::Display for ShortReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortReads({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for ShortReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let short = matches!(&options.range, Some(GetRange::Bounded(r)) if r.start >= self.after);
        let result = self.inner.get_opts(location, options).await?;
        if !short {
            return Ok(result);
        }
        let (meta, range, attributes): (ObjectMeta, Range<u64>, _) =
            (result.meta.clone(), result.range.clone(), result.attributes.clone());
        let mut bytes = result.bytes().await?;
        bytes.truncate(bytes.len() - 1);
        let payload = GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed());
        Ok(GetResult { payload, meta, range, attributes })
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn idmap2_with_a_bad_ntotal_is_refused_naming_the_field() {
    // FAISS 1.7.3's own read_index segfaults on every one of these.
    let good = ivf_bytes("IDMap2,IVF16,Flat").await;
    for ntotal in [-1i64, -2, -100, 1_000_000_000, 1 << 62, i64::MAX, i64::MIN] {
        let mut bytes = good.clone();
        bytes[8..16].copy_from_slice(&ntotal.to_le_bytes());
        for err in [open_err(&bytes).await, datafusion_faiss::InMemoryIndex::from_bytes(&bytes).err().unwrap()] {
            let Error::BadHeader { field, offset, value, .. } = &err else { panic!("ntotal {ntotal}: {err}") };
            assert_eq!((field.as_str(), *offset), ("IDMap ntotal", 8), "{err}");
            assert_eq!(value, &ntotal.to_string(), "{err}");
        }
    }
}

#[tokio::test]
async fn counts_beyond_the_object_are_refused_before_faiss_allocates() {
    // The quantizer's centroid count (after tag, d, ntotal, 2 unused, is_trained, metric).
    let good = ivf_bytes("IVF16,Flat").await;
    let q = good.windows(4).position(|w| w == b"IxF2").unwrap() + 37;
    for count in [1u64 << 40, u64::MAX] {
        let mut bytes = good.clone();
        bytes[q..q + 8].copy_from_slice(&count.to_le_bytes());
        let err = open_err(&bytes).await;
        let Error::BadHeader { field, offset, .. } = &err else { panic!("{err}") };
        assert_eq!((field.as_str(), *offset), ("quantizer centroids length", q as u64), "{err}");
    }
    // A length FAISS would allocate, for bytes the object does not have.
    for count in [1u64 << 39, 1 << 30] {
        let mut bytes = good.clone();
        bytes[q..q + 8].copy_from_slice(&count.to_le_bytes());
        let err = open_err(&bytes).await;
        let Error::Truncated { field, needed, .. } = &err else { panic!("{err}") };
        assert!(field.contains(&format!("quantizer centroids (length {count} at offset {q})")), "{err}");
        assert_eq!(needed.end - needed.start, 4 * count, "{err}");
    }
    // A product quantizer with M = 0 (FAISS divides by it).
    let good = ivf_bytes("IVF16,PQ4x4").await;
    let m = good.windows(4).position(|w| w == b"IwPQ").unwrap();
    // PQ after: IVF header (37), nlist, nprobe, quantizer (37 + 8 + 16·16·4), direct map (1 + 8),
    // by_residual, code_size, d; M is the next u64.
    let at = m + 37 + 16 + 37 + 8 + 16 * 16 * 4 + 9 + 1 + 8 + 8;
    assert_eq!(u64::from_le_bytes(good[at..at + 8].try_into().unwrap()), 4, "M of PQ4x4");
    let mut bytes = good.clone();
    bytes[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    let err = open_err(&bytes).await;
    assert!(err.to_string().contains("product quantizer M = 0"), "{err}");
}

#[tokio::test]
async fn unknown_scalar_quantizer_type_is_refused_naming_it() {
    let good = ivf_bytes("IVF16,SQfp16").await;
    let q = good.windows(4).position(|w| w == b"IwSq").unwrap() + 37 + 16 + 37 + 8 + 16 * 16 * 4 + 9;
    assert_eq!(i32::from_le_bytes(good[q..q + 4].try_into().unwrap()), 4, "QT_fp16");
    for qtype in [9i32, -1, i32::MAX] {
        let mut bytes = good.clone();
        bytes[q..q + 4].copy_from_slice(&qtype.to_le_bytes());
        let err = open_err(&bytes).await;
        let Error::BadHeader { field, offset, .. } = &err else { panic!("{err}") };
        assert_eq!((field.as_str(), *offset), ("scalar quantizer type", q as u64), "{err}");
    }
}

#[tokio::test]
async fn opq_is_described_as_opq() {
    let x = clustered(2000, D, 8, 15);
    for (factory, description) in [("OPQ4_16,IVF16,PQ4x4", "OPQ4_16,IVF16,PQ4x4"), ("PCA8,IVF16,SQ8", "PCA8,IVF16,SQ8")]
    {
        let bytes = build_ours(&x, D, factory, Metric::L2).await;
        let (store, path) = memory_store_with(&bytes, "opq.faiss").await;
        let index = IvfIndex::open(store, &path).await.unwrap();
        assert_eq!(index.info().description, description);
    }
}

#[tokio::test]
async fn local_paths_keep_their_leading_slash_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.faiss");
    let shown = file.display().to_string();
    let err = IvfIndex::open_file(&file).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("{shown}: ")), "{err}");
    std::fs::write(&file, &ivf_bytes("IVF16,Flat").await[..500]).unwrap();
    let err = IvfIndex::open_file(&file).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("{shown}: ")), "{err}");
    std::fs::write(&file, ivf_bytes("IVF16,Flat").await).unwrap();
    let index = IvfIndex::open_file(&file).await.unwrap();
    std::fs::write(&file, b"changed").unwrap();
    let err = index.search(&clustered(1, D, 8, 16), 5, 4).await.unwrap_err();
    assert!(err.to_string().starts_with(&format!("{shown}: ")), "{err}");
}
