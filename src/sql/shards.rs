//! Tables sharded by data file: one FAISS index per Parquet file, found by name
//! (`part-0.parquet` → `<index folder>/part-0.faiss`), each with a sidecar
//! (`part-0.faiss.json`) recording the version of the file it was built from.
//!
//! When a query is planned, every data file of the table is either searched through its
//! index, if the index is there and was built from the file as it is now, or read whole
//! and ranked exactly: a file added or rewritten since the build is never missed, and
//! never looked up with row positions of another version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::catalog::TableProvider;
use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::SessionState;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::registry::{self, IndexLocation};
use super::table::{index_error, VectorTable};

/// What the index of one data file was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSource {
    /// The data file's path in its store.
    pub path: String,
    pub size: u64,
    pub e_tag: Option<String>,
    /// RFC 3339.
    pub last_modified: String,
    /// Rows the index was built from.
    pub rows: u64,
}

impl ShardSource {
    pub fn of(meta: &ObjectMeta, rows: u64) -> ShardSource {
        ShardSource {
            path: meta.location.to_string(),
            size: meta.size,
            e_tag: meta.e_tag.clone(),
            last_modified: meta.last_modified.to_rfc3339(),
            rows,
        }
    }

    /// Whether `meta` is the version of the file this was taken from.
    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        self.path == meta.location.as_ref()
            && self.size == meta.size
            && self.last_modified == meta.last_modified.to_rfc3339()
            && (self.e_tag.is_none() || meta.e_tag.is_none() || self.e_tag == meta.e_tag)
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "path": self.path,
            "size": self.size,
            "e_tag": self.e_tag,
            "last_modified": self.last_modified,
            "rows": self.rows,
        })
        .to_string()
    }

    pub fn from_json(text: &[u8], at: &str) -> Result<ShardSource> {
        let bad = |what: &str| DataFusionError::Execution(format!("shard sidecar {at}: {what}"));
        let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(&e.to_string()))?;
        let text = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| bad(&format!("no string '{k}'")));
        let number = |k: &str| v[k].as_u64().ok_or_else(|| bad(&format!("no number '{k}'")));
        Ok(ShardSource {
            path: text("path")?,
            size: number("size")?,
            e_tag: v["e_tag"].as_str().map(str::to_string),
            last_modified: text("last_modified")?,
            rows: number("rows")?,
        })
    }
}

/// The index path of the data file `file` (relative to the table's folder): its name with
/// `.faiss` for the Parquet extension, under `folder`.
pub fn shard_path(folder: &Path, file: &str) -> Path {
    let stem = file.strip_suffix(".parquet").unwrap_or(file);
    Path::from(format!("{}/{stem}.faiss", folder.as_ref().trim_end_matches('/')).trim_start_matches('/'))
}

/// The sidecar of the index at `index`.
pub fn sidecar_path(index: &Path) -> Path {
    Path::from(format!("{index}.json"))
}

/// The folder of a sharded table's indexes.
#[derive(Debug, Clone)]
pub(crate) struct ShardFolder {
    pub url: ListingTableUrl,
    pub store: Arc<dyn ObjectStore>,
}

impl ShardFolder {
    /// Every object under the folder, by path.
    async fn list(&self) -> Result<HashMap<Path, ObjectMeta>> {
        let prefix = self.url.prefix();
        let listed: Vec<ObjectMeta> = self.store.list(Some(prefix)).try_collect().await?;
        Ok(listed.into_iter().map(|m| (m.location.clone(), m)).collect())
    }

    /// The first index under the folder, to learn dimension and metric from.
    pub async fn first(&self, runtime: &datafusion::execution::runtime_env::RuntimeEnv) -> Result<IndexLocation> {
        let mut indexes: Vec<Path> =
            self.list().await?.into_keys().filter(|p| p.as_ref().ends_with(".faiss")).collect();
        indexes.sort();
        match indexes.first() {
            Some(p) => IndexLocation::resolve(&self.url_of(p), runtime),
            None => plan_err!("no FAISS index (*.faiss) under {}: build them with `datafusion-faiss build --per-file`", self.url),
        }
    }

    fn url_of(&self, path: &Path) -> String {
        let root = self.url.object_store();
        format!("{}{path}", root.as_str())
    }
}

/// One partition of an index scan: a shard searched through its index, or the files
/// without a current index, read whole (`exact`).
#[derive(Debug, Clone)]
pub struct Part {
    pub table: Arc<VectorTable>,
    pub exact: bool,
}

/// Sidecars read, by path, with the version of the sidecar object they were read from.
type Sidecars = Mutex<HashMap<String, (String, ShardSource)>>;

fn sidecars() -> &'static Sidecars {
    static CACHE: OnceLock<Sidecars> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The parts `table` is searched as now: itself for a single index; per data file its
/// shard or, for files without a current index, one exact part.
pub(crate) async fn parts(table: &Arc<VectorTable>, state: &SessionState, cache_bytes: u64) -> Result<Vec<Part>> {
    let Some(folder) = table.shard_folder() else {
        return Ok(vec![Part { table: table.clone(), exact: false }]);
    };
    let Some(listing) = (table.base().as_ref() as &dyn std::any::Any).downcast_ref::<ListingTable>() else {
        return plan_err!("a table sharded by file needs a base table of Parquet files");
    };
    // Listed from the store, not through DataFusion's listing cache (which keeps a file's
    // size and date from its first listing): a rewritten file must be seen as rewritten.
    let (files, indexes) = futures::join!(data_files(listing, state), folder.list());
    let (files, indexes) = (files?, indexes?);
    let root = listing.table_paths().first().map(|u| u.prefix().clone()).unwrap_or_default();
    let mut shards = vec![];
    let mut unindexed = vec![];
    for (url, meta) in &files {
        let relative = meta.location.prefix_match(&root).map(|p| p.map(|x| x.as_ref().to_string()).collect::<Vec<_>>().join("/"));
        let relative = relative.unwrap_or_else(|| meta.location.filename().unwrap_or_default().to_string());
        let index = shard_path(folder.url.prefix(), &relative);
        let current = match indexes.get(&index) {
            Some(index_meta) => current(&folder, index_meta, indexes.get(&sidecar_path(&index)), meta).await?,
            None => false,
        };
        match current {
            true => shards.push((url.clone(), folder.url_of(&index))),
            false => unindexed.push(url.clone()),
        }
    }
    let runtime = state.runtime_env();
    let config = |urls: Vec<String>| -> Result<Arc<dyn TableProvider>> {
        let urls = urls.iter().map(|u| ListingTableUrl::parse(u)).collect::<Result<Vec<_>>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(listing.options().clone())
            .with_schema(listing.schema());
        Ok(Arc::new(ListingTable::try_new(config)?))
    };
    let mut parts = vec![];
    for (data, index) in shards {
        let location = IndexLocation::resolve(&index, runtime)?;
        let opened = registry::open(&location, cache_bytes).await.map_err(|e| index_error(&location, e))?;
        let shard = table.shard(config(vec![data])?, location, opened.info().clone())?;
        parts.push(Part { table: Arc::new(shard), exact: false });
    }
    if !unindexed.is_empty() {
        let rest = table.shard(config(unindexed)?, table.location().clone(), table.index_info().clone())?;
        parts.push(Part { table: Arc::new(rest), exact: true });
    }
    Ok(parts)
}

/// The table's data files as the store lists them now, in path order, with their URLs.
async fn data_files(listing: &ListingTable, state: &SessionState) -> Result<Vec<(String, ObjectMeta)>> {
    let extension = &listing.options().file_extension;
    let mut files = vec![];
    for url in listing.table_paths() {
        let store = state.runtime_env().object_store(url.object_store())?;
        let listed: Vec<ObjectMeta> = store.list(Some(url.prefix())).try_collect().await?;
        for meta in listed {
            if meta.location.as_ref().ends_with(extension.as_str()) && url.contains(&meta.location, true) {
                files.push((format!("{}{}", url.object_store().as_str(), meta.location), meta));
            }
        }
    }
    files.sort_by(|a, b| a.1.location.cmp(&b.1.location));
    files.dedup_by(|a, b| a.1.location == b.1.location);
    Ok(files)
}

/// Whether the index `index` was built from `data` as it is now: as its sidecar records,
/// or, without one, written after the file was.
async fn current(
    folder: &ShardFolder,
    index: &ObjectMeta,
    sidecar: Option<&ObjectMeta>,
    data: &ObjectMeta,
) -> Result<bool> {
    let Some(sidecar) = sidecar else { return Ok(index.last_modified >= data.last_modified) };
    let key = sidecar.location.to_string();
    let version = format!("{:?} {} {}", sidecar.e_tag, sidecar.last_modified, sidecar.size);
    if let Some((seen, source)) = sidecars().lock().expect("sidecar cache poisoned").get(&key) {
        if *seen == version {
            return Ok(source.matches(data));
        }
    }
    let bytes = folder.store.get(&sidecar.location).await?.bytes().await?;
    let source = ShardSource::from_json(&bytes, &folder.url_of(&sidecar.location))?;
    let matches = source.matches(data);
    sidecars().lock().expect("sidecar cache poisoned").insert(key, (version, source));
    Ok(matches)
}
