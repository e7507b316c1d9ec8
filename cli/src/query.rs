//! `sql`: run SQL with the extension registered, like datafusion-cli: statements from
//! `-c` and `-f`, or an interactive prompt with history.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::SessionContext;
use indicatif::HumanBytes;
use rustyline::error::ReadlineError;

use super::{context, CliResult};

#[derive(clap::Args)]
pub struct SqlArgs {
    /// A statement to run (repeatable; run in order, after --file).
    #[arg(short = 'c', long = "command")]
    commands: Vec<String>,
    /// A file of statements separated by `;` (repeatable).
    #[arg(short = 'f', long = "file")]
    files: Vec<std::path::PathBuf>,
}

pub async fn run(args: SqlArgs) -> CliResult {
    let ctx = context()?;
    if args.commands.is_empty() && args.files.is_empty() {
        return prompt(&ctx).await;
    }
    let mut texts = Vec::new();
    for file in &args.files {
        texts.push(std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?);
    }
    texts.extend(args.commands);
    for sql in texts.iter().flat_map(|t| {
        let (mut statements, rest) = split(t);
        statements.extend(Some(rest.trim().to_string()).filter(|s| !s.is_empty()));
        statements
    }) {
        print!("{}", execute(&ctx, &sql).await?);
    }
    Ok(())
}

/// Reads statements until end of input; `\q` quits, Ctrl-C drops the statement being typed.
async fn prompt(ctx: &SessionContext) -> CliResult {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".datafusion_faiss_history"));
    if let Some(h) = &history {
        editor.load_history(h).ok();
    }
    println!("datafusion-faiss {}: end statements with ';', \\q quits", env!("CARGO_PKG_VERSION"));
    let mut buffer = String::new();
    loop {
        match editor.readline(if buffer.is_empty() { "faiss> " } else { "    -> " }) {
            Ok(line) if buffer.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") => break,
            Ok(line) => {
                buffer.push_str(&line);
                buffer.push('\n');
                let (statements, rest) = split(&buffer);
                if statements.is_empty() {
                    continue;
                }
                editor.add_history_entry(buffer.trim()).ok();
                buffer = rest;
                for sql in statements {
                    match execute(ctx, &sql).await {
                        Ok(out) => print!("{out}"),
                        Err(e) => eprintln!("error: {e}"),
                    }
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        editor.save_history(h).ok();
    }
    Ok(())
}

/// Runs one statement: its rows as a table, its time and, for index scans, its I/O.
pub async fn execute(ctx: &SessionContext, sql: &str) -> CliResult<String> {
    let t = Instant::now();
    let plan = ctx.sql(sql).await?.create_physical_plan().await?;
    let batches = collect(plan.clone(), ctx.task_ctx()).await?;
    let elapsed = t.elapsed();
    let mut out = String::new();
    if batches.iter().any(|b| b.num_columns() > 0) {
        out += &format!("{}\n", pretty_format_batches(&batches)?);
    }
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    out += &format!("{rows} row{} in {:.1} ms\n", if rows == 1 { "" } else { "s" }, elapsed.as_secs_f64() * 1e3);
    if let Some(io) = io_line(&plan) {
        out += &format!("{io}\n");
    }
    Ok(out)
}

/// The index scans' I/O, summed over the plan; `None` when no index was used.
fn io_line(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let mut scans = Vec::new();
    let mut stack = vec![plan.clone()];
    while let Some(p) = stack.pop() {
        if p.name() == "IvfTopKExec" {
            scans.extend(p.metrics());
        }
        stack.extend(p.children().into_iter().cloned());
    }
    if scans.is_empty() {
        return None;
    }
    let sum = |name: &str| -> Option<usize> {
        Some(scans.iter().filter_map(|m| m.sum_by_name(name)).map(|v| v.as_usize()).sum())
    };
    let lists = sum("lists_probed")?;
    let (gets, waves, bytes) = (sum("gets")?, sum("waves")?, sum("bytes_fetched")?);
    let (hits, mapped) = (sum("cache_hits")?, sum("bytes_mapped")?);
    let (table_gets, table_waves, table_bytes) = (sum("table_gets")?, sum("table_waves")?, sum("table_bytes")?);
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let (disk_lists, disk_table) = (sum("disk_hits")?, sum("table_disk_hits")?);
    let mut rows = format!(
        "; rows: {table_gets} GET{} in {table_waves} wave{}, {}",
        plural(table_gets),
        plural(table_waves),
        HumanBytes(table_bytes as u64)
    );
    if disk_lists + disk_table > 0 {
        rows += &format!("; disk tier: {disk_lists} lists, {disk_table} footers or key maps");
    }
    if sum("brute_force")? > 0 {
        return Some(format!("io: the filter left few rows; {} ranked exactly, no list probed", sum("rows_reranked")?));
    }
    let index = if mapped > 0 {
        format!("io: {lists} lists probed, {} read from the memory-mapped file", HumanBytes(mapped as u64))
    } else {
        format!(
            "io: {lists} lists probed, {gets} GETs in {waves} wave{}, {} fetched, {hits} cache hits",
            plural(waves),
            HumanBytes(bytes as u64)
        )
    };
    Some(index + &rows + &coverage(sum("indexed_rows")?, sum("unindexed_rows")?))
}

/// A notice when over a tenth of the rows are in files no index covers.
fn coverage(indexed: usize, unindexed: usize) -> String {
    match unindexed * 10 > indexed + unindexed {
        true => format!(
            "\nnote: {unindexed} of {} rows are in files no index covers and were ranked exactly; `datafusion-faiss build --update` indexes them",
            indexed + unindexed
        ),
        false => String::new(),
    }
}

/// Complete statements in `text` (split at `;` outside quotes and comments) and the
/// unfinished rest.
fn split(text: &str) -> (Vec<String>, String) {
    let mut statements = Vec::new();
    let (mut start, mut quote, mut comment) = (0, None, false);
    let bytes = text.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match (quote, comment, c) {
            (_, true, b'\n') => comment = false,
            (_, true, _) => {}
            (Some(q), _, c) if c == q => quote = None,
            (Some(_), _, _) => {}
            (None, _, b'\'' | b'"') => quote = Some(c),
            (None, _, b'-') if bytes.get(i + 1) == Some(&b'-') => comment = true,
            (None, _, b';') => {
                let s = text[start..i].trim();
                if !s.is_empty() {
                    statements.push(s.to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    (statements, text[start..].to_string())
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let (s, rest) = split("SELECT ';' AS a; -- x; y\nSELECT \"b;\" FROM t;\nSELECT 1");
        assert_eq!(s, vec!["SELECT ';' AS a", "-- x; y\nSELECT \"b;\" FROM t"]);
        assert_eq!(rest, "\nSELECT 1");
    }
}
