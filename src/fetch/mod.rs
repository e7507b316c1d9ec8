//! Byte access to an index object through any `object_store` store: the header read at
//! open, and the inverted lists fetched per search through a shared, byte-bounded cache.
//! Every GET after the first is pinned to the ETag seen at open. Local files can be
//! memory-mapped instead.

mod cache;
mod disk;
mod header;
mod lists;
mod mapped;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::error::Error;

pub use cache::ListCache;
pub use disk::{version_key, DiskCache};
pub(crate) use header::HeaderSource;
pub use lists::FetchStats;
pub(crate) use lists::ListFetcher;
pub(crate) use mapped::MappedFile;

/// An index object pinned to the version seen when it was opened.
#[derive(Clone)]
pub(crate) struct Object {
    pub store: Arc<dyn ObjectStore>,
    pub path: Path,
    /// The path as the caller gave it, for messages.
    pub name: String,
    pub e_tag: Option<String>,
    pub size: u64,
}

impl Object {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, e_tag: Option<String>, size: u64) -> Object {
        Object { store, name: path.to_string(), path, e_tag, size }
    }

    fn changed(&self) -> Error {
        Error::Changed {
            path: self.name.clone(),
            opened: format!("ETag {}, {} bytes", self.e_tag.as_deref().unwrap_or("(none)"), self.size),
        }
    }

    /// Fails with `Error::Changed` when the path now names another object (or none):
    /// one HEAD, comparing ETag and size with what was opened.
    pub(crate) async fn check(&self) -> Result<(), Error> {
        match self.store.head(&self.path).await {
            Ok(meta) if meta.size == self.size && (self.e_tag.is_none() || meta.e_tag == self.e_tag) => Ok(()),
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Err(self.changed()),
            Err(e) => Err(Error::Store { path: self.name.clone(), source: Arc::new(e) }),
        }
    }

    async fn get(&self, range: Range<u64>) -> object_store::Result<Bytes> {
        let options =
            GetOptions { range: Some(GetRange::Bounded(range)), if_match: self.e_tag.clone(), ..Default::default() };
        self.store.get_opts(&self.path, options).await?.bytes().await
    }

    /// A failed GET: "changed" when the pinned version is gone, else what `other` makes.
    fn error(&self, e: object_store::Error, other: impl FnOnce(Arc<object_store::Error>) -> Error) -> Error {
        match e {
            object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. } => self.changed(),
            e => other(Arc::new(e)),
        }
    }
}
