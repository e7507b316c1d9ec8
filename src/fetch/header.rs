//! The header read at open: FAISS reads synchronously, and its reads are served from a
//! few range GETs (the first one also tells the object's size and ETag).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::runtime::Handle;

use super::{DiskCache, Object};
use crate::error::{Error, Result};

/// First range read at open: enough for the header of small indexes; larger ones take
/// one more GET sized from what FAISS asks for.
const FIRST_READ: u64 = 64 * 1024;
/// Read past a FAISS read request so the small fields after a large array come along.
const READ_AHEAD: u64 = 64 * 1024;

/// Serves FAISS's header reads from range GETs (or from a mapped file). FAISS calls
/// `read_at` synchronously, so the whole header parse runs on a blocking thread and
/// fetches with `Handle::block_on`.
pub struct HeaderSource {
    /// The object as the caller named it, for messages.
    name: String,
    size: u64,
    /// Where missing bytes come from; `None` when `segments` holds the whole file.
    remote: Option<(Object, Handle)>,
    /// Fetched byte segments, sorted by start, not overlapping.
    segments: Vec<(u64, Bytes)>,
    /// End of the last read: a read starting later skipped the list data.
    last_end: u64,
    /// The typed error behind a failed read; FAISS only carries its message.
    pub(crate) failure: Option<Error>,
    pub(crate) gets: u64,
    pub(crate) bytes: u64,
    /// The header came from the disk tier.
    pub(crate) from_disk: bool,
}

impl HeaderSource {
    /// Issues the first range GET, which also tells the object's size and ETag.
    pub(crate) async fn start(store: Arc<dyn ObjectStore>, path: Path) -> Result<Self> {
        Self::start_with(store, path, None).await
    }

    /// Like [`start`](Self::start), but with a header kept in `disk` the first GET is
    /// conditional (If-None-Match its ETag): "not modified" serves every header read from
    /// the disk, in the same one round trip.
    pub(crate) async fn start_with(store: Arc<dyn ObjectStore>, path: Path, disk: Option<&DiskCache>) -> Result<Self> {
        let name = path.to_string();
        let key = format!("header|{store}|{path}");
        let saved = match disk {
            Some(disk) => disk.load(key).await.and_then(|b| Saved::decode(&b)),
            None => None,
        };
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..FIRST_READ)),
            if_none_match: saved.as_ref().map(|s| s.e_tag.clone()),
            ..Default::default()
        };
        let result = match store.get_opts(&path, options).await {
            Ok(r) => r,
            Err(object_store::Error::NotModified { .. }) if saved.is_some() => {
                let saved = saved.expect("a saved header");
                let object = Object::new(store, path, Some(saved.e_tag), saved.size);
                return Ok(HeaderSource {
                    name,
                    size: saved.size,
                    remote: Some((object, Handle::current())),
                    segments: saved.segments,
                    last_end: 0,
                    failure: None,
                    gets: 1,
                    bytes: 0,
                    from_disk: true,
                });
            }
            Err(e @ object_store::Error::NotFound { .. }) => return Err(Error::store(&name, e)),
            // No range of an empty object exists: say so rather than echo the range error.
            Err(e) => {
                return Err(match store.head(&path).await {
                    Ok(meta) if meta.size == 0 => Error::NotFaiss { path: name, detail: "the object is empty".into() },
                    _ => Error::store(&name, e),
                })
            }
        };
        let meta = result.meta.clone();
        let range = result.range.clone();
        let first = result.bytes().await.map_err(|e| Error::store(&name, e))?;
        if first.len() as u64 != range.end - range.start {
            return Err(Error::Truncated {
                path: name,
                field: "the first read".into(),
                needed: range,
                size: first.len() as u64,
            });
        }
        let object = Object::new(store, path, meta.e_tag, meta.size);
        Ok(HeaderSource {
            name,
            size: meta.size,
            remote: Some((object, Handle::current())),
            segments: vec![(range.start, first.clone())],
            last_end: 0,
            failure: None,
            gets: 1,
            bytes: first.len() as u64,
            from_disk: false,
        })
    }

    /// Serves reads from a whole file already in memory (mapped).
    pub(crate) fn in_memory(name: String, file: Bytes) -> Self {
        HeaderSource {
            name,
            size: file.len() as u64,
            remote: None,
            segments: vec![(0, file)],
            last_end: 0,
            failure: None,
            gets: 0,
            bytes: 0,
            from_disk: false,
        }
    }

    /// Keeps what was read in `disk`, for the next process that opens this version (an
    /// object without ETag cannot be checked cheaply, and is not kept).
    pub(crate) async fn save(&self, disk: &DiskCache) {
        let Some((object, _)) = &self.remote else { return };
        let (Some(e_tag), false) = (&object.e_tag, self.from_disk) else { return };
        let saved = Saved { e_tag: e_tag.clone(), size: self.size, segments: self.segments.clone() };
        disk.store(format!("header|{}|{}", object.store, object.path), saved.encode()).await;
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The object to fetch lists from; `None` for an in-memory file.
    pub(crate) fn remote(&self) -> Option<Object> {
        self.remote.as_ref().map(|(o, _)| o.clone())
    }

    /// FAISS's reads (through the bridge): its own error message, the typed one kept.
    pub(crate) fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), String> {
        self.read_exact_at(offset, buf, "a field FAISS read").map_err(|e| {
            let message = e.to_string();
            self.failure = Some(e);
            message
        })
    }

    /// Reads `buf.len()` bytes at `offset`, fetching what is missing.
    pub(crate) fn read_exact_at(&mut self, offset: u64, buf: &mut [u8], field: &str) -> Result<()> {
        let end = self.ensure(offset, buf.len() as u64, field)?;
        let mut pos = offset;
        while pos < end {
            let i = self.segments.partition_point(|(s, _)| *s <= pos);
            let (start, seg) = &self.segments[i - 1];
            let n = (end.min(start + seg.len() as u64) - pos) as usize;
            let (from, to) = ((pos - start) as usize, (pos - offset) as usize);
            buf[to..to + n].copy_from_slice(&seg[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    /// Makes bytes `[offset, offset + len)` resident, fetching the missing parts (each
    /// with some read-ahead); returns the end of the range.
    pub(crate) fn ensure(&mut self, offset: u64, len: u64, field: &str) -> Result<u64> {
        let size = self.size;
        let Some(end) = offset.checked_add(len).filter(|&e| e <= size) else {
            let needed = offset..offset.saturating_add(len);
            return Err(Error::Truncated { path: self.name.clone(), field: field.to_string(), needed, size });
        };
        let skipped = offset > self.last_end;
        let mut pos = offset;
        while pos < end {
            let i = self.segments.partition_point(|(s, _)| *s <= pos);
            if i > 0 {
                let (start, seg) = &self.segments[i - 1];
                let seg_end = start + seg.len() as u64;
                if pos < seg_end {
                    pos = end.min(seg_end);
                    continue;
                }
            }
            // After the skipped list data comes the tail (e.g. IDMap's id map), which FAISS
            // reads whole: fetch it to the end in one GET.
            let mut fetch_end = if skipped { size } else { (end + READ_AHEAD).min(size) };
            if let Some((next, _)) = self.segments.get(i) {
                fetch_end = fetch_end.min(*next).max(end.min(*next));
            }
            let range = pos..fetch_end;
            let Some((object, runtime)) = &self.remote else {
                return Err(Error::Truncated {
                    path: self.name.clone(),
                    field: field.to_string(),
                    needed: range,
                    size,
                });
            };
            let got = runtime
                .block_on(object.get(range.clone()))
                .map_err(|e| object.error(e, |source| Error::Store { path: object.name.clone(), source }))?;
            if (got.len() as u64) != range.end - range.start {
                return Err(Error::Truncated {
                    path: self.name.clone(),
                    field: field.to_string(),
                    needed: range,
                    size: got.len() as u64,
                });
            }
            self.gets += 1;
            self.bytes += got.len() as u64;
            self.segments.insert(i, (pos, got));
        }
        self.last_end = self.last_end.max(end);
        Ok(end)
    }
}

/// A header as kept on disk: the version it is of, and the byte segments FAISS read.
struct Saved {
    e_tag: String,
    size: u64,
    segments: Vec<(u64, Bytes)>,
}

const SAVED_MAGIC: &[u8; 8] = b"DFFHEAD1";

impl Saved {
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(32 + self.segments.iter().map(|(_, b)| b.len() + 16).sum::<usize>());
        out.extend_from_slice(SAVED_MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&(self.e_tag.len() as u64).to_le_bytes());
        out.extend_from_slice(self.e_tag.as_bytes());
        for (at, bytes) in &self.segments {
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        out.into()
    }

    /// `None` for anything but what `encode` wrote.
    fn decode(bytes: &Bytes) -> Option<Saved> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Option<Bytes> {
            let end = at.checked_add(n).filter(|&e| e <= bytes.len())?;
            let out = bytes.slice(at..end);
            at = end;
            Some(out)
        };
        let number = |b: Bytes| u64::from_le_bytes(b[..].try_into().expect("8 bytes"));
        if take(8)?[..] != SAVED_MAGIC[..] {
            return None;
        }
        let size = number(take(8)?);
        let tag_len = usize::try_from(number(take(8)?)).ok()?;
        let e_tag = String::from_utf8(take(tag_len)?.to_vec()).ok()?;
        let mut segments: Vec<(u64, Bytes)> = vec![];
        while let Some(start) = take(8) {
            let start = number(start);
            let len = usize::try_from(number(take(8)?)).ok()?;
            let end = start.checked_add(len as u64).filter(|&e| e <= size)?;
            if segments.last().is_some_and(|(s, b)| s + b.len() as u64 > start) || end < start {
                return None;
            }
            segments.push((start, take(len)?));
        }
        Some(Saved { e_tag, size, segments })
    }
}
