//! `sql`: run SQL statements with the extension registered, printing each result.

use std::time::Instant;

use datafusion::prelude::SessionContext;

use super::CliResult;

#[derive(clap::Args)]
pub struct SqlArgs {
    /// A statement to run (repeatable; run in order).
    #[arg(short = 'c', long = "command")]
    commands: Vec<String>,
    /// A file of statements separated by `;`.
    #[arg(short = 'f', long = "file")]
    files: Vec<std::path::PathBuf>,
}

pub async fn run(args: SqlArgs) -> CliResult {
    let ctx = SessionContext::new();
    datafusion_faiss::sql::register_all(&ctx);
    let mut statements = args.commands;
    for file in &args.files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        statements.extend(text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from));
    }
    for sql in statements {
        let t = Instant::now();
        let batches = ctx.sql(&sql).await?.collect().await?;
        println!("{}", datafusion::arrow::util::pretty::pretty_format_batches(&batches)?);
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        println!("{rows} rows in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}
