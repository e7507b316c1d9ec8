//! The README's main job: Fashion-MNIST (Debian's `dataset-fashion-mnist`) indexed into a
//! local folder, then searched header-only and compared with FAISS and exact search.

use std::io::Read;
use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use datafusion_faiss::{InMemoryIndex, IvfIndexBuilder, Metric};
use object_store::ObjectStoreExt;

use super::{CliResult, Location};

const DATASET: &str = "/usr/share/datasets/fashion-mnist";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the index goes (reused by later runs): a local path, s3://bucket/key
    /// (AWS_* variables configure the endpoint and keys) or memory://key.
    #[arg(long, default_value = ".work/demo/fashion-mnist-IVF1024-Flat.faiss")]
    index: String,
    #[arg(long, default_value_t = 1024)]
    nlist: usize,
    #[arg(long, default_value_t = 16)]
    nprobe: usize,
    /// Test images used as queries.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Queries of the SQL comparison (index plan vs exact plan); 0 skips it.
    #[arg(long, default_value_t = 20)]
    sql_queries: usize,
    /// The Parquet table of the SQL comparison (written on first use).
    #[arg(long, default_value = ".work/demo/fashion-mnist.parquet")]
    table: String,
}

pub async fn run(args: DemoArgs) -> CliResult {
    let (base, d) = read_idx(&FsPath::new(DATASET).join("train-images-idx3-ubyte.gz"))?;
    let (test, _) = read_idx(&FsPath::new(DATASET).join("t10k-images-idx3-ubyte.gz"))?;
    let n = base.len() / d;
    let nq = args.queries.min(test.len() / d);
    let queries = &test[..nq * d];
    println!("data        Fashion-MNIST: {n} base vectors, {nq} queries, d={d}");

    let at = Location::parse(&args.index)?;
    if let Some(dir) = at.file.as_ref().and_then(|f| f.parent()) {
        std::fs::create_dir_all(dir)?;
    }
    if at.store.head(&at.path).await.is_err() {
        let t = Instant::now();
        let factory = format!("IVF{},Flat", args.nlist);
        let builder = tokio::task::spawn_blocking({
            let base = base.clone();
            move || -> datafusion_faiss::Result<IvfIndexBuilder> {
                let mut b = IvfIndexBuilder::new(d, &factory, Metric::L2)?;
                b.train(&base)?;
                b.add(&base, &(0..n as i64).collect::<Vec<_>>())?;
                Ok(b)
            }
        })
        .await??;
        builder.write(at.store.clone(), &at.path).await?;
        println!("built       {} in {:.1} s", args.index, t.elapsed().as_secs_f64());
    }

    let t = Instant::now();
    let index = at.open().await?;
    let info = index.info().clone();
    let open = index.open_stats();
    println!(
        "opened      {} {} header-only in {:.1} ms: {} GETs, {} B read of {} B ({} B header)",
        args.index,
        info.description,
        t.elapsed().as_secs_f64() * 1e3,
        open.gets,
        open.bytes,
        info.file_size,
        info.lists.start
    );

    let exact = exact_knn(&base, queries, d, args.k);
    let reference = InMemoryIndex::load(at.store.clone(), &at.path).await?;
    let mut faiss_ids = Vec::with_capacity(nq * args.k);
    let mut faiss_time = Duration::ZERO;
    for q in queries.chunks(d) {
        let t = Instant::now();
        faiss_ids.extend(reference.search(q, args.k, args.nprobe)?.0);
        faiss_time += t.elapsed();
    }

    // Each query twice: cold (list cache emptied first; the header stays) and then warm
    // (its lists cached). A mapped file has no cache: both read the map.
    let (mut cold, mut warm) = (Pass::default(), Pass::default());
    for q in queries.chunks(d) {
        if let Some(cache) = index.cache() {
            cache.clear();
        }
        for pass in [&mut cold, &mut warm] {
            let t = Instant::now();
            let r = index.search(q, args.k, args.nprobe).await?;
            pass.times.push(t.elapsed());
            pass.ids.extend(r.ids);
            let f = r.stats.fetch;
            pass.gets += f.gets;
            pass.bytes += f.bytes + f.bytes_mapped;
            pass.probed += r.stats.lists_probed;
            pass.probed_bytes += f.bytes + f.bytes_from_cache + f.bytes_mapped;
        }
    }

    let same = cold.ids.iter().zip(&faiss_ids).filter(|(a, b)| a == b).count();
    println!("first query {:?}", &cold.ids[..args.k]);
    println!(
        "recall@{}   ours {:.4}, FAISS in memory {:.4} (vs exact search); ids equal to FAISS: {:.4}",
        args.k,
        recall(&cold.ids, &exact, args.k),
        recall(&faiss_ids, &exact, args.k),
        same as f64 / cold.ids.len() as f64
    );
    let per = |x: u64| x as f64 / nq as f64;
    println!(
        "io/query    nprobe {}, cold: {:.1} lists, {}, {:.0} B read = {:.3} x probed-list bytes = {:.3}% of the file",
        args.nprobe,
        per(cold.probed),
        if index.cache().is_some() {
            format!("{:.1} GETs in one round trip", per(cold.gets))
        } else {
            "memory-mapped".into()
        },
        per(cold.bytes),
        cold.bytes as f64 / cold.probed_bytes.max(1) as f64,
        100.0 * per(cold.bytes) / info.file_size as f64,
    );
    println!("io/query    warm: {:.1} GETs, {:.0} B read", per(warm.gets), per(warm.bytes));
    println!(
        "latency     ours cold p50 {:.2} ms / p99 {:.2} ms, warm p50 {:.2} ms / p99 {:.2} ms; FAISS in memory {:.2} ms mean",
        cold.percentile(0.5),
        cold.percentile(0.99),
        warm.percentile(0.5),
        warm.percentile(0.99),
        faiss_time.as_secs_f64() * 1e3 / nq as f64
    );

    if args.sql_queries > 0 {
        let table = FsPath::new(&args.table);
        if let Some(dir) = table.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let labels = read_labels(&FsPath::new(DATASET).join("train-labels-idx1-ubyte.gz"), n)?;
        super::sql::write_parquet(table, &base, &labels, d)?;
        let nq = args.sql_queries.min(test.len() / d);
        super::sql::compare(table, &args.index, &at, &test[..nq * d], d, args.k, args.nprobe).await?;
    }
    Ok(())
}

#[derive(Default)]
struct Pass {
    times: Vec<Duration>,
    ids: Vec<i64>,
    gets: u64,
    bytes: u64,
    probed: u64,
    probed_bytes: u64,
}

impl Pass {
    /// Latency percentile in milliseconds.
    fn percentile(&self, p: f64) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        t[((t.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
    }
}

/// Reads an IDX image file (gzip): `n × (rows·cols)` floats.
fn read_idx(file: &FsPath) -> CliResult<(Vec<f32>, usize)> {
    let raw = std::fs::File::open(file)
        .map_err(|e| format!("{}: {e} (install dataset-fashion-mnist: scripts/setup.sh)", file.display()))?;
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(raw).read_to_end(&mut data).map_err(|e| format!("{}: {e}", file.display()))?;
    let word = |i: usize| u32::from_be_bytes([data[4 * i], data[4 * i + 1], data[4 * i + 2], data[4 * i + 3]]) as usize;
    if data.len() < 16 || word(0) != 0x803 {
        return Err(format!("{}: not an IDX image file", file.display()).into());
    }
    let (n, d) = (word(1), word(2) * word(3));
    if data.len() != 16 + n * d {
        return Err(format!("{}: expected {} bytes, found {}", file.display(), 16 + n * d, data.len()).into());
    }
    Ok((data[16..].iter().map(|&b| b as f32).collect(), d))
}

/// Reads an IDX label file (gzip) of `n` labels.
fn read_labels(file: &FsPath, n: usize) -> CliResult<Vec<u8>> {
    let raw = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(raw).read_to_end(&mut data).map_err(|e| format!("{}: {e}", file.display()))?;
    if data.len() != 8 + n || data[..4] != [0, 0, 8, 1] {
        return Err(format!("{}: not an IDX label file of {n} labels", file.display()).into());
    }
    Ok(data.split_off(8))
}

/// Exact k nearest neighbours by L2, over all base vectors (two threads).
fn exact_knn(base: &[f32], queries: &[f32], d: usize, k: usize) -> Vec<i64> {
    let knn = |q: &[f32]| {
        let mut best: Vec<(f32, i64)> = base
            .chunks(d)
            .enumerate()
            .map(|(i, v)| (v.iter().zip(q).map(|(a, b)| (a - b) * (a - b)).sum::<f32>(), i as i64))
            .collect();
        best.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        best.truncate(k);
        best.sort_by(|a, b| a.0.total_cmp(&b.0));
        best.into_iter().map(|(_, i)| i).collect::<Vec<_>>()
    };
    let half = (queries.len() / d).div_ceil(2) * d;
    let (a, b) = queries.split_at(half.min(queries.len()));
    std::thread::scope(|s| {
        let left = s.spawn(|| a.chunks(d).flat_map(knn).collect::<Vec<_>>());
        let mut out: Vec<i64> = b.chunks(d).flat_map(knn).collect();
        let mut all = left.join().expect("exact search thread panicked");
        all.append(&mut out);
        all
    })
}

/// Fraction of the true k nearest found, per query, averaged.
fn recall(found: &[i64], exact: &[i64], k: usize) -> f64 {
    let hits: usize =
        found.chunks(k).zip(exact.chunks(k)).map(|(f, e)| f.iter().filter(|id| e.contains(id)).count()).sum();
    hits as f64 / exact.len() as f64
}
