//! The README's main job: Fashion-MNIST (Debian's `dataset-fashion-mnist`) indexed into a
//! local folder, then searched header-only and compared with FAISS and exact search.

use std::io::Read;
use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use datafusion_faiss::InMemoryIndex;

use super::build::{MetricArg, Spec};
use super::{CliResult, Location};

const DATASET: &str = "/usr/share/datasets/fashion-mnist";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder of the Parquet table and its index; later runs reuse what is there.
    #[arg(long, default_value = ".work/demo")]
    dir: PathBuf,
    #[arg(long, default_value_t = 1024)]
    nlist: usize,
    #[arg(long, default_value_t = 16)]
    nprobe: usize,
    /// Test images searched header-only, next to FAISS's own search of the whole file.
    #[arg(long, default_value_t = 200)]
    queries: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Test images run through SQL with the index and with the exact plan.
    #[arg(long, default_value_t = 10)]
    sql_queries: usize,
}

pub async fn run(args: DemoArgs) -> CliResult {
    let started = Instant::now();
    let (base, d) = read_idx(&FsPath::new(DATASET).join("train-images-idx3-ubyte.gz"))?;
    let (test, _) = read_idx(&FsPath::new(DATASET).join("t10k-images-idx3-ubyte.gz"))?;
    let n = base.len() / d;
    let labels = read_labels(&FsPath::new(DATASET).join("train-labels-idx1-ubyte.gz"), n)?;
    let test_labels = read_labels(&FsPath::new(DATASET).join("t10k-labels-idx1-ubyte.gz"), test.len() / d)?;
    let nq = args.queries.min(test.len() / d);
    let queries = &test[..nq * d];
    println!("data        Fashion-MNIST: {n} images, {} test images, d={d}", test.len() / d);

    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let table = args.dir.join("fashion-mnist.parquet");
    if table.exists() {
        println!("table       {} (reused)", table.display());
    } else {
        super::sql::write_parquet(&table, &base, &labels, d)?;
        println!("table       {} written: id, label, embedding FLOAT[{d}]", table.display());
    }
    let index_file = args.dir.join(format!("fashion-mnist-IVF{}-Flat.faiss", args.nlist));
    let at = Location::parse(&index_file.to_string_lossy())?;
    if index_file.exists() {
        println!("index       {} (reused)", index_file.display());
    } else {
        let ctx = super::context()?;
        super::build::register_parquet(&ctx, "input", &table.to_string_lossy()).await?;
        let spec = Spec {
            query: "SELECT id, embedding FROM input".into(),
            key: Some("id".into()),
            vector: "embedding".into(),
            factory: format!("IVF{},Flat", args.nlist),
            metric: MetricArg::L2,
            train_size: None,
            seed: 1,
            trained_from: None,
        };
        println!(
            "> datafusion-faiss build --input {} --factory {} --output {}",
            table.display(),
            spec.factory,
            index_file.display()
        );
        super::build::build(&ctx, &spec, &at).await?;
    }
    let searched = Instant::now();
    let t = Instant::now();
    let index = at.open().await?;
    let info = index.info().clone();
    let open = index.open_stats();
    println!(
        "\nopened      {} {} header-only in {:.1} ms: {} GETs, {} B read of {} B ({} B header)",
        index_file.display(),
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
        let nq = args.sql_queries.min(test.len() / d);
        super::sql::run(&table, &index_file, &test[..nq * d], &test_labels, d, args.k, args.nprobe).await?;
    }
    println!(
        "done        in {:.1} s ({:.1} s after the build)",
        started.elapsed().as_secs_f64(),
        searched.elapsed().as_secs_f64()
    );
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
