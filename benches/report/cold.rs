//! A new process's `CREATE EXTERNAL TABLE` and first top-10, on the S3 test server with a
//! latency added to every request: each measured in a process of its own (this bench
//! binary run again), with an empty disk tier and then with the one the previous run
//! left (a restart). Keyed and positional indexes of the filtered section's table.

use std::path::Path as FsPath;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::wire::Wire;

pub struct Plan {
    /// Fresh processes per row.
    pub processes: usize,
    pub latency: Duration,
}

/// What one process measured.
#[derive(Debug, Clone, Default)]
struct Measured {
    create_ms: f64,
    create_trips: u64,
    query_ms: f64,
    query_trips: u64,
    query_bytes: u64,
    /// Lists' bytes and the table side's, as the scan counted them.
    list_bytes: u64,
    answer: String,
}

/// The child: one CREATE and one query, printed as `COLD k=v` lines.
pub fn child(job: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut parts = job.split('|');
        let mut next = || parts.next().unwrap().to_string();
        let (table, index, keyed, disk, latency, sql) = (next(), next(), next() == "1", next(), next(), next());
        let wire = Wire::new(crate::common::s3_store(), Duration::from_millis(latency.parse().unwrap()));
        let bucket = format!("s3://{}", crate::common::s3_bucket());
        let ctx = SessionContext::new();
        let store: Arc<dyn ObjectStore> = Arc::new(wire.clone());
        ctx.register_object_store(ObjectStoreUrl::parse(&bucket).unwrap().as_ref(), store);
        datafusion_faiss::sql::register_all(&ctx);
        ctx.sql("SET faiss.nprobe = 16").await.unwrap();
        if !disk.is_empty() {
            ctx.sql(&format!("SET faiss.disk_cache_dir = '{disk}'")).await.unwrap();
        }
        let key = if keyed { "'key' 'id', " } else { "" };
        let create = format!(
            "CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '{table}' OPTIONS ('index' '{index}', {key}'vector' 'embedding')"
        );
        let t = Instant::now();
        ctx.sql(&create).await.unwrap();
        let create_ms = t.elapsed().as_secs_f64() * 1e3;
        let after_create = wire.traffic();
        eprintln!("wire: -- query --");
        let t = Instant::now();
        let plan = ctx.sql(&sql).await.unwrap().create_physical_plan().await.unwrap();
        let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
        let query_ms = t.elapsed().as_secs_f64() * 1e3;
        let query = wire.traffic() - after_create;
        let mut list_bytes = 0;
        let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![plan];
        while let Some(p) = stack.pop() {
            if p.name() == "IvfTopKExec" {
                list_bytes += p.metrics().unwrap().sum_by_name("bytes_fetched").map_or(0, |v| v.as_usize());
            }
            stack.extend(p.children().into_iter().cloned());
        }
        let answer = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        println!("COLD create_ms={create_ms}");
        println!("COLD create_trips={}", after_create.round_trips);
        println!("COLD query_ms={query_ms}");
        println!("COLD query_trips={}", query.round_trips);
        println!("COLD query_bytes={}", query.bytes);
        println!("COLD list_bytes={list_bytes}");
        println!("COLD answer={}", answer.replace('\n', "\\n"));
    });
}

fn spawn(job: &str, trace: bool) -> (Measured, String) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.env("DFF_COLD_CHILD", job);
    if trace {
        command.env("DFF_WIRE_TRACE", "1");
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "cold-start child failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut m = Measured::default();
    for line in stdout.lines().filter_map(|l| l.strip_prefix("COLD ")) {
        let (k, v) = line.split_once('=').unwrap();
        match k {
            "create_ms" => m.create_ms = v.parse().unwrap(),
            "create_trips" => m.create_trips = v.parse().unwrap(),
            "query_ms" => m.query_ms = v.parse().unwrap(),
            "query_trips" => m.query_trips = v.parse().unwrap(),
            "query_bytes" => m.query_bytes = v.parse().unwrap(),
            "list_bytes" => m.list_bytes = v.parse().unwrap(),
            _ => m.answer = v.to_string(),
        }
    }
    let trace = String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("wire:")).collect::<Vec<_>>().join("\n");
    (m, trace)
}

struct Row {
    ids: &'static str,
    tier: &'static str,
    total_ms: f64,
    create_ms: f64,
    query_ms: f64,
    trips: f64,
    create_trips: f64,
    query_bytes: f64,
    needed_bytes: f64,
    same: bool,
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Bytes of the Parquet footer and of the `id` column's chunks of `table`.
fn footer_and_key(table: &FsPath) -> (u64, u64) {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(table).unwrap();
    let size = file.metadata().unwrap().len();
    let reader = SerializedFileReader::new(file).unwrap();
    let meta = reader.metadata();
    let mut tail = [0u8; 8];
    let bytes = std::fs::read(table).unwrap();
    tail.copy_from_slice(&bytes[bytes.len() - 8..]);
    let footer = u32::from_le_bytes(tail[..4].try_into().unwrap()) as u64 + 8;
    let id = meta.file_metadata().schema_descr().columns().iter().position(|c| c.name() == "id").unwrap();
    let key: u64 = meta.row_groups().iter().map(|g| g.column(id).compressed_size() as u64).sum();
    assert!(footer < size);
    (footer, key)
}

/// Measures every row; returns the report's section and the trace of one cold first query.
pub async fn measure(plan: &Plan, filtered: &crate::filtered::Plan, out: &FsPath, s3: &Arc<dyn ObjectStore>) -> String {
    let dir = out.join(format!("filtered-{}-{}", filtered.rows, filtered.d));
    let (table, x, keys, positions) = crate::filtered::fixtures(filtered, &dir);
    let prefix = format!("bench/filtered-{}-{}", filtered.rows, filtered.d);
    let table_key = Path::from(format!("{prefix}/docs.parquet"));
    crate::upload(s3, &table, &table_key, std::fs::metadata(&table).unwrap().len()).await;
    let bucket = format!("s3://{}", crate::common::s3_bucket());
    let (footer, key_bytes) = footer_and_key(&table);
    let sql = crate::filtered::query(&x, filtered.d, 3, "true").replace(" WHERE true", "");
    let mut rows = vec![];
    let mut trace = String::new();
    for (ids, index) in [("keys", &keys), ("positions", &positions)] {
        let index_key = Path::from(format!("{prefix}/{ids}.faiss"));
        crate::upload(s3, index, &index_key, std::fs::metadata(index).unwrap().len()).await;
        let disk = tempfile::tempdir().unwrap();
        let job = |disk: &str| {
            format!(
                "{bucket}/{table_key}|{bucket}/{index_key}|{}|{disk}|{}|{sql}",
                if ids == "keys" { "1" } else { "0" },
                plan.latency.as_millis()
            )
        };
        let mut expected = None;
        for tier in ["cold, empty disk tier", "restart, warm disk tier"] {
            let mut runs = vec![];
            for i in 0..plan.processes {
                let cold = tier.starts_with("cold");
                if cold {
                    // Each cold process starts from an empty folder.
                    std::fs::remove_dir_all(disk.path()).unwrap();
                    std::fs::create_dir_all(disk.path()).unwrap();
                }
                let first_cold_keyed = cold && i == 0 && ids == "keys";
                let (m, t) = spawn(&job(&disk.path().display().to_string()), first_cold_keyed);
                if first_cold_keyed {
                    trace = t;
                }
                runs.push(m);
            }
            let expected = expected.get_or_insert_with(|| runs[0].answer.clone());
            let needed = runs[0].list_bytes as f64 + footer as f64 + if ids == "keys" { key_bytes as f64 } else { 0.0 };
            rows.push(Row {
                ids,
                tier,
                total_ms: p50(runs.iter().map(|m| m.create_ms + m.query_ms).collect()),
                create_ms: p50(runs.iter().map(|m| m.create_ms).collect()),
                query_ms: p50(runs.iter().map(|m| m.query_ms).collect()),
                trips: p50(runs.iter().map(|m| (m.create_trips + m.query_trips) as f64).collect()),
                create_trips: p50(runs.iter().map(|m| m.create_trips as f64).collect()),
                query_bytes: p50(runs.iter().map(|m| m.query_bytes as f64).collect()),
                needed_bytes: needed,
                same: runs.iter().all(|m| &m.answer == expected),
            });
        }
        eprintln!("report: cold start, {ids} measured");
    }
    markdown(plan, filtered, &rows, &trace)
}

fn markdown(plan: &Plan, filtered: &crate::filtered::Plan, rows: &[Row], trace: &str) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "\n## Cold start\n").unwrap();
    writeln!(
        md,
        "A new process: `CREATE EXTERNAL TABLE ... STORED AS FAISS` then one top-10 (`SELECT id, label, vec_distance(...) AS d \
         FROM t ORDER BY d, id LIMIT 10`, nprobe 16), over the filtered section's table ({} × {} by pyarrow's defaults, one file) \
         and its IVF{},Flat indexes by pip's faiss-cpu, on the S3 test server with {} ms added to every request. p50 over {} \
         processes per row. Round trips: waves of requests on the wire (HEADs and GETs; LISTs are not counted). Cold: an empty \
         `faiss.disk_cache_dir`; restart: the folder the previous process left.\n",
        filtered.rows,
        filtered.d,
        filtered.nlist,
        plan.latency.as_millis(),
        plan.processes
    )
    .unwrap();
    writeln!(md, "| ids | process | CREATE + first query p50 | CREATE | query | round trips (CREATE) | query bytes | ÷ lists + footer + key column | same answer |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|").unwrap();
    for r in rows {
        writeln!(
            md,
            "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ({:.0}) | {:.2} MB | {:.2} | {} |",
            r.ids,
            r.tier,
            r.total_ms,
            r.create_ms,
            r.query_ms,
            r.trips,
            r.create_trips,
            r.query_bytes / 1e6,
            r.query_bytes / r.needed_bytes.max(1.0),
            if r.same { "yes" } else { "NO" }
        )
        .unwrap();
    }
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let cold: Vec<&Row> = rows.iter().filter(|r| r.tier.starts_with("cold")).collect();
    let warm: Vec<&Row> = rows.iter().filter(|r| !r.tier.starts_with("cold")).collect();
    let max = |rs: &[&Row], f: fn(&Row) -> f64| rs.iter().map(|r| f(r)).fold(0.0, f64::max);
    writeln!(md, "\n| target | measured | |\n|---|---|---|").unwrap();
    let (t, ms) = (max(&cold, |r| r.trips), max(&cold, |r| r.total_ms));
    writeln!(md, "| cold: ≤ 4 round trips in total | max {t:.0} | {} |", pass(t <= 4.0)).unwrap();
    writeln!(md, "| cold: ≤ 250 ms | max {ms:.0} ms | {} |", pass(ms <= 250.0)).unwrap();
    let (t, ms) = (max(&warm, |r| r.trips), max(&warm, |r| r.total_ms));
    writeln!(md, "| restart, warm disk tier: ≤ 2 round trips | max {t:.0} | {} |", pass(t <= 2.0)).unwrap();
    writeln!(md, "| restart, warm disk tier: ≤ 120 ms | max {ms:.0} ms | {} |", pass(ms <= 120.0)).unwrap();
    let ratio = max(&cold, |r| r.query_bytes / r.needed_bytes.max(1.0));
    writeln!(md, "| cold first query bytes ≤ 1.2 × lists + footer + key column | max {ratio:.2} | {} |", pass(ratio <= 1.2)).unwrap();
    let same = rows.iter().all(|r| r.same);
    writeln!(md, "| every process answers the same | {} | {} |", if same { "yes" } else { "no" }, pass(same)).unwrap();
    writeln!(md, "\nRequest by request, one cold process (keyed): `round trip N` is the wave the request joined.\n\n```\n{trace}\n```").unwrap();
    md
}
