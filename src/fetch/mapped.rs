//! Local index files, memory-mapped: only the pages a search touches are read in.

use std::time::SystemTime;

use bytes::Bytes;
use object_store::path::Path;

use crate::error::{Error, Result};

/// A mapped index file, with the size and modification time it had when mapped.
pub(crate) struct MappedFile {
    file: std::fs::File,
    map: Bytes,
    path: Path,
    modified: Option<SystemTime>,
}

impl MappedFile {
    pub(crate) fn open(file_path: &std::path::Path) -> Result<MappedFile> {
        let path = Path::from(file_path.to_string_lossy().as_ref());
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path: path.clone() },
            _ => Error::Io { path: path.clone(), source: e.into() },
        };
        let file = std::fs::File::open(file_path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.len() == 0 {
            return Err(Error::NotFaiss { path, detail: "the object is empty".into() });
        }
        // SAFETY: the map is read-only. Another process may still change the file under
        // it; `check` compares size and mtime before every use and refuses a changed
        // file (a file truncated in the instant between check and read would fault).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(MappedFile { modified: meta.modified().ok(), file, map: Bytes::from_owner(map), path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn bytes(&self) -> Bytes {
        self.map.clone()
    }

    /// Fails if the file was resized or rewritten since it was mapped.
    pub(crate) fn check(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(|e| Error::Io { path: self.path.clone(), source: e.into() })?;
        if meta.len() != self.map.len() as u64 || meta.modified().ok() != self.modified {
            return Err(Error::Changed {
                path: self.path.clone(),
                opened: format!("{} bytes, mtime {:?}", self.map.len(), self.modified),
            });
        }
        Ok(())
    }
}
