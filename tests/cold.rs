//! A new process's first query, against the S3 server through a proxy that logs every
//! request: the table's footers and key column are read once, the table side goes out
//! with the lists, and with the disk tier a second process reads no header, list,
//! footer or key map again, yet answers the same; a changed object or a damaged cache
//! file is a miss, never an error or a wrong answer.
//!
//! Each "process" is this test binary run again (the `child` test, ignored otherwise),
//! so nothing is cached in memory from one to the next.
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use common::proxy::{FaultProxy, Logged};
use common::*;
use datafusion::physical_plan::{collect, ExecutionPlan};
use object_store::{ObjectStoreExt, PutPayload};

const D: usize = 32;
const ROWS: usize = 20_000;

/// What a child was asked to do, passed in its environment.
struct Job<'a> {
    endpoint: &'a str,
    table: &'a str,
    index: &'a str,
    keyed: bool,
    disk: Option<&'a Path>,
    query: &'a str,
}

/// What a child saw: the rows (printed) and the index scan's metrics.
struct Answer {
    rows: String,
    metrics: HashMap<String, usize>,
}

impl Answer {
    fn metric(&self, name: &str) -> usize {
        *self.metrics.get(name).unwrap_or_else(|| panic!("no {name} in {:?}", self.metrics))
    }
}

/// Runs `job` as a new process.
fn run(job: &Job) -> Answer {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("DFF_COLD_ENDPOINT", job.endpoint)
        .env("DFF_COLD_TABLE", job.table)
        .env("DFF_COLD_INDEX", job.index)
        .env("DFF_COLD_KEYED", if job.keyed { "1" } else { "0" })
        .env("DFF_COLD_DISK", job.disk.map(|d| d.display().to_string()).unwrap_or_default())
        .env("DFF_COLD_QUERY", job.query)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "child failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows = stdout.split("ROWS>").nth(1).and_then(|r| r.split("<ROWS").next()).expect("rows printed").to_string();
    let metrics = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("METRIC "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        .collect();
    Answer { rows, metrics }
}

/// The child: `CREATE`, a marker request, the query; prints rows and metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a new process of the cold-start tests"]
async fn child() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} unset: run by the cold-start tests"));
    let bucket = format!("s3://{}", s3_bucket());
    let store = s3_store_with(Some(var("DFF_COLD_ENDPOINT")), Default::default(), Default::default());
    let ctx = changing_context(Some((&bucket, store.clone())));
    let disk = var("DFF_COLD_DISK");
    if !disk.is_empty() {
        ctx.sql(&format!("SET faiss.disk_cache_dir = '{disk}'")).await.unwrap();
    }
    create(&ctx, "docs", &var("DFF_COLD_TABLE"), &var("DFF_COLD_INDEX"), var("DFF_COLD_KEYED") == "1").await;
    // Splits the proxy's log: what came before it was the CREATE.
    let _ = store.head(&"marker/created".into()).await;
    let plan = ctx.sql(&var("DFF_COLD_QUERY")).await.unwrap().create_physical_plan().await.unwrap();
    let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let rows = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    println!("ROWS>{rows}<ROWS");
    let scan = find_scan(&plan).expect("an index scan in the plan");
    for m in scan.metrics().unwrap().aggregate_by_name().iter() {
        println!("METRIC {}={}", m.value().name(), m.value().as_usize());
    }
}

fn find_scan(plan: &std::sync::Arc<dyn ExecutionPlan>) -> Option<std::sync::Arc<dyn ExecutionPlan>> {
    if plan.name() == "IvfTopKExec" {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(find_scan)
}

/// The requests before the marker (the CREATE) and after it (the first query).
fn split(log: Vec<Logged>) -> (Vec<Logged>, Vec<Logged>) {
    let at = log.iter().position(|l| l.key == "marker/created").expect("the marker request");
    let mut after = log;
    let before: Vec<Logged> = after.drain(..=at).collect();
    (before[..before.len() - 1].to_vec(), after)
}

fn bytes_of(range: &str) -> (u64, u64) {
    let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// No byte of a table file is fetched twice by one process (footers, key chunks, rows).
fn each_byte_once(requests: &[&Logged], what: &str) {
    let mut by_key: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for r in requests.iter().filter(|r| r.method == "GET") {
        by_key.entry(&r.key).or_default().push(bytes_of(r.range.as_deref().expect("a ranged GET")));
    }
    for (key, mut ranges) in by_key {
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "{what}: {key}: bytes {:?} and {:?} both fetched", w[0], w[1]);
        }
    }
}

/// The table (two pyarrow-default files), a pip index of it and its key, on the server.
async fn fixtures(keyed: bool, name: &str) -> (Vec<f32>, Vec<i64>, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, ids) = pyarrow_table(&folder, ROWS, D, 2, 43);
    let index = pip_index(&x, D, "IVF64,Flat", keyed.then_some(&ids[..]), dir.path());
    let store = s3_store();
    let prefix = unique_path(name).to_string();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let entry = entry.unwrap();
        let key = format!("{prefix}/docs/{}", entry.file_name().to_str().unwrap());
        store.put(&key.into(), PutPayload::from(std::fs::read(entry.path()).unwrap())).await.unwrap();
    }
    let index_key = format!("{prefix}/docs.faiss");
    store.put(&index_key.clone().into(), PutPayload::from(index)).await.unwrap();
    let bucket = format!("s3://{}", s3_bucket());
    (x, ids, format!("{bucket}/{prefix}/docs/"), format!("{bucket}/{index_key}"), index_key)
}

fn top_k(x: &[f32], row: usize) -> String {
    let v: Vec<String> = x[row * D..(row + 1) * D].iter().map(|v| v.to_string()).collect();
    format!("SELECT id, title, vec_distance(embedding, '[{}]') AS d FROM docs ORDER BY d, id LIMIT 10", v.join(", "))
}

async fn exact(table: &str, index: &str, keyed: bool, sql: &str) -> String {
    let bucket = format!("s3://{}", s3_bucket());
    let ctx = changing_context(Some((&bucket, s3_store())));
    create(&ctx, "docs", table, index, keyed).await;
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    text(&ctx, sql).await
}

/// A new process, keyed and positional: its CREATE reads the table's footers and the
/// index header once each; its first query reads the lists and, in the same wave, what
/// the table side needs (the key column's chunks once, never a footer again), then the
/// rows: two waves of the table side by the scan's own count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_process_reads_each_piece_once() {
    let proxy = FaultProxy::start(s3_addr()).await;
    for keyed in [true, false] {
        let what = if keyed { "keyed" } else { "positions" };
        let (x, _, table, index, index_key) = fixtures(keyed, "cold").await;
        let sql = top_k(&x, 4_321);
        let job = Job { endpoint: &proxy.endpoint(), table: &table, index: &index, keyed, disk: None, query: &sql };
        proxy.take_log();
        let answer = run(&job);
        assert_eq!(answer.rows, exact(&table, &index, keyed, &sql).await, "{what}");
        let (create, query) = split(proxy.take_log());
        for l in create.iter().chain(&query) {
            eprintln!("TRACE {what} wave {} {} {} {:?} {}", l.wave, l.method, l.key, l.range, l.status);
        }
        eprintln!("METRICS {what} {:?}", answer.metrics);
        let index_gets = |r: &[Logged]| r.iter().filter(|l| l.key == index_key && l.method == "GET").count();
        // The header: its first 64 KiB, then the rest it needs.
        assert!((1..=2).contains(&index_gets(&create)), "{what}: CREATE: {create:#?}");
        let table_gets: Vec<&Logged> =
            create.iter().chain(&query).filter(|l| l.key.contains("/docs/") && l.method == "GET").collect();
        each_byte_once(&table_gets, what);
        // The footers: read by the CREATE (one GET per file), never by the query.
        let footers = create.iter().filter(|l| l.key.contains("/docs/") && l.method == "GET").count();
        assert_eq!(footers, 2, "{what}: CREATE: {create:#?}");
        // The page walk of the columns read (a wave per file) and, keyed, the key
        // column's chunks (one wave); the rows' pages come from the chunks walked.
        assert_eq!(answer.metric("table_waves"), 2 + keyed as usize, "{what}: {:?}", answer.metrics);
        assert_eq!(answer.metric("waves"), 1, "{what}");
        assert_eq!(answer.metric("table_disk_hits") + answer.metric("disk_hits"), 0, "{what}");
        assert_eq!(index_gets(&query), answer.metric("gets"), "{what}: {query:#?}");
    }
}

/// A table written with a page index (arrow-rs's defaults, small row groups): the
/// CREATE reads the footer and page index in one GET, the first query no footer and no
/// page header, only the key column's chunks (one wave, each once) and the rows' pages
/// (one wave). DataFusion's footer read takes the file's last 512 KiB, which may hold
/// data pages the query fetches again: those bytes are not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_indexed_table() {
    let proxy = FaultProxy::start(s3_addr()).await;
    let docs = tables::Docs::new(ROWS, D, 17);
    let prefix = unique_path("paged").to_string();
    docs.write(s3_store().as_ref(), &prefix, "docs", "IVF32,Flat", datafusion_faiss::Metric::L2).await;
    let bucket = format!("s3://{}", s3_bucket());
    let (table, index) = (format!("{bucket}/{prefix}/docs.parquet"), format!("{bucket}/{prefix}/docs.faiss"));
    let sql = top_k(&docs.vectors(), 777);
    let job = Job { endpoint: &proxy.endpoint(), table: &table, index: &index, keyed: true, disk: None, query: &sql };
    proxy.take_log();
    let answer = run(&job);
    assert_eq!(answer.rows, exact(&table, &index, true, &sql).await);
    let (create, query) = split(proxy.take_log());
    let gets = |log: &[Logged]| -> Vec<Logged> {
        log.iter().filter(|l| l.key.ends_with("docs.parquet") && l.method == "GET").cloned().collect()
    };
    let (create, query) = (gets(&create), gets(&query));
    assert_eq!(create.len(), 1, "CREATE reads the footer and page index at once: {create:?}");
    let footer_start = bytes_of(create[0].range.as_deref().unwrap()).0;
    let last = bytes_of(create[0].range.as_deref().unwrap()).1;
    assert!(query.iter().all(|g| bytes_of(g.range.as_deref().unwrap()).1 < last), "the query read the footer again: {query:?}");
    assert!(footer_start > 0, "the table is larger than the footer read");
    each_byte_once(&query.iter().collect::<Vec<_>>(), "page-indexed");
    assert_eq!(answer.metric("table_waves"), 2, "{:?}", answer.metrics);
}

/// With the disk tier, a second process reads no index header, list, footer or key map
/// from the store (the header by a conditional GET answered "not modified"), and answers
/// the same. Then the disk tier's files are damaged: a miss, the same answer, rewritten.
/// Then the index object is replaced: read anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_the_disk_tier() {
    let proxy = FaultProxy::start(s3_addr()).await;
    let (x, ids, table, index, index_key) = fixtures(true, "restart").await;
    let disk = tempfile::tempdir().unwrap();
    let sql = top_k(&x, 1_234);
    let expected = exact(&table, &index, true, &sql).await;
    let endpoint = proxy.endpoint();
    let job = Job { endpoint: &endpoint, table: &table, index: &index, keyed: true, disk: Some(disk.path()), query: &sql };

    let first = run(&job);
    assert_eq!(first.rows, expected);
    assert_eq!(first.metric("disk_hits"), 0);
    proxy.take_log();

    let second = run(&job);
    assert_eq!(second.rows, expected, "restart");
    let (create, query) = split(proxy.take_log());
    let all: Vec<&Logged> = create.iter().chain(&query).collect();
    // The index: one GET, conditional, answered "not modified".
    let index_requests: Vec<&&Logged> = all.iter().filter(|l| l.key == index_key && l.method == "GET").collect();
    assert!(index_requests.iter().all(|l| l.if_none_match && l.status == 304), "{index_requests:#?}");
    assert_eq!(index_requests.len(), 1, "{index_requests:#?}");
    assert_eq!(second.metric("gets"), 0, "lists from the disk tier");
    assert_eq!(second.metric("disk_hits"), second.metric("lists_probed"));
    // Footers and key map from the disk tier; the rows' pages are the only table GETs.
    assert!(second.metric("table_disk_hits") >= 1, "{:?}", second.metrics);
    assert_eq!(second.metric("table_waves"), 1, "{:?}", second.metrics);
    let footer_gets = create.iter().filter(|l| l.key.contains("/docs/") && l.method == "GET").count();
    assert_eq!(footer_gets, 0, "CREATE read a footer again: {create:#?}");

    // Every cached file damaged: each is a miss (checked against its hash), and rewritten.
    let mut damaged = 0;
    for entry in walk(&disk.path().join("content-v2")) {
        let mut bytes = std::fs::read(&entry).unwrap();
        bytes.truncate(bytes.len() / 2);
        bytes.push(0x5A);
        std::fs::write(&entry, bytes).unwrap();
        damaged += 1;
    }
    assert!(damaged > 0, "no cache files under {:?}", disk.path());
    let third = run(&job);
    assert_eq!(third.rows, expected, "damaged disk tier");
    assert_eq!(third.metric("disk_hits") + third.metric("table_disk_hits"), 0, "{:?}", third.metrics);
    let fourth = run(&job);
    assert_eq!(fourth.rows, expected, "rewritten disk tier");
    assert_eq!(fourth.metric("gets"), 0);

    // The index replaced by another build: read anew, answers still the exact plan's.
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = pip_index(&x, D, "IVF32,Flat", Some(&ids), dir.path());
    s3_store().put(&index_key.clone().into(), PutPayload::from(rebuilt)).await.unwrap();
    proxy.take_log();
    let fifth = run(&job);
    assert_eq!(fifth.rows, expected, "replaced index");
    assert_eq!(fifth.metric("disk_hits"), 0);
    let (create, _) = split(proxy.take_log());
    assert!(create.iter().any(|l| l.key == index_key && l.status == 206), "{create:#?}");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => files.extend(walk(&path)),
            false => files.push(path),
        }
    }
    files
}
