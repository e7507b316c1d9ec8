//! Runs every `sql-tests/*.slt` file against a `SessionContext` with the extension
//! registered and the fixture tables of `fixtures()` under `memory:///`. Floats print
//! with at most 6 decimals, NULL as `NULL`.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_faiss::Metric;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};
use std::sync::Arc;

struct Db {
    ctx: SessionContext,
}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let df = self.ctx.sql(sql).await?;
        let schema = df.schema().clone();
        let batches = df.collect().await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                t if t.is_floating() => DefaultColumnType::FloatingPoint,
                _ => DefaultColumnType::Text,
            })
            .collect();
        let mut rows = Vec::new();
        for batch in &batches {
            let options = FormatOptions::default().with_null("NULL");
            let formatters: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                let mut cells: Vec<String> = batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(col, fmt)| match col.data_type() {
                        _ if col.is_null(row) => "NULL".to_string(),
                        DataType::Float64 => float(col.as_primitive::<Float64Type>().value(row)),
                        DataType::Float32 => float(col.as_primitive::<Float32Type>().value(row) as f64),
                        _ => fmt.value(row).to_string(),
                    })
                    .collect();
                // A multi-line cell (EXPLAIN's plans) continues on rows of its own.
                let last = cells.pop().unwrap_or_default();
                let mut lines = last.trim_end().lines();
                cells.push(lines.next().unwrap_or_default().to_string());
                rows.push(cells);
                rows.extend(lines.map(|l| vec![l.to_string()]));
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "datafusion-faiss"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn float(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sql-tests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(fixtures());
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let store = store.clone();
        let mut runner = Runner::new(move || {
            let store = store.clone();
            async move {
                // Fixed partitioning keeps EXPLAIN output the same on every machine.
                let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
                ctx.register_object_store(ObjectStoreUrl::parse("memory://").unwrap().as_ref(), store);
                datafusion_faiss::sql::register_all(&ctx);
                Ok(Db { ctx })
            }
        });
        if std::env::var_os("SLT_COMPLETE").is_some() {
            // Rewrites the expected results of `file` with what the queries return now.
            let update = runner.update_test_file(
                file,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            );
            rt.block_on(update).unwrap();
            continue;
        }
        match rt.block_on(runner.run_file_async(file)) {
            Ok(()) => {
                println!("ok     {}", file.display());
                passed += 1;
            }
            Err(e) => {
                println!("FAILED {}\n{e}", file.display());
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    assert!(failed == 0 && passed > 0, "sqllogictest files failed");
}

/// Tables the .slt files use, as `memory:///<dir>/<name>.{parquet,faiss}`.
async fn fixtures() -> Arc<dyn ObjectStore> {
    use common::tables::Docs;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let docs = Docs::new(20_000, 8, 5);
    docs.write(store.as_ref(), "docs", "l2", "IVF16,Flat", Metric::L2).await;
    docs.write(store.as_ref(), "docs", "ip", "IVF16,Flat", Metric::InnerProduct).await;
    docs.write(store.as_ref(), "docs", "sq8", "IVF16,SQ8", Metric::L2).await;
    let unit = Docs { normalized: true, ..Docs::new(2_000, 8, 6) };
    unit.write(store.as_ref(), "unit", "ip", "IVF8,Flat", Metric::InnerProduct).await;
    let lists = Docs { variable_lists: true, ..Docs::new(2_000, 8, 7) };
    lists.write(store.as_ref(), "lists", "l2", "IVF8,Flat", Metric::L2).await;
    Docs::new(500, 4, 8).write(store.as_ref(), "dim4", "l2", "IVF4,Flat", Metric::L2).await;
    let ties = Docs { copies_of_first: (100..130).collect(), ..Docs::new(2_000, 8, 9) };
    ties.write(store.as_ref(), "ties", "l2", "IVF8,Flat", Metric::L2).await;
    store
}
