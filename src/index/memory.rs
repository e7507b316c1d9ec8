//! FAISS's own search over a fully loaded index file: the reference our results must equal.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::check_queries;
use crate::error::{Error, Result};
use crate::fetch::HeaderSource;
use crate::ffi::bridge;

/// A whole index file loaded into FAISS, searched by FAISS itself.
pub struct InMemoryIndex {
    inner: cxx::UniquePtr<bridge::FaissIndex>,
    dimension: usize,
}

impl InMemoryIndex {
    /// Parses a complete FAISS index file, after the same header check `IvfIndex::open`
    /// makes (FAISS's own reader trusts every count in the file).
    pub fn from_bytes(bytes: &[u8]) -> Result<InMemoryIndex> {
        Self::from_shared(bytes::Bytes::copy_from_slice(bytes))
    }

    fn from_shared(bytes: bytes::Bytes) -> Result<InMemoryIndex> {
        super::format::check(&mut HeaderSource::in_memory("index bytes".into(), bytes.clone()))?;
        let inner = bridge::read_full(&bytes).map_err(|e| Error::faiss("reading index bytes", e))?;
        let dimension = inner.info().d;
        Ok(InMemoryIndex { inner, dimension })
    }

    /// Downloads the whole object and loads it.
    pub async fn load(store: Arc<dyn ObjectStore>, path: &Path) -> Result<InMemoryIndex> {
        let bytes = store
            .get(path)
            .await
            .map_err(|e| Error::store(path.as_ref(), e))?
            .bytes()
            .await
            .map_err(|e| Error::store(path.as_ref(), e))?;
        tokio::task::spawn_blocking(move || InMemoryIndex::from_shared(bytes)).await.expect("index load task panicked")
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// FAISS's `search` with `SearchParametersIVF { nprobe }`, on the calling thread.
    /// Returns `(ids, distances)`, `k` per query.
    pub fn search(&self, queries: &[f32], k: usize, nprobe: usize) -> Result<(Vec<i64>, Vec<f32>)> {
        check_queries(queries, self.dimension)?;
        if k == 0 || nprobe == 0 {
            return Err(Error::InvalidSearch("k and nprobe must be at least 1".into()));
        }
        let n = queries.len() / self.dimension;
        if n.checked_mul(k).is_none_or(|cells| cells > super::MAX_RESULTS) {
            return Err(Error::InvalidSearch(format!(
                "{n} queries × k = {k} exceeds {} results per call",
                super::MAX_RESULTS
            )));
        }
        let mut distances = vec![0f32; n * k];
        let mut ids = vec![0i64; n * k];
        self.inner
            .search(queries, k, nprobe, &mut distances, &mut ids)
            .map_err(|e| Error::faiss("in-memory search", e))?;
        Ok((ids, distances))
    }
}
