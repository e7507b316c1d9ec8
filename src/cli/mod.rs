//! Subcommands of the `datafusion-faiss` binary.

pub mod demo;
pub mod inspect;

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;

pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A local file as an object store path.
pub fn local(file: &std::path::Path) -> CliResult<(Arc<dyn ObjectStore>, Path)> {
    let abs = std::path::absolute(file)?;
    let path = Path::from_absolute_path(&abs)?;
    Ok((Arc::new(LocalFileSystem::new()), path))
}
