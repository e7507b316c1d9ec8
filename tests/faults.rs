//! Transient S3 faults are retried (object_store's RetryConfig); a fetch that finally
//! fails names the list and byte range, within the deadline. Runs against SeaweedFS
//! through a fault-injecting proxy.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::proxy::{Fault, FaultProxy};
use common::*;
use datafusion_faiss::{Error, IvfIndex, Metric};
use object_store::{BackoffConfig, ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};

const D: usize = 32;

fn retry(max_retries: usize, retry_timeout: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(50),
            base: 2.0,
        },
        max_retries,
        retry_timeout,
    }
}

/// An index on the S3 server, opened through a fresh proxy with the given settings.
async fn setup(retry: RetryConfig, client: ClientOptions) -> (FaultProxy, IvfIndex, Arc<Vec<u8>>) {
    let bytes = build_ours(&clustered(3000, D, 12, 51), D, "IVF32,Flat", Metric::L2).await;
    let path = unique_path("faults.faiss");
    s3_store().put(&path, PutPayload::from(bytes.clone())).await.unwrap();
    let proxy = FaultProxy::start(s3_addr()).await;
    let store = s3_store_with(Some(proxy.endpoint()), retry, client);
    let index = IvfIndex::open(store, &path).await.unwrap();
    (proxy, index, Arc::new(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_503_then_success() {
    let (proxy, index, bytes) = setup(retry(5, Duration::from_secs(10)), ClientOptions::new()).await;
    proxy.set(Fault::Fail { n: 3, status: 503 });
    let q = clustered(2, D, 12, 52);
    let ours = index.search(&q, 10, 8).await.unwrap();
    assert_same(&ours, &reference(&bytes, &q, 10, 8), "after 503s");
    assert_eq!(proxy.injected(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_500s_are_retried() {
    let (proxy, index, bytes) = setup(retry(10, Duration::from_secs(20)), ClientOptions::new()).await;
    proxy.set(Fault::FailRandom { percent: 20 });
    for i in 0..30 {
        index.cache().unwrap().clear();
        let q = clustered(1, D, 12, 100 + i);
        let ours = index.search(&q, 10, 8).await.unwrap();
        assert_same(&ours, &reference(&bytes, &q, 10, 8), &format!("query {i}"));
    }
    assert!(proxy.injected() > 5, "only {} faults in {} requests", proxy.injected(), proxy.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_cut_short() {
    let (proxy, index, bytes) = setup(retry(3, Duration::from_secs(10)), ClientOptions::new()).await;
    let q = clustered(1, D, 12, 53);
    // Cut once: the read is retried from where it broke.
    proxy.set(Fault::CutBody { n: 1 });
    let ours = index.search(&q, 10, 1).await.unwrap();
    assert_same(&ours, &reference(&bytes, &q, 10, 1), "after a cut body");
    assert_eq!(proxy.injected(), 1);

    // Cut every time: the search fails naming the list and its byte range.
    index.cache().unwrap().clear();
    proxy.set(Fault::CutBody { n: usize::MAX });
    let err = index.search(&q, 10, 1).await.unwrap_err();
    let (Error::Fetch { list, range, .. } | Error::ShortRead { list, range, .. }) = &err else { panic!("{err}") };
    assert_eq!(index.list_range(*list), *range);
    assert!(err.to_string().contains(&format!("list {list}")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_end_at_the_deadline() {
    let client = ClientOptions::new().with_timeout(Duration::from_millis(100));
    let (proxy, index, _) = setup(retry(3, Duration::from_secs(1)), client).await;
    proxy.set(Fault::Delay(Duration::from_millis(200)));
    let q = clustered(1, D, 12, 54);
    let before = proxy.requests();
    let err = index.search(&q, 10, 4).await.unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err}");
    // It gave up after the retry budget, not after some wall-clock bound: at most one
    // try and 3 retries for each of the (at most nprobe) GETs.
    let tries = proxy.requests() - before;
    assert!((1..=4 * 4).contains(&tries), "{tries} requests");

    // The same delay under a timeout far longer than it is only slow.
    let client = ClientOptions::new().with_timeout(Duration::from_secs(30));
    let (proxy, index, bytes) = setup(retry(3, Duration::from_secs(10)), client).await;
    proxy.set(Fault::Delay(Duration::from_millis(200)));
    let ours = index.search(&q, 10, 4).await.unwrap();
    assert_same(&ours, &reference(&bytes, &q, 10, 4), "slow");
}
