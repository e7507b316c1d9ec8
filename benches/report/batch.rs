//! Batch search in SQL (the window over a cross join) next to the same queries as
//! single statements in a loop and FAISS's own batch search of the same file.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use datafusion_faiss::InMemoryIndex;

use crate::data::Dataset;

#[derive(Debug, Clone, Default)]
pub struct BatchRow {
    pub dataset: String,
    pub queries: usize,
    pub nprobe: usize,
    pub batch_ms: f64,
    /// The single statements' time for all queries (measured on `single_measured`).
    pub single_ms: f64,
    pub single_measured: usize,
    /// FAISS's batch search of all queries, in memory, two threads.
    pub faiss_ms: f64,
    /// The batch operator's row lookup time (all batches).
    pub lookup_ms: f64,
    /// Queries whose ids equal FAISS's.
    pub same_ids: f64,
    pub recall: f64,
    pub faiss_recall: f64,
}

const K: usize = 10;

fn batch_sql() -> String {
    format!(
        "SELECT qid, id FROM (SELECT q.qid, d.id, row_number() OVER (PARTITION BY q.qid \
         ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r FROM queries q CROSS JOIN t d) \
         WHERE r <= {K} ORDER BY qid, r"
    )
}

/// Rows (qid, id) of `sql`, and the batch operator's lookup time.
async fn run(ctx: &SessionContext, sql: &str) -> (Vec<(i64, i64)>, f64) {
    let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
    let batches = collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let mut lookup = 0.0;
    let mut stack: Vec<Arc<dyn ExecutionPlan>> = vec![plan];
    while let Some(p) = stack.pop() {
        if p.name() == "IvfKnnExec" {
            lookup += p.metrics().unwrap().sum_by_name("lookup_time").map_or(0, |v| v.as_usize()) as f64 / 1e6;
        }
        stack.extend(p.children().into_iter().cloned());
    }
    let rows = batches
        .iter()
        .flat_map(|b| {
            let (q, id) =
                (b.column(0).as_primitive::<Int64Type>().clone(), b.column(1).as_primitive::<Int64Type>().clone());
            (0..b.num_rows()).map(move |i| (q.value(i), id.value(i)))
        })
        .collect();
    (rows, lookup)
}

pub async fn measure(ds: &Dataset, index: &FsPath, queries: usize, single_max: usize, nprobe: usize) -> BatchRow {
    let queries = queries.min(ds.queries.len() / ds.d);
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let ddl = format!(
        "CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '{}' OPTIONS ('index' '{}', 'key' 'id', 'vector' 'embedding')",
        ds.parquet.display(),
        index.display()
    );
    ctx.sql(&ddl).await.unwrap();
    ctx.sql(&format!("SET faiss.nprobe = {nprobe}")).await.unwrap();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let vectors = Float32Array::from(ds.queries[..queries * ds.d].to_vec());
    let vec = FixedSizeListArray::try_new(item.clone(), ds.d as i32, Arc::new(vectors), None).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("qid", DataType::Int64, false),
        Field::new("vec", DataType::FixedSizeList(item, ds.d as i32), false),
    ]));
    let qid = Int64Array::from_iter_values(0..queries as i64);
    ctx.register_batch("queries", RecordBatch::try_new(schema, vec![Arc::new(qid), Arc::new(vec)]).unwrap()).unwrap();

    let single = |i: usize| {
        let v: Vec<String> = ds.queries[i * ds.d..(i + 1) * ds.d].iter().map(|x| x.to_string()).collect();
        format!("SELECT {i} AS qid, id FROM t ORDER BY vec_distance(embedding, '[{}]'), id LIMIT {K}", v.join(", "))
    };
    // Footers, key map and the index header are read by a first, unmeasured statement.
    run(&ctx, &single(0)).await;
    let measured = queries.min(single_max);
    let t = Instant::now();
    for i in 0..measured {
        run(&ctx, &single(i)).await;
    }
    let single_ms = t.elapsed().as_secs_f64() * 1e3 / measured as f64 * queries as f64;

    // The batch: the median of three runs.
    let mut runs = vec![];
    for _ in 0..3 {
        let t = Instant::now();
        let (rows, lookup) = run(&ctx, &batch_sql()).await;
        runs.push((t.elapsed().as_secs_f64() * 1e3, lookup, rows));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (batch_ms, lookup_ms, rows) = runs.swap_remove(1);
    let mut ours = vec![vec![]; queries];
    for (q, id) in rows {
        ours[q as usize].push(id);
    }

    let faiss = InMemoryIndex::from_bytes(&std::fs::read(index).unwrap()).unwrap();
    let t = Instant::now();
    let theirs = crate::data::faiss_all(&faiss, &ds.queries[..queries * ds.d], ds.d, K, nprobe);
    let faiss_ms = t.elapsed().as_secs_f64() * 1e3;
    let theirs: Vec<&[i64]> = theirs.chunks(K).collect();
    let same = (0..queries)
        .filter(|&i| {
            let (mut a, mut b) = (ours[i].clone(), theirs[i].to_vec());
            a.sort_unstable();
            b.sort_unstable();
            a == b
        })
        .count();
    let truth = |i: usize| &ds.truth[i * ds.k..i * ds.k + K.min(ds.k)];
    let hits = |found: &[i64], i: usize| found.iter().filter(|id| truth(i).contains(id)).count();
    let recall = (0..queries).map(|i| hits(&ours[i], i)).sum::<usize>() as f64 / (queries * K.min(ds.k)) as f64;
    let faiss_recall = (0..queries).map(|i| hits(theirs[i], i)).sum::<usize>() as f64 / (queries * K.min(ds.k)) as f64;
    BatchRow {
        dataset: ds.name.clone(),
        queries,
        nprobe,
        batch_ms,
        single_ms,
        single_measured: measured,
        faiss_ms,
        lookup_ms,
        same_ids: same as f64 / queries as f64,
        recall,
        faiss_recall,
    }
}
