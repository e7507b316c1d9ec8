//! The demo's SQL part: Fashion-MNIST as a Parquet table next to its index, queried with
//! `ORDER BY vec_distance(...) LIMIT k` through the index and through the exact plan.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion_faiss::sql::functions::vector_literal;

use super::query::execute;
use super::{context, CliResult};

/// Writes `file` (id, label, embedding) unless it exists, in pages of about 32 KB: a
/// lookup by key decodes whole pages, so small pages keep it to about the rows it needs.
/// Components are not nullable, which spares the decoder a validity bitmap per value.
pub fn write_parquet(file: &FsPath, base: &[f32], labels: &[u8], d: usize) -> CliResult {
    if file.exists() {
        return Ok(());
    }
    let n = base.len() / d;
    let page_rows = (32768 / (4 * d)).clamp(8, 1024);
    let item = Arc::new(Field::new("item", DataType::Float32, false));
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
        .set_data_page_row_count_limit(page_rows)
        .set_write_batch_size(page_rows)
        .build();
    let tmp = file.with_extension("parquet.tmp");
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&tmp)?, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    std::fs::rename(tmp, file)?;
    Ok(())
}

/// Registers `table` with its index, shows one query plain, filtered and under EXPLAIN
/// ANALYZE, then compares the index plan with the exact plan over `queries`.
pub async fn run(
    table: &FsPath,
    index: &FsPath,
    queries: &[f32],
    labels: &[u8],
    d: usize,
    k: usize,
    nprobe: usize,
) -> CliResult {
    let ctx = context()?;
    let ddl = format!(
        "CREATE EXTERNAL TABLE fmnist STORED AS FAISS LOCATION '{}' \
         OPTIONS ('index' '{}', 'key' 'id', 'vector' 'embedding')",
        table.display(),
        index.display()
    );
    println!("\n> {ddl};");
    execute(&ctx, &ddl).await?;
    let set = format!("SET faiss.nprobe = {nprobe}");
    println!("> {set};");
    execute(&ctx, &set).await?;

    let vector = vector_literal(&queries[..d]);
    let plain = format!("SELECT id, label, vec_distance(embedding, {vector}) AS d FROM fmnist ORDER BY d LIMIT {k}");
    let filtered = plain.replace("ORDER BY", &format!("WHERE label = {} ORDER BY", labels[0]));
    for sql in [plain.clone(), filtered] {
        println!("\n> {};", abbreviate(&sql));
        print!("{}", execute(&ctx, &sql).await?);
    }
    // The plan as text, not as a table padded to its longest (vector-literal) line.
    let explain = format!("EXPLAIN ANALYZE {plain}");
    println!("\n> {};", abbreviate(&explain));
    for batch in ctx.sql(&explain).await?.collect().await? {
        for plan in batch.column(1).as_string::<i32>().iter().flatten() {
            println!("{}", abbreviate(plan).trim_end());
        }
    }
    println!();

    for own_label in [false, true] {
        let (mut indexed, mut exact) = (Plan::default(), Plan::default());
        let filter = if own_label { "WHERE label = <the query's label>" } else { "" };
        for (q, label) in queries.chunks(d).zip(labels) {
            let filter = if own_label { format!("WHERE label = {label}") } else { String::new() };
            let sql = format!(
                "SELECT id FROM fmnist {filter} ORDER BY vec_distance(embedding, {}) LIMIT {k}",
                vector_literal(q)
            );
            for (plan, enabled) in [(&mut indexed, true), (&mut exact, false)] {
                ctx.sql(&format!("SET faiss.enabled = {enabled}")).await?;
                let t = Instant::now();
                let batches = ctx.sql(&sql).await?.collect().await?;
                plan.times.push(t.elapsed());
                plan.ids.extend(batches.iter().flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec()));
            }
        }
        let hits = indexed.ids.chunks(k).zip(exact.ids.chunks(k));
        let hits: usize = hits.map(|(f, e)| f.iter().filter(|id| e.contains(id)).count()).sum();
        println!(
            "sql         ORDER BY vec_distance LIMIT {k} {filter}: index plan p50 {:.1} ms, exact plan p50 {:.1} ms \
             ({:.1}x), recall@{k} {:.4} vs the exact plan ({} queries)",
            indexed.p50(),
            exact.p50(),
            exact.p50() / indexed.p50(),
            hits as f64 / exact.ids.len().max(1) as f64,
            queries.len() / d
        );
    }
    ctx.sql("SET faiss.enabled = true").await?;
    Ok(())
}

/// Long vector literals shortened to their first values and length, for the terminal.
fn abbreviate(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inner = &rest[..close];
        let numeric = inner.chars().all(|c| c.is_ascii_digit() || " ,.-e".contains(c));
        let values: Vec<&str> = inner.split(',').map(str::trim).collect();
        if numeric && values.len() > 8 {
            out.push_str(&format!("{}, … {} values", values[..3].join(", "), values.len()));
            rest = &rest[close..];
        }
    }
    out.push_str(rest);
    out
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
