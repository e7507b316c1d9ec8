//! The disk tier under the memory caches: index headers, lists, Parquet footers and key
//! maps kept in a folder of the local disk, so that a new process (a CLI run, an
//! executor, a restart) does not read them from the store again.
//!
//! Built on `cacache`: entries are written to a temporary file and renamed into place,
//! and every read checks the content against the hash its index entry recorded, so
//! several processes can share one folder, and a truncated or altered file is a miss
//! (then written anew), never wrong bytes. Keys name the object's version (ETag, size,
//! mtime): a changed object is another key. Eviction drops the oldest entries once
//! the folder holds more than its budget.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

/// A disk cache folder with its byte budget. Clones share it.
#[derive(Clone)]
pub struct DiskCache {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    budget: u64,
    /// Bytes written since the folder's size was last summed (starting high: it is
    /// summed at the first write).
    written: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl DiskCache {
    /// The cache in `dir` (created when first written), holding about `budget` bytes.
    /// One instance per folder in a process, so its counters and budget are shared.
    pub fn open(dir: impl Into<PathBuf>, budget: u64) -> DiskCache {
        static OPEN: OnceLock<Mutex<HashMap<PathBuf, DiskCache>>> = OnceLock::new();
        let dir = dir.into();
        let mut open = OPEN.get_or_init(Default::default).lock().expect("disk caches poisoned");
        open.entry(dir.clone())
            .or_insert_with(|| DiskCache {
                inner: Arc::new(Inner {
                    dir,
                    budget,
                    written: AtomicU64::new(u64::MAX / 2),
                    hits: AtomicU64::new(0),
                    misses: AtomicU64::new(0),
                }),
            })
            .clone()
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.inner.dir
    }

    pub fn budget(&self) -> u64 {
        self.inner.budget
    }

    /// Entries found, and not found (or found damaged), since the process began.
    pub fn counts(&self) -> (u64, u64) {
        (self.inner.hits.load(Ordering::Relaxed), self.inner.misses.load(Ordering::Relaxed))
    }

    /// The bytes under `key`; `None` when absent or damaged (the damaged entry is
    /// dropped). Blocking: call from a blocking thread.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        let found = match cacache::read_sync(&self.inner.dir, key) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(cacache::Error::EntryNotFound(..)) => None,
            Err(_) => {
                let _ = cacache::remove_sync(&self.inner.dir, key);
                None
            }
        };
        let counter = if found.is_some() { &self.inner.hits } else { &self.inner.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores `bytes` under `key`. A failure (disk full, folder not writable) only
    /// loses the entry. Blocking: call from a blocking thread.
    pub fn put(&self, key: &str, bytes: &[u8]) {
        if cacache::write_sync_with_algo(cacache::Algorithm::Xxh3, &self.inner.dir, key, bytes).is_err() {
            return;
        }
        let written = self.inner.written.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
        if written > self.inner.budget / 8 {
            self.inner.written.store(0, Ordering::Relaxed);
            self.evict();
        }
    }

    /// Async forms of [`get`](Self::get) and [`put`](Self::put), on a blocking thread.
    pub async fn load(&self, key: String) -> Option<Bytes> {
        let cache = self.clone();
        tokio::task::spawn_blocking(move || cache.get(&key)).await.ok().flatten()
    }

    pub async fn store(&self, key: String, bytes: Bytes) {
        let cache = self.clone();
        let _ = tokio::task::spawn_blocking(move || cache.put(&key, &bytes)).await;
    }

    /// Drops the oldest entries (by time written) until the folder holds at most 90 %
    /// of the budget.
    fn evict(&self) {
        let dir = &self.inner.dir;
        let mut entries: Vec<cacache::Metadata> = cacache::list_sync(dir).filter_map(|e| e.ok()).collect();
        let mut total: u64 = entries.iter().map(|e| e.size as u64).sum();
        if total <= self.inner.budget {
            return;
        }
        entries.sort_by_key(|e| e.time);
        for e in entries {
            if total <= self.inner.budget / 10 * 9 {
                break;
            }
            let _ = cacache::remove_sync(dir, &e.key);
            let _ = cacache::remove_hash_sync(dir, &e.integrity);
            total = total.saturating_sub(e.size as u64);
        }
    }
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache").field("dir", &self.inner.dir).field("budget", &self.inner.budget).finish()
    }
}

/// The part of a disk key that names one version of an object: its URL, size, ETag
/// and modification time.
pub fn version_key(url: &str, meta: &object_store::ObjectMeta) -> String {
    format!(
        "{url}|{}|{}|{}",
        meta.size,
        meta.e_tag.as_deref().unwrap_or("-"),
        meta.last_modified.timestamp_nanos_opt().unwrap_or(0)
    )
}
