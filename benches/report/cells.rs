//! One cell of the report: an index file searched in one mode through one store at one
//! nprobe, for latency, throughput, I/O and memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion_faiss::{InMemoryIndex, IvfIndex, ListCache, OpenOptions, SearchResult};
use object_store::path::Path;

use crate::wire::{Traffic, Wire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// FAISS's own search over the whole file loaded in memory.
    Faiss,
    /// Ours, every probed list already cached (a local file: its pages resident).
    Warm,
    /// Ours, the index open but its list cache emptied before each query.
    ColdHeader,
    /// Ours, the index opened for each query.
    Fresh,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Faiss => "FAISS in memory",
            Mode::Warm => "warm",
            Mode::ColdHeader => "cold, header cached",
            Mode::Fresh => "cold, fresh open",
        }
    }
}

/// Where ours reads the index from.
#[derive(Clone)]
pub enum Place {
    /// A local file, memory-mapped.
    Local(std::path::PathBuf),
    /// An object store, through a counting (and maybe delaying) wire.
    Store { wire: Wire, path: Path, label: String },
}

impl Place {
    pub fn label(&self) -> String {
        match self {
            Place::Local(_) => "local file".into(),
            Place::Store { label, .. } => label.clone(),
        }
    }

    async fn open(&self, cache_budget: u64) -> IvfIndex {
        match self {
            Place::Local(file) => IvfIndex::open_file(file).await.unwrap(),
            Place::Store { wire, path, .. } => {
                let options = OpenOptions { cache: Some(ListCache::new(cache_budget)), ..Default::default() };
                IvfIndex::open_with(Arc::new(wire.clone()), path, options).await.unwrap()
            }
        }
    }

    fn traffic(&self) -> Traffic {
        match self {
            Place::Local(_) => Traffic::default(),
            Place::Store { wire, .. } => wire.traffic(),
        }
    }
}

/// How long each measurement may take, and how many queries it uses.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_queries: usize,
    pub min_queries: usize,
    pub sequential: Duration,
    pub concurrent: Duration,
}

pub const CONCURRENCY: [usize; 3] = [1, 4, 16];

#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub dataset: String,
    pub factory: String,
    pub nprobe: usize,
    pub mode: String,
    pub store: String,
    /// Queries measured one after another.
    pub queries: usize,
    /// Fraction of those whose ids equal FAISS's in memory, rank by rank.
    pub same_ids: f64,
    pub recall: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Queries per second at each of `CONCURRENCY`.
    pub qps: Vec<f64>,
    pub gets: f64,
    pub max_gets: u64,
    /// Round trips seen on the wire (a busy machine can split a wave).
    pub round_trips: f64,
    pub max_round_trips: u64,
    /// Waves of GETs the fetcher issued, per query: the round trips it decided on.
    pub max_waves: u64,
    /// Bytes over the wire (or read from the map) per query, the open included.
    pub bytes: f64,
    /// Bytes the searches fetched ÷ bytes of the lists they probed (worst query).
    pub fetched_over_probed: f64,
    pub peak_rss_mib: f64,
    /// Page faults of the process per query (minor, major), queries one after another:
    /// what reading a memory-mapped file costs when its pages are not mapped in.
    pub faults: (f64, f64),
}

/// What every cell of one index at one nprobe compares against.
pub struct Reference<'a> {
    pub queries: &'a [f32],
    pub d: usize,
    pub k: usize,
    pub truth: &'a [i64],
    /// FAISS in memory's ids for the same queries at this nprobe.
    pub faiss_ids: &'a [i64],
}

impl Reference<'_> {
    fn query(&self, i: usize) -> &[f32] {
        &self.queries[i * self.d..(i + 1) * self.d]
    }

    fn score(&self, cell: &mut Cell, ids: &[Vec<i64>]) {
        let k = self.k;
        let same = ids.iter().enumerate().filter(|(i, r)| **r == self.faiss_ids[i * k..(i + 1) * k]).count();
        cell.same_ids = same as f64 / ids.len() as f64;
        let hits: usize = ids
            .iter()
            .enumerate()
            .map(|(i, r)| r.iter().filter(|id| self.truth[i * k..(i + 1) * k].contains(id)).count())
            .sum();
        cell.recall = hits as f64 / (ids.len() * k) as f64;
    }
}

/// FAISS in memory: sequential latency, then threads at each concurrency.
pub fn faiss_cell(index: &InMemoryIndex, r: &Reference, nprobe: usize, budget: Budget, mut cell: Cell) -> Cell {
    let peak = PeakRss::start();
    let mut times = Vec::new();
    let mut ids = Vec::new();
    let started = Instant::now();
    while ids.len() < budget.max_queries && (ids.len() < budget.min_queries || started.elapsed() < budget.sequential) {
        let t = Instant::now();
        let (found, _) = index.search(r.query(ids.len()), r.k, nprobe).unwrap();
        times.push(t.elapsed());
        ids.push(found);
    }
    let n = ids.len();
    cell.qps = CONCURRENCY
        .iter()
        .map(|&c| {
            let pull = Pull::new(c, budget.concurrent);
            std::thread::scope(|s| {
                for _ in 0..c {
                    s.spawn(|| {
                        while let Some(i) = pull.take() {
                            index.search(r.query(i % n), r.k, nprobe).unwrap();
                        }
                    });
                }
            });
            pull.rate()
        })
        .collect();
    finish(&mut cell, r, &ids, &mut times);
    cell.peak_rss_mib = peak.mib();
    cell
}

/// Ours in `mode` from `place`.
pub async fn our_cell(
    place: &Place,
    mode: Mode,
    r: &Reference<'_>,
    nprobe: usize,
    file_size: u64,
    budget: Budget,
    mut cell: Cell,
) -> Cell {
    let peak = PeakRss::start();
    // Room for every list: warm means nothing is evicted.
    let cache_budget = file_size + (64 << 20);
    let index = Arc::new(place.open(cache_budget).await);
    if mode == Mode::Warm {
        let n = budget.max_queries.min(r.queries.len() / r.d);
        index.search(&r.queries[..n * r.d], r.k, nprobe).await.unwrap();
    }

    let mut times = Vec::new();
    let mut ids = Vec::new();
    let (mut traffic, mut gets, mut trips, mut waves, mut ratio) = (Traffic::default(), 0, 0, 0, 0f64);
    let faults_before = faults();
    let started = Instant::now();
    while ids.len() < budget.max_queries && (ids.len() < budget.min_queries || started.elapsed() < budget.sequential) {
        let before = place.traffic();
        let t = Instant::now();
        let (result, opened) = one_query(place, &index, mode, r.query(ids.len()), r.k, nprobe, cache_budget).await;
        times.push(t.elapsed());
        let used = place.traffic() - before;
        gets = gets.max(used.gets);
        trips = trips.max(used.round_trips);
        traffic.gets += used.gets;
        traffic.round_trips += used.round_trips;
        traffic.bytes += used.bytes;
        let f = result.stats.fetch;
        waves = waves.max(f.waves);
        if matches!(place, Place::Local(_)) {
            traffic.bytes += f.bytes_mapped + opened;
        }
        let probed = f.bytes + f.bytes_from_cache + f.bytes_mapped;
        if probed > 0 {
            ratio = ratio.max((f.bytes + f.bytes_mapped) as f64 / probed as f64);
        }
        ids.push(result.ids);
    }
    let n = ids.len() as f64;
    let faults_after = faults();
    cell.faults = ((faults_after.0 - faults_before.0) as f64 / n, (faults_after.1 - faults_before.1) as f64 / n);
    (cell.gets, cell.round_trips, cell.bytes) =
        (traffic.gets as f64 / n, traffic.round_trips as f64 / n, traffic.bytes as f64 / n);
    (cell.max_gets, cell.max_round_trips, cell.max_waves, cell.fetched_over_probed) = (gets, trips, waves, ratio);

    let count = ids.len();
    let queries: Arc<[f32]> = r.queries[..count * r.d].into();
    let (d, k) = (r.d, r.k);
    let mut qps = Vec::new();
    for c in CONCURRENCY {
        let pull = Arc::new(Pull::new(c, budget.concurrent));
        let tasks: Vec<_> = (0..c)
            .map(|_| {
                let (pull, index, place, queries) = (pull.clone(), index.clone(), place.clone(), queries.clone());
                tokio::spawn(async move {
                    while let Some(i) = pull.take() {
                        let q = &queries[(i % count) * d..(i % count + 1) * d];
                        one_query(&place, &index, mode, q, k, nprobe, cache_budget).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        qps.push(pull.rate());
    }
    cell.qps = qps;
    finish(&mut cell, r, &ids, &mut times);
    drop(index);
    cell.peak_rss_mib = peak.mib();
    cell
}

/// One search in `mode`; also returns the bytes a fresh open read from a local map.
async fn one_query(
    place: &Place,
    index: &IvfIndex,
    mode: Mode,
    q: &[f32],
    k: usize,
    nprobe: usize,
    cache_budget: u64,
) -> (SearchResult, u64) {
    match mode {
        Mode::Fresh => {
            let fresh = place.open(cache_budget).await;
            let opened = if matches!(place, Place::Local(_)) { fresh.info().lists.start } else { 0 };
            (fresh.search(q, k, nprobe).await.unwrap(), opened)
        }
        Mode::ColdHeader => {
            if let Some(cache) = index.cache() {
                cache.clear();
            }
            (index.search(q, k, nprobe).await.unwrap(), 0)
        }
        Mode::Warm | Mode::Faiss => (index.search(q, k, nprobe).await.unwrap(), 0),
    }
}

/// Hands query numbers to `c` workers until the time is up (and each had two).
struct Pull {
    next: AtomicUsize,
    workers: usize,
    started: Instant,
    deadline: Instant,
}

impl Pull {
    fn new(workers: usize, time: Duration) -> Pull {
        let started = Instant::now();
        Pull { next: AtomicUsize::new(0), workers, started, deadline: started + time }
    }

    fn take(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < 2 * self.workers || Instant::now() < self.deadline).then_some(i)
    }

    /// Queries per second completed; each worker's last `take` got no query.
    fn rate(&self) -> f64 {
        (self.next.load(Ordering::Relaxed) - self.workers) as f64 / self.started.elapsed().as_secs_f64()
    }
}

fn finish(cell: &mut Cell, r: &Reference, ids: &[Vec<i64>], times: &mut [Duration]) {
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3;
    cell.p50_ms = at(0.5);
    cell.p99_ms = at(0.99);
    cell.queries = ids.len();
    r.score(cell, ids);
}

/// The process's page faults so far, minor and major (`/proc/self/stat`).
fn faults() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or(vec![], |(_, rest)| rest.split(' ').collect());
    let field = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    (field(7), field(9))
}

/// The process's peak resident set over a span: the kernel's high-water mark, reset at
/// the start.
struct PeakRss;

impl PeakRss {
    fn start() -> PeakRss {
        // "5" resets VmHWM to the current RSS (Linux 4.0+).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        PeakRss
    }

    fn mib(&self) -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}
