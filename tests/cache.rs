//! The list cache: warm searches issue no GETs, concurrent searches share GETs
//! (single-flight), and the cache stays within its byte budget.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use datafusion_faiss::{IvfIndex, ListCache, Metric, OpenOptions};
use object_store::throttle::{ThrottleConfig, ThrottledStore};
use object_store::ObjectStore;

const D: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_search_is_served_from_cache() {
    let bytes = build_ours(&clustered(4000, D, 12, 31), D, "IVF64,Flat", Metric::L2).await;
    let (store, path) = memory_store_with(&bytes, "warm.faiss").await;
    let index = IvfIndex::open(store, &path).await.unwrap();
    let q = clustered(4, D, 12, 32);
    let cold = index.search(&q, 10, 8).await.unwrap();
    assert!(cold.stats.fetch.gets > 0);
    assert_eq!(cold.stats.fetch.waves, 1, "{:?}", cold.stats);
    assert_eq!(cold.stats.fetch.cache_misses, cold.stats.lists_probed);
    let warm = index.search(&q, 10, 8).await.unwrap();
    assert_eq!(warm.stats.fetch.gets, 0);
    assert_eq!(warm.stats.fetch.waves, 0);
    assert_eq!(warm.stats.fetch.cache_hits, warm.stats.lists_probed);
    assert_eq!(warm.stats.fetch.bytes_from_cache, cold.stats.fetch.bytes);
    assert_eq!(warm.ids, cold.ids);
    assert_eq!(warm.distances, cold.distances);
    let totals = index.fetch_totals();
    assert_eq!(totals.gets, cold.stats.fetch.gets);
    assert_eq!(totals.cache_hits, warm.stats.lists_probed);

    index.cache().unwrap().clear();
    let again = index.search(&q, 10, 8).await.unwrap();
    assert_eq!(again.stats.fetch.gets, cold.stats.fetch.gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_searches_share_gets_within_budget() {
    let bytes = build_ours(&clustered(6000, D, 12, 33), D, "IVF64,SQ8", Metric::L2).await;
    let (inner, path) = memory_store_with(&bytes, "shared.faiss").await;
    // A slow store, so all searches are in flight together.
    let config = ThrottleConfig { wait_get_per_call: Duration::from_millis(30), ..Default::default() };
    let store: Arc<dyn ObjectStore> = Arc::new(ThrottledStore::new(inner, config));
    concurrent_within_budget(store, &path, bytes).await;
}

#[tokio::test]
async fn indexes_sharing_a_cache_do_not_mix_lists() {
    let x = clustered(3000, D, 12, 35);
    let a = build_ours(&x, D, "IVF32,Flat", Metric::L2).await;
    let b = build_ours(&x, D, "IVF32,SQ8", Metric::L2).await;
    let cache = ListCache::new(64 << 20);
    let open = |bytes: Vec<u8>, name: &'static str| {
        let cache = cache.clone();
        async move {
            let (store, path) = memory_store_with(&bytes, name).await;
            IvfIndex::open_with(store, &path, OpenOptions { cache: Some(cache), ..Default::default() }).await.unwrap()
        }
    };
    let (ia, ib) = (open(a.clone(), "a.faiss").await, open(b.clone(), "b.faiss").await);
    let q = clustered(3, D, 12, 36);
    for _ in 0..2 {
        assert_same(&ia.search(&q, 10, 8).await.unwrap(), &reference(&a, &q, 10, 8), "a");
        assert_same(&ib.search(&q, 10, 8).await.unwrap(), &reference(&b, &q, 10, 8), "b");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_follow_the_in_flight_bound() {
    let bytes = build_ours(&clustered(4000, D, 12, 37), D, "IVF64,Flat", Metric::L2).await;
    let (store, path) = memory_store_with(&bytes, "waves.faiss").await;
    let index =
        IvfIndex::open_with(store, &path, OpenOptions { max_in_flight: 3, ..Default::default() }).await.unwrap();
    assert_eq!(index.open_stats().waves, index.open_stats().gets);
    let q = clustered(8, D, 12, 38);
    let cold = index.search(&q, 10, 16).await.unwrap();
    let f = cold.stats.fetch;
    assert!(f.gets > 3, "{f:?}");
    assert_eq!(f.waves, f.gets.div_ceil(3), "{f:?}");
    assert_eq!(index.fetch_totals().waves, f.waves);
}
