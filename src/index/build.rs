//! Writing new index files: FAISS's `index_factory`, `train`, `add_with_ids`,
//! `write_index`, then an upload to the object store.

use std::io::Read;
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::Metric;
use crate::error::{Error, Result};
use crate::ffi::bridge;

/// Upload part size; files up to this size go up in one PUT.
const PART: usize = 16 * 1024 * 1024;

/// Builds a standard FAISS IVF index file. `train` and `add` run FAISS on the calling
/// thread (with OpenMP): call them from a blocking context.
pub struct IvfIndexBuilder {
    inner: cxx::UniquePtr<bridge::FaissIndex>,
    dimension: usize,
    factory: String,
    threads: usize,
}

impl IvfIndexBuilder {
    /// A new, untrained index from a FAISS factory string such as `"IVF1024,Flat"`,
    /// `"IVF1024,SQ8"` or `"OPQ16,IVF1024,PQ16"`.
    pub fn new(dimension: usize, factory: &str, metric: Metric) -> Result<IvfIndexBuilder> {
        if dimension == 0 {
            return Err(Error::Build("dimension must be at least 1".into()));
        }
        let inner = bridge::new_index(dimension, factory, metric.to_faiss())
            .map_err(|e| Error::Build(format!("factory string {factory:?}: {}", faiss_message(e.what()))))?;
        let info = inner.info();
        if !info.unsupported.is_empty() {
            return Err(Error::Build(format!(
                "factory string {factory:?} makes {}, which cannot be searched in place \
                 (use an IVF index with Flat, SQ or PQ codes)",
                info.unsupported
            )));
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(IvfIndexBuilder { inner, dimension, factory: factory.to_string(), threads })
    }

    /// An empty index trained as the index stored at `path` is: its transforms, coarse
    /// quantizer and codes reused, no vectors. Read header only (the lists are never
    /// fetched), as a search opens it. Vectors added to it are assigned and encoded exactly
    /// as they would be in that index: a delta index, built without training.
    pub async fn trained_like(store: Arc<dyn ObjectStore>, path: &Path) -> Result<IvfIndexBuilder> {
        let inner = super::empty_like(store, path).await?;
        let info = inner.info();
        if !info.unsupported.is_empty() {
            return Err(Error::Build(format!("{path} is {}, which cannot be searched in place", info.unsupported)));
        }
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(IvfIndexBuilder { dimension: info.d, factory: info.description.clone(), inner, threads })
    }

    /// OpenMP threads FAISS uses to train and add (default: all cores).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Number of inverted lists the factory string asked for.
    pub fn nlist(&self) -> usize {
        self.inner.info().nlist
    }

    /// Trains the coarse quantizer (and PQ / SQ / OPQ) on `sample` (`n × dimension`).
    pub fn train(&mut self, sample: &[f32]) -> Result<()> {
        self.check_vectors(sample, "training sample")?;
        let threads = self.threads;
        self.inner
            .pin_mut()
            .train(sample, threads)
            .map_err(|e| Error::Build(format!("training {}: {}", self.factory, e.what())))
    }

    /// Adds `vectors` (`n × dimension`) under `ids` (`n`); callable many times.
    pub fn add(&mut self, vectors: &[f32], ids: &[i64]) -> Result<()> {
        self.check_vectors(vectors, "vectors")?;
        if ids.len() * self.dimension != vectors.len() {
            return Err(Error::Build(format!("{} ids for {} vectors", ids.len(), vectors.len() / self.dimension)));
        }
        let threads = self.threads;
        self.inner
            .pin_mut()
            .add(vectors, ids, threads)
            .map_err(|e| Error::Build(format!("adding to {}: {}", self.factory, e.what())))
    }

    /// Writes the index as a standard FAISS file to `path` (multipart for large files)
    /// and returns its size in bytes.
    pub async fn write(self, store: Arc<dyn ObjectStore>, path: &Path) -> Result<u64> {
        self.write_with_progress(store, path, |_, _| {}).await
    }

    /// [`write`](Self::write), calling `progress(bytes uploaded, file size)` as parts go up.
    pub async fn write_with_progress(
        self,
        store: Arc<dyn ObjectStore>,
        path: &Path,
        progress: impl Fn(u64, u64),
    ) -> Result<u64> {
        let dir = tempfile::tempdir().map_err(|e| Error::Build(format!("temporary folder: {e}")))?;
        let local = dir.path().join("index.faiss");
        let local_str = local.to_str().ok_or_else(|| Error::Build("temporary path is not UTF-8".into()))?.to_string();
        let inner = self.inner;
        let inner = tokio::task::spawn_blocking(move || inner.write_file(&local_str).map(|()| inner))
            .await
            .expect("index write task panicked")
            .map_err(|e| Error::Build(format!("writing index file: {}", e.what())))?;
        drop(inner);
        upload(&local, store, path, progress).await
    }

    fn check_vectors(&self, x: &[f32], what: &str) -> Result<()> {
        let d = self.dimension;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(Error::Build(format!(
                "{what}: length {} is not a positive multiple of dimension {d}",
                x.len()
            )));
        }
        if let Some(at) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Build(format!("{what}: row {} has a non-finite value at component {}", at / d, at % d)));
        }
        Ok(())
    }
}

/// FAISS's own words, without the C++ function and source line it prefixes them with.
fn faiss_message(what: &str) -> &str {
    what.split_once(".cpp:").and_then(|(_, rest)| rest.split_once(": ")).map_or(what, |(_, msg)| msg)
}

async fn upload(
    local: &std::path::Path,
    store: Arc<dyn ObjectStore>,
    path: &Path,
    progress: impl Fn(u64, u64),
) -> Result<u64> {
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Build(format!("uploading to {path}: {what}: {e}"));
    let mut file = std::fs::File::open(local).map_err(|e| fail("opening written file", &e))?;
    let size = file.metadata().map_err(|e| fail("reading written file", &e))?.len();
    let mut buf = vec![0u8; PART];
    if size as usize <= PART {
        file.read_exact(&mut buf[..size as usize]).map_err(|e| fail("reading written file", &e))?;
        buf.truncate(size as usize);
        store.put(path, PutPayload::from(buf)).await.map_err(|e| fail("put", &e))?;
        progress(size, size);
        return Ok(size);
    }
    let upload = store.put_multipart(path).await.map_err(|e| fail("starting multipart upload", &e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    let mut done = 0;
    loop {
        let n = file.read(&mut buf).map_err(|e| fail("reading written file", &e))?;
        if n == 0 {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(4).await {
            writer.abort().await.ok();
            return Err(fail("uploading part", &e));
        }
        writer.write(&buf[..n]);
        done += n as u64;
        progress(done, size);
    }
    writer.finish().await.map_err(|e| fail("completing multipart upload", &e))?;
    Ok(size)
}
