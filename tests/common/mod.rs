//! Shared test helpers: deterministic data, index fixtures (written by this crate and by
//! Python FAISS), stores, and comparison against FAISS's own search.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use datafusion_faiss::{InMemoryIndex, IvfIndex, IvfIndexBuilder, ListCache, Metric, OpenOptions, SearchResult};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// The repository's top folder (the tests of every crate of the workspace share it).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|p| p.join("scripts/s3.sh").exists()).unwrap_or(&here).to_path_buf()
}

/// Deterministic clustered vectors: `n × d`, around `centers` random centres.
pub fn clustered(n: usize, d: usize, centers: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let c: Vec<f32> = (0..centers * d).map(|_| rng.unit() * 10.0).collect();
    let mut out = Vec::with_capacity(n * d);
    for _ in 0..n {
        let k = (rng.next() % centers as u64) as usize;
        for j in 0..d {
            out.push(c[k * d + j] + rng.unit());
        }
    }
    out
}

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

pub fn ids(n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| i * 3 + 11).collect()
}

/// Index bytes built by this crate.
pub async fn build_ours(x: &[f32], d: usize, factory: &str, metric: Metric) -> Vec<u8> {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = Path::from("built.faiss");
    let (x, factory) = (x.to_vec(), factory.to_string());
    let builder = tokio::task::spawn_blocking(move || {
        let mut b = IvfIndexBuilder::new(d, &factory, metric).unwrap().threads(2);
        b.train(&x).unwrap();
        b.add(&x, &ids(x.len() / d)).unwrap();
        b
    })
    .await
    .unwrap();
    builder.write(store.clone(), &path).await.unwrap();
    store.get(&path).await.unwrap().bytes().await.unwrap().to_vec()
}

/// Index bytes written by Debian's python3-faiss (FAISS 1.7.3).
pub fn build_python(x: &[f32], d: usize, factory: &str, metric: Metric) -> Vec<u8> {
    write_with_python(std::path::Path::new("/usr/bin/python3"), x, d, factory, metric)
}

/// Index bytes written by pip's faiss-cpu (the newest release, in .work/venv): the FAISS
/// most users write their files with.
pub fn build_pip(x: &[f32], d: usize, factory: &str, metric: Metric) -> Vec<u8> {
    write_with_python(&root().join(".work/venv/bin/python"), x, d, factory, metric)
}

/// Index bytes written by pip's faiss-cpu with `index.add(x)`: ids are row positions.
pub fn build_pip_positions(x: &[f32], d: usize, factory: &str, metric: Metric) -> Vec<u8> {
    write_with_python_as(&root().join(".work/venv/bin/python"), x, d, factory, metric, &["positions"])
}

fn write_with_python(python: &std::path::Path, x: &[f32], d: usize, factory: &str, metric: Metric) -> Vec<u8> {
    write_with_python_as(python, x, d, factory, metric, &[])
}

fn write_with_python_as(
    python: &std::path::Path,
    x: &[f32],
    d: usize,
    factory: &str,
    metric: Metric,
    extra: &[&str],
) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let vectors = dir.path().join("x.f32");
    let out = dir.path().join("index.faiss");
    std::fs::write(&vectors, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let script = root().join("tests/python/write_index.py");
    let metric = if metric == Metric::L2 { "l2" } else { "ip" };
    let status = Command::new(python)
        .args([
            script.as_os_str(),
            vectors.as_os_str(),
            d.to_string().as_ref(),
            factory.as_ref(),
            metric.as_ref(),
            out.as_os_str(),
        ])
        .args(extra)
        .status()
        .unwrap_or_else(|e| panic!("running {} (FAISS for Python): {e}: run scripts/setup.sh", python.display()));
    assert!(status.success(), "{} failed to write {factory}", python.display());
    std::fs::read(out).unwrap()
}

pub async fn memory_store_with(bytes: &[u8], name: &str) -> (Arc<dyn ObjectStore>, Path) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let path = Path::from(name);
    store.put(&path, PutPayload::from(bytes.to_vec())).await.unwrap();
    (store, path)
}

/// FAISS's own search over the whole file.
pub fn reference(bytes: &[u8], queries: &[f32], k: usize, nprobe: usize) -> (Vec<i64>, Vec<f32>) {
    InMemoryIndex::from_bytes(bytes).unwrap().search(queries, k, nprobe).unwrap()
}

/// Same ids rank by rank, distances equal within 1e-5 relative; ids of equal distance
/// may swap, and a tie at the k-th place may be broken either way.
pub fn assert_same(ours: &SearchResult, reference: &(Vec<i64>, Vec<f32>), what: &str) {
    let (ref_ids, ref_dis) = reference;
    let k = ours.k;
    assert_eq!(ours.ids.len(), ref_ids.len(), "{what}: result length");
    let close = |a: f32, b: f32| a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0);
    for (q, (row, ref_row)) in ours.ids.chunks(k).zip(ref_ids.chunks(k)).enumerate() {
        let dis = &ours.distances[q * k..(q + 1) * k];
        let ref_d = &ref_dis[q * k..(q + 1) * k];
        for r in 0..k {
            assert!(close(dis[r], ref_d[r]), "{what}: query {q} rank {r}: distance {} vs FAISS {}", dis[r], ref_d[r]);
            if row[r] != ref_row[r] {
                let tied =
                    (0..k).any(|s| ref_row[s] == row[r] && close(ref_d[s], dis[r])) || close(dis[r], ref_d[k - 1]);
                assert!(
                    tied,
                    "{what}: query {q} rank {r}: id {} vs FAISS {} (distance {})",
                    row[r], ref_row[r], dis[r]
                );
            }
        }
    }
}

/// A pyarrow-written table (tests/python/write_pyarrow.py) of `rows` rows in `files` files (one file: `OUT` is the file),
/// with its vectors and ids in table order.
pub fn pyarrow_table(out: &std::path::Path, rows: usize, d: usize, files: usize, seed: u64) -> (Vec<f32>, Vec<i64>) {
    let python = root().join(".work/venv/bin/python");
    let script = root().join("tests/python/write_pyarrow.py");
    let status = Command::new(&python)
        .args([script.as_os_str(), out.as_os_str()])
        .args([rows.to_string(), d.to_string(), files.to_string(), seed.to_string()])
        .status()
        .expect("running .work/venv/bin/python (pyarrow): run scripts/setup.sh");
    assert!(status.success(), "pyarrow failed to write {out:?}");
    let side = |ext: &str| std::fs::read(format!("{}.{ext}", out.to_str().unwrap().trim_end_matches('/'))).unwrap();
    let x = side("f32").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let ids = side("ids").chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    (x, ids)
}

pub mod proxy;
pub mod tables;

/// A session with the extension registered that lists folders anew each query (DataFusion keeps a folder's listing
/// forever by default; the exact plan must see the change too).
pub fn changing_context(store: Option<(&str, Arc<dyn ObjectStore>)>) -> datafusion::prelude::SessionContext {
    let caches = datafusion::execution::cache::cache_manager::CacheManagerConfig::default().with_list_files_cache_limit(0);
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new().with_cache_manager(caches).build_arc().unwrap();
    let ctx = datafusion::prelude::SessionContext::new_with_config_rt(Default::default(), runtime);
    if let Some((url, store)) = store {
        ctx.register_object_store(datafusion::execution::object_store::ObjectStoreUrl::parse(url).unwrap().as_ref(), store);
    }
    datafusion_faiss::sql::register_all(&ctx);
    ctx
}

/// `sql`'s result as a printed table.
pub async fn text(ctx: &datafusion::prelude::SessionContext, sql: &str) -> String {
    let batches: Vec<datafusion::arrow::array::RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

/// `sql` through the index and through the exact plan: the same rows, and some.
pub async fn same_as_exact(ctx: &datafusion::prelude::SessionContext, sql: &str, what: &str) {
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    let indexed = text(ctx, sql).await;
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    let exact = text(ctx, sql).await;
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    assert!(exact.lines().count() > 4, "{what}: {sql}: {exact}");
    assert_eq!(indexed, exact, "{what}: {sql}");
}


/// Index bytes written by pip's faiss-cpu (`factory`, L2) over `x` (`d` wide): with `ids`,
/// or numbered by position; `dir` holds the files passed to Python.
pub fn pip_index(x: &[f32], d: usize, factory: &str, ids: Option<&[i64]>, dir: &std::path::Path) -> Vec<u8> {
    let vectors = dir.join("x.f32");
    let ids_file = dir.join("ids.i64");
    let out = dir.join("pip.faiss");
    std::fs::write(&vectors, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let extra = match ids {
        Some(ids) => {
            std::fs::write(&ids_file, ids.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            format!("ids={}", ids_file.display())
        }
        None => "positions".into(),
    };
    let status = Command::new(root().join(".work/venv/bin/python"))
        .arg(root().join("tests/python/write_index.py"))
        .args([vectors.as_os_str(), d.to_string().as_ref(), factory.as_ref(), "l2".as_ref(), out.as_os_str()])
        .arg(extra)
        .status()
        .unwrap();
    assert!(status.success(), "pip faiss-cpu failed to write {factory}");
    std::fs::read(out).unwrap()
}

/// `CREATE EXTERNAL TABLE name STORED AS FAISS` over `table` (Parquet) and `index`, its
/// vectors in `embedding`, keyed by `id` or (without `key`) by row position.
pub async fn create(ctx: &datafusion::prelude::SessionContext, name: &str, table: &str, index: &str, key: bool) {
    let key = if key { "'key' 'id', " } else { "" };
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE {name} STORED AS FAISS LOCATION '{table}' \
         OPTIONS ('index' '{index}', {key}'vector' 'embedding')"
    ))
    .await
    .unwrap();
}

/// Index bytes of `x` (`d` wide) under `ids` (`None`: FAISS numbers them 0.., their
/// positions), built by this crate.
pub async fn index_bytes(x: &[f32], d: usize, ids: Option<&[i64]>, factory: &str) -> Vec<u8> {
    let (x, ids, factory) = (x.to_vec(), ids.map(|i| i.to_vec()), factory.to_string());
    let builder = tokio::task::spawn_blocking(move || {
        let mut b = IvfIndexBuilder::new(d, &factory, Metric::L2).unwrap().threads(2);
        b.train(&x).unwrap();
        let positions: Vec<i64> = (0..(x.len() / d) as i64).collect();
        b.add(&x, ids.as_deref().unwrap_or(&positions)).unwrap();
        b
    })
    .await
    .unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let path = object_store::path::Path::from("i.faiss");
    builder.write(store.clone(), &path).await.unwrap();
    store.get(&path).await.unwrap().bytes().await.unwrap().to_vec()
}

/// The index operator's (scan or batch search) metrics line of EXPLAIN ANALYZE, e.g. `gets=3`.
pub async fn metric(ctx: &datafusion::prelude::SessionContext, sql: &str, name: &str) -> usize {
    let batches = ctx.sql(&format!("EXPLAIN ANALYZE {sql}")).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    let line = text
        .lines()
        .find(|l| l.contains("IvfTopKExec") || l.contains("IvfKnnExec"))
        .unwrap_or_else(|| panic!("no index scan in {text}"));
    // Whole names among the metrics only: `waves=` ends `table_waves=`, and the
    // operator's own text has `nprobe=`.
    let metrics = line.split("metrics=[").nth(1).unwrap_or_else(|| panic!("no metrics in {line}"));
    let value = metrics
        .split(", ")
        .find_map(|m| m.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let value = value.split([',', ']']).next().unwrap().trim();
    // DataFusion prints counts from 1000 on as "2.30 K".
    let (number, scale) = match value.split_once(' ') {
        Some((n, "K")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        _ => (value, 1.0),
    };
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("{name}={value} in {line}"));
    (number * scale).round() as usize
}

/// The S3 test server started by `scripts/s3.sh start` (via `make test`), as a store.
pub fn s3_store() -> Arc<dyn ObjectStore> {
    s3_store_with(None, Default::default(), Default::default())
}

/// Address of the S3 test server.
pub fn s3_addr() -> std::net::SocketAddr {
    s3_var("DFF_S3_ENDPOINT").trim_start_matches("http://").parse().expect("DFF_S3_ENDPOINT is http://IP:PORT")
}

/// The S3 test server's bucket through `endpoint` (e.g. a fault proxy), with retry and
/// client settings.
pub fn s3_store_with(
    endpoint: Option<String>,
    retry: object_store::RetryConfig,
    client: object_store::ClientOptions,
) -> Arc<dyn ObjectStore> {
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint.unwrap_or_else(|| s3_var("DFF_S3_ENDPOINT")))
        .with_allow_http(true)
        .with_bucket_name(s3_var("DFF_S3_BUCKET"))
        .with_region("us-east-1")
        .with_access_key_id(s3_var("DFF_S3_KEY"))
        .with_secret_access_key(s3_var("DFF_S3_SECRET"))
        .with_retry(retry)
        .with_client_options(client.with_allow_http(true))
        .build()
        .expect("S3 store");
    Arc::new(store)
}

pub fn s3_bucket() -> String {
    s3_var("DFF_S3_BUCKET")
}

pub fn s3_var(name: &str) -> String {
    let env_file = root().join(".work/s3/env");
    let from_file = std::fs::read_to_string(&env_file).unwrap_or_default();
    std::env::var(name)
        .ok()
        .or_else(|| from_file.lines().find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_string)))
        .unwrap_or_else(|| panic!("S3 test server not running ({name} unset, no {env_file:?}): run scripts/test.sh or scripts/s3.sh start"))
}

/// A path no other test run uses.
pub fn unique_path(name: &str) -> Path {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    Path::from(format!("run-{}-{nanos}/{name}", std::process::id()))
}

/// 64 concurrent searches of one query, then of 64 different ones, on an index opened
/// with a cache an eighth of its size: every result equals FAISS, each list is fetched at
/// most once while in use (single-flight), and the cache stays within its budget.
pub async fn concurrent_within_budget(store: Arc<dyn ObjectStore>, path: &Path, bytes: Vec<u8>) {
    let bytes = Arc::new(bytes);
    let budget = bytes.len() as u64 / 8;
    let cache = ListCache::new(budget);
    let options = OpenOptions { cache: Some(cache.clone()), ..Default::default() };
    let index = Arc::new(IvfIndex::open_with(store, path, options).await.unwrap());
    let d = index.info().dimension;

    // Every search probes the same lists: single-flight must fetch each once.
    let q = clustered(1, d, 12, 34);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (index, bytes, q) = (index.clone(), bytes.clone(), q.clone());
            tokio::spawn(async move {
                let ours = index.search(&q, 10, 4).await.unwrap();
                assert_same(&ours, &reference(&bytes, &q, 10, 4), "shared");
                ours.stats
            })
        })
        .collect();
    let mut probed = 0;
    for t in tasks {
        probed = t.await.unwrap().lists_probed;
    }
    let totals = index.fetch_totals();
    assert!(totals.cache_misses <= probed, "{totals:?}: lists fetched more than once");
    assert!(totals.gets <= probed, "{totals:?}");
    assert!(totals.shared + totals.cache_hits >= 63 * probed, "{totals:?}");

    // Many different queries: the cache evicts to stay within budget; results stay exact.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (index, bytes) = (index.clone(), bytes.clone());
            tokio::spawn(async move {
                let q = clustered(2, d, 12, 100 + i);
                let ours = index.search(&q, 10, 16).await.unwrap();
                assert_same(&ours, &reference(&bytes, &q, 10, 16), &format!("query {i}"));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    cache.sync();
    assert!(cache.bytes() <= budget, "cache holds {} B, budget {budget} B", cache.bytes());
    assert!(cache.bytes() > 0);
}
