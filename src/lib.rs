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
pub mod stores;

pub use error::{Error, Result};
pub use fetch::{DiskCache, FetchStats, ListCache};
pub use index::{
    InMemoryIndex, IndexInfo, IvfIndex, IvfIndexBuilder, Metric, OpenOptions, SearchOptions, SearchResult, SearchStats,
    DEFAULT_CACHE_BYTES, MAX_RESULTS,
};

/// The FAISS this crate was linked with: its version and SIMD level as `build.rs` built
/// it, e.g. `1.12.0 (avx512)`, or the user's own library (`FAISS_LIB_DIR`).
pub fn faiss_build() -> &'static str {
    env!("DFF_FAISS_BUILD")
}
