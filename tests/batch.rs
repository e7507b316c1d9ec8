//! Batch search through SQL (the window over a cross join) on a table written by
//! pyarrow with its defaults: equal to the exact plan at nprobe = nlist, to each query's
//! own statement at a lower nprobe, one FAISS search and one row lookup per batch of
//! queries.
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use datafusion::prelude::SessionContext;

const D: usize = 32;
const QUERIES: usize = 1_100;

/// `qid → [(id, distance)]` in rank order.
async fn neighbours(ctx: &SessionContext, sql: &str) -> BTreeMap<i64, Vec<(i64, f64)>> {
    let batches: Vec<RecordBatch> = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out: BTreeMap<i64, Vec<(i64, f64)>> = BTreeMap::new();
    for b in &batches {
        let (q, id, d) = (
            b.column(0).as_primitive::<Int64Type>(),
            b.column(1).as_primitive::<Int64Type>(),
            b.column(2).as_primitive::<Float64Type>(),
        );
        for i in 0..b.num_rows() {
            out.entry(q.value(i)).or_default().push((id.value(i), d.value(i)));
        }
    }
    out
}

/// The batch operator's metrics after running `sql`, by name.
async fn counts(ctx: &SessionContext, sql: &str) -> impl Fn(&str) -> usize {
    let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
    datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx()).await.unwrap();
    let mut stack = vec![plan];
    let metrics = loop {
        let p = stack.pop().expect("an IvfKnnExec in the plan");
        if p.name() == "IvfKnnExec" {
            break p.metrics().unwrap();
        }
        stack.extend(p.children().into_iter().cloned());
    };
    move |name| metrics.sum_by_name(name).map_or(0, |v| v.as_usize())
}

fn batch_sql(table: &str, k: usize) -> String {
    format!(
        "SELECT qid, id, dist FROM (SELECT q.qid, d.id, vec_distance(d.embedding, q.vec) AS dist, \
         row_number() OVER (PARTITION BY q.qid ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r \
         FROM queries q CROSS JOIN {table} d WHERE q.vec IS NOT NULL) WHERE r <= {k} ORDER BY qid, r"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_equals_exact_plan_and_single_statements() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.parquet");
    let (x, ids) = pyarrow_table(&file, 20_000, D, 1, 31);
    let keyed = dir.path().join("keyed.faiss");
    let positional = dir.path().join("positional.faiss");
    std::fs::write(&keyed, index_bytes(&x, D, Some(&ids), "IVF32,Flat").await).unwrap();
    std::fs::write(&positional, index_bytes(&x, D, None, "IVF32,SQ8").await).unwrap();
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    create(&ctx, "keyed", file.to_str().unwrap(), keyed.to_str().unwrap(), true).await;
    create(&ctx, "positional", file.to_str().unwrap(), positional.to_str().unwrap(), false).await;
    // 1,100 queries (two batches), one of them NULL.
    let q = clustered(QUERIES, D, 12, 77);
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let nulls = (0..QUERIES).map(|i| i != 3).collect::<Vec<_>>();
    let vec = FixedSizeListArray::try_new(
        item.clone(),
        D as i32,
        Arc::new(Float32Array::from(q.clone())),
        Some(nulls.into()),
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("qid", DataType::Int64, false),
        Field::new("vec", DataType::FixedSizeList(item, D as i32), true),
    ]));
    let qid = Int64Array::from_iter_values(0..QUERIES as i64);
    ctx.register_batch("queries", RecordBatch::try_new(schema, vec![Arc::new(qid), Arc::new(vec)]).unwrap()).unwrap();

    // Keyed IVF-Flat: keys are the ids found, vectors the index's, nothing to read; the
    // SQ8 index's vectors are read from the table, in one wave of GETs per batch.
    for (table, reads) in [("keyed", false), ("positional", true)] {
        let sql = batch_sql(table, 10);
        ctx.sql("SET faiss.nprobe = 32").await.unwrap();
        let indexed = neighbours(&ctx, &sql).await;
        ctx.sql("SET faiss.enabled = false").await.unwrap();
        let exact = neighbours(&ctx, &sql).await;
        ctx.sql("SET faiss.enabled = true").await.unwrap();
        assert_eq!(exact.len(), QUERIES - 1, "{table}");
        assert_eq!(indexed, exact, "{table}: batch through the index vs the exact plan");

        // At nprobe 4, each query's rows are its own statement's.
        ctx.sql("SET faiss.nprobe = 4").await.unwrap();
        let batch = neighbours(&ctx, &sql).await;
        assert!(!batch.contains_key(&3), "{table}: a NULL query has no rows");
        for i in [0usize, 1, 700, 1023, 1024, QUERIES - 1] {
            let v: Vec<String> = q[i * D..(i + 1) * D].iter().map(|v| v.to_string()).collect();
            let single = format!(
                "SELECT {i} AS qid, id, vec_distance(embedding, '[{}]') AS d FROM {table} ORDER BY d, id LIMIT 10",
                v.join(", ")
            );
            let single = neighbours(&ctx, &single).await.remove(&(i as i64)).unwrap();
            let ids = |r: &[(i64, f64)]| r.iter().map(|&(id, _)| id).collect::<Vec<_>>();
            assert_eq!(ids(&batch[&(i as i64)]), ids(&single), "{table}: query {i}");
        }
        // Two batches: a FAISS search (and a wave of row reads) each, the 1,099 queries counted.
        let counts = counts(&ctx, &sql).await;
        assert_eq!(counts("queries"), QUERIES - 1, "{table}");
        assert_eq!(counts("batch_searches"), 2, "{table}");
        // (A wave holds at most 64 GETs.)
        let (waves, gets) = (counts("table_waves"), counts("table_gets"));
        match reads {
            true => assert!((2..=2 + gets / 64).contains(&waves), "{table}: {waves} waves for {gets} GETs"),
            false => assert_eq!(gets, 0, "{table}"),
        }
        assert!(
            counts("lists_probed") <= (2 + counts("searched_alone")) * 32,
            "{table}: a list fetched twice in a batch"
        );
    }
}
