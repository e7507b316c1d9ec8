//! The few FAISS file facts checked before handing the header to FAISS: index types whose
//! lists are not one `ilar` section at the end would make FAISS read them whole.

use crate::error::{Error, Result};
use crate::fetch::HeaderSource;

/// IVF types whose lists FAISS reads through the skip-data hook, as `write_index` tags them.
const SEARCHABLE: [&[u8; 4]; 3] = [b"IwFl", b"IwSq", b"IwPQ"];
/// Wrappers checked past: IDMap / IDMap2 (fixed header), IndexPreTransform (its inner
/// type is checked by FAISS type once the header is read).
const ID_MAPS: [&[u8; 4]; 2] = [b"IxMp", b"IxM2"];
const PRE_TRANSFORM: &[u8; 4] = b"IxPT";

/// FAISS index tags and their class names, for the error message.
const KNOWN: [(&[u8; 4], &str); 30] = [
    (b"IxF2", "IndexFlatL2"),
    (b"IxFI", "IndexFlatIP"),
    (b"IxFl", "IndexFlat"),
    (b"IxHE", "IndexLSH"),
    (b"IxHe", "IndexLSH"),
    (b"IxPQ", "IndexPQ"),
    (b"IxPq", "IndexPQ"),
    (b"IxPo", "IndexPQ"),
    (b"IxSQ", "IndexScalarQuantizer"),
    (b"IxRF", "IndexRefine"),
    (b"Ix2L", "Index2Layer"),
    (b"IxLa", "IndexLattice"),
    (b"IxRQ", "IndexResidualQuantizer"),
    (b"IxLS", "IndexLocalSearchQuantizer"),
    (b"IHNf", "IndexHNSWFlat"),
    (b"IHNp", "IndexHNSWPQ"),
    (b"IHNs", "IndexHNSWSQ"),
    (b"IHN2", "IndexHNSW2Level"),
    (b"INSf", "IndexNSGFlat"),
    (b"INNf", "IndexNNDescentFlat"),
    (b"IPfs", "IndexPQFastScan"),
    (b"IwPf", "IndexIVFPQFastScan"),
    (b"IwQR", "IndexIVFPQR"),
    (b"IvQR", "IndexIVFPQR"),
    (b"IwFd", "IndexIVFFlatDedup"),
    (b"IwSh", "IndexIVFSpectralHash"),
    (b"IwRQ", "IndexIVFResidualQuantizer"),
    (b"IwLS", "IndexIVFLocalSearchQuantizer"),
    (b"IvFl", "IndexIVFFlat (pre-2018 format)"),
    (b"IvPQ", "IndexIVFPQ (pre-2018 format)"),
];

/// Checks the outer type tag (and an IDMap's inner one) before FAISS parses the header.
pub(crate) fn check_type(src: &HeaderSource) -> Result<()> {
    let path = src.path();
    let mut at = 0u64;
    for _ in 0..3 {
        let tag: [u8; 4] = fourcc(src, at)?;
        if SEARCHABLE.contains(&&tag) || &tag == PRE_TRANSFORM {
            return Ok(());
        }
        if ID_MAPS.contains(&&tag) {
            at = inner_offset(src, at)?;
            continue;
        }
        if let Some((_, name)) = KNOWN.iter().find(|(t, _)| **t == tag) {
            return Err(Error::Unsupported { path: path.clone(), type_name: format!("faiss::{name}") });
        }
        if tag[0] == b'I' || tag[0] == b'B' {
            return Err(Error::Unsupported {
                path: path.clone(),
                type_name: format!("with tag {:?} at offset {at}", String::from_utf8_lossy(&tag)),
            });
        }
        return Err(Error::NotFaiss {
            path: path.clone(),
            detail: format!("unknown type tag {:02x?} at offset {at}", tag),
        });
    }
    Err(Error::NotFaiss { path: path.clone(), detail: "IDMap wrappers nested too deep".into() })
}

fn fourcc(src: &HeaderSource, at: u64) -> Result<[u8; 4]> {
    match src.peek(at, 4) {
        Some(b) => Ok([b[0], b[1], b[2], b[3]]),
        None => Err(Error::Truncated { path: src.path().clone(), needed: at..at + 4, size: src.size() }),
    }
}

/// Offset of the sub-index after an IDMap's index header: tag, d (i32), ntotal and two
/// unused i64, is_trained (u8), metric (i32), and metric_arg (f32) for metrics past L2.
fn inner_offset(src: &HeaderSource, at: u64) -> Result<u64> {
    let metric_at = at + 4 + 4 + 8 * 3 + 1;
    let m = src.peek(metric_at, 4).ok_or_else(|| Error::Truncated {
        path: src.path().clone(),
        needed: metric_at..metric_at + 4,
        size: src.size(),
    })?;
    let metric = i32::from_le_bytes([m[0], m[1], m[2], m[3]]);
    Ok(metric_at + 4 + if metric > 1 { 4 } else { 0 })
}
