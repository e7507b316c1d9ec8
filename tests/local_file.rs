//! Local index files opened by memory map: same results as FAISS, changes detected.
mod common;

use common::*;
use datafusion_faiss::{Error, IvfIndex, Metric};

const D: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_file_equals_faiss() {
    let x = clustered(3000, D, 12, 61);
    let dir = tempfile::tempdir().unwrap();
    for (factory, metric) in [("IVF32,Flat", Metric::L2), ("IDMap2,OPQ8,IVF32,PQ8np", Metric::InnerProduct)] {
        let bytes = build_python(&x, D, factory, metric);
        let file = dir.path().join("index.faiss");
        std::fs::write(&file, &bytes).unwrap();
        let index = IvfIndex::open_file(&file).await.unwrap();
        assert!(index.cache().is_none());
        assert_eq!(index.open_stats().gets, 0);
        let q = clustered(10, D, 12, 62);
        for nprobe in [1, 8, 100] {
            let ours = index.search(&q, 10, nprobe).await.unwrap();
            assert_same(&ours, &reference(&bytes, &q, 10, nprobe), &format!("mapped {factory} nprobe={nprobe}"));
            assert_eq!(ours.stats.fetch.gets, 0);
            assert!(ours.stats.fetch.bytes_mapped > 0);
        }
    }
}

#[tokio::test]
async fn rewritten_file_is_detected() {
    let x = clustered(2000, D, 12, 63);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("index.faiss");
    std::fs::write(&file, build_ours(&x, D, "IVF16,Flat", Metric::L2).await).unwrap();
    let index = IvfIndex::open_file(&file).await.unwrap();
    let q = clustered(1, D, 12, 64);
    index.search(&q, 5, 4).await.unwrap();
    // Rewritten in place with different content (and size).
    std::fs::write(&file, build_ours(&x, D, "IVF16,SQ8", Metric::L2).await).unwrap();
    let err = index.search(&q, 5, 4).await.unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");

    let err = IvfIndex::open_file(dir.path().join("absent.faiss")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}
