//! The report's shard rows: 1M × 128 vectors in 8 pyarrow-written Parquet files, searched
//! through one IVF1024,Flat index of the whole table and through 8 per-file IVF128,Flat
//! shards (the same lists in all, so nprobe p on the one index scans about as many codes
//! as nprobe p / 8 on each shard), locally and through Ballista with 2 executors.
//! Writes `.work/bench/shards.md` (`scripts/bench.sh` appends it to the report).
//!
//! `cargo bench --bench shards` (in test mode, `cargo test`, it runs on 40,000 rows).
#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use datafusion_faiss::{InMemoryIndex, IvfIndexBuilder, Metric};
use futures::StreamExt;
use object_store::local::LocalFileSystem;

const D: usize = 128;
const FILES: usize = 8;
const NLIST: usize = 1024;

struct Setup {
    rows: usize,
    queries: usize,
    timed: usize,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read<T: Copy>(path: &Path, parse: fn(&[u8]) -> T, width: usize) -> Vec<T> {
    std::fs::read(path).unwrap().chunks_exact(width).map(parse).collect()
}

/// The table (pyarrow, 8 files), its vectors and ids in table order.
fn table(dir: &Path, rows: usize) -> (PathBuf, Vec<f32>, Vec<i64>) {
    let folder = dir.join("docs");
    if !dir.join("docs.ids").exists() {
        let status = std::process::Command::new(root().join(".work/venv/bin/python"))
            .arg(root().join("tests/python/write_pyarrow.py"))
            .arg(&folder)
            .args([rows.to_string(), D.to_string(), FILES.to_string(), "3".into()])
            .status()
            .expect("running .work/venv/bin/python (pyarrow): run scripts/setup.sh");
        assert!(status.success());
    }
    let x = read(&dir.join("docs.f32"), |b| f32::from_le_bytes(b.try_into().unwrap()), 4);
    let ids = read(&dir.join("docs.ids"), |b| i64::from_le_bytes(b.try_into().unwrap()), 8);
    (folder, x, ids)
}

/// An IVF`nlist`,Flat index of `x` (ids: positions) at `out`, unless it is there.
async fn index(x: &[f32], nlist: usize, out: &Path) {
    if out.exists() {
        return;
    }
    let n = x.len() / D;
    let train = &x[..(64 * nlist).min(n) * D];
    let x = x.to_vec();
    let train = train.to_vec();
    let builder = tokio::task::spawn_blocking(move || {
        let mut b = IvfIndexBuilder::new(D, &format!("IVF{nlist},Flat"), Metric::L2).unwrap().threads(2);
        b.train(&train).unwrap();
        let ids: Vec<i64> = (0..n as i64).collect();
        b.add(&x, &ids).unwrap();
        b
    })
    .await
    .unwrap();
    let store = Arc::new(LocalFileSystem::new());
    let tmp = out.with_extension("tmp");
    builder.write(store, &object_store::path::Path::from_absolute_path(&tmp).unwrap()).await.unwrap();
    std::fs::rename(tmp, out).unwrap();
}

fn sql(table: &str, q: &[f32]) -> String {
    let v: Vec<String> = q.iter().map(|x| x.to_string()).collect();
    format!("SELECT id, vec_distance(embedding, '[{}]') AS d FROM {table} ORDER BY d LIMIT 10", v.join(", "))
}

async fn ids(ctx: &SessionContext, sql: &str) -> Vec<i64> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()).collect()
}

struct Cell {
    p50_ms: f64,
    recall: f64,
    qps16: f64,
}

/// p50 of one query at a time over `timed` queries, recall@10 against `truth` (ids), and
/// queries per second with 16 in flight.
async fn measure(ctx: &SessionContext, table: &str, queries: &[f32], truth: &[Vec<i64>], timed: usize) -> Cell {
    let mut times = vec![];
    let mut hits = 0;
    for (q, want) in queries.chunks(D).zip(truth).take(timed) {
        let t = Instant::now();
        let got = ids(ctx, &sql(table, q)).await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        hits += got.iter().filter(|id| want.contains(id)).count();
    }
    times.sort_by(f64::total_cmp);
    let statements: Vec<String> = queries.chunks(D).take(timed).map(|q| sql(table, q)).collect();
    let t = Instant::now();
    let run = futures::stream::iter(statements).map(|s| {
        let ctx = ctx.clone();
        async move { ids(&ctx, &s).await }
    });
    let done: Vec<Vec<i64>> = run.buffer_unordered(16).collect().await;
    let qps16 = done.len() as f64 / t.elapsed().as_secs_f64();
    Cell { p50_ms: times[times.len() / 2], recall: hits as f64 / (10 * times.len()) as f64, qps16 }
}

async fn set(ctx: &SessionContext, sql: &str) {
    ctx.sql(sql).await.unwrap().collect().await.unwrap();
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let setup = match bench {
        true => Setup { rows: 1_000_000, queries: 300, timed: 300 },
        false => Setup { rows: 40_000, queries: 20, timed: 20 },
    };
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(run(setup));
}

async fn run(setup: Setup) {
    let dir = root().join(".work/bench/shards").join(setup.rows.to_string());
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let t = Instant::now();
    let (folder, x, table_ids) = table(&dir, setup.rows);
    let nlist = if setup.rows >= 1_000_000 { NLIST } else { 64 };
    let one = dir.join("one.faiss");
    index(&x, nlist, &one).await;
    let per_file = setup.rows / FILES;
    for f in 0..FILES {
        let rows = &x[f * per_file * D..(f + 1) * per_file * D];
        index(rows, nlist / FILES, &dir.join(format!("shards/part-{f:02}.faiss"))).await;
    }
    eprintln!("data and indexes ready in {:.0} s", t.elapsed().as_secs_f64());

    // Queries near the data (rows with noise); the truth probes every list of the one index.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut queries = Vec::with_capacity(setup.queries * D);
    for _ in 0..setup.queries {
        let row = (next() % setup.rows as u64) as usize;
        queries.extend(x[row * D..(row + 1) * D].iter().map(|v| v + ((next() % 1000) as f32 / 1000.0 - 0.5) * 0.6));
    }
    let reference = InMemoryIndex::from_bytes(&std::fs::read(&one).unwrap()).unwrap();
    let (truth, _) = reference.search(&queries, 10, nlist).unwrap();
    let truth: Vec<Vec<i64>> = truth.chunks(10).map(|r| r.iter().map(|&p| table_ids[p as usize]).collect()).collect();
    drop(x);

    let create = |name: &str, index: &Path| {
        format!(
            "CREATE EXTERNAL TABLE {name} STORED AS FAISS LOCATION '{}/' OPTIONS ('index' '{}', 'vector' 'embedding')",
            folder.display(),
            index.display()
        )
    };
    let shards = format!("{}/", dir.join("shards").display());
    let local = SessionContext::new();
    datafusion_faiss::sql::register_all(&local);
    set(&local, &create("one", &one)).await;
    set(&local, &create("sharded", Path::new(&shards))).await;

    let mut report = String::new();
    writeln!(report, "\n## Shards ({} rows × {D}, {FILES} pyarrow files)\n", setup.rows).unwrap();
    writeln!(
        report,
        "One IVF{nlist},Flat index of the whole table against {FILES} per-file IVF{},Flat shards: the same number of lists, \
         so nprobe p on the one index compares with nprobe p / {FILES} on each shard (about the same codes scanned). \
         {} queries (table rows with noise), recall@10 against the exact neighbours; p50 one query at a time; \
         throughput with 16 queries in flight. Ballista: this crate's scheduler and 2 executors (2 cores each) on 127.0.0.1, \
         the same local files.\n",
        nlist / FILES,
        setup.timed
    )
    .unwrap();
    writeln!(report, "| plan | index | nprobe | recall@10 | p50 | queries/s (16 in flight) |").unwrap();
    writeln!(report, "|---|---|---|---|---|---|").unwrap();
    let mut row = |plan: &str, index: &str, nprobe: usize, c: &Cell| {
        writeln!(report, "| {plan} | {index} | {nprobe} | {:.4} | {:.1} ms | {:.1} |", c.recall, c.p50_ms, c.qps16).unwrap();
        eprintln!("{plan} {index} nprobe {nprobe}: recall {:.4} p50 {:.1} ms qps16 {:.1}", c.recall, c.p50_ms, c.qps16);
    };
    for p in [8, 16, 32] {
        set(&local, &format!("SET faiss.nprobe = {p}")).await;
        let c = measure(&local, "one", &queries, &truth, setup.timed).await;
        row("local", &format!("one IVF{nlist}"), p, &c);
        set(&local, &format!("SET faiss.nprobe = {}", p / FILES)).await;
        let c = measure(&local, "sharded", &queries, &truth, setup.timed).await;
        row("local", &format!("{FILES} shards IVF{}", nlist / FILES), p / FILES, &c);
    }

    let cluster = cluster::Cluster::start(2, &[]);
    let remote = cluster.client().await;
    set(&remote, &create("one", &one)).await;
    set(&remote, &create("sharded", Path::new(&shards))).await;
    set(&remote, "SET faiss.nprobe = 16").await;
    let c = measure(&remote, "one", &queries, &truth, setup.timed).await;
    row("Ballista, 2 executors", &format!("one IVF{nlist}"), 16, &c);
    set(&remote, &format!("SET faiss.nprobe = {}", 16 / FILES)).await;
    let c = measure(&remote, "sharded", &queries, &truth, setup.timed).await;
    row("Ballista, 2 executors", &format!("{FILES} shards IVF{}", nlist / FILES), 16 / FILES, &c);

    let out = root().join(".work/bench/shards.md");
    std::fs::write(&out, report).unwrap();
    eprintln!("wrote {}", out.display());
}
