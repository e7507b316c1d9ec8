//! Filtered top-10 at each selectivity, from 0.1 % of the rows passing to half of them,
//! on a table written by pyarrow's defaults (one file, shuffled `id` keys) with an
//! IVF-Flat index written by pip's faiss-cpu, keyed by `id` and by row position: local,
//! and on the S3 test server with a latency added to every request. Per row: the index
//! plan's p50 (the filter's passing ids and the index's id map known after a first
//! query), the exact plan's p50, the bytes and round trips of a query, and whether the
//! answers equal.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::wire::Wire;

pub struct Plan {
    pub rows: usize,
    pub d: usize,
    pub nlist: usize,
    /// Timed index-plan queries per filter (after one untimed).
    pub queries: usize,
    /// Timed exact-plan queries per filter, local and on S3.
    pub exact: (usize, usize),
    pub latency: Duration,
}

/// (filter, fraction of the rows passing, as a label). Ids are 7 × a permutation of the
/// rows, `label` is `id % 10`: each passes an exact share, spread over every list.
fn filters(rows: usize) -> Vec<(String, String)> {
    vec![
        (format!("id < {}", 7 * rows / 1000), "0.1 %".into()),
        (format!("id < {}", 7 * rows / 100), "1 %".into()),
        ("label = 3".into(), "10 %".into()),
        ("label < 5".into(), "50 %".into()),
    ]
}

struct Row {
    ids: &'static str,
    store: String,
    share: String,
    filter: String,
    index_ms: f64,
    exact_ms: f64,
    by_entries: bool,
    bytes: f64,
    round_trips: Option<f64>,
    /// Share of the exact plan's rows the index plan returned.
    recall: f64,
}

struct Run {
    ms: f64,
    answer: String,
    metrics: HashMap<String, usize>,
}

async fn run(ctx: &SessionContext, sql: &str) -> Run {
    let t = Instant::now();
    let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
    let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut metrics = HashMap::new();
    let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![plan];
    while let Some(p) = stack.pop() {
        if p.name() == "IvfTopKExec" {
            for m in p.metrics().unwrap().aggregate_by_name().iter() {
                *metrics.entry(m.value().name().to_string()).or_default() += m.value().as_usize();
            }
        }
        stack.extend(p.children().into_iter().cloned());
    }
    let answer = pretty_format_batches(&batches).unwrap().to_string();
    Run { ms, answer, metrics }
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The table, its vectors, and the two indexes, made once under `dir`.
pub(crate) fn fixtures(plan: &Plan, dir: &FsPath) -> (PathBuf, Vec<f32>, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let table = dir.join("docs.parquet");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !dir.join("docs.parquet.f32").exists() {
        let status = Command::new(root.join(".work/venv/bin/python"))
            .arg(root.join("tests/python/write_pyarrow.py"))
            .arg(&table)
            .args([plan.rows.to_string(), plan.d.to_string(), "1".into(), "5".into()])
            .status()
            .expect("running .work/venv/bin/python (pyarrow): run scripts/setup.sh");
        assert!(status.success());
    }
    let read = |ext: &str| std::fs::read(dir.join(format!("docs.parquet.{ext}"))).unwrap();
    let x: Vec<f32> = read("f32").chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let ids: Vec<i64> = read("ids").chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    let factory = format!("IVF{},Flat", plan.nlist);
    let (keys, positions) = (dir.join("keys.faiss"), dir.join("positions.faiss"));
    for (file, ids) in [(&keys, Some(&ids[..])), (&positions, None)] {
        if !file.exists() {
            let work = dir.join("work");
            std::fs::create_dir_all(&work).unwrap();
            std::fs::write(file, crate::common::pip_index(&x, plan.d, &factory, ids, &work)).unwrap();
            std::fs::remove_dir_all(&work).unwrap();
        }
    }
    (table, x, keys, positions)
}

pub(crate) fn query(x: &[f32], d: usize, i: usize, filter: &str) -> String {
    let row = (i * 7919 + 13) % (x.len() / d);
    let v: Vec<String> = x[row * d..(row + 1) * d].iter().map(|v| v.to_string()).collect();
    format!("SELECT id, label, vec_distance(embedding, '[{}]') AS d FROM t WHERE {filter} ORDER BY d, id LIMIT 10", v.join(", "))
}

/// Measures every filter; returns the report's section, and whether every query ranked
/// by entries equalled the exact plan.
pub async fn measure(plan: &Plan, out: &FsPath, s3: &Arc<dyn ObjectStore>) -> (String, bool) {
    let dir = out.join(format!("filtered-{}-{}", plan.rows, plan.d));
    let (table, x, keys, positions) = fixtures(plan, &dir);
    let prefix = format!("bench/filtered-{}-{}", plan.rows, plan.d);
    let table_key = Path::from(format!("{prefix}/docs.parquet"));
    crate::upload(s3, &table, &table_key, std::fs::metadata(&table).unwrap().len()).await;
    let bucket = format!("s3://{}", crate::common::s3_bucket());
    let mut rows = vec![];
    for (ids, index) in [("keys", &keys), ("positions", &positions)] {
        let index_key = Path::from(format!("{prefix}/{ids}.faiss"));
        crate::upload(s3, index, &index_key, std::fs::metadata(index).unwrap().len()).await;
        let wire = Wire::new(s3.clone(), plan.latency);
        let places: [(String, Option<Wire>, String, String); 2] = [
            ("local file".into(), None, table.display().to_string(), index.display().to_string()),
            (
                format!("S3 +{} ms", plan.latency.as_millis()),
                Some(wire.clone()),
                format!("{bucket}/{table_key}"),
                format!("{bucket}/{index_key}"),
            ),
        ];
        for (store, wire, table, index) in places {
            let ctx = SessionContext::new();
            if let Some(wire) = &wire {
                let store: Arc<dyn ObjectStore> = Arc::new(wire.clone());
                ctx.register_object_store(ObjectStoreUrl::parse(&bucket).unwrap().as_ref(), store);
            }
            datafusion_faiss::sql::register_all(&ctx);
            let key = if ids == "keys" { "'key' 'id', " } else { "" };
            ctx.sql(&format!(
                "CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '{table}' OPTIONS ('index' '{index}', {key}'vector' 'embedding')"
            ))
            .await
            .unwrap();
            ctx.sql("SET faiss.nprobe = 16").await.unwrap();
            for (filter, share) in filters(plan.rows) {
                // Untimed: reads the passing ids, the id map, footers.
                run(&ctx, &query(&x, plan.d, 0, &filter)).await;
                let (mut ms, mut trips, mut bytes, mut entries, mut answers) = (vec![], vec![], vec![], 0, vec![]);
                for i in 1..=plan.queries {
                    let before = wire.as_ref().map(Wire::traffic);
                    let r = run(&ctx, &query(&x, plan.d, i, &filter)).await;
                    if let (Some(w), Some(b)) = (&wire, before) {
                        let t = w.traffic() - b;
                        trips.push(t.round_trips as f64);
                        bytes.push(t.bytes as f64);
                    } else {
                        let m = |n: &str| r.metrics.get(n).copied().unwrap_or(0) as f64;
                        bytes.push(m("bytes_fetched") + m("bytes_mapped") + m("table_bytes"));
                    }
                    entries += r.metrics.get("by_entries").copied().unwrap_or(0);
                    ms.push(r.ms);
                    answers.push(r.answer);
                }
                ctx.sql("SET faiss.enabled = false").await.unwrap();
                let exact_runs = if wire.is_some() { plan.exact.1 } else { plan.exact.0 };
                let (mut exact, mut found, mut wanted) = (vec![], 0, 0);
                for i in 1..=exact_runs.min(plan.queries) {
                    let r = run(&ctx, &query(&x, plan.d, i, &filter)).await;
                    let rows = |answer: &str| -> Vec<String> {
                        answer.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| id")).map(String::from).collect()
                    };
                    let got = rows(&answers[i - 1]);
                    let truth = rows(&r.answer);
                    wanted += truth.len();
                    found += truth.iter().filter(|row| got.contains(row)).count();
                    exact.push(r.ms);
                }
                ctx.sql("SET faiss.enabled = true").await.unwrap();
                rows.push(Row {
                    ids,
                    store: store.clone(),
                    share,
                    filter,
                    index_ms: p50(ms),
                    exact_ms: p50(exact),
                    by_entries: entries * 2 > plan.queries,
                    bytes: p50(bytes),
                    round_trips: (!trips.is_empty()).then(|| p50(trips)),
                    recall: found as f64 / wanted.max(1) as f64,
                });
            }
            eprintln!("report: filtered search, {ids}, {store} measured");
        }
    }
    markdown(plan, &rows)
}

fn markdown(plan: &Plan, rows: &[Row]) -> (String, bool) {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "\n## Filtered search\n").unwrap();
    writeln!(
        md,
        "{} × {} rows written by pyarrow's defaults (one file, shuffled `id` keys), IVF{},Flat written by pip's faiss-cpu, \
         by `id` and by row position. `SELECT id, label, vec_distance(...) AS d FROM t WHERE <filter> ORDER BY d, id LIMIT 10` \
         at nprobe 16; index plan p50 over {} queries after a first one (which finds the passing ids and reads the id map), \
         exact plan p50 over {} (local) / {} (S3). Bytes: what the query read (index and table; on S3 as counted on the wire). \
         Round trips: waves of GETs on the wire. Recall: share of the exact plan's rows (with their distances) the index plan returned; \
         ranked by entries, the passing rows are all compared.\n",
        plan.rows, plan.d, plan.nlist, plan.queries, plan.exact.0, plan.exact.1
    )
    .unwrap();
    writeln!(md, "| ids | store | passing | filter | ranked by | index plan p50 | exact plan p50 | ratio | bytes | round trips | recall |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for r in rows {
        writeln!(
            md,
            "| {} | {} | {} | `{}` | {} | {:.1} ms | {:.0} ms | {:.1}× | {:.2} MB | {} | {:.3} |",
            r.ids,
            r.store,
            r.share,
            r.filter,
            if r.by_entries { "entries" } else { "lists" },
            r.index_ms,
            r.exact_ms,
            r.exact_ms / r.index_ms,
            r.bytes / 1e6,
            r.round_trips.map_or("—".into(), |t| format!("{t:.0}")),
            r.recall
        )
        .unwrap();
    }
    let pass = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let local: Vec<&Row> = rows.iter().filter(|r| r.round_trips.is_none()).collect();
    let s3: Vec<&Row> = rows.iter().filter(|r| r.round_trips.is_some()).collect();
    let worst_ratio = local.iter().map(|r| r.exact_ms / r.index_ms).fold(f64::INFINITY, f64::min);
    let most_trips = s3.iter().filter_map(|r| r.round_trips).fold(0.0, f64::max);
    let exact = rows.iter().filter(|r| r.by_entries).all(|r| r.recall == 1.0);
    writeln!(md, "\n| target | measured | |\n|---|---|---|").unwrap();
    writeln!(md, "| local: ≥ 30 × faster than the exact plan at every selectivity | min {worst_ratio:.1}× | {} |", pass(worst_ratio >= 30.0)).unwrap();
    writeln!(md, "| S3: ≤ 3 round trips per filtered top-10 (passing ids and id map known) | max {most_trips:.0} | {} |", pass(most_trips <= 3.0)).unwrap();
    writeln!(md, "| ranked by entries: recall 1.000 | {} | {} |", if exact { "all" } else { "not all" }, pass(exact)).unwrap();
    (md, exact)
}
