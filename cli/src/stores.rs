//! The stores every URL of the binary goes through ([`EnvStores`]), and the session it runs SQL in.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_faiss::stores::EnvStores;
use datafusion_faiss::IvfIndex;
use object_store::path::Path;
use object_store::ObjectStore;
use url::Url;

pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

static STORES: LazyLock<Arc<EnvStores>> = LazyLock::new(Default::default);

/// The stores every command goes through, for a front end to share (and add to).
pub fn stores() -> Arc<EnvStores> {
    STORES.clone()
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
