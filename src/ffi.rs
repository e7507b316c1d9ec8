//! The one `cxx::bridge` of the crate: FAISS objects stay opaque on the C++ side, Rust
//! passes slices in and gets plain structs out. Every C++ exception arrives as `Err`.

use crate::fetch::HeaderSource;

#[cxx::bridge(namespace = "dff")]
#[allow(clippy::too_many_arguments)]
pub(crate) mod bridge {
    /// What an index file describes, read from its header.
    #[derive(Debug, Clone)]
    struct IndexInfo {
        /// Dimension of the vectors a caller passes in.
        d: usize,
        /// Dimension inside the IVF index (after OPQ / PCA transforms).
        d_ivf: usize,
        /// FAISS `MetricType`: 0 inner product, 1 L2.
        metric: i32,
        nlist: usize,
        ntotal: i64,
        code_size: usize,
        /// Number of vector transforms (OPQ, PCA, ...) applied before the IVF index.
        transforms: usize,
        /// Number of IDMap wrappers: the lists hold their positions, not the ids.
        id_maps: usize,
        /// Factory-like description, e.g. `IDMap2,OPQ16_64,IVF1024,PQ16x8`.
        description: String,
        /// Demangled C++ type of the innermost index when it cannot be searched in place.
        unsupported: String,
        data_start: u64,
        data_end: u64,
    }

    /// Bytes of one inverted list: `size × code_size` codes, then `size` i64 ids.
    struct ListBytes<'a> {
        list_no: i64,
        bytes: &'a [u8],
    }

    #[derive(Debug, Default, Clone, Copy)]
    struct ScanStats {
        lists_scanned: u64,
        codes_scanned: u64,
        heap_updates: u64,
    }

    extern "Rust" {
        type HeaderSource;
        fn read_at(self: &mut HeaderSource, offset: u64, buf: &mut [u8]) -> Result<()>;
    }

    unsafe extern "C++" {
        include!("datafusion-faiss/cpp/bridge.h");

        type IvfIndex;
        fn open_index(src: &mut HeaderSource) -> Result<UniquePtr<IvfIndex>>;
        fn info(self: &IvfIndex) -> IndexInfo;
        fn list_sizes(self: &IvfIndex) -> Vec<u64>;
        fn assign(
            self: &IvfIndex,
            queries: &[f32],
            nprobe: usize,
            lists: &mut [i64],
            coarse: &mut [f32],
            transformed: &mut [f32],
        ) -> Result<()>;
        /// The quantizer's distances from one query to the centroids of `lists`.
        fn coarse_of(self: &IvfIndex, query: &[f32], lists: &[i64], coarse: &mut [f32], transformed: &mut [f32])
            -> Result<()>;
        /// `partial`: each of `data` holds some entries of its list, not all.
        fn scan(
            self: &IvfIndex,
            queries: &[f32],
            k: usize,
            nprobe: usize,
            lists: &[i64],
            coarse: &[f32],
            data: &[ListBytes],
            partial: bool,
            filtered: bool,
            allowed: &[i64],
            distances: &mut [f32],
            labels: &mut [i64],
        ) -> Result<ScanStats>;

        type FaissIndex;
        fn new_index(d: usize, factory: &str, metric: i32) -> Result<UniquePtr<FaissIndex>>;
        fn read_full(bytes: &[u8]) -> Result<UniquePtr<FaissIndex>>;
        /// The index at `src` read header only, its lists emptied: trained, no vectors.
        fn empty_like(src: &mut HeaderSource) -> Result<UniquePtr<FaissIndex>>;
        fn info(self: &FaissIndex) -> IndexInfo;
        fn train(self: Pin<&mut FaissIndex>, x: &[f32], threads: usize) -> Result<()>;
        fn add(self: Pin<&mut FaissIndex>, x: &[f32], ids: &[i64], threads: usize) -> Result<()>;
        fn write_file(self: &FaissIndex, path: &str) -> Result<()>;
        fn search(
            self: &FaissIndex,
            queries: &[f32],
            k: usize,
            nprobe: usize,
            distances: &mut [f32],
            labels: &mut [i64],
        ) -> Result<()>;
    }
}

// SAFETY: an `IvfIndex` is never mutated after `open_index` returns; all its methods are
// const and FAISS's const search paths (quantizer search, list scanners) are re-entrant.
unsafe impl Send for bridge::IvfIndex {}
unsafe impl Sync for bridge::IvfIndex {}
// SAFETY: a `FaissIndex` is owned by one Rust value; mutation needs `Pin<&mut>`, and its
// const search is re-entrant like the above.
unsafe impl Send for bridge::FaissIndex {}
unsafe impl Sync for bridge::FaissIndex {}
