//! The header check: every field of the index types we accept is read and checked here
//! before FAISS parses the same bytes. FAISS trusts its counts (a vector count is
//! allocated before its bytes are read; `IDMap2` loops over `ntotal` entries of a shorter
//! id map; `PQ` divides by `M`), so a bad file can crash or exhaust memory inside it: each
//! count is checked against the bytes left in the object and each size against the sizes
//! it must agree with. The check reads through the same `HeaderSource` FAISS reads through
//! next, so it costs no extra GET.

use crate::error::{Error, Result};
use crate::fetch::HeaderSource;

/// FAISS index tags and their class names, for the error message.
const KNOWN: [(&[u8; 4], &str); 33] = [
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
    (b"IwIQ", "IndexIVFIndependentQuantizer"),
    (b"Ixrq", "IndexRaBitQ"),
    (b"Iwrr", "IndexIVFRaBitQ with multi-bit codes (written by FAISS 1.13 or newer)"),
];

/// FAISS refuses vectors of more elements than this (`READVECTOR`).
const MAX_COUNT: u64 = 1 << 40;
/// Wrappers (IDMap, IndexPreTransform) around the IVF index.
const MAX_DEPTH: usize = 4;
/// An HNSW quantizer's efSearch: far above any useful value, far below a heap that
/// exhausts memory.
const MAX_EF: i32 = 1 << 20;
/// Tags of the flat indexes a coarse quantizer (or its HNSW graph's storage) may be.
const FLAT: [&[u8; 4]; 3] = [b"IxF2", b"IxFI", b"IxFl"];
/// Transforms in one IndexPreTransform chain.
const MAX_CHAIN: i32 = 16;

/// What the check found; FAISS's parse must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub d: u64,
    pub ntotal: u64,
    pub nlist: u64,
    pub code_size: u64,
    pub data_start: u64,
    pub data_end: u64,
}

/// Reads the whole header (and the tail after the lists) and checks it. Blocking: call
/// it where FAISS's own parse runs.
pub(crate) fn check(src: &mut HeaderSource) -> Result<Header> {
    let mut walk = Walk { src, pos: 0, lists: None };
    let root = walk.index(0)?;
    let lists = walk.lists.take().expect("a checked IVF index has lists");
    Ok(Header { d: root.d, ntotal: root.ntotal, ..lists })
}

/// An index node read: its dimension and vector count.
struct Node {
    d: u64,
    ntotal: u64,
}

/// The common index header (`read_index_header`).
struct IndexHeader {
    d: u64,
    ntotal: u64,
    /// Offset of `d`; `ntotal` follows at `at + 4`.
    at: u64,
}

struct Walk<'a> {
    src: &'a mut HeaderSource,
    pos: u64,
    lists: Option<Header>,
}

impl Walk<'_> {
    fn bad(&self, field: &str, at: u64, value: impl ToString, problem: impl Into<String>) -> Error {
        Error::BadHeader {
            path: self.src.name().to_string(),
            field: field.to_string(),
            offset: at,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    fn bytes<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.src.read_exact_at(self.pos, &mut b, field)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u64(&mut self, field: &str) -> Result<(u64, u64)> {
        let at = self.pos;
        Ok((u64::from_le_bytes(self.bytes(field)?), at))
    }

    fn i64(&mut self, field: &str) -> Result<(i64, u64)> {
        let at = self.pos;
        Ok((i64::from_le_bytes(self.bytes(field)?), at))
    }

    fn i32(&mut self, field: &str) -> Result<(i32, u64)> {
        let at = self.pos;
        Ok((i32::from_le_bytes(self.bytes(field)?), at))
    }

    fn f32(&mut self, field: &str) -> Result<f32> {
        Ok(f32::from_le_bytes(self.bytes(field)?))
    }

    fn fourcc(&mut self, field: &str) -> Result<([u8; 4], u64)> {
        let at = self.pos;
        Ok((self.bytes(field)?, at))
    }

    /// A C++ `bool`: FAISS reads one byte into it, and any value but 0 or 1 is undefined.
    fn bool(&mut self, field: &str) -> Result<bool> {
        let at = self.pos;
        match self.bytes::<1>(field)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.bad(field, at, v, "a boolean must be 0 or 1")),
        }
    }

    /// A FAISS vector: a u64 count, then `count` elements of `elem` bytes. Returns the
    /// count and where the elements start; their bytes are made resident for FAISS.
    fn vector(&mut self, field: &str, elem: u64) -> Result<(u64, u64)> {
        let (count, at) = self.u64(&format!("{field} length"))?;
        let bytes = count.checked_mul(elem).filter(|_| count < MAX_COUNT);
        let Some(bytes) = bytes else {
            return Err(self.bad(&format!("{field} length"), at, count, "larger than any FAISS vector"));
        };
        // A count FAISS would accept for bytes the object lacks is `Truncated` (the file is
        // cut short, or the count is wrong): `ensure` says so, naming where the count stands.
        let start = self.pos;
        self.src.ensure(start, bytes, &format!("{field} (length {count} at offset {at})"))?;
        self.pos += bytes;
        Ok((count, start))
    }

    /// Elements of a vector of u64 / i64 / i32 read back (small tables only).
    fn words<const N: usize>(&mut self, start: u64, count: u64, field: &str) -> Result<Vec<[u8; N]>> {
        let mut buf = vec![0u8; (count * N as u64) as usize];
        self.src.read_exact_at(start, &mut buf, field)?;
        Ok(buf.chunks_exact(N).map(|c| c.try_into().expect("chunk of N")).collect())
    }

    fn index_header(&mut self, what: &str) -> Result<IndexHeader> {
        let (d, at) = self.i32(&format!("{what} d"))?;
        if d < 1 {
            return Err(self.bad(&format!("{what} d"), at, d, "the dimension must be at least 1"));
        }
        let (ntotal, n_at) = self.i64(&format!("{what} ntotal"))?;
        if ntotal < 0 {
            return Err(self.bad(&format!("{what} ntotal"), n_at, ntotal, "a vector count cannot be negative"));
        }
        self.i64("unused header field")?;
        self.i64("unused header field")?;
        self.bool(&format!("{what} is_trained"))?;
        let (metric, m_at) = self.i32(&format!("{what} metric_type"))?;
        if metric > 1 {
            self.f32(&format!("{what} metric_arg"))?;
        }
        if !(0..=1).contains(&metric) {
            return Err(Error::Unsupported {
                path: self.src.name().to_string(),
                type_name: format!(
                    "{what} with FAISS metric {metric} (at offset {m_at}; supported: L2, inner product)"
                ),
            });
        }
        Ok(IndexHeader { d: d as u64, ntotal: ntotal as u64, at })
    }

    fn unsupported(&self, tag: [u8; 4], at: u64, role: &str) -> Error {
        let path = self.src.name().to_string();
        if let Some((_, name)) = KNOWN.iter().find(|(t, _)| **t == tag) {
            return Error::Unsupported { path, type_name: format!("faiss::{name}{role}") };
        }
        if tag[0] == b'I' || tag[0] == b'B' {
            let tag = String::from_utf8_lossy(&tag).into_owned();
            return Error::Unsupported { path, type_name: format!("with tag {tag:?} at offset {at}{role}") };
        }
        Error::NotFaiss { path, detail: format!("unknown type tag {:02x?} at offset {at}", tag) }
    }

    fn index(&mut self, depth: usize) -> Result<Node> {
        let (tag, at) = self.fourcc("index type tag")?;
        if depth > MAX_DEPTH {
            return Err(self.bad("index type tag", at, String::from_utf8_lossy(&tag), "wrappers nested too deep"));
        }
        match &tag {
            b"IxMp" | b"IxM2" => {
                let h = self.index_header("IDMap")?;
                let inner = self.index(depth + 1)?;
                self.same("IDMap d", h.at, h.d, "the wrapped index's d", inner.d)?;
                self.same("IDMap ntotal", h.at + 4, h.ntotal, "the wrapped index's ntotal", inner.ntotal)?;
                let (n, n_at) = self.vector("IDMap id_map", 8)?;
                self.same("IDMap id_map length", n_at - 8, n, "ntotal", h.ntotal)?;
                Ok(Node { d: h.d, ntotal: h.ntotal })
            }
            b"IxPT" => {
                let h = self.index_header("IndexPreTransform")?;
                let (nt, nt_at) = self.i32("IndexPreTransform chain length")?;
                if !(0..=MAX_CHAIN).contains(&nt) {
                    return Err(self.bad(
                        "IndexPreTransform chain length",
                        nt_at,
                        nt,
                        format!("must be 0 to {MAX_CHAIN}"),
                    ));
                }
                let mut d = h.d;
                for i in 0..nt {
                    let (d_in, d_out, t_at) = self.transform(i)?;
                    self.same(&format!("transform {i} d_in"), t_at, d_in, "the dimension before it", d)?;
                    d = d_out;
                }
                let inner = self.index(depth + 1)?;
                self.same("the wrapped index's d", self.pos, inner.d, "the last transform's d_out", d)?;
                self.same("IndexPreTransform ntotal", h.at + 4, h.ntotal, "the wrapped index's ntotal", inner.ntotal)?;
                Ok(Node { d: h.d, ntotal: h.ntotal })
            }
            b"IwFl" | b"IwSq" | b"IwSQ" | b"IwPQ" | b"Iwrq" => self.ivf(tag),
            _ => Err(self.unsupported(tag, at, "")),
        }
    }

    fn same(&self, field: &str, at: u64, value: u64, other: &str, expected: u64) -> Result<()> {
        if value == expected {
            return Ok(());
        }
        Err(self.bad(field, at, value, format!("does not match {other} ({expected})")))
    }

    /// One vector transform (`read_VectorTransform`): returns d_in, d_out and its offset.
    fn transform(&mut self, i: i32) -> Result<(u64, u64, u64)> {
        let (tag, at) = self.fourcc(&format!("transform {i} type tag"))?;
        let field = |f: &str| format!("transform {i} {f}");
        enum Kind {
            Linear { a: u64, b: Option<u64> },
            Norm,
            Center(u64),
            Remap(Vec<i32>),
        }
        let kind = match &tag {
            b"rrot" | b"PCAm" | b"PcAm" | b"Pcam" | b"LTra" => {
                if &tag != b"rrot" && &tag != b"LTra" {
                    self.f32(&field("eigen_power"))?;
                    if &tag == b"Pcam" {
                        self.f32(&field("epsilon"))?;
                    }
                    self.bool(&field("random_rotation"))?;
                    if &tag != b"PCAm" {
                        self.i32(&field("balanced_bins"))?;
                    }
                    self.vector(&field("mean"), 4)?;
                    self.vector(&field("eigenvalues"), 4)?;
                    self.vector(&field("PCAMat"), 4)?;
                }
                let have_bias = self.bool(&field("have_bias"))?;
                let (a, _) = self.vector(&field("A"), 4)?;
                let (b, _) = self.vector(&field("b"), 4)?;
                Kind::Linear { a, b: have_bias.then_some(b) }
            }
            b"VNrm" => {
                self.f32(&field("norm"))?;
                Kind::Norm
            }
            b"VCnt" => Kind::Center(self.vector(&field("mean"), 4)?.0),
            b"RmDT" => {
                let (n, start) = self.vector(&field("map"), 4)?;
                Kind::Remap(self.words::<4>(start, n, &field("map"))?.into_iter().map(i32::from_le_bytes).collect())
            }
            b"Viqm" | b"Viqt" => {
                return Err(Error::Unsupported {
                    path: self.src.name().to_string(),
                    type_name: format!("ITQ transform (tag {:?} at offset {at})", String::from_utf8_lossy(&tag)),
                })
            }
            _ => return Err(self.bad(&field("type tag"), at, format!("{:02x?}", tag), "not a FAISS vector transform")),
        };
        let (d_in, in_at) = self.i32(&field("d_in"))?;
        let (d_out, out_at) = self.i32(&field("d_out"))?;
        self.bool(&field("is_trained"))?;
        if d_in < 1 {
            return Err(self.bad(&field("d_in"), in_at, d_in, "must be at least 1"));
        }
        if d_out < 1 {
            return Err(self.bad(&field("d_out"), out_at, d_out, "must be at least 1"));
        }
        let (d_in, d_out) = (d_in as u64, d_out as u64);
        match kind {
            Kind::Linear { a, b } => {
                if a < d_in * d_out {
                    return Err(self.bad(&field("A length"), at, a, format!("needs d_in × d_out = {}", d_in * d_out)));
                }
                if let Some(b) = b.filter(|&b| b < d_out) {
                    return Err(self.bad(&field("b length"), at, b, format!("needs d_out = {d_out}")));
                }
            }
            Kind::Norm => self.same(&field("d_out"), out_at, d_out, "d_in", d_in)?,
            Kind::Center(n) => {
                self.same(&field("d_out"), out_at, d_out, "d_in", d_in)?;
                self.same(&field("mean length"), at, n, "d_in", d_in)?;
            }
            Kind::Remap(map) => {
                self.same(&field("map length"), at, map.len() as u64, "d_out", d_out)?;
                if let Some(&m) = map.iter().find(|&&m| m < -1 || m as i64 >= d_in as i64) {
                    return Err(self.bad(
                        &field("map entry"),
                        at,
                        m,
                        format!("must be -1 or a dimension below {d_in}"),
                    ));
                }
            }
        }
        Ok((d_in, d_out, at))
    }

    fn ivf(&mut self, tag: [u8; 4]) -> Result<Node> {
        let h = self.index_header("IVF index")?;
        let (nlist, nlist_at) = self.u64("IVF nlist")?;
        if nlist == 0 {
            return Err(self.bad("IVF nlist", nlist_at, nlist, "an IVF index has at least one list"));
        }
        self.u64("IVF nprobe")?;
        self.quantizer(&h, nlist, nlist_at)?;
        let (kind, kind_at) = self.bytes::<1>("direct map type").map(|b| (b[0], self.pos - 1))?;
        if kind > 2 {
            return Err(self.bad("direct map type", kind_at, kind, "must be 0 (none), 1 (array) or 2 (hash table)"));
        }
        self.vector("direct map array", 8)?;
        if kind == 2 {
            self.vector("direct map hash table", 16)?;
        }
        let code_size = match &tag {
            b"IwFl" => h.d * 4,
            b"IwPQ" => {
                self.bool("IVFPQ by_residual")?;
                let (code_size, at) = self.u64("IVFPQ code_size")?;
                let pq = self.pq(h.d)?;
                self.same("IVFPQ code_size", at, code_size, "the product quantizer's code size", pq)?;
                code_size
            }
            b"Iwrq" => {
                let rabitq = self.rabitq(h.d)?;
                let (code_size, at) = self.u64("IVFRaBitQ code_size")?;
                self.same("IVFRaBitQ code_size", at, code_size, "the RaBitQ quantizer's code size", rabitq)?;
                self.bool("IVFRaBitQ by_residual")?;
                let (qb, qb_at) = self.bytes::<1>("IVFRaBitQ qb").map(|b| (b[0], self.pos - 1))?;
                if qb > 8 {
                    return Err(self.bad("IVFRaBitQ qb", qb_at, qb, "query bits must be 0 to 8"));
                }
                code_size
            }
            _ => {
                let sq = self.sq(h.d)?;
                let (code_size, at) = self.u64("IVFSQ code_size")?;
                self.same("IVFSQ code_size", at, code_size, "the scalar quantizer's code size", sq)?;
                if &tag == b"IwSq" {
                    self.bool("IVFSQ by_residual")?;
                }
                code_size
            }
        };
        self.lists(&h, nlist, code_size)?;
        Ok(Node { d: h.d, ntotal: h.ntotal })
    }

    /// The coarse quantizer: a flat index holding the nlist centroids, or an HNSW graph
    /// over a flat index of them (`IVF4096_HNSW32`).
    fn quantizer(&mut self, ivf: &IndexHeader, nlist: u64, nlist_at: u64) -> Result<()> {
        let (tag, at) = self.fourcc("quantizer type tag")?;
        let hnsw = &tag == b"IHNf";
        if !hnsw && !FLAT.contains(&&tag) {
            return Err(self.unsupported(
                tag,
                at,
                " as the coarse quantizer (supported: a flat quantizer, or HNSW over a flat one)",
            ));
        }
        let what = if hnsw { "HNSW quantizer" } else { "quantizer" };
        let q = self.index_header(what)?;
        self.same(&format!("{what} d"), q.at, q.d, "the IVF index's d", ivf.d)?;
        self.same("IVF nlist", nlist_at, nlist, &format!("the {what}'s centroid count"), q.ntotal)?;
        if hnsw {
            self.hnsw(q.ntotal)?;
            let (tag, at) = self.fourcc("HNSW storage type tag")?;
            if !FLAT.contains(&&tag) {
                let role = " as the HNSW quantizer's storage (supported: a flat index)";
                return Err(match &tag {
                    b"null" => self.bad("HNSW storage type tag", at, "null", "the graph was written without its vectors"),
                    _ => self.unsupported(tag, at, role),
                });
            }
            let s = self.index_header("HNSW storage")?;
            self.same("HNSW storage d", s.at, s.d, "the IVF index's d", ivf.d)?;
            self.same("HNSW storage ntotal", s.at + 4, s.ntotal, "the graph's node count", q.ntotal)?;
        }
        let (n, n_at) = self.vector("quantizer centroids", 4)?;
        self.same("quantizer centroids length", n_at - 8, n, "ntotal × d", q.ntotal.saturating_mul(q.d))?;
        // A NaN distance breaks the order HNSW's candidate heaps keep, and its search
        // then need not end; a flat quantizer only ranks such a centroid last.
        if hnsw {
            if let Some(i) = self.non_finite_f32(n_at, n, "quantizer centroids")? {
                return Err(self.bad(
                    &format!("HNSW centroid {} component {}", i / q.d, i % q.d),
                    n_at + 4 * i,
                    "NaN or infinite",
                    "centroids must be finite",
                ));
            }
        }
        Ok(())
    }

    /// The first of `count` f32s at `start` that is NaN or infinite, read a chunk at a time.
    fn non_finite_f32(&mut self, start: u64, count: u64, field: &str) -> Result<Option<u64>> {
        const CHUNK: u64 = 1 << 18;
        let mut buf = vec![0u8; (CHUNK.min(count) * 4) as usize];
        for from in (0..count).step_by(CHUNK as usize) {
            let len = CHUNK.min(count - from);
            let buf = &mut buf[..(len * 4) as usize];
            self.src.read_exact_at(start + from * 4, buf, field)?;
            let bad = buf.chunks_exact(4).position(|c| !f32::from_le_bytes(c.try_into().expect("4 bytes")).is_finite());
            if let Some(i) = bad {
                return Ok(Some(from + i as u64));
            }
        }
        Ok(None)
    }

    /// An HNSW graph (`read_HNSW`) of `ntotal` nodes. FAISS's search follows it without
    /// bounds checks: from the entry point at `max_level` down through each node's
    /// neighbours, indexing `offsets` by node, `cum_nneighbor_per_level` by level and
    /// `neighbors` by both. So every node's level must be covered by the level table,
    /// every offset must be where the levels put it, and every neighbour named at a level
    /// must be a node that has that level.
    fn hnsw(&mut self, ntotal: u64) -> Result<()> {
        self.vector("HNSW assign_probas", 8)?;
        let (n, start) = self.vector("HNSW cum_nneighbor_per_level", 4)?;
        let cum: Vec<i64> = self.words::<4>(start, n, "HNSW cum_nneighbor_per_level")?
            .into_iter()
            .map(|w| i32::from_le_bytes(w) as i64)
            .collect();
        if cum.first() != Some(&0) {
            let v = cum.first().map_or("none".to_string(), |v| v.to_string());
            return Err(self.bad("HNSW cum_nneighbor_per_level[0]", start, v, "must be 0"));
        }
        if let Some(l) = (1..cum.len()).find(|&l| cum[l] < cum[l - 1]) {
            return Err(self.bad(
                &format!("HNSW cum_nneighbor_per_level[{l}]"),
                start + 4 * l as u64,
                cum[l],
                "the cumulated neighbour counts must not decrease",
            ));
        }
        let (n, start) = self.vector("HNSW levels", 4)?;
        self.same("HNSW levels length", start - 8, n, "the graph's node count", ntotal)?;
        let levels: Vec<usize> = self.words::<4>(start, n, "HNSW levels")?
            .into_iter()
            .map(|w| i32::from_le_bytes(w) as i64)
            .enumerate()
            .map(|(i, l)| match usize::try_from(l) {
                Ok(l) if l >= 1 && l < cum.len() => Ok(l),
                _ => Err(self.bad(
                    &format!("HNSW levels[{i}]"),
                    start + 4 * i as u64,
                    l,
                    format!("must be 1 to {} (the levels cum_nneighbor_per_level covers)", cum.len() - 1),
                )),
            })
            .collect::<Result<_>>()?;
        let (n, start) = self.vector("HNSW offsets", 8)?;
        self.same("HNSW offsets length", start - 8, n, "the node count + 1", ntotal + 1)?;
        let offsets: Vec<u64> =
            self.words::<8>(start, n, "HNSW offsets")?.into_iter().map(u64::from_le_bytes).collect();
        let mut expected = 0u64;
        for (i, &o) in offsets.iter().enumerate() {
            let field = format!("HNSW offsets[{i}]");
            self.same(&field, start + 8 * i as u64, o, "the neighbour slots of the nodes before it", expected)?;
            if let Some(&l) = levels.get(i) {
                expected = expected.saturating_add(cum[l] as u64);
            }
        }
        let (n, start) = self.vector("HNSW neighbors", 4)?;
        self.same("HNSW neighbors length", start - 8, n, "the last offset", expected)?;
        let neighbors: Vec<i32> =
            self.words::<4>(start, n, "HNSW neighbors")?.into_iter().map(i32::from_le_bytes).collect();
        for (node, &node_levels) in levels.iter().enumerate() {
            for level in 0..node_levels {
                let range = offsets[node] + cum[level] as u64..offsets[node] + cum[level + 1] as u64;
                for j in range {
                    let v = neighbors[j as usize];
                    let ok = v == -1 || (v >= 0 && (v as u64) < ntotal && levels[v as usize] > level);
                    if !ok {
                        return Err(self.bad(
                            &format!("HNSW neighbor {} of node {node} at level {level}", j - offsets[node]),
                            start + 4 * j,
                            v,
                            "must be -1 or a node of the graph that has this level",
                        ));
                    }
                }
            }
        }
        let (entry, entry_at) = self.i32("HNSW entry_point")?;
        if entry < 0 || entry as u64 >= ntotal {
            return Err(self.bad("HNSW entry_point", entry_at, entry, format!("must be a node below {ntotal}")));
        }
        let (max_level, max_at) = self.i32("HNSW max_level")?;
        let top = levels[entry as usize] as i64 - 1;
        if max_level as i64 != top {
            return Err(self.bad(
                "HNSW max_level",
                max_at,
                max_level,
                format!("does not match the entry point's top level ({top})"),
            ));
        }
        self.i32("HNSW efConstruction")?;
        // The search allocates a candidate heap of max(efSearch, nprobe) entries.
        let (ef, ef_at) = self.i32("HNSW efSearch")?;
        if !(1..=MAX_EF).contains(&ef) {
            return Err(self.bad("HNSW efSearch", ef_at, ef, format!("must be 1 to {MAX_EF}")));
        }
        self.i32("HNSW upper_beam")?;
        Ok(())
    }

    /// A scalar quantizer (`read_ScalarQuantizer`); returns its code size.
    fn sq(&mut self, d: u64) -> Result<u64> {
        let (qtype, at) = self.i32("scalar quantizer type")?;
        // (code size, trained values) per type, as ScalarQuantizer::set_derived_sizes and
        // its trainers make them.
        let (code_size, trained) = match qtype {
            0 => (d, 2 * d),                   // QT_8bit
            1 => (d.div_ceil(2), 2 * d),       // QT_4bit
            2 => (d, 2),                       // QT_8bit_uniform
            3 => (d.div_ceil(2), 2),           // QT_4bit_uniform
            4 => (2 * d, 0),                   // QT_fp16
            5 => (d, 0),                       // QT_8bit_direct
            6 => ((d * 6).div_ceil(8), 2 * d), // QT_6bit
            7 => (2 * d, 0),                   // QT_bf16
            8 => (d, 0),                       // QT_8bit_direct_signed
            _ => return Err(self.bad("scalar quantizer type", at, qtype, "not a FAISS scalar quantizer type")),
        };
        self.i32("scalar quantizer rangestat")?;
        self.f32("scalar quantizer rangestat_arg")?;
        let (sq_d, d_at) = self.u64("scalar quantizer d")?;
        self.same("scalar quantizer d", d_at, sq_d, "the IVF index's d", d)?;
        self.u64("scalar quantizer code_size")?;
        let (n, n_at) = self.vector("scalar quantizer trained", 4)?;
        self.same("scalar quantizer trained length", n_at - 8, n, "what its type needs", trained)?;
        Ok(code_size)
    }

    /// A product quantizer (`read_ProductQuantizer`); returns its code size.
    fn pq(&mut self, d: u64) -> Result<u64> {
        let (pq_d, d_at) = self.u64("product quantizer d")?;
        self.same("product quantizer d", d_at, pq_d, "the IVF index's d", d)?;
        let (m, m_at) = self.u64("product quantizer M")?;
        if m == 0 || !d.is_multiple_of(m) {
            return Err(self.bad("product quantizer M", m_at, m, format!("must divide d = {d}")));
        }
        let (nbits, b_at) = self.u64("product quantizer nbits")?;
        if !(1..=16).contains(&nbits) {
            return Err(self.bad("product quantizer nbits", b_at, nbits, "must be 1 to 16"));
        }
        let (n, n_at) = self.vector("product quantizer centroids", 4)?;
        self.same("product quantizer centroids length", n_at - 8, n, "d × 2^nbits", d << nbits)?;
        Ok((nbits * m).div_ceil(8))
    }

    /// A RaBitQ quantizer (`read_RaBitQuantizer`); returns its code size: one sign bit
    /// per dimension, then two f32 factors.
    fn rabitq(&mut self, d: u64) -> Result<u64> {
        let (rd, d_at) = self.u64("RaBitQ d")?;
        self.same("RaBitQ d", d_at, rd, "the IVF index's d", d)?;
        let expected = d.div_ceil(8) + 8;
        let (code_size, at) = self.u64("RaBitQ code_size")?;
        self.same("RaBitQ code_size", at, code_size, "d / 8 sign bytes + 8 factor bytes", expected)?;
        let (metric, m_at) = self.i32("RaBitQ metric_type")?;
        if !(0..=1).contains(&metric) {
            return Err(self.bad("RaBitQ metric_type", m_at, metric, "must be 0 (inner product) or 1 (L2)"));
        }
        Ok(code_size)
    }

    /// The `ilar` inverted lists: sizes checked, data skipped (never read).
    fn lists(&mut self, ivf: &IndexHeader, nlist: u64, code_size: u64) -> Result<()> {
        let (tag, at) = self.fourcc("inverted lists tag")?;
        match &tag {
            b"ilar" => {}
            b"il00" => return Err(self.bad("inverted lists tag", at, "il00", "the file holds no inverted lists")),
            _ => {
                return Err(Error::Unsupported {
                    path: self.src.name().to_string(),
                    type_name: format!("inverted lists of type {:?} (at offset {at})", String::from_utf8_lossy(&tag)),
                })
            }
        }
        let (n, n_at) = self.u64("inverted lists nlist")?;
        self.same("inverted lists nlist", n_at, n, "the IVF index's nlist", nlist)?;
        let (cs, cs_at) = self.u64("inverted lists code_size")?;
        self.same("inverted lists code_size", cs_at, cs, "the index's code size", code_size)?;
        let (kind, kind_at) = self.fourcc("list size table type")?;
        let mut sizes = vec![0u64; nlist as usize];
        match &kind {
            b"full" => {
                let (m, start) = self.vector("list size table", 8)?;
                self.same("list size table length", start - 8, m, "nlist", nlist)?;
                for (s, w) in sizes.iter_mut().zip(self.words::<8>(start, m, "list size table")?) {
                    *s = u64::from_le_bytes(w);
                }
            }
            b"sprs" => {
                let (m, start) = self.vector("sparse list size table", 8)?;
                if m % 2 != 0 {
                    return Err(self.bad(
                        "sparse list size table length",
                        start - 8,
                        m,
                        "must be even (list, size pairs)",
                    ));
                }
                let words = self.words::<8>(start, m, "sparse list size table")?;
                for (j, pair) in words.chunks_exact(2).enumerate() {
                    let list = u64::from_le_bytes(pair[0]);
                    if list >= nlist {
                        let at = start + 16 * j as u64;
                        return Err(self.bad("sparse list size table list", at, list, format!("beyond nlist {nlist}")));
                    }
                    sizes[list as usize] = u64::from_le_bytes(pair[1]);
                }
            }
            _ => {
                return Err(self.bad(
                    "list size table type",
                    kind_at,
                    String::from_utf8_lossy(&kind),
                    "must be full or sprs",
                ))
            }
        }
        let data_start = self.pos;
        let (mut total, mut count) = (0u64, 0u64);
        for (i, &s) in sizes.iter().enumerate() {
            let bytes = s.checked_mul(code_size + 8);
            let sum = bytes.and_then(|b| total.checked_add(b)).filter(|t| t.checked_add(data_start).is_some());
            let Some(sum) = sum else {
                return Err(self.bad(
                    &format!("size of list {i}"),
                    data_start,
                    s,
                    "list sizes overflow the file offset",
                ));
            };
            total = sum;
            count += s;
        }
        let data_end = data_start + total;
        if data_end > self.src.size() {
            return Err(Error::ListsBeyondEnd {
                path: self.src.name().to_string(),
                lists: data_start..data_end,
                size: self.src.size(),
            });
        }
        self.same("IVF ntotal", ivf.at + 4, ivf.ntotal, "the sum of the list sizes", count)?;
        self.pos = data_end;
        self.lists = Some(Header { d: ivf.d, ntotal: ivf.ntotal, nlist, code_size, data_start, data_end });
        Ok(())
    }
}
