//! Inverted lists by byte range. From an object store: cache first, then one concurrent
//! wave of range GETs (one per run of byte-adjacent lists), shared with concurrent
//! searches that need the same lists (single-flight). From a mapped file: slices of it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::{DiskCache, ListCache, MappedFile, Object};
use crate::error::{Error, Result};

/// Counts of one fetch, or summed over an index's life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Range GET requests issued.
    pub gets: u64,
    /// Waves of concurrent GETs issued: `gets / max_in_flight` rounded up, 0 when no GET
    /// was needed. The round trips a search costs, as decided here rather than observed
    /// on the wire (where a busy machine can split one wave into several).
    pub waves: u64,
    /// Bytes those GETs returned.
    pub bytes: u64,
    /// Lists served from the cache (those of them read from the disk tier first included).
    pub cache_hits: u64,
    /// Lists read from the disk tier (into the cache) rather than fetched.
    pub disk_hits: u64,
    /// Lists this search fetched itself.
    pub cache_misses: u64,
    /// Lists another search was already fetching, awaited instead of fetched again.
    pub shared: u64,
    /// Bytes served from the cache.
    pub bytes_from_cache: u64,
    /// Bytes served from a memory-mapped local file.
    pub bytes_mapped: u64,
    /// Wall time spent fetching.
    pub fetch_time: Duration,
}

/// Parts of lists closer than this are fetched by one GET.
const PART_GAP: u64 = 16 * 1024;

/// A GET of a few entries is all latency: this many of them are kept in flight per GET
/// of whole lists allowed.
const PARTS_PER_LIST_GET: usize = 8;

type Run = Shared<BoxFuture<'static, Result<Arc<[(usize, Bytes)]>>>>;

/// Where each list lies: `offsets[i]..offsets[i + 1]` holds list `i`.
#[derive(Clone)]
struct Layout(Arc<[u64]>);

impl Layout {
    fn range(&self, list: usize) -> Range<u64> {
        self.0[list]..self.0[list + 1]
    }
}

/// Fetches inverted lists of one index.
pub(crate) struct ListFetcher {
    layout: Layout,
    source: Source,
    totals: Totals,
}

enum Source {
    Remote(Arc<Remote>),
    Mapped(MappedFile),
}

struct Remote {
    object: Object,
    layout: Layout,
    max_in_flight: usize,
    cache: ListCache,
    cache_id: u64,
    /// The disk tier, with the key prefix naming this version of the object.
    disk: Option<(DiskCache, String)>,
    in_flight: Mutex<HashMap<usize, Run>>,
}

#[derive(Default)]
struct Totals {
    gets: AtomicU64,
    waves: AtomicU64,
    bytes: AtomicU64,
    cache_hits: AtomicU64,
    disk_hits: AtomicU64,
    cache_misses: AtomicU64,
    shared: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_mapped: AtomicU64,
    fetch_nanos: AtomicU64,
}

impl ListFetcher {
    pub(crate) fn remote(
        object: Object,
        offsets: Vec<u64>,
        max_in_flight: usize,
        cache: ListCache,
        disk: Option<DiskCache>,
    ) -> Self {
        let layout = Layout(offsets.into());
        // Only an object with an ETag: a key must name one version.
        let disk = disk.zip(object.e_tag.as_ref()).map(|(disk, tag)| {
            let key = format!("list|{}|{}|{}|{tag}", object.store, object.path, object.size);
            (disk, key)
        });
        let remote = Remote {
            object,
            layout: layout.clone(),
            max_in_flight: max_in_flight.max(1),
            cache,
            cache_id: ListCache::index_id(),
            disk,
            in_flight: Mutex::new(HashMap::new()),
        };
        ListFetcher { layout, source: Source::Remote(Arc::new(remote)), totals: Totals::default() }
    }

    pub(crate) fn mapped(file: MappedFile, offsets: Vec<u64>) -> Self {
        ListFetcher { layout: Layout(offsets.into()), source: Source::Mapped(file), totals: Totals::default() }
    }

    /// The index object as the caller named it.
    pub(crate) fn name(&self) -> &str {
        match &self.source {
            Source::Remote(r) => &r.object.name,
            Source::Mapped(m) => m.name(),
        }
    }

    /// Fails with `Error::Changed` when the path no longer names the object opened: a
    /// HEAD for a store (the GETs' If-Match cannot see it when every list is cached), two
    /// `stat`s for a mapped file.
    pub(crate) async fn check(&self) -> Result<()> {
        match &self.source {
            Source::Remote(r) => r.object.check().await,
            Source::Mapped(m) => m.check(),
        }
    }

    /// The list cache; `None` for a mapped file (the OS page cache serves it).
    pub(crate) fn cache(&self) -> Option<&ListCache> {
        match &self.source {
            Source::Remote(r) => Some(&r.cache),
            Source::Mapped(_) => None,
        }
    }

    pub(crate) fn range(&self, list: usize) -> Range<u64> {
        self.layout.range(list)
    }

    /// GETs of whole lists, and of list parts, one wave holds; `None` for a mapped file.
    pub(crate) fn in_flight(&self) -> Option<(usize, usize)> {
        match &self.source {
            Source::Remote(r) => Some((r.max_in_flight, r.max_in_flight * PARTS_PER_LIST_GET)),
            Source::Mapped(_) => None,
        }
    }

    /// Sums of every fetch so far.
    pub(crate) fn totals(&self) -> FetchStats {
        let t = &self.totals;
        FetchStats {
            gets: t.gets.load(Ordering::Relaxed),
            waves: t.waves.load(Ordering::Relaxed),
            bytes: t.bytes.load(Ordering::Relaxed),
            cache_hits: t.cache_hits.load(Ordering::Relaxed),
            disk_hits: t.disk_hits.load(Ordering::Relaxed),
            cache_misses: t.cache_misses.load(Ordering::Relaxed),
            shared: t.shared.load(Ordering::Relaxed),
            bytes_from_cache: t.bytes_from_cache.load(Ordering::Relaxed),
            bytes_mapped: t.bytes_mapped.load(Ordering::Relaxed),
            fetch_time: Duration::from_nanos(t.fetch_nanos.load(Ordering::Relaxed)),
        }
    }

    /// The bytes of `lists` (sorted, distinct, non-empty), in that order.
    pub(crate) async fn fetch(&self, lists: &[usize]) -> Result<(Vec<(usize, Bytes)>, FetchStats)> {
        let start = Instant::now();
        let (found, mut stats) = match &self.source {
            Source::Remote(remote) => remote.fetch(lists).await?,
            Source::Mapped(file) => {
                file.check()?;
                let map = file.bytes();
                let found: Vec<(usize, Bytes)> = lists
                    .iter()
                    .map(|&l| {
                        let r = self.range(l);
                        (l, map.slice(r.start as usize..r.end as usize))
                    })
                    .collect();
                let bytes_mapped = found.iter().map(|(_, b)| b.len() as u64).sum();
                (found, FetchStats { bytes_mapped, ..Default::default() })
            }
        };
        stats.fetch_time = start.elapsed();
        self.add_totals(&stats);
        Ok((found, stats))
    }

    /// The bytes of `parts`: `(list, range)` with each range (absolute, in the object)
    /// inside that list's bytes, sorted by range. Slices of cached lists where the whole
    /// list is cached, else one concurrent wave of range GETs (ranges closer than
    /// `PART_GAP` share one). Nothing read this way is cached: the entries of a few rows
    /// are cheap to fetch again, and must not push whole lists out of the cache.
    pub(crate) async fn fetch_parts(&self, parts: &[(usize, Range<u64>)]) -> Result<(Vec<Bytes>, FetchStats)> {
        let start = Instant::now();
        let (found, mut stats) = match &self.source {
            Source::Remote(remote) => remote.fetch_parts(parts).await?,
            Source::Mapped(file) => {
                file.check()?;
                let map = file.bytes();
                let found: Vec<Bytes> =
                    parts.iter().map(|(_, r)| map.slice(r.start as usize..r.end as usize)).collect();
                let bytes_mapped = found.iter().map(|b| b.len() as u64).sum();
                (found, FetchStats { bytes_mapped, ..Default::default() })
            }
        };
        stats.fetch_time = start.elapsed();
        self.add_totals(&stats);
        Ok((found, stats))
    }

    fn add_totals(&self, s: &FetchStats) {
        let t = &self.totals;
        t.gets.fetch_add(s.gets, Ordering::Relaxed);
        t.waves.fetch_add(s.waves, Ordering::Relaxed);
        t.bytes.fetch_add(s.bytes, Ordering::Relaxed);
        t.cache_hits.fetch_add(s.cache_hits, Ordering::Relaxed);
        t.disk_hits.fetch_add(s.disk_hits, Ordering::Relaxed);
        t.cache_misses.fetch_add(s.cache_misses, Ordering::Relaxed);
        t.shared.fetch_add(s.shared, Ordering::Relaxed);
        t.bytes_from_cache.fetch_add(s.bytes_from_cache, Ordering::Relaxed);
        t.bytes_mapped.fetch_add(s.bytes_mapped, Ordering::Relaxed);
        t.fetch_nanos.fetch_add(s.fetch_time.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Remote {
    async fn fetch(self: &Arc<Self>, lists: &[usize]) -> Result<(Vec<(usize, Bytes)>, FetchStats)> {
        let mut stats = FetchStats::default();
        stats.disk_hits = self.from_disk(lists).await;
        let mut found: Vec<(usize, Bytes)> = Vec::with_capacity(lists.len());
        // Each awaited run, with the lists this search wants from it.
        let mut waits: Vec<(Run, Vec<usize>)> = Vec::new();
        {
            // Cache and in-flight are checked under one lock; a run fills the cache before
            // it leaves the in-flight map, so no list is fetched twice at once.
            let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
            let mut claimed: Vec<usize> = Vec::new();
            for &list in lists {
                if let Some(bytes) = self.cache.get(self.cache_id, list) {
                    stats.cache_hits += 1;
                    stats.bytes_from_cache += bytes.len() as u64;
                    found.push((list, bytes));
                } else if let Some(run) = in_flight.get(&list) {
                    stats.shared += 1;
                    waits.push((run.clone(), vec![list]));
                } else {
                    claimed.push(list);
                }
            }
            stats.cache_misses = claimed.len() as u64;
            for run_lists in self.runs(&claimed) {
                let run = self.clone().fetch_run(run_lists.clone()).boxed().shared();
                for &list in &run_lists {
                    in_flight.insert(list, run.clone());
                }
                stats.gets += 1;
                stats.bytes +=
                    run_lists.iter().map(|&l| self.layout.range(l).end - self.layout.range(l).start).sum::<u64>();
                waits.push((run, run_lists));
            }
            stats.waves = stats.gets.div_ceil(self.max_in_flight as u64);
        }
        // Boxed so the stream's type names no closure: keeps `search` futures `Send`.
        let picks: Vec<BoxFuture<'static, Result<Vec<(usize, Bytes)>>>> =
            waits.into_iter().map(|w| pick(w).boxed()).collect();
        let fetched: Vec<Vec<(usize, Bytes)>> =
            futures::stream::iter(picks).buffer_unordered(self.max_in_flight).try_collect().await?;
        found.extend(fetched.into_iter().flatten());
        found.sort_unstable_by_key(|(list, _)| *list);
        Ok((found, stats))
    }

    async fn fetch_parts(&self, parts: &[(usize, Range<u64>)]) -> Result<(Vec<Bytes>, FetchStats)> {
        let mut stats = FetchStats::default();
        let mut found: Vec<Option<Bytes>> = vec![None; parts.len()];
        // Spans to GET: (range, the parts it holds).
        let mut spans: Vec<(Range<u64>, Vec<usize>)> = vec![];
        for (i, (list, r)) in parts.iter().enumerate() {
            let whole = self.layout.range(*list);
            if r.start < whole.start || r.end > whole.end {
                return Err(Error::InvalidSearch(format!("bytes {r:?} are not inside list {list} ({whole:?})")));
            }
            if let Some(bytes) = self.cache.get(self.cache_id, *list) {
                stats.bytes_from_cache += r.end - r.start;
                found[i] = Some(bytes.slice((r.start - whole.start) as usize..(r.end - whole.start) as usize));
                continue;
            }
            match spans.last_mut() {
                Some((span, held)) if r.start >= span.start && r.start <= span.end + PART_GAP => {
                    span.end = span.end.max(r.end);
                    held.push(i);
                }
                _ => spans.push((r.clone(), vec![i])),
            }
        }
        stats.gets = spans.len() as u64;
        stats.bytes = spans.iter().map(|(r, _)| r.end - r.start).sum();
        let in_flight = self.max_in_flight * PARTS_PER_LIST_GET;
        stats.waves = stats.gets.div_ceil(in_flight as u64);
        let object = &self.object;
        let gets = spans.into_iter().map(|(span, held)| async move {
            let got = object.get(span.clone()).await.map_err(|e| {
                object.error(e, |source| Error::Fetch {
                    path: object.name.clone(),
                    list: parts[held[0]].0,
                    range: span.clone(),
                    source,
                })
            })?;
            if got.len() as u64 != span.end - span.start {
                return Err(Error::ShortRead {
                    path: object.name.clone(),
                    list: parts[held[0]].0,
                    range: span.clone(),
                    expected: span.end - span.start,
                    got: got.len() as u64,
                });
            }
            Ok::<_, Error>((span, held, got))
        });
        let got: Vec<_> = futures::stream::iter(gets).buffer_unordered(in_flight).try_collect().await?;
        for (span, held, bytes) in got {
            for i in held {
                let r = &parts[i].1;
                found[i] = Some(bytes.slice((r.start - span.start) as usize..(r.end - span.start) as usize));
            }
        }
        Ok((found.into_iter().map(|b| b.expect("every part fetched")).collect(), stats))
    }

    /// Moves the `lists` the disk tier holds (and the memory cache does not) into the
    /// memory cache; how many.
    async fn from_disk(self: &Arc<Self>, lists: &[usize]) -> u64 {
        let Some((disk, key)) = &self.disk else { return 0 };
        let absent: Vec<usize> = lists.iter().copied().filter(|&l| self.cache.get(self.cache_id, l).is_none()).collect();
        if absent.is_empty() {
            return 0;
        }
        let (disk, key, this) = (disk.clone(), key.clone(), self.clone());
        let found = tokio::task::spawn_blocking(move || {
            let mut found = 0;
            for list in absent {
                let expected = this.layout.range(list);
                // A list of another length is not this version's: a miss.
                match disk.get(&format!("{key}|{list}")).filter(|b| b.len() as u64 == expected.end - expected.start) {
                    Some(bytes) => {
                        this.cache.insert(this.cache_id, list, bytes);
                        found += 1;
                    }
                    None => continue,
                }
            }
            found
        });
        found.await.unwrap_or(0)
    }

    /// Keeps fetched lists in the disk tier.
    async fn to_disk(&self, lists: &[(usize, Bytes)]) {
        let Some((disk, key)) = &self.disk else { return };
        let (disk, key, lists) = (disk.clone(), key.clone(), lists.to_vec());
        let _ = tokio::task::spawn_blocking(move || {
            for (list, bytes) in lists {
                disk.put(&format!("{key}|{list}"), &bytes);
            }
        })
        .await;
    }

    /// Groups sorted lists into runs whose bytes are adjacent in the file.
    fn runs(&self, lists: &[usize]) -> Vec<Vec<usize>> {
        let mut runs: Vec<Vec<usize>> = Vec::new();
        for &list in lists {
            match runs.last_mut() {
                Some(run) if self.layout.range(run[run.len() - 1]).end == self.layout.range(list).start => {
                    run.push(list)
                }
                _ => runs.push(vec![list]),
            }
        }
        runs
    }

    async fn fetch_run(self: Arc<Self>, lists: Vec<usize>) -> Result<Arc<[(usize, Bytes)]>> {
        let result = self.get_run(&lists).await;
        if let Ok(parts) = &result {
            self.to_disk(parts).await;
        }
        let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
        if let Ok(parts) = &result {
            for (list, bytes) in parts.iter() {
                self.cache.insert(self.cache_id, *list, bytes.clone());
            }
        }
        for list in &lists {
            in_flight.remove(list);
        }
        result
    }

    async fn get_run(&self, lists: &[usize]) -> Result<Arc<[(usize, Bytes)]>> {
        let first = lists[0];
        let range = self.layout.range(first).start..self.layout.range(lists[lists.len() - 1]).end;
        let object = &self.object;
        let got = object.get(range.clone()).await.map_err(|e| {
            object.error(e, |source| Error::Fetch {
                path: object.name.clone(),
                list: first,
                range: range.clone(),
                source,
            })
        })?;
        let expected = range.end - range.start;
        if got.len() as u64 != expected {
            return Err(Error::ShortRead {
                path: object.name.clone(),
                list: first,
                range,
                expected,
                got: got.len() as u64,
            });
        }
        Ok(lists
            .iter()
            .map(|&list| {
                let r = self.layout.range(list);
                (list, got.slice((r.start - range.start) as usize..(r.end - range.start) as usize))
            })
            .collect())
    }
}

/// The lists wanted from a run, once it has arrived.
async fn pick((run, wanted): (Run, Vec<usize>)) -> Result<Vec<(usize, Bytes)>> {
    let got = run.await?;
    Ok(got.iter().filter(|(l, _)| wanted.contains(l)).cloned().collect())
}
