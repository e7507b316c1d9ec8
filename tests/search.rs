//! Results of header-only search equal FAISS's own search of the same file, for every
//! supported index type, both metrics, files written by this crate and by Python FAISS.
mod common;

use std::sync::Arc;

use common::*;
use datafusion_faiss::{IvfIndex, Metric, SearchOptions};

const D: usize = 32;
const N: usize = 3000;

/// (factory, metric) pairs covering every supported type and wrapper. `np`: no
/// polysemous training, which takes minutes here and does not change the file layout.
const CASES: &[(&str, Metric)] = &[
    ("IVF32,Flat", Metric::L2),
    ("IVF32,Flat", Metric::InnerProduct),
    ("IVF32,SQ8", Metric::L2),
    ("IVF32,SQ8", Metric::InnerProduct),
    ("IVF32,SQ4", Metric::L2),
    ("IVF32,SQfp16", Metric::InnerProduct),
    ("IVF32,PQ8np", Metric::L2),
    ("IVF32,PQ8np", Metric::InnerProduct),
    ("OPQ8,IVF32,PQ8np", Metric::L2),
    ("PCA16,IVF32,SQ8", Metric::L2),
    ("IDMap,IVF32,Flat", Metric::L2),
    ("IDMap2,IVF32,PQ8np", Metric::InnerProduct),
    ("IDMap2,OPQ8,IVF32,PQ8np", Metric::L2),
];

/// Types FAISS 1.7.3 (Debian's python3-faiss) cannot write.
const NEWER: &[(&str, Metric)] = &[
    ("IVF32,SQbf16", Metric::L2),
    ("IVF32,SQ8_direct_signed", Metric::InnerProduct),
    ("IVF32,RaBitQ", Metric::L2),
    ("IVF32,RaBitQ", Metric::InnerProduct),
    ("IDMap2,PCA16,IVF32,RaBitQ", Metric::L2),
];

/// An HNSW graph as the coarse quantizer: how FAISS's guidelines build large-nlist indexes.
const HNSW_QUANTIZER: &[(&str, Metric)] = &[
    ("IVF32_HNSW8,Flat", Metric::L2),
    ("IVF32_HNSW8,Flat", Metric::InnerProduct),
    ("IVF32_HNSW4,SQ8", Metric::L2),
    ("IDMap2,IVF32_HNSW16,PQ8np", Metric::L2),
    ("PCA16,IVF32_HNSW8,Flat", Metric::InnerProduct),
];

async fn check_file(bytes: &[u8], what: &str) {
    let (store, path) = memory_store_with(bytes, "index.faiss").await;
    let index = IvfIndex::open(store, &path).await.unwrap_or_else(|e| panic!("{what}: open: {e}"));
    let info = index.info();
    assert_eq!(info.dimension, D, "{what}");
    assert_eq!(info.nlist, 32, "{what}");
    assert_eq!(info.ntotal, N as u64, "{what}");
    assert_eq!(index.cluster_sizes().iter().sum::<u64>(), N as u64, "{what}");
    let queries = clustered(25, D, 12, 99);
    for (k, nprobe) in [(10, 1), (10, 4), (7, 32), (10, 1000)] {
        let ours = index.search(&queries, k, nprobe).await.unwrap();
        assert_same(&ours, &reference(bytes, &queries, k, nprobe), &format!("{what} k={k} nprobe={nprobe}"));
        assert!(ours.stats.lists_probed <= (25 * nprobe.min(32)) as u64);
    }
    // Queries split across threads (runs of 9, 9 and 7), transforms and all: the same.
    let options = SearchOptions { threads: 3, ..Default::default() };
    let ours = index.search_with(&queries, 10, 4, options).await.unwrap();
    assert_same(&ours, &reference(bytes, &queries, 10, 4), &format!("{what} in 3 threads"));
    // Filtered: FAISS's full ranking of the probed lists, restricted to the allowed ids.
    let full = reference(bytes, &queries, N, 4);
    // Covers both id schemes: 0..N and the builders' 3i + 11.
    let allowed: Vec<i64> = (0..3 * N as i64 + 11).filter(|id| id % 7 == 2).collect();
    let ours = index.search_among(&queries, 10, 4, &allowed).await.unwrap();
    let mut expected = (Vec::new(), Vec::new());
    for q in 0..25 {
        let row = full.0[q * N..(q + 1) * N].iter().zip(&full.1[q * N..(q + 1) * N]);
        let kept: Vec<_> = row.filter(|(id, _)| **id >= 0 && **id % 7 == 2).take(10).collect();
        assert_eq!(kept.len(), 10, "{what}: too few allowed candidates in the test data");
        expected.0.extend(kept.iter().map(|(id, _)| **id));
        expected.1.extend(kept.iter().map(|(_, d)| **d));
    }
    assert_same(&ours, &expected, &format!("{what} filtered"));
    assert!(ours.ids.iter().all(|id| id % 7 == 2), "{what}: filtered result has an id outside the allowed set");
    // More neighbours than candidates: padded with -1, as FAISS does.
    let one = &queries[..D];
    let ours = index.search(one, N + 50, 1).await.unwrap();
    assert_same(&ours, &reference(bytes, one, N + 50, 1), &format!("{what} k > candidates"));
    assert!(ours.ids.ends_with(&[-1; 50]), "{what}: padding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equals_faiss_for_files_we_write() {
    let x = clustered(N, D, 12, 1);
    for &(factory, metric) in CASES.iter().chain(NEWER).chain(HNSW_QUANTIZER) {
        let bytes = build_ours(&x, D, factory, metric).await;
        check_file(&bytes, &format!("ours {factory} {metric:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equals_faiss_for_files_python_faiss_writes() {
    let x = clustered(N, D, 12, 2);
    for &(factory, metric) in CASES {
        let bytes = build_python(&x, D, factory, metric);
        check_file(&bytes, &format!("python {factory} {metric:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equals_faiss_for_files_pip_faiss_writes() {
    let x = clustered(N, D, 12, 3);
    for &(factory, metric) in CASES.iter().chain(NEWER).chain(HNSW_QUANTIZER) {
        let bytes = build_pip(&x, D, factory, metric);
        check_file(&bytes, &format!("pip {factory} {metric:?}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_share_one_index() {
    let x = clustered(N, D, 12, 3);
    let bytes = Arc::new(build_ours(&x, D, "IVF32,SQ8", Metric::L2).await);
    let (store, path) = memory_store_with(&bytes, "shared.faiss").await;
    let index = Arc::new(IvfIndex::open(store, &path).await.unwrap());
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let (index, bytes) = (index.clone(), bytes.clone());
            tokio::spawn(async move {
                let q = clustered(1 + i % 3, D, 12, 1000 + i as u64);
                let nprobe = 1 + i % 8;
                let ours = index.search(&q, 10, nprobe).await.unwrap();
                assert_same(&ours, &reference(&bytes, &q, 10, nprobe), &format!("task {i}"));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn open_reads_header_only_and_search_fetches_probed_lists() {
    // 256 lists of 64-d centroids: a 64 KiB header, more than the first read.
    let d = 64;
    let x = clustered(20_000, d, 40, 4);
    let bytes = build_ours(&x, d, "IVF256,Flat", Metric::L2).await;
    let (store, path) = memory_store_with(&bytes, "big.faiss").await;
    let index = IvfIndex::open(store, &path).await.unwrap();
    let info = index.info().clone();
    assert!(info.lists.start > 64 * 1024, "header {} bytes", info.lists.start);
    let open = index.open_stats();
    assert_eq!(open.gets, 2, "GETs to open");
    assert!(
        open.bytes <= info.lists.start + 64 * 1024,
        "open read {} bytes, header is {}",
        open.bytes,
        info.lists.start
    );
    assert_eq!(info.lists.end, info.file_size);

    // List ranges tile the list section in order.
    let mut at = info.lists.start;
    for (i, &size) in index.cluster_sizes().iter().enumerate() {
        let r = index.list_range(i);
        assert_eq!(r.start, at);
        assert_eq!(r.end - r.start, size * (info.code_size as u64 + 8));
        at = r.end;
    }
    assert_eq!(at, info.lists.end);

    let q = clustered(1, d, 40, 5);
    let ours = index.search(&q, 10, 16).await.unwrap();
    let probed = ours.stats.lists_probed;
    assert!(probed > 0 && probed <= 16);
    assert!(ours.stats.fetch.gets >= 1 && ours.stats.fetch.gets <= probed);
    assert!(ours.stats.fetch.bytes < info.file_size / 4, "fetched {} of {}", ours.stats.fetch.bytes, info.file_size);
    assert_same(&ours, &reference(&bytes, &q, 10, 16), "IVF256,Flat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misaligned_lists_of_a_mapped_file_equal_faiss() {
    // One or two lists of thousands of codes, at odd offsets of a mapped file: FAISS
    // scans them in place, as its own memory-mapped reading does.
    let x = clustered(N, D, 12, 4);
    let queries = clustered(25, D, 12, 98);
    let dir = tempfile::tempdir().unwrap();
    for (factory, metric) in [("IVF1,Flat", Metric::L2), ("IVF2,Flat", Metric::InnerProduct)] {
        let bytes = build_ours(&x, D, factory, metric).await;
        let file = dir.path().join("long.faiss");
        std::fs::write(&file, &bytes).unwrap();
        let index = IvfIndex::open_file(&file).await.unwrap();
        assert_ne!(index.list_range(0).start % 4, 0, "{factory}: the first list is misaligned in the file");
        for k in [10, 100] {
            let ours = index.search(&queries, k, 2).await.unwrap();
            assert_same(&ours, &reference(&bytes, &queries, k, 2), &format!("{factory} mapped k={k}"));
        }
    }
}
