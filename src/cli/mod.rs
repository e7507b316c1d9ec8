//! Subcommands of the `datafusion-faiss` binary.

pub mod build;
pub mod demo;
pub mod inspect;
pub mod query;
mod sql;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_faiss::IvfIndex;
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The stores of every URL the binary meets, made on first use: `s3://bucket` from the
/// `AWS_*` environment variables (endpoint, region, keys, allow-http) as datafusion-cli
/// does, `memory://name` as one in-memory store per name for the life of the process.
/// One registry serves the subcommands and DataFusion, so `build` into `memory://x` and
/// SQL over `memory://x` in the same process see the same objects.
#[derive(Debug, Default)]
pub struct Stores {
    registered: DefaultObjectStoreRegistry,
    made: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

static STORES: LazyLock<Arc<Stores>> = LazyLock::new(Default::default);

impl Stores {
    fn make(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let host = url.host_str().unwrap_or_default();
        let key = format!("{}://{host}", url.scheme());
        let mut made = self.made.lock().expect("store registry poisoned");
        if let Some(store) = made.get(&key) {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_bucket_name(host)
                    .build()
                    .map_err(|e| DataFusionError::Configuration(format!("{key}: {e}")))?,
            ),
            "memory" => Arc::new(InMemory::new()),
            other => {
                return Err(DataFusionError::Configuration(format!(
                    "{url}: no object store for scheme {other:?} (use a local path, file://, s3:// or memory://)"
                )))
            }
        };
        made.insert(key, store.clone());
        Ok(store)
    }
}

impl ObjectStoreRegistry for Stores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.registered.get_store(url).or_else(|_| self.make(url))
    }
}

/// A session with the extension registered and the binary's stores.
pub fn context() -> CliResult<SessionContext> {
    let runtime = RuntimeEnvBuilder::new().with_object_store_registry(STORES.clone()).build_arc()?;
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
    datafusion_faiss::sql::register_all(&ctx);
    Ok(ctx)
}

/// A URL as the user wrote it: `s3://bucket/key`, `memory://name/key`, `file:///path` or a
/// plain (relative) path.
pub fn parse_url(url: &str) -> CliResult<Url> {
    if url.contains("://") {
        return Url::parse(url).map_err(|e| format!("{url}: {e}").into());
    }
    let file = std::path::absolute(url)?;
    let mut parsed = Url::from_file_path(&file).map_err(|()| format!("{url}: not a valid path"))?;
    if url.ends_with('/') && !parsed.path().ends_with('/') {
        parsed.set_path(&format!("{}/", parsed.path()));
    }
    Ok(parsed)
}

/// One object: its store, its path in the store, and for local files the file.
pub struct Location {
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// Set for local files, which are opened by memory map.
    pub file: Option<PathBuf>,
}

impl Location {
    pub fn parse(url: &str) -> CliResult<Location> {
        let parsed = parse_url(url)?;
        let store = STORES.get_store(&parsed)?;
        let (path, file) = if parsed.scheme() == "file" {
            let file = parsed.to_file_path().map_err(|()| format!("{url}: not a local path"))?;
            (Path::from_absolute_path(&file)?, Some(file))
        } else {
            (Path::from_url_path(parsed.path())?, None)
        };
        if path.as_ref().is_empty() {
            return Err(format!("{url}: names a bucket or store, not an object").into());
        }
        Ok(Location { url: url.to_string(), store, path, file })
    }

    /// Opens the index header-only (a local file by memory map).
    pub async fn open(&self) -> datafusion_faiss::Result<IvfIndex> {
        match &self.file {
            Some(file) => IvfIndex::open_file(file).await,
            None => IvfIndex::open(self.store.clone(), &self.path).await,
        }
    }
}
