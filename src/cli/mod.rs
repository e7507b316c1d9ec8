//! Subcommands of the `datafusion-faiss` binary.

pub mod demo;
pub mod inspect;
pub mod query;
mod sql;

use std::path::PathBuf;
use std::sync::Arc;

use datafusion_faiss::IvfIndex;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Where an index lives: `s3://bucket/key` (configured from the `AWS_*` environment
/// variables: endpoint, region, keys, allow-http), `memory://key`, or a local path.
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// Set for local files, which are opened by memory map.
    pub file: Option<PathBuf>,
}

impl Location {
    pub fn parse(url: &str) -> CliResult<Location> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').ok_or_else(|| format!("{url}: expected s3://bucket/key"))?;
            let store =
                AmazonS3Builder::from_env().with_bucket_name(bucket).build().map_err(|e| format!("{url}: {e}"))?;
            return Ok(Location { store: Arc::new(store), path: Path::parse(key)?, file: None });
        }
        if let Some(key) = url.strip_prefix("memory://") {
            return Ok(Location { store: Arc::new(InMemory::new()), path: Path::parse(key)?, file: None });
        }
        let file = std::path::absolute(url.strip_prefix("file://").unwrap_or(url))?;
        let path = Path::from_absolute_path(&file)?;
        Ok(Location { store: Arc::new(LocalFileSystem::new()), path, file: Some(file) })
    }

    /// Opens the index header-only (a local file by memory map).
    pub async fn open(&self) -> datafusion_faiss::Result<IvfIndex> {
        match &self.file {
            Some(file) => IvfIndex::open_file(file).await,
            None => IvfIndex::open(self.store.clone(), &self.path).await,
        }
    }
}
