use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// A byte-bounded cache of inverted lists, shared by every search of an index, and by
/// several indexes when the same `ListCache` is given to each (clones share it).
///
/// Searches hold their lists as reference-counted `Bytes`, so eviction never frees a
/// list a running search is scanning; such a list is freed when that search ends.
#[derive(Clone)]
pub struct ListCache {
    inner: moka::sync::Cache<(u64, u32), Bytes>,
    budget: u64,
}

/// Distinguishes the lists of different indexes in one cache.
static NEXT_INDEX: AtomicU64 = AtomicU64::new(0);

impl ListCache {
    /// A cache holding at most `budget` bytes of list data.
    pub fn new(budget: u64) -> ListCache {
        let inner = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|_, v: &Bytes| u32::try_from(v.len()).unwrap_or(u32::MAX))
            .build();
        ListCache { inner, budget }
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes held now (eviction runs in the background; see `sync`).
    pub fn bytes(&self) -> u64 {
        self.inner.weighted_size()
    }

    /// Finishes pending evictions, so `bytes` is exact.
    pub fn sync(&self) {
        self.inner.run_pending_tasks();
    }

    /// Drops every cached list.
    pub fn clear(&self) {
        self.inner.invalidate_all();
        self.inner.run_pending_tasks();
    }

    pub(crate) fn index_id() -> u64 {
        NEXT_INDEX.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn get(&self, index: u64, list: usize) -> Option<Bytes> {
        self.inner.get(&(index, list as u32))
    }

    pub(crate) fn insert(&self, index: u64, list: usize, bytes: Bytes) {
        self.inner.insert((index, list as u32), bytes);
    }
}

impl std::fmt::Debug for ListCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListCache").field("budget", &self.budget).field("bytes", &self.bytes()).finish()
    }
}
