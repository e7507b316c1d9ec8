//! The same guarantees against a real S3 server (SeaweedFS on 127.0.0.1, SigV4).
mod common;

use std::sync::Arc;

use common::*;
use datafusion_faiss::{Error, IvfIndex, IvfIndexBuilder, Metric};
use object_store::{ObjectStoreExt, PutPayload};

const D: usize = 32;
const N: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equals_faiss_on_s3() {
    let store = s3_store();
    let x = clustered(N, D, 12, 21);
    let queries = clustered(20, D, 12, 22);
    for (factory, metric, python) in [
        ("IVF32,Flat", Metric::L2, false),
        ("IVF32,SQ8", Metric::InnerProduct, true),
        ("OPQ8,IVF32,PQ8np", Metric::L2, true),
        ("IDMap2,IVF32,Flat", Metric::InnerProduct, false),
    ] {
        let bytes =
            if python { build_python(&x, D, factory, metric) } else { build_ours(&x, D, factory, metric).await };
        let path = unique_path("index.faiss");
        store.put(&path, PutPayload::from(bytes.clone())).await.unwrap();
        let index = IvfIndex::open(store.clone(), &path).await.unwrap();
        assert!(index.open_stats().gets <= 2, "{factory}: open took {:?}", index.open_stats());
        for nprobe in [1, 8, 64] {
            let ours = index.search(&queries, 10, nprobe).await.unwrap();
            assert_same(&ours, &reference(&bytes, &queries, 10, nprobe), &format!("s3 {factory} nprobe={nprobe}"));
            assert!(ours.stats.fetch.gets <= ours.stats.lists_probed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_on_s3() {
    let store = s3_store();
    let bytes = Arc::new(build_ours(&clustered(N, D, 12, 23), D, "IVF32,Flat", Metric::L2).await);
    let path = unique_path("shared.faiss");
    store.put(&path, PutPayload::from(bytes.to_vec())).await.unwrap();
    let index = Arc::new(IvfIndex::open(store, &path).await.unwrap());
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (index, bytes) = (index.clone(), bytes.clone());
            tokio::spawn(async move {
                let q = clustered(2, D, 12, 500 + i);
                let ours = index.search(&q, 10, 6).await.unwrap();
                assert_same(&ours, &reference(&bytes, &q, 10, 6), &format!("task {i}"));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn builder_uploads_readable_index_and_replacement_is_detected() {
    let store = s3_store();
    let x = clustered(N, D, 12, 24);
    let path = unique_path("built.faiss");
    let builder = tokio::task::spawn_blocking({
        let x = x.clone();
        move || {
            let mut b = IvfIndexBuilder::new(D, "IVF32,Flat", Metric::L2).unwrap();
            b.train(&x).unwrap();
            b.add(&x, &ids(N)).unwrap();
            b
        }
    })
    .await
    .unwrap();
    let size = builder.write(store.clone(), &path).await.unwrap();
    let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, size);

    let index = IvfIndex::open(store.clone(), &path).await.unwrap();
    let q = clustered(3, D, 12, 25);
    assert_same(&index.search(&q, 10, 4).await.unwrap(), &reference(&bytes, &q, 10, 4), "uploaded");

    store.put(&path, PutPayload::from(build_ours(&x, D, "IVF32,SQ8", Metric::L2).await)).await.unwrap();
    let err = index.search(&q, 10, 32).await.unwrap_err();
    assert!(matches!(err, Error::Changed { .. }), "{err}");
}

#[tokio::test]
async fn missing_object_on_s3() {
    let err = IvfIndex::open(s3_store(), &unique_path("absent.faiss")).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_share_gets_within_budget_on_s3() {
    let store = s3_store();
    let bytes = build_ours(&clustered(6000, D, 12, 26), D, "IVF64,SQ8", Metric::L2).await;
    let path = unique_path("budget.faiss");
    store.put(&path, PutPayload::from(bytes.clone())).await.unwrap();
    concurrent_within_budget(store, &path, bytes).await;
}

/// A second checkout's server beside this one (`scripts/s3.sh` in another folder): it
/// starts on ports of its own, this one's readiness check cannot be answered by it, and
/// stopping it leaves this one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_checkouts_server_is_its_own() {
    let store = s3_store();
    let path = unique_path("before-the-second.txt");
    store.put(&path, PutPayload::from_static(b"first")).await.unwrap();

    let other = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(other.path().join("scripts")).unwrap();
    std::fs::create_dir_all(other.path().join(".work/venv/bin")).unwrap();
    std::fs::copy(root().join("scripts/s3.sh"), other.path().join("scripts/s3.sh")).unwrap();
    std::os::unix::fs::symlink(root().join(".work/venv/bin/weed"), other.path().join(".work/venv/bin/weed")).unwrap();
    let s3 = |what: &str| {
        let out = std::process::Command::new(other.path().join("scripts/s3.sh")).arg(what).output().unwrap();
        assert!(out.status.success(), "s3.sh {what}: {}", String::from_utf8_lossy(&out.stderr));
    };
    s3("start");
    let env = std::fs::read_to_string(other.path().join(".work/s3/env")).unwrap();
    let var = |name: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap().to_string();
    assert_ne!(var("DFF_S3_ENDPOINT"), s3_var("DFF_S3_ENDPOINT"), "both servers on one port");
    assert_ne!(var("DFF_S3_SECRET"), s3_var("DFF_S3_SECRET"), "a secret that another server would accept too");
    // The second server refuses this one's signature: an answer proves whose server it is.
    let no_retry = object_store::RetryConfig { max_retries: 0, ..Default::default() };
    let theirs = s3_store_with(Some(var("DFF_S3_ENDPOINT")), no_retry, Default::default());
    assert!(theirs.get(&path).await.is_err(), "the second server accepted the first's key");
    s3("stop");
    assert_eq!(&store.get(&path).await.unwrap().bytes().await.unwrap()[..], b"first");
}
