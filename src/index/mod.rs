//! A FAISS IVF index opened header-only from an object store and searched by fetching
//! only the inverted lists a query probes.

mod build;
mod format;
mod memory;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::error::{Error, Result};
use crate::fetch::{DiskCache, FetchStats, HeaderSource, ListCache, ListFetcher, MappedFile};
use crate::ffi::bridge;

pub use build::IvfIndexBuilder;
pub use memory::InMemoryIndex;

/// Distance of an index, as FAISS numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Squared Euclidean distance (FAISS `METRIC_L2`): smaller is closer.
    L2,
    /// Inner product (FAISS `METRIC_INNER_PRODUCT`): larger is closer.
    InnerProduct,
}

impl Metric {
    pub(crate) fn from_faiss(m: i32) -> Option<Metric> {
        match m {
            0 => Some(Metric::InnerProduct),
            1 => Some(Metric::L2),
            _ => None,
        }
    }

    pub(crate) fn to_faiss(self) -> i32 {
        match self {
            Metric::InnerProduct => 0,
            Metric::L2 => 1,
        }
    }
}

/// What the header of an index file says, and where its parts lie.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexInfo {
    /// Dimension of the vectors searched.
    pub dimension: usize,
    pub metric: Metric,
    pub nlist: usize,
    pub ntotal: u64,
    /// Bytes per vector in the inverted lists.
    pub code_size: usize,
    /// Factory-like description, e.g. `OPQ16_64,IVF1024,PQ16x8`.
    pub description: String,
    pub file_size: u64,
    /// Byte range of the inverted-list data; the header is before it, a tail (IDMap's id
    /// map) may follow it.
    pub lists: std::ops::Range<u64>,
}

/// Settings of an opened index.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Range GETs a search keeps in flight at once.
    pub max_in_flight: usize,
    /// Cache of list data; `None` makes one of `DEFAULT_CACHE_BYTES` for this index.
    /// Pass the same cache to several indexes to share one budget.
    pub cache: Option<ListCache>,
    /// The disk tier for the header and the lists, kept across processes.
    pub disk: Option<DiskCache>,
}

/// Most result cells (queries × k) one search call returns.
pub const MAX_RESULTS: usize = 1 << 28;

/// A round trip to object storage in the cost model of filtered searches: about the bytes
/// one stream delivers meanwhile.
const WAVE_BYTES: u64 = 4 << 20;

/// What one entry read from a mapped file costs: the page it lies in.
const PAGE_BYTES: u64 = 4096;

/// Budget of the list cache an index gets when `OpenOptions::cache` is `None`.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions { max_in_flight: 64, cache: None, disk: None }
    }
}

/// Counts of one search.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SearchStats {
    /// Distinct non-empty lists the queries probed.
    pub lists_probed: u64,
    /// Vectors (codes) compared against a query.
    pub codes_scanned: u64,
    /// How the probed lists were obtained: GETs, bytes, cache hits.
    pub fetch: FetchStats,
}

/// Results of a batch of `n` queries: row `i` holds `k` neighbours, closest first.
/// Where fewer than `k` candidates exist, a row is padded with id -1 (as FAISS does) and
/// distance `+inf` (L2) or `-inf` (inner product).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResult {
    pub k: usize,
    pub ids: Vec<i64>,
    pub distances: Vec<f32>,
    /// The stored code of each result (`ids.len() × code_size` bytes, zeros where the id
    /// is -1), when [`SearchOptions::codes`] asked for them; empty otherwise. For
    /// IVF-Flat the code is the vector itself (`dimension` f32, little-endian).
    pub codes: Vec<u8>,
    pub stats: SearchStats,
}

/// What a search returns besides ids and distances, and which entries it may return.
#[derive(Debug, Default, Clone, Copy)]
pub struct SearchOptions<'a> {
    /// Only entries whose id is in this set are candidates (FAISS's `IDSelector`).
    pub allowed: Option<&'a [i64]>,
    /// Copy each result's stored code out of the probed lists.
    pub codes: bool,
    /// Threads a search of many queries may split them across (after one fetch of the
    /// lists for all of them); 0 or 1: the calling thread only.
    pub threads: usize,
}

/// An IVF index opened without its list data. Cheap to share (`Arc`) and search from
/// many tasks at once.
pub struct IvfIndex {
    inner: Arc<cxx::UniquePtr<bridge::IvfIndex>>,
    info: IndexInfo,
    sizes: Vec<u64>,
    /// Dimension inside the IVF index, after the transforms (if any).
    d_ivf: usize,
    transforms: bool,
    fetcher: ListFetcher,
    open_stats: FetchStats,
    /// The lists hold positions translated by IDMap wrappers, not the ids searched for.
    id_mapped: bool,
    /// Where each id is stored, read once when first needed.
    slots: tokio::sync::OnceCell<Arc<Slots>>,
}

/// Every entry of the lists as (id, list, slot), sorted: where each id's code lies.
struct Slots(Vec<(i64, u32, u32)>);

impl Slots {
    /// (list, slot) of each entry holding `id` (none when the index lacks it; several
    /// when it was added more than once).
    fn of(&self, id: i64) -> impl Iterator<Item = (u32, u32)> + '_ {
        let from = self.0.partition_point(|e| e.0 < id);
        self.0[from..].iter().take_while(move |e| e.0 == id).map(|e| (e.1, e.2))
    }
}

impl std::fmt::Debug for IvfIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IvfIndex").field("info", &self.info).finish_non_exhaustive()
    }
}

impl IvfIndex {
    /// Opens the index at `path`, reading its header (and the tail after the lists, if
    /// any) but no list data.
    pub async fn open(store: Arc<dyn ObjectStore>, path: &Path) -> Result<IvfIndex> {
        Self::open_with(store, path, OpenOptions::default()).await
    }

    pub async fn open_with(store: Arc<dyn ObjectStore>, path: &Path, options: OpenOptions) -> Result<IvfIndex> {
        let src = HeaderSource::start_with(store, path.clone(), options.disk.as_ref()).await?;
        let (parsed, src) = parse_header(src).await?;
        if let Some(disk) = &options.disk {
            src.save(disk).await;
        }
        let object = src.remote().expect("a header fetched from a store has a remote");
        let cache = options.cache.unwrap_or_else(|| ListCache::new(DEFAULT_CACHE_BYTES));
        let disk = options.disk;
        Self::assemble(parsed, &src, |offsets| ListFetcher::remote(object, offsets, options.max_in_flight, cache, disk))
    }

    /// Opens a local index file by memory-mapping it: the header is parsed from the map
    /// and a search reads only the pages of the lists it probes (no cache, no GETs). A
    /// file resized or rewritten after open fails searches with `Error::Changed`.
    pub async fn open_file(file: impl AsRef<std::path::Path>) -> Result<IvfIndex> {
        let file = file.as_ref().to_path_buf();
        let mapped = tokio::task::spawn_blocking(move || MappedFile::open(&file)).await.expect("mmap task panicked")?;
        let src = HeaderSource::in_memory(mapped.name().to_string(), mapped.bytes());
        let (parsed, src) = parse_header(src).await?;
        Self::assemble(parsed, &src, |offsets| ListFetcher::mapped(mapped, offsets))
    }

    fn assemble(
        (inner, checked): (cxx::UniquePtr<bridge::IvfIndex>, format::Header),
        src: &HeaderSource,
        fetcher: impl FnOnce(Vec<u64>) -> ListFetcher,
    ) -> Result<IvfIndex> {
        let path = src.name().to_string();
        let raw = inner.info();
        if !raw.unsupported.is_empty() {
            return Err(Error::Unsupported { path, type_name: raw.unsupported });
        }
        let metric = Metric::from_faiss(raw.metric).ok_or_else(|| Error::Unsupported {
            path: path.clone(),
            type_name: format!("{} with FAISS metric {}", raw.description, raw.metric),
        })?;
        let parsed = format::Header {
            d: raw.d as u64,
            ntotal: raw.ntotal.max(0) as u64,
            nlist: raw.nlist as u64,
            code_size: raw.code_size as u64,
            data_start: raw.data_start,
            data_end: raw.data_end,
        };
        // Both read the same bytes; a difference means the check's idea of the format is
        // not FAISS's, and neither can be trusted.
        if parsed != checked {
            return Err(Error::NotFaiss {
                path,
                detail: format!("FAISS read the header as {parsed:?}, the header check as {checked:?}"),
            });
        }
        let sizes = inner.list_sizes();
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        let mut at = raw.data_start;
        offsets.push(at);
        for &s in &sizes {
            at += s * (raw.code_size as u64 + 8);
            offsets.push(at);
        }
        let info = IndexInfo {
            dimension: raw.d,
            metric,
            nlist: raw.nlist,
            ntotal: parsed.ntotal,
            code_size: raw.code_size,
            description: raw.description.clone(),
            file_size: src.size(),
            lists: raw.data_start..raw.data_end,
        };
        Ok(IvfIndex {
            inner: Arc::new(inner),
            info,
            sizes,
            d_ivf: raw.d_ivf,
            transforms: raw.transforms > 0,
            fetcher: fetcher(offsets),
            // The header's GETs run one after another: each is its own wave.
            open_stats: FetchStats { gets: src.gets, waves: src.gets, bytes: src.bytes, ..Default::default() },
            id_mapped: raw.id_maps > 0,
            slots: tokio::sync::OnceCell::new(),
        })
    }

    pub fn info(&self) -> &IndexInfo {
        &self.info
    }

    /// Number of vectors in each inverted list.
    pub fn cluster_sizes(&self) -> &[u64] {
        &self.sizes
    }

    /// Byte range of list `list` in the index object (empty for an empty list).
    pub fn list_range(&self, list: usize) -> std::ops::Range<u64> {
        self.fetcher.range(list)
    }

    /// GETs and bytes the open cost.
    pub fn open_stats(&self) -> FetchStats {
        self.open_stats
    }

    /// Fails with `Error::Changed` when the path no longer names the object this index
    /// was opened from (replaced, renamed over, rewritten, deleted): one HEAD for a store,
    /// two `stat`s for a local file. A search notices a replaced object only when it
    /// reads from it; call this to notice it when every list is cached.
    pub async fn check(&self) -> Result<()> {
        self.fetcher.check().await
    }

    /// Fetch counts summed over every search so far.
    pub fn fetch_totals(&self) -> FetchStats {
        self.fetcher.totals()
    }

    /// The cache holding this index's lists (`None` for a memory-mapped file).
    pub fn cache(&self) -> Option<&ListCache> {
        self.fetcher.cache()
    }

    /// Searches `queries` (`n × dimension`, row-major) for the `k` nearest neighbours of
    /// each, probing `nprobe` lists per query (capped at nlist). Results equal FAISS's
    /// own search of the same file with the same nprobe.
    pub async fn search(&self, queries: &[f32], k: usize, nprobe: usize) -> Result<SearchResult> {
        self.search_with(queries, k, nprobe, SearchOptions::default()).await
    }

    /// Like [`search`](Self::search), but only entries whose id is in `allowed` are
    /// candidates (FAISS's `IDSelector`, applied while the lists are scanned): each query
    /// gets the `k` nearest allowed vectors among the probed lists.
    pub async fn search_among(
        &self,
        queries: &[f32],
        k: usize,
        nprobe: usize,
        allowed: &[i64],
    ) -> Result<SearchResult> {
        self.search_with(queries, k, nprobe, SearchOptions { allowed: Some(allowed), ..Default::default() }).await
    }

    /// [`search`](Self::search) with [`SearchOptions`].
    pub async fn search_with(
        &self,
        queries: &[f32],
        k: usize,
        nprobe: usize,
        options: SearchOptions<'_>,
    ) -> Result<SearchResult> {
        let allowed: Option<Arc<[i64]>> = options.allowed.map(|allowed| {
            // Callers often pass a set already sorted (the SQL layer does, once per query).
            match allowed.is_sorted_by(|a, b| a < b) {
                true => allowed.into(),
                false => {
                    let mut allowed = allowed.to_vec();
                    allowed.sort_unstable();
                    allowed.dedup();
                    allowed.into()
                }
            }
        });
        let d = self.info.dimension;
        check_queries(queries, d)?;
        if k == 0 {
            return Err(Error::InvalidSearch("k must be at least 1".into()));
        }
        if nprobe == 0 {
            return Err(Error::InvalidSearch("nprobe must be at least 1".into()));
        }
        let n = queries.len() / d;
        if n.checked_mul(k).is_none_or(|cells| cells > MAX_RESULTS) {
            return Err(Error::InvalidSearch(format!("{n} queries × k = {k} exceeds {MAX_RESULTS} results per call")));
        }
        let nprobe = nprobe.min(self.info.nlist);
        let context = || format!("searching {}", self.fetcher.name());

        let queries: Arc<[f32]> = queries.into();
        let inner = self.inner.clone();
        // Queries per thread: contiguous runs, each thread filling its part of the outputs.
        let per = n.div_ceil(options.threads.clamp(1, n.max(1))).max(1);
        let d_ivf = if self.transforms { self.d_ivf } else { 0 };
        let (lists, coarse, transformed) = {
            let queries = queries.clone();
            off_runtime(move || {
                let mut lists = vec![0i64; n * nprobe];
                let mut coarse = vec![0f32; n * nprobe];
                let mut transformed = vec![0f32; n * d_ivf];
                let parts = queries
                    .chunks(per * d)
                    .zip(lists.chunks_mut(per * nprobe))
                    .zip(coarse.chunks_mut(per * nprobe))
                    .zip(transformed.chunks_mut((per * d_ivf).max(1)).map(Some).chain(std::iter::repeat_with(|| None)));
                let inner = &inner;
                std::thread::scope(|s| {
                    let work: Vec<_> = parts
                        .map(|(((q, l), c), t)| move || inner.assign(q, nprobe, l, c, t.unwrap_or(&mut [])))
                        .collect();
                    in_threads(s, work, |(), ()| ())
                })
                .map(|()| (lists, coarse, transformed))
            })
            .await
            .map_err(|e| Error::faiss(context(), e))?
        };

        let mut needed: Vec<usize> = lists
            .iter()
            .filter(|&&l| l >= 0 && self.sizes.get(l as usize).is_some_and(|&s| s > 0))
            .map(|&l| l as usize)
            .collect();
        needed.sort_unstable();
        needed.dedup();
        let (data, fetched) = self.fetcher.fetch(&needed).await?;

        let inner = self.inner.clone();
        let code_size = if options.codes { self.info.code_size } else { 0 };
        let scanned = off_runtime(move || {
            let views: Vec<bridge::ListBytes> = data
                .iter()
                .map(|(list, bytes): &(usize, Bytes)| bridge::ListBytes { list_no: *list as i64, bytes })
                .collect();
            let (x, dx): (&[f32], usize) = if transformed.is_empty() { (&queries, d) } else { (&transformed, d_ivf) };
            let mut distances = vec![0f32; n * k];
            let mut ids = vec![0i64; n * k];
            let filtered = allowed.is_some();
            let allowed: &[i64] = allowed.as_deref().unwrap_or(&[]);
            let (inner, views) = (&inner, &views);
            let parts = x
                .chunks(per * dx)
                .zip(lists.chunks(per * nprobe))
                .zip(coarse.chunks(per * nprobe))
                .zip(distances.chunks_mut(per * k))
                .zip(ids.chunks_mut(per * k));
            let stats = std::thread::scope(|s| {
                let work: Vec<_> = parts
                    .map(|((((x, l), c), dist), i)| {
                        move || inner.scan(x, k, nprobe, l, c, views, false, filtered, allowed, dist, i)
                    })
                    .collect();
                in_threads(s, work, |a, b| bridge::ScanStats {
                    lists_scanned: a.lists_scanned + b.lists_scanned,
                    codes_scanned: a.codes_scanned + b.codes_scanned,
                    heap_updates: a.heap_updates + b.heap_updates,
                })
            });
            stats.map(|s| {
                let codes = stored_codes(&data, &ids, code_size);
                (distances, ids, codes, s)
            })
        })
        .await;
        let (distances, ids, codes, scan) = scanned.map_err(|e| Error::faiss(context(), e))?;
        Ok(SearchResult {
            k,
            ids,
            distances,
            codes,
            stats: SearchStats { lists_probed: needed.len() as u64, codes_scanned: scan.codes_scanned, fetch: fetched },
        })
    }
}

impl IvfIndex {
    /// Whether [`search_entries`](Self::search_entries) can serve this index: its lists
    /// hold the ids searched for (no IDMap wrapper).
    pub fn has_entries(&self) -> bool {
        !self.id_mapped
    }

    /// What searching the entries of `n` ids costs, in bytes read, a wave of GETs counted
    /// as `WAVE_BYTES` more, an entry of a mapped file as its page; with the id map's
    /// first read.
    pub fn entries_cost(&self, n: usize) -> u64 {
        let (n, code_size, ntotal) = (n as u64, self.info.code_size as u64, self.info.ntotal);
        let id_map = !self.slots_read();
        match self.fetcher.in_flight() {
            None => n * code_size.max(PAGE_BYTES) + if id_map { ntotal * 8 } else { 0 },
            Some((_, parts)) => {
                let parts = parts as u64;
                let lists = self.sizes.iter().filter(|&&s| s > 0).count() as u64;
                let id_map = if id_map { ntotal * 8 + lists.div_ceil(parts) * WAVE_BYTES } else { 0 };
                id_map + n * code_size + n.div_ceil(parts) * WAVE_BYTES
            }
        }
    }

    /// What a search probing `lists` lists costs, as [`entries_cost`](Self::entries_cost)
    /// counts (lists of average size, none cached).
    pub fn lists_cost(&self, lists: usize) -> u64 {
        let entry = self.info.code_size as u64 + 8;
        let bytes = lists as u64 * (self.info.ntotal / self.info.nlist.max(1) as u64) * entry;
        match self.fetcher.in_flight() {
            None => bytes,
            Some((in_flight, _)) => bytes + (lists as u64).div_ceil(in_flight as u64) * WAVE_BYTES,
        }
    }

    /// Whether the id map has been read.
    fn slots_read(&self) -> bool {
        self.slots.initialized()
    }

    /// The id → (list, slot) map, and what reading it cost now (nothing once read):
    /// the id section of every non-empty list, in one wave.
    async fn slots(&self) -> Result<(Arc<Slots>, FetchStats)> {
        let mut stats = FetchStats::default();
        let slots = self
            .slots
            .get_or_try_init(|| async {
                let code_size = self.info.code_size as u64;
                let parts: Vec<(usize, std::ops::Range<u64>)> = (0..self.sizes.len())
                    .filter(|&l| self.sizes[l] > 0)
                    .map(|l| {
                        let r = self.fetcher.range(l);
                        (l, r.start + self.sizes[l] * code_size..r.end)
                    })
                    .collect();
                let (sections, fetched) = self.fetcher.fetch_parts(&parts).await?;
                stats = fetched;
                let mut entries = Vec::with_capacity(self.info.ntotal as usize);
                for ((list, _), ids) in parts.iter().zip(&sections) {
                    for (slot, id) in ids.chunks_exact(8).enumerate() {
                        entries.push((i64::from_le_bytes(id.try_into().expect("8 bytes")), *list as u32, slot as u32));
                    }
                }
                entries.sort_unstable();
                Ok::<_, Error>(Arc::new(Slots(entries)))
            })
            .await?;
        Ok((slots.clone(), stats))
    }

    /// Searches `queries` among the entries of `ids` only, each of them compared: FAISS's
    /// search with an `IDSelector` of `ids` and nprobe = nlist (equal up to the f32
    /// rounding of the coarse distances), reading the entries' codes alone (one wave of
    /// small range GETs, after the id map's first read) instead of whole lists.
    pub async fn search_entries(&self, queries: &[f32], k: usize, ids: &[i64], codes: bool) -> Result<SearchResult> {
        let d = self.info.dimension;
        check_queries(queries, d)?;
        if k == 0 {
            return Err(Error::InvalidSearch("k must be at least 1".into()));
        }
        if !self.has_entries() {
            return Err(Error::InvalidSearch(format!(
                "{}: entries cannot be searched by id in an index whose lists hold IDMap positions",
                self.fetcher.name()
            )));
        }
        let n = queries.len() / d;
        if n.checked_mul(k).is_none_or(|cells| cells > MAX_RESULTS) {
            return Err(Error::InvalidSearch(format!("{n} queries × k = {k} exceeds {MAX_RESULTS} results per call")));
        }
        let (slots, mut stats) = self.slots().await?;
        let mut entries: Vec<(u32, u32, i64)> =
            ids.iter().flat_map(|&id| slots.of(id).map(move |(l, s)| (l, s, id))).collect();
        entries.sort_unstable();
        entries.dedup();
        let code_size = self.info.code_size;
        let parts: Vec<(usize, std::ops::Range<u64>)> = entries
            .iter()
            .map(|&(l, slot, _)| {
                let at = self.fetcher.range(l as usize).start + slot as u64 * code_size as u64;
                (l as usize, at..at + code_size as u64)
            })
            .collect();
        let (codes_of, fetched) = self.fetcher.fetch_parts(&parts).await?;
        add_stats(&mut stats, &fetched);
        // Each list's entries in the list's own layout: codes, then ids.
        let mut data: Vec<(usize, Bytes)> = vec![];
        let mut from = 0;
        while from < entries.len() {
            let list = entries[from].0;
            let to = from + entries[from..].iter().take_while(|e| e.0 == list).count();
            let mut bytes = Vec::with_capacity((to - from) * (code_size + 8));
            codes_of[from..to].iter().for_each(|c| bytes.extend_from_slice(c));
            entries[from..to].iter().for_each(|e| bytes.extend_from_slice(&e.2.to_le_bytes()));
            data.push((list as usize, bytes.into()));
            from = to;
        }
        let lists: Arc<[i64]> = data.iter().map(|(l, _)| *l as i64).collect();
        let nprobe = lists.len();
        let context = || format!("searching {}", self.fetcher.name());
        if nprobe == 0 {
            let empty = self.empty_result(n, k);
            return Ok(SearchResult { stats: SearchStats { fetch: stats, ..Default::default() }, ..empty });
        }
        let (inner, queries): (_, Arc<[f32]>) = (self.inner.clone(), queries.into());
        let d_ivf = if self.transforms { self.d_ivf } else { 0 };
        let want_codes = if codes { code_size } else { 0 };
        let scanned = off_runtime(move || {
            let mut coarse = vec![0f32; n * nprobe];
            let mut transformed = vec![0f32; n * d_ivf];
            for (i, q) in queries.chunks(d).enumerate() {
                let t = if d_ivf > 0 { &mut transformed[i * d_ivf..][..d_ivf] } else { &mut [][..] };
                inner.coarse_of(q, &lists, &mut coarse[i * nprobe..][..nprobe], t)?;
            }
            let assigned: Vec<i64> = (0..n).flat_map(|_| lists.iter().copied()).collect();
            let views: Vec<bridge::ListBytes> =
                data.iter().map(|(list, bytes)| bridge::ListBytes { list_no: *list as i64, bytes }).collect();
            let x: &[f32] = if d_ivf > 0 { &transformed } else { &queries };
            let mut distances = vec![0f32; n * k];
            let mut labels = vec![0i64; n * k];
            let scan =
                inner.scan(x, k, nprobe, &assigned, &coarse, &views, true, false, &[], &mut distances, &mut labels)?;
            let codes = stored_codes(&data, &labels, want_codes);
            Ok::<_, cxx::Exception>((distances, labels, codes, scan))
        })
        .await;
        let (distances, ids, codes, scan) = scanned.map_err(|e| Error::faiss(context(), e))?;
        Ok(SearchResult {
            k,
            ids,
            distances,
            codes,
            stats: SearchStats { lists_probed: nprobe as u64, codes_scanned: scan.codes_scanned, fetch: stats },
        })
    }

    /// `n` rows of `k` misses, as FAISS pads them.
    fn empty_result(&self, n: usize, k: usize) -> SearchResult {
        let miss = match self.info.metric {
            Metric::L2 => f32::INFINITY,
            Metric::InnerProduct => f32::NEG_INFINITY,
        };
        SearchResult { k, ids: vec![-1; n * k], distances: vec![miss; n * k], codes: vec![], stats: Default::default() }
    }
}

fn add_stats(total: &mut FetchStats, s: &FetchStats) {
    total.gets += s.gets;
    total.waves += s.waves;
    total.bytes += s.bytes;
    total.bytes_from_cache += s.bytes_from_cache;
    total.bytes_mapped += s.bytes_mapped;
    total.fetch_time += s.fetch_time;
}

/// The code stored for each of `ids` in the probed `lists` (list bytes: `size` codes,
/// then `size` ids), `code_size` bytes each; nothing when `code_size` is 0, or when an id
/// is stored twice with different codes (which of them FAISS returned is not known).
fn stored_codes(lists: &[(usize, Bytes)], ids: &[i64], code_size: usize) -> Vec<u8> {
    if code_size == 0 {
        return vec![];
    }
    let mut at: std::collections::HashMap<i64, Option<&[u8]>> =
        ids.iter().filter(|&&id| id >= 0).map(|&id| (id, None)).collect();
    for (_, bytes) in lists {
        let size = bytes.len() / (code_size + 8);
        let (codes, list_ids) = bytes.split_at(size * code_size);
        for (i, id) in list_ids.chunks_exact(8).enumerate() {
            let id = i64::from_le_bytes(id.try_into().expect("8 bytes"));
            if let Some(found) = at.get_mut(&id) {
                let code = &codes[i * code_size..][..code_size];
                match found {
                    Some(seen) if *seen != code => return vec![],
                    _ => *found = Some(code),
                }
            }
        }
    }
    let mut out = vec![0u8; ids.len() * code_size];
    for (slot, id) in out.chunks_exact_mut(code_size).zip(ids) {
        if let Some(Some(code)) = at.get(id) {
            slot.copy_from_slice(code);
        }
    }
    out
}

/// Runs `work` (one item per thread; the first on this thread), returning the first
/// error or the items' results combined by `add`.
fn in_threads<'scope, R: Send + 'scope, E: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    work: Vec<impl FnOnce() -> std::result::Result<R, E> + Send + 'scope>,
    add: impl Fn(R, R) -> R,
) -> std::result::Result<R, E> {
    let mut work = work.into_iter();
    let first = work.next().expect("at least one part");
    let others: Vec<_> = work.map(|w| s.spawn(w)).collect();
    let mut total = first();
    for other in others {
        let r = other.join().expect("FAISS thread panicked");
        total = match (total, r) {
            (Ok(a), Ok(b)) => Ok(add(a, b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
    }
    total
}

/// Runs FAISS work where it does not stall the runtime's workers: in place on a
/// multi-threaded runtime (the worker's other tasks move to another thread, and the query
/// waits for no thread hand-off), else on the blocking pool.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        tokio::task::block_in_place(work)
    } else {
        tokio::task::spawn_blocking(work).await.expect("FAISS task panicked")
    }
}

/// Checks the header, then parses it with FAISS, on a blocking thread; a failed read's
/// typed error wins over FAISS's message.
/// The index at `path` read header only (after the header check), its lists emptied: a
/// FAISS index trained as that one is, holding no vectors.
pub(crate) async fn empty_like(store: Arc<dyn ObjectStore>, path: &Path) -> Result<cxx::UniquePtr<bridge::FaissIndex>> {
    let mut src = HeaderSource::start(store, path.clone()).await?;
    let (read, src) = tokio::task::spawn_blocking(move || {
        let read = format::check(&mut src).map(|_| bridge::empty_like(&mut src));
        (read, src)
    })
    .await
    .expect("header parse task panicked");
    match (read?, src.failure.clone()) {
        (Ok(inner), _) => Ok(inner),
        (Err(_), Some(failure)) => Err(failure),
        (Err(e), None) => Err(Error::NotFaiss { path: src.name().to_string(), detail: e.what().to_string() }),
    }
}

async fn parse_header(
    mut src: HeaderSource,
) -> Result<((cxx::UniquePtr<bridge::IvfIndex>, format::Header), HeaderSource)> {
    let (opened, src) = tokio::task::spawn_blocking(move || {
        let opened = format::check(&mut src).map(|checked| (bridge::open_index(&mut src), checked));
        (opened, src)
    })
    .await
    .expect("header parse task panicked");
    match (opened?, src.failure.clone()) {
        ((Ok(inner), checked), _) => Ok(((inner, checked), src)),
        ((Err(_), _), Some(failure)) => Err(failure),
        ((Err(e), _), None) => Err(Error::NotFaiss { path: src.name().to_string(), detail: e.what().to_string() }),
    }
}

/// Rejects empty batches, ragged lengths and non-finite components, naming where.
pub(crate) fn check_queries(queries: &[f32], d: usize) -> Result<()> {
    if queries.is_empty() {
        return Err(Error::InvalidSearch("no query vectors given".into()));
    }
    if !queries.len().is_multiple_of(d) {
        return Err(Error::InvalidSearch(format!(
            "query length {} is not a multiple of the index dimension {d}",
            queries.len()
        )));
    }
    if let Some(at) = queries.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidSearch(format!(
            "query {} has a non-finite value ({}) at component {}",
            at / d,
            queries[at],
            at % d
        )));
    }
    Ok(())
}
