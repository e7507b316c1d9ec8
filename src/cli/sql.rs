//! The demo's SQL part: Fashion-MNIST as a Parquet table next to its index, queried with
//! `ORDER BY vec_distance(...) LIMIT k` through the index and through the exact plan.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::SessionContext;

use super::{CliResult, Location};

/// Rows per Parquet page: a key lookup decodes only the pages holding its keys.
const PAGE_ROWS: usize = 64;

/// Writes `file` (id, label, embedding) unless it exists.
pub fn write_parquet(file: &FsPath, base: &[f32], labels: &[u8], d: usize) -> CliResult {
    if file.exists() {
        return Ok(());
    }
    let n = base.len() / d;
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let embedding = FixedSizeListArray::new(item, d as i32, Arc::new(Float32Array::from(base.to_vec())), None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Int64, false),
        Field::new("embedding", embedding.data_type().clone(), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
            Arc::new(Int64Array::from_iter_values(labels.iter().map(|&l| l as i64))),
            Arc::new(embedding),
        ],
    )?;
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(4096))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_write_batch_size(PAGE_ROWS)
        .build();
    let tmp = file.with_extension("parquet.tmp");
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&tmp)?, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    std::fs::rename(tmp, file)?;
    Ok(())
}

/// Index plan vs exact plan over `queries`: latency and recall@k of the index plan.
pub async fn compare(
    table: &FsPath,
    index: &str,
    at: &Location,
    queries: &[f32],
    d: usize,
    k: usize,
    nprobe: usize,
) -> CliResult {
    let ctx = SessionContext::new();
    if let Some((scheme, rest)) = index.split_once("://") {
        let bucket = rest.split('/').next().unwrap_or_default();
        ctx.register_object_store(ObjectStoreUrl::parse(format!("{scheme}://{bucket}"))?.as_ref(), at.store.clone());
    }
    datafusion_faiss::sql::register_all(&ctx);
    let ddl = format!(
        "CREATE EXTERNAL TABLE fmnist STORED AS FAISS LOCATION '{}' \
         OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding')",
        table.display()
    );
    ctx.sql(&ddl).await?;
    ctx.sql(&format!("SET faiss.nprobe = {nprobe}")).await?;
    println!("sql         {ddl}");
    for filter in ["", "WHERE label = 3"] {
        let (mut indexed, mut exact) = (Plan::default(), Plan::default());
        for q in queries.chunks(d) {
            let q: Vec<String> = q.iter().map(|v| v.to_string()).collect();
            let sql =
                format!("SELECT id FROM fmnist {filter} ORDER BY vec_distance(embedding, [{}]) LIMIT {k}", q.join(","));
            for (plan, enabled) in [(&mut indexed, true), (&mut exact, false)] {
                ctx.sql(&format!("SET faiss.enabled = {enabled}")).await?;
                let t = Instant::now();
                let batches = ctx.sql(&sql).await?.collect().await?;
                plan.times.push(t.elapsed());
                plan.ids.extend(batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()));
            }
        }
        let q: Vec<String> = queries[..d].iter().map(|v| v.to_string()).collect();
        let sql =
            format!("SELECT id FROM fmnist {filter} ORDER BY vec_distance(embedding, [{}]) LIMIT {k}", q.join(","));
        ctx.sql("SET faiss.enabled = true").await?;
        let plan = ctx.sql(&format!("EXPLAIN ANALYZE {sql}")).await?.collect().await?;
        let plan = datafusion::arrow::util::pretty::pretty_format_batches(&plan)?.to_string();
        if let Some(metrics) = plan.lines().find(|l| l.contains("IvfTopKExec")).and_then(|l| l.split("metrics=").nth(1))
        {
            println!("sql         EXPLAIN ANALYZE, first query: IvfTopKExec {}", metrics.trim_end_matches([' ', '|']));
        }
        let hits = indexed.ids.chunks(k).zip(exact.ids.chunks(k));
        let hits: usize = hits.map(|(f, e)| f.iter().filter(|id| e.contains(id)).count()).sum();
        println!(
            "sql         ORDER BY vec_distance LIMIT {k} {filter}: index plan p50 {:.1} ms, exact plan p50 {:.1} ms, recall@{k} {:.4} vs exact plan ({} queries)",
            indexed.p50(),
            exact.p50(),
            hits as f64 / exact.ids.len() as f64,
            queries.len() / d
        );
    }
    Ok(())
}

#[derive(Default)]
struct Plan {
    times: Vec<Duration>,
    ids: Vec<i64>,
}

impl Plan {
    fn p50(&self) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        t[t.len() / 2].as_secs_f64() * 1e3
    }
}
