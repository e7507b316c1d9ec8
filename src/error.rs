use std::ops::Range;
use std::sync::Arc;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure names the object (and offset, list or dimension) it concerns. `path` is
/// the object as the caller named it (a local file keeps its leading `/`). Cheap to clone,
/// so a fetch shared by several searches can fail them all.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: index object not found")]
    NotFound { path: String },

    #[error("{path}: object store error: {source}")]
    Store {
        path: String,
        #[source]
        source: Arc<object_store::Error>,
    },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: Arc<std::io::Error>,
    },

    #[error("{path}: truncated FAISS file: {field} needs bytes {needed:?} but the object has {size} bytes")]
    Truncated { path: String, field: String, needed: Range<u64>, size: u64 },

    /// A header field FAISS would trust is out of range or disagrees with another.
    #[error("{path}: bad FAISS header: {field} = {value} at offset {offset}: {problem}")]
    BadHeader { path: String, field: String, offset: u64, value: String, problem: String },

    #[error("{path}: not a FAISS IVF index: {detail}")]
    NotFaiss { path: String, detail: String },

    #[error("{path}: unsupported index type {type_name} (supported: IVFFlat, IVFScalarQuantizer, IVFPQ, optionally inside IndexPreTransform and IDMap/IDMap2)")]
    Unsupported { path: String, type_name: String },

    #[error("{path}: list-size table puts list data at bytes {lists:?}, but the object has {size} bytes")]
    ListsBeyondEnd { path: String, lists: Range<u64>, size: u64 },

    #[error("{path}: list {list} (bytes {range:?}): expected {expected} bytes, got {got}")]
    ShortRead { path: String, list: usize, range: Range<u64>, expected: u64, got: u64 },

    #[error("{path}: fetching list {list} (bytes {range:?}) failed: {source}")]
    Fetch {
        path: String,
        list: usize,
        range: Range<u64>,
        #[source]
        source: Arc<object_store::Error>,
    },

    #[error("{path}: index changed since it was opened (opened at {opened})")]
    Changed { path: String, opened: String },

    #[error("invalid search: {0}")]
    InvalidSearch(String),

    #[error("{context}: FAISS error: {message}")]
    Faiss { context: String, message: String },

    #[error("building index: {0}")]
    Build(String),
}

impl Error {
    pub(crate) fn faiss(context: impl Into<String>, e: cxx::Exception) -> Self {
        Error::Faiss { context: context.into(), message: e.what().to_string() }
    }

    pub(crate) fn store(path: &str, source: object_store::Error) -> Self {
        match source {
            object_store::Error::NotFound { .. } => Error::NotFound { path: path.to_string() },
            source => Error::Store { path: path.to_string(), source: Arc::new(source) },
        }
    }
}
