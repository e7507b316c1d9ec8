//! What an index covers: the manifest written next to every index object (`x.faiss` →
//! `x.faiss.json`) by `build` or `attach`. It names the index object it describes (size,
//! ETag, date) and every data file version whose rows the index holds (path, size, ETag,
//! date, rows, and the position of its first row among the index's ids). A query searches
//! an index only over the files still in the version the manifest records.
//!
//! The index objects of a vector table are the one its 'index' option names, with the
//! deltas `build --update` wrote beside it (`x.delta-<n>.faiss`), or, for a folder
//! ('index' 'folder/'), every `*.faiss` under it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::common::{plan_err, DataFusionError, Result};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::registry::IndexLocation;

/// Names the format, so a manifest is never mistaken for another JSON file.
const FORMAT: &str = "datafusion-faiss manifest 1";

/// One version of one object: what a rewrite changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub size: u64,
    pub e_tag: Option<String>,
    /// RFC 3339.
    pub last_modified: String,
}

impl ObjectVersion {
    pub fn of(meta: &ObjectMeta) -> ObjectVersion {
        ObjectVersion { size: meta.size, e_tag: meta.e_tag.clone(), last_modified: meta.last_modified.to_rfc3339() }
    }

    /// Whether `meta` is this version: same size, and same ETag where both have one, else
    /// same date.
    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        self.size == meta.size
            && match (&self.e_tag, &meta.e_tag) {
                (Some(a), Some(b)) => a == b,
                _ => self.last_modified == meta.last_modified.to_rfc3339(),
            }
    }
}

/// A data file version whose rows an index holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The file's path in its store.
    pub path: String,
    pub version: ObjectVersion,
    pub rows: u64,
    /// For an index of row positions: the id of the file's first row.
    pub first: u64,
}

impl FileEntry {
    /// Whether `meta` is the file this entry records, as it was.
    pub fn matches(&self, meta: &ObjectMeta) -> bool {
        self.path == meta.location.as_ref() && self.version.matches(meta)
    }
}

/// What one index object was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The index object described; `None` in a sidecar of an earlier `build --per-file`,
    /// which describes the index written just before it.
    pub index: Option<ObjectVersion>,
    /// In position order.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The manifest of files `files` (with their rows), in path order, numbered as an
    /// index of row positions numbers them.
    pub fn of_files(index: &ObjectMeta, mut files: Vec<(ObjectMeta, u64)>) -> Manifest {
        files.sort_by(|a, b| a.0.location.cmp(&b.0.location));
        let mut first = 0;
        let files = files
            .into_iter()
            .map(|(meta, rows)| {
                let entry = FileEntry { path: meta.location.to_string(), version: ObjectVersion::of(&meta), rows, first };
                first += rows;
                entry
            })
            .collect();
        Manifest { index: Some(ObjectVersion::of(index)), files }
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    /// Whether this manifest describes `index` (with the manifest object `own`): the
    /// version it names, or, for an earlier sidecar, an index written before it.
    pub fn describes(&self, index: &ObjectMeta, own: &ObjectMeta) -> bool {
        match &self.index {
            Some(version) => version.matches(index),
            None => own.last_modified >= index.last_modified,
        }
    }

    pub fn to_json(&self) -> String {
        let version = |v: &ObjectVersion| {
            serde_json::json!({"size": v.size, "e_tag": v.e_tag, "last_modified": v.last_modified})
        };
        let files: Vec<_> = self
            .files
            .iter()
            .map(|f| {
                let mut v = version(&f.version);
                v["path"] = f.path.clone().into();
                v["rows"] = f.rows.into();
                v["first"] = f.first.into();
                v
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "format": FORMAT,
            "index": self.index.as_ref().map(version),
            "files": files,
        }))
        .expect("JSON of strings and numbers")
    }

    /// Parses a manifest, or a sidecar of an earlier `build --per-file` (one file, no
    /// index version); `at` names it in errors.
    pub fn from_json(text: &[u8], at: &str) -> Result<Manifest> {
        let bad = |what: &str| DataFusionError::Execution(format!("index manifest {at}: {what}"));
        let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(&e.to_string()))?;
        let text = |v: &serde_json::Value, k: &str| {
            v[k].as_str().map(str::to_string).ok_or_else(|| bad(&format!("no string '{k}'")))
        };
        let number = |v: &serde_json::Value, k: &str| v[k].as_u64().ok_or_else(|| bad(&format!("no number '{k}'")));
        let version = |v: &serde_json::Value| -> Result<ObjectVersion> {
            Ok(ObjectVersion {
                size: number(v, "size")?,
                e_tag: v["e_tag"].as_str().map(str::to_string),
                last_modified: text(v, "last_modified")?,
            })
        };
        let entry = |v: &serde_json::Value, first: u64| -> Result<FileEntry> {
            Ok(FileEntry { path: text(v, "path")?, version: version(v)?, rows: number(v, "rows")?, first })
        };
        if v.get("format").is_none() && v.get("path").is_some() {
            return Ok(Manifest { index: None, files: vec![entry(&v, 0)?] });
        }
        if v["format"] != FORMAT {
            return Err(bad(&format!("format {} (expected \"{FORMAT}\")", v["format"])));
        }
        let index = match &v["index"] {
            serde_json::Value::Null => None,
            index => Some(version(index)?),
        };
        let files = v["files"].as_array().ok_or_else(|| bad("no array 'files'"))?;
        let files = files.iter().map(|f| entry(f, number(f, "first")?)).collect::<Result<Vec<_>>>()?;
        Ok(Manifest { index, files })
    }

    /// Writes this manifest next to the index at `index`, as one PUT: a reader sees the
    /// old manifest or this one, never part of one.
    pub async fn publish(&self, store: &dyn ObjectStore, index: &Path) -> Result<()> {
        let at = manifest_path(index);
        store.put(&at, self.to_json().into()).await.map_err(|e| {
            DataFusionError::External(format!("writing index manifest {at}: {e}").into())
        })?;
        Ok(())
    }
}

/// The manifest of the index at `index`.
pub fn manifest_path(index: &Path) -> Path {
    Path::from(format!("{index}.json"))
}

/// The index path of the data file `file` (relative to the table's folder) in a folder of
/// per-file indexes: its name with `.faiss` for the Parquet extension, under `folder`.
pub fn shard_path(folder: &Path, file: &str) -> Path {
    let stem = file.strip_suffix(".parquet").unwrap_or(file);
    Path::from(format!("{}/{stem}.faiss", folder.as_ref().trim_end_matches('/')).trim_start_matches('/'))
}

/// The name prefix of the deltas of the index named `name`: `x.faiss` → `x.delta-`.
pub fn delta_prefix(name: &str) -> String {
    format!("{}.delta-", name.strip_suffix(".faiss").unwrap_or(name))
}

/// One index object of a vector table.
#[derive(Debug, Clone)]
pub(crate) struct IndexObject {
    pub location: IndexLocation,
    pub meta: ObjectMeta,
    /// Its manifest object, if there is one.
    pub manifest: Option<ObjectMeta>,
}

/// Where a vector table's indexes are, from its 'index' option.
#[derive(Debug, Clone)]
pub(crate) struct IndexSet {
    url: ListingTableUrl,
    store: Arc<dyn ObjectStore>,
}

impl IndexSet {
    pub fn new(option: &str, runtime: &RuntimeEnv) -> Result<IndexSet> {
        let url = ListingTableUrl::parse(option)?;
        let store = runtime.object_store(url.object_store())?;
        Ok(IndexSet { url, store })
    }

    pub fn prefix(&self) -> &Path {
        self.url.prefix()
    }

    /// Whether the option names a folder of indexes.
    pub fn is_folder(&self) -> bool {
        self.url.is_collection()
    }

    /// The index objects there now: the named one first, then its deltas by name; or
    /// every `*.faiss` under the folder, by path. One LIST.
    pub async fn list(&self, runtime: &RuntimeEnv) -> Result<Vec<IndexObject>> {
        let prefix = self.url.prefix();
        let listed: Vec<ObjectMeta> = match self.is_folder() {
            true => self.store.list(Some(prefix)).try_collect().await?,
            false => {
                let parent: Path = prefix.parts().take(prefix.parts().count().saturating_sub(1)).collect();
                self.store.list_with_delimiter(Some(&parent)).await?.objects
            }
        };
        let mut by_path: HashMap<Path, ObjectMeta> = listed.into_iter().map(|m| (m.location.clone(), m)).collect();
        let mut indexes: Vec<Path> = match self.is_folder() {
            true => by_path.keys().filter(|p| p.as_ref().ends_with(".faiss")).cloned().collect(),
            false => {
                let name = prefix.filename().unwrap_or_default();
                let deltas = delta_prefix(name);
                let is_delta = |p: &Path| {
                    p.filename().is_some_and(|f| f.starts_with(&deltas) && f.ends_with(".faiss"))
                };
                by_path.keys().filter(|p| is_delta(p)).cloned().collect()
            }
        };
        indexes.sort();
        if !self.is_folder() {
            match by_path.contains_key(prefix) {
                true => indexes.insert(0, prefix.clone()),
                false => return plan_err!("FAISS index {}: not found", self.url),
            }
        }
        let root = self.url.object_store();
        indexes
            .into_iter()
            .map(|path| {
                let manifest = by_path.remove(&manifest_path(&path));
                let meta = by_path.get(&path).cloned().expect("listed");
                let location = IndexLocation::resolve(&format!("{}{path}", root.as_str()), runtime)?;
                Ok(IndexObject { location, meta, manifest })
            })
            .collect()
    }

    /// The manifest of `index` if it describes that object (one that does not, the index
    /// replaced since or being published, is as good as none).
    pub async fn describing(&self, index: &IndexObject) -> Result<Option<Arc<Manifest>>> {
        match &index.manifest {
            Some(at) => Ok(Some(self.manifest(at).await?).filter(|m| m.describes(&index.meta, at))),
            None => Ok(None),
        }
    }

    /// The manifest object `at`, from the cache while that version of it is read.
    pub async fn manifest(&self, at: &ObjectMeta) -> Result<Arc<Manifest>> {
        let key = (Arc::as_ptr(&self.store) as *const () as usize, at.location.to_string());
        let version = ObjectVersion::of(at);
        if let Some((seen, manifest)) = manifests().lock().expect("manifest cache poisoned").get(&key) {
            if *seen == version {
                return Ok(manifest.clone());
            }
        }
        let bytes = self.store.get(&at.location).await?.bytes().await?;
        let manifest = Arc::new(Manifest::from_json(&bytes, &format!("{}{}", self.url.object_store().as_str(), at.location))?);
        manifests().lock().expect("manifest cache poisoned").insert(key, (version, manifest.clone()));
        Ok(manifest)
    }
}

/// The Parquet files `url` names now (the file, or those under the folder), in path
/// order, with their URLs.
pub(crate) async fn parquet_files(
    store: &Arc<dyn ObjectStore>,
    url: &ListingTableUrl,
    extension: &str,
) -> Result<Vec<(String, ObjectMeta)>> {
    let listed: Vec<ObjectMeta> = match url.is_collection() {
        true => store.list(Some(url.prefix())).try_collect().await?,
        false => vec![store.head(url.prefix()).await?],
    };
    let mut files: Vec<(String, ObjectMeta)> = listed
        .into_iter()
        .filter(|m| !url.is_collection() || (m.location.as_ref().ends_with(extension) && url.contains(&m.location, true)))
        .map(|m| (format!("{}{}", url.object_store().as_str(), m.location), m))
        .collect();
    files.sort_by(|a, b| a.1.location.cmp(&b.1.location));
    Ok(files)
}

/// Records the Parquet files of `table` (a file or folder URL) as they are now as what the
/// index at `index` was built from, and returns the manifest written next to it. For an
/// index built from exactly those rows (in path order, rows in file order, for an index of
/// positions): by `build`, or by pip's faiss-cpu just before. Fails when the index holds
/// another number of vectors than the files have rows.
pub async fn attach(state: &SessionState, table: &str, index: &str) -> Result<Manifest> {
    let url = ListingTableUrl::parse(table)?;
    let store = state.runtime_env().object_store(url.object_store())?;
    let files = parquet_files(&store, &url, ".parquet").await?;
    if files.is_empty() {
        return plan_err!("attach: no Parquet files at {table}");
    }
    record(state, &store, files.into_iter().map(|(_, m)| m).collect(), index).await
}

/// [`attach`] for the files `files` of `store`.
pub async fn record(state: &SessionState, store: &Arc<dyn ObjectStore>, files: Vec<ObjectMeta>, index: &str) -> Result<Manifest> {
    let runtime = state.runtime_env();
    let io = Arc::new(super::rows::TableIo::default());
    let mut with_rows = vec![];
    for meta in files {
        let footer = super::rows::footer::footer(store, &meta, &io, &[]).await?;
        with_rows.push((meta, footer.rows()));
    }
    let at = IndexLocation::resolve(index, runtime)?;
    let settings = super::config::FaissConfig::from_options(state.config_options());
    let opened = super::registry::open_current(&at, settings.cache_bytes(), settings.disk().as_ref()).await.map_err(|e| super::table::index_error(&at, e))?;
    let meta = at.head().await?;
    let manifest = Manifest::of_files(&meta, with_rows);
    let (ntotal, rows) = (opened.info().ntotal, manifest.rows());
    if ntotal != rows {
        return plan_err!(
            "attach: index {index} holds {ntotal} vectors but the {} files given have {rows} rows: it was not built from exactly these rows",
            manifest.files.len()
        );
    }
    manifest.publish(at.store().as_ref(), at.path()).await?;
    Ok(manifest)
}

/// The Parquet files of `table` now that no index of the set `index` names (it and its
/// deltas) covers: what `build --update` indexes. Fails when the named index has no
/// manifest: what it covers is unknown.
pub async fn uncovered(state: &SessionState, table: &str, index: &str) -> Result<(Arc<dyn ObjectStore>, Vec<ObjectMeta>)> {
    let runtime = state.runtime_env();
    let url = ListingTableUrl::parse(table)?;
    let store = runtime.object_store(url.object_store())?;
    let files = parquet_files(&store, &url, ".parquet").await?;
    let set = IndexSet::new(index, runtime)?;
    let mut covered = std::collections::HashSet::new();
    for (n, object) in set.list(runtime).await?.into_iter().enumerate() {
        let Some(manifest) = set.describing(&object).await? else {
            if n == 0 {
                return plan_err!("index {index} has no manifest describing it, so what it covers is unknown: record it with `attach` (if it was built from the table as it is) or build it anew");
            }
            continue;
        };
        for (i, (_, meta)) in files.iter().enumerate() {
            if manifest.files.iter().any(|f| f.matches(meta)) {
                covered.insert(i);
            }
        }
    }
    let left = files.into_iter().enumerate().filter(|(i, _)| !covered.contains(i)).map(|(_, (_, m))| m).collect();
    Ok((store, left))
}

/// A new delta's URL next to the index at `index`: `x.faiss` → `x.delta-<ms since 1970>.faiss`,
/// so that deltas sort by age.
pub fn next_delta(index: &str) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let (folder, name) = index.rsplit_once('/').unwrap_or(("", index));
    let name = format!("{}{ms:013}.faiss", delta_prefix(name));
    match folder.is_empty() && !index.starts_with('/') {
        true => name,
        false => format!("{folder}/{name}"),
    }
}

/// Manifests read, by store and path, with the version of the object they were read from.
type Manifests = Mutex<HashMap<(usize, String), (ObjectVersion, Arc<Manifest>)>>;

fn manifests() -> &'static Manifests {
    static CACHE: OnceLock<Manifests> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}
