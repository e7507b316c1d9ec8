//! Local index files, memory-mapped: only the pages a search touches are read in.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use bytes::Bytes;

use crate::error::{Error, Result};

/// Which file a path named, and in what state: a file renamed over the path (how `build`
/// and most tools publish) is another inode; one rewritten in place has another size or
/// mtime.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity { dev: meta.dev(), ino: meta.ino(), size: meta.size(), mtime: (meta.mtime(), meta.mtime_nsec()) }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "inode {}, {} bytes, mtime {}.{:09}", self.ino, self.size, self.mtime.0, self.mtime.1)
    }
}

/// A mapped index file, with what its path named when it was mapped.
pub(crate) struct MappedFile {
    file: std::fs::File,
    map: Bytes,
    file_path: PathBuf,
    name: String,
    opened: Identity,
}

impl MappedFile {
    pub(crate) fn open(file_path: &std::path::Path) -> Result<MappedFile> {
        let name = file_path.display().to_string();
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path: name.clone() },
            _ => Error::Io { path: name.clone(), source: e.into() },
        };
        let file = std::fs::File::open(file_path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(Error::NotFaiss { path: name, detail: "not a regular file".into() });
        }
        if meta.len() == 0 {
            return Err(Error::NotFaiss { path: name, detail: "the object is empty".into() });
        }
        // SAFETY: the map is read-only. Another process may still change the file under
        // it; `check` compares the path's file with the mapped one before every use and
        // refuses a changed file (a file truncated in the instant between check and read
        // would fault).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(MappedFile {
            opened: Identity::of(&meta),
            file,
            map: Bytes::from_owner(map),
            file_path: file_path.to_path_buf(),
            name,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn bytes(&self) -> Bytes {
        self.map.clone()
    }

    /// Fails with `Error::Changed` if the path now names another file (renamed over it),
    /// none, or the mapped file resized or rewritten: two `stat`s.
    pub(crate) fn check(&self) -> Result<()> {
        let changed = |now: &dyn std::fmt::Display| Error::Changed {
            path: self.name.clone(),
            opened: format!("{}; the path now holds {now}", self.opened),
        };
        let at_path = match std::fs::metadata(&self.file_path) {
            Ok(meta) => Identity::of(&meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(changed(&"no file")),
            Err(e) => return Err(Error::Io { path: self.name.clone(), source: e.into() }),
        };
        let mapped = self
            .file
            .metadata()
            .map(|m| Identity::of(&m))
            .map_err(|e| Error::Io { path: self.name.clone(), source: e.into() })?;
        for now in [at_path, mapped] {
            if now != self.opened {
                return Err(changed(&now));
            }
        }
        Ok(())
    }
}
