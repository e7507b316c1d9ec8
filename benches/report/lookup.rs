//! The row lookup behind the SQL index plan, on tables laid out as users' pipelines write
//! them (pyarrow's defaults, keys in random order) and in the tuned layout, local and on
//! the S3 test server with 30 ms added to every request.

use std::path::{Path as FsPath, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion_faiss::{IvfIndex, ListCache, OpenOptions};
use object_store::path::Path;
use object_store::ObjectStore;

use crate::data::Dataset;
use crate::wire::Wire;

#[derive(Debug, Clone, Default)]
pub struct LookupRow {
    pub table: String,
    pub rows: usize,
    pub store: String,
    pub index_p50_ms: f64,
    pub exact_p50_ms: f64,
    pub ratio: f64,
    /// Index scan time minus FAISS's search (lookup_time of the scan), p50.
    pub lookup_p50_ms: f64,
    pub search_p50_ms: f64,
    pub table_bytes: f64,
    pub table_gets: f64,
    /// Measured on the wire (S3 rows): round trips of the whole query, p50.
    pub round_trips: Option<f64>,
    /// S3 rows: the cold index search alone on the same store, p50.
    pub search_alone_p50_ms: Option<f64>,
}

/// A table to measure: its Parquet file and the IVF-Flat index of its vectors by `id`.
pub struct Table {
    pub name: String,
    pub rows: usize,
    pub parquet: PathBuf,
    pub index: PathBuf,
}

/// The data set's vectors rewritten by pyarrow with its default settings, rows shuffled
/// (the `id` of each row is its place in the data set, as the index's ids are).
pub fn pyarrow_copy(ds: &Dataset, dir: &FsPath) -> PathBuf {
    let out = dir.join(format!("{}-pyarrow.parquet", ds.name));
    if out.exists() {
        return out;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/python/write_pyarrow.py");
    let tmp = out.with_extension("tmp");
    let status = Command::new(root.join(".work/venv/bin/python"))
        .args([script.as_os_str(), tmp.as_os_str()])
        .args([ds.n.to_string(), ds.d.to_string(), "1".into(), "7".into()])
        .arg(&ds.parquet)
        .status()
        .expect("running .work/venv/bin/python (pyarrow): run scripts/setup.sh");
    assert!(status.success(), "pyarrow failed to write {}", out.display());
    std::fs::rename(tmp, &out).unwrap();
    out
}

fn sql(ds: &Dataset, i: usize) -> String {
    let v: Vec<String> = ds.queries[i * ds.d..(i + 1) * ds.d].iter().map(|x| x.to_string()).collect();
    format!("SELECT id, label, vec_distance(embedding, '[{}]') AS d FROM t ORDER BY d LIMIT 10", v.join(", "))
}

struct Run {
    ms: f64,
    lookup_ms: f64,
    search_ms: f64,
    table_bytes: usize,
    table_gets: usize,
}

async fn timed(ctx: &SessionContext, sql: &str) -> Run {
    let t = Instant::now();
    let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
    collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let (mut lookup, mut search, mut bytes, mut gets) = (0.0, 0.0, 0, 0);
    let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![plan];
    while let Some(p) = stack.pop() {
        if p.name() == "IvfTopKExec" {
            let m = p.metrics().unwrap();
            let v = |n: &str| m.sum_by_name(n).map_or(0, |v| v.as_usize());
            lookup += v("lookup_time") as f64 / 1e6;
            search += v("search_time") as f64 / 1e6;
            bytes += v("table_bytes");
            gets += v("table_gets");
        }
        stack.extend(p.children().into_iter().cloned());
    }
    Run { ms, lookup_ms: lookup, search_ms: search, table_bytes: bytes, table_gets: gets }
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn context(
    table: &str,
    index: &str,
    store: Option<(&str, Arc<dyn ObjectStore>)>,
    cache_mb: usize,
) -> SessionContext {
    let ctx = SessionContext::new();
    if let Some((url, store)) = store {
        ctx.register_object_store(ObjectStoreUrl::parse(url).unwrap().as_ref(), store);
    }
    datafusion_faiss::sql::register_all(&ctx);
    ctx.sql(&format!("SET faiss.cache_mb = {cache_mb}")).await.unwrap();
    ctx.sql("SET faiss.nprobe = 16").await.unwrap();
    ctx.sql(&format!(
        "CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '{table}' OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding')"
    ))
    .await
    .unwrap();
    ctx
}

/// Index plan and exact plan on the local files of `t`.
pub async fn local(ds: &Dataset, t: &Table, queries: usize, exact_queries: usize) -> LookupRow {
    let ctx = context(t.parquet.to_str().unwrap(), t.index.to_str().unwrap(), None, 256).await;
    // Footers, key map and index header are read once, by a first query.
    timed(&ctx, &sql(ds, 0)).await;
    let runs: Vec<Run> = {
        let mut v = vec![];
        for i in 0..queries {
            v.push(timed(&ctx, &sql(ds, 1 + i)).await);
        }
        v
    };
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    let mut exact = vec![];
    for i in 0..exact_queries {
        exact.push(timed(&ctx, &sql(ds, 1 + i)).await.ms);
    }
    row(t, "local file", &runs, p50(exact), None, None)
}

fn row(t: &Table, store: &str, runs: &[Run], exact: f64, trips: Option<f64>, alone: Option<f64>) -> LookupRow {
    let index = p50(runs.iter().map(|r| r.ms).collect());
    LookupRow {
        table: t.name.clone(),
        rows: t.rows,
        store: store.into(),

        index_p50_ms: index,
        exact_p50_ms: exact,
        ratio: exact / index,
        lookup_p50_ms: p50(runs.iter().map(|r| r.lookup_ms).collect()),
        search_p50_ms: p50(runs.iter().map(|r| r.search_ms).collect()),
        table_bytes: runs.iter().map(|r| r.table_bytes as f64).sum::<f64>() / runs.len() as f64,
        table_gets: runs.iter().map(|r| r.table_gets as f64).sum::<f64>() / runs.len() as f64,
        round_trips: trips,
        search_alone_p50_ms: alone,
    }
}

/// The index plan on the S3 test server with `latency` added to every request: table
/// metadata and index header cached, lists cold (no list cache), so each query fetches
/// its lists and its rows.
pub async fn s3(
    ds: &Dataset,
    t: &Table,
    s3: Arc<dyn ObjectStore>,
    prefix: &str,
    latency: Duration,
    queries: usize,
) -> LookupRow {
    let (table_key, index_key) =
        (Path::from(format!("{prefix}/table.parquet")), Path::from(format!("{prefix}/index.faiss")));
    crate::upload(&s3, &t.parquet, &table_key, std::fs::metadata(&t.parquet).unwrap().len()).await;
    crate::upload(&s3, &t.index, &index_key, std::fs::metadata(&t.index).unwrap().len()).await;
    let wire = Wire::new(s3.clone(), latency);
    let bucket = format!("s3://{}", crate::common::s3_bucket());
    let store: Arc<dyn ObjectStore> = Arc::new(wire.clone());
    let ctx =
        context(&format!("{bucket}/{table_key}"), &format!("{bucket}/{index_key}"), Some((&bucket, store.clone())), 0)
            .await;
    timed(&ctx, &sql(ds, 0)).await;
    let (mut runs, mut trips) = (vec![], vec![]);
    for i in 0..queries {
        let before = wire.traffic();
        runs.push(timed(&ctx, &sql(ds, 1 + i)).await);
        trips.push((wire.traffic() - before).round_trips as f64);
    }
    let options = OpenOptions { cache: Some(ListCache::new(0)), ..Default::default() };
    let index = IvfIndex::open_with(store, &index_key, options).await.unwrap();
    let mut alone = vec![];
    for i in 0..queries {
        let t = Instant::now();
        index.search(&ds.queries[(1 + i) * ds.d..(2 + i) * ds.d], 10, 16).await.unwrap();
        alone.push(t.elapsed().as_secs_f64() * 1e3);
    }
    row(t, &format!("S3 +{} ms", latency.as_millis()), &runs, f64::NAN, Some(p50(trips)), Some(p50(alone)))
}
