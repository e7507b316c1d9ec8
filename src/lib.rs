//! Search FAISS IVF indexes kept on object storage, fetching only the inverted lists a
//! query probes.
//!
//! Layers, each talking only to the one below: [`sql`] (DataFusion functions and
//! registration) over [`index`] (open, search, build) over `fetch` (range GETs against
//! any `object_store` store, cache, memory-mapped files) and `ffi` (the `cxx` bridge to
//! FAISS in `cpp/`).

mod error;
mod fetch;
mod ffi;
pub mod index;
pub mod sql;

pub use error::{Error, Result};
pub use fetch::{FetchStats, ListCache};
pub use index::{
    InMemoryIndex, IndexInfo, IvfIndex, IvfIndexBuilder, Metric, OpenOptions, SearchOptions, SearchResult, SearchStats,
    DEFAULT_CACHE_BYTES, MAX_RESULTS,
};
