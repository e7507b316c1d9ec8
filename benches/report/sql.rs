//! The SQL path: `ORDER BY vec_distance(...) LIMIT k` over the data set's Parquet table,
//! planned through the index and as DataFusion's exact plan.

use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;

use crate::data::Dataset;

#[derive(Debug, Clone, Default)]
pub struct SqlRow {
    pub dataset: String,
    pub factory: String,
    pub nprobe: usize,
    pub index_queries: usize,
    pub exact_queries: usize,
    pub index_p50_ms: f64,
    pub exact_p50_ms: f64,
    pub speedup: f64,
    /// Index plan's rows vs the exact plan's, over the queries both ran.
    pub recall_vs_exact: f64,
    pub recall_vs_truth: f64,
}

pub struct SqlBudget {
    pub index: (usize, Duration),
    pub exact: (usize, Duration),
}

pub async fn compare(ds: &Dataset, factory: &str, index: &FsPath, nprobe: usize, budget: &SqlBudget) -> SqlRow {
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let ddl = format!(
        "CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '{}' \
         OPTIONS ('index' '{}', 'key' 'id', 'vector' 'embedding')",
        ds.parquet.display(),
        index.display()
    );
    run(&ctx, &ddl).await;
    run(&ctx, &format!("SET faiss.nprobe = {nprobe}")).await;
    let k = 10;
    let sql = |i: usize| {
        let v: Vec<String> = ds.queries[i * ds.d..(i + 1) * ds.d].iter().map(|x| x.to_string()).collect();
        format!("SELECT id FROM t ORDER BY vec_distance(embedding, '[{}]') LIMIT {k}", v.join(", "))
    };

    let mut plans = Vec::new();
    for (enabled, (max, time)) in [(true, budget.index), (false, budget.exact)] {
        run(&ctx, &format!("SET faiss.enabled = {enabled}")).await;
        // One unmeasured query: the table's metadata and the index header are read once.
        run(&ctx, &sql(0)).await;
        let (mut times, mut ids) = (Vec::new(), Vec::new());
        let started = Instant::now();
        while ids.len() < max && (ids.len() < 3 || started.elapsed() < time) {
            let t = Instant::now();
            let found = run(&ctx, &sql(ids.len())).await;
            times.push(t.elapsed());
            ids.push(found);
        }
        times.sort();
        plans.push((times[times.len() / 2].as_secs_f64() * 1e3, ids));
    }
    let (index_p50, with_index) = &plans[0];
    let (exact_p50, exact) = &plans[1];
    let overlap = |a: &[i64], b: &[i64]| a.iter().filter(|id| b.contains(id)).count();
    let both = exact.len().min(with_index.len());
    let vs_exact: usize = (0..both).map(|i| overlap(&with_index[i], &exact[i])).sum();
    let vs_truth: usize =
        with_index.iter().enumerate().map(|(i, found)| overlap(found, &ds.truth[i * k..(i + 1) * k])).sum();
    SqlRow {
        dataset: ds.name.clone(),
        factory: factory.to_string(),
        nprobe,
        index_queries: with_index.len(),
        exact_queries: exact.len(),
        index_p50_ms: *index_p50,
        exact_p50_ms: *exact_p50,
        speedup: exact_p50 / index_p50,
        recall_vs_exact: vs_exact as f64 / (both * k) as f64,
        recall_vs_truth: vs_truth as f64 / (with_index.len() * k) as f64,
    }
}

/// Runs `sql` to the end; returns the first column as keys when it is one.
async fn run(ctx: &SessionContext, sql: &str) -> Vec<i64> {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .filter(|b| b.num_columns() > 0)
        .filter_map(|b| b.column(0).as_primitive_opt::<Int64Type>().map(|a| a.values().to_vec()))
        .flatten()
        .collect()
}
