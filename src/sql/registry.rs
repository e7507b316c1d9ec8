//! The process-wide set of open indexes: each index object is opened once per process
//! (per store and URL) and shared by every table and query that names it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectStore;

use crate::{DiskCache, Error, IvfIndex, ListCache, OpenOptions};

/// Where an index lives: its URL and the store DataFusion has registered for it.
#[derive(Clone)]
pub struct IndexLocation {
    url: ListingTableUrl,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for IndexLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.url.as_str())
    }
}

impl IndexLocation {
    /// Resolves `url` (a URL or a local path) against the stores registered in `runtime`.
    pub fn resolve(url: &str, runtime: &RuntimeEnv) -> datafusion::common::Result<IndexLocation> {
        let url = ListingTableUrl::parse(url)?;
        let store = runtime.object_store(url.object_store())?;
        Ok(IndexLocation { url, store })
    }

    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The index object's path in its store.
    pub fn path(&self) -> &object_store::path::Path {
        self.url.prefix()
    }

    /// The index object's metadata now (one HEAD, or a `stat`).
    pub async fn head(&self) -> object_store::Result<object_store::ObjectMeta> {
        use object_store::ObjectStoreExt;
        self.store.head(self.url.prefix()).await
    }

    /// A `file://` index is memory-mapped rather than fetched by range.
    fn local_file(&self) -> Option<std::path::PathBuf> {
        (self.url.scheme() == "file").then(|| std::path::PathBuf::from(format!("/{}", self.url.prefix())))
    }

    fn key(&self) -> (String, usize) {
        (self.url.as_str().to_string(), Arc::as_ptr(&self.store) as *const () as usize)
    }
}

/// The entry holds the store so its address (part of the key) is never reused.
type Entries = HashMap<(String, usize), (Arc<dyn ObjectStore>, Arc<IvfIndex>)>;

fn entries() -> &'static Mutex<Entries> {
    static ENTRIES: OnceLock<Mutex<Entries>> = OnceLock::new();
    ENTRIES.get_or_init(Default::default)
}

/// The open index at `at`, opening it (header only) if no query has yet.
pub async fn open(at: &IndexLocation, cache_bytes: u64, disk: Option<&DiskCache>) -> crate::Result<Arc<IvfIndex>> {
    Ok(opened(at, cache_bytes, disk).await?.0)
}

/// The open index, and whether it was opened just now (its header read this moment).
async fn opened(at: &IndexLocation, cache_bytes: u64, disk: Option<&DiskCache>) -> crate::Result<(Arc<IvfIndex>, bool)> {
    if let Some((_, index)) = entries().lock().expect("index registry poisoned").get(&at.key()) {
        return Ok((index.clone(), false));
    }
    // Two first queries may both open; the first to finish is kept.
    let opened = Arc::new(match at.local_file() {
        Some(file) => IvfIndex::open_file(file).await?,
        None => {
            let options =
                OpenOptions { cache: Some(ListCache::new(cache_bytes)), disk: disk.cloned(), ..Default::default() };
            IvfIndex::open_with(at.store.clone(), &at.url.prefix().clone(), options).await?
        }
    });
    let mut entries = entries().lock().expect("index registry poisoned");
    Ok((entries.entry(at.key()).or_insert((at.store.clone(), opened)).1.clone(), true))
}

/// Like [`open`], but an index whose object was replaced since it was opened (or that
/// is gone) is dropped and opened again, so the caller gets what the path holds now.
pub async fn open_current(at: &IndexLocation, cache_bytes: u64, disk: Option<&DiskCache>) -> crate::Result<Arc<IvfIndex>> {
    let (index, fresh) = opened(at, cache_bytes, disk).await?;
    if fresh {
        return Ok(index);
    }
    match index.check().await {
        Err(e) if is_changed(&e) => {
            forget(at, &index);
            open(at, cache_bytes, disk).await
        }
        r => r.map(|()| index),
    }
}

/// Drops `index` from the registry after it reported `Error::Changed`, so the next
/// `open` reads the new object's header.
pub fn forget(at: &IndexLocation, index: &Arc<IvfIndex>) {
    let mut entries = entries().lock().expect("index registry poisoned");
    if entries.get(&at.key()).is_some_and(|(_, cached)| Arc::ptr_eq(cached, index)) {
        entries.remove(&at.key());
    }
}

/// True for the error a replaced index object gives.
pub fn is_changed(e: &Error) -> bool {
    matches!(e, Error::Changed { .. })
}
