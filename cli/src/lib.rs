//! The `datafusion-faiss` command line as a library: its binary (`main.rs`) and other
//! front ends (the Python package's `build`) run the same commands.

mod build;
mod demo;
mod inspect;
mod query;
mod sql;
pub mod stores;

use std::sync::OnceLock;

use clap::{Parser, Subcommand};
use stores::{context, parse_url, CliResult, Location};

#[derive(Parser)]
#[command(name = "datafusion-faiss", version = version(), about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Record a table's Parquet files, as they are now, as what an index was built from
    /// (for an index written elsewhere, e.g. by pip's faiss-cpu, from exactly those rows).
    Attach(build::AttachArgs),
    /// Train and fill an IVF index from a Parquet table or a SQL query and publish it.
    Build(build::BuildArgs),
    /// The main job on local files: Fashion-MNIST as Parquet, indexed, queried by SQL.
    Demo(demo::DemoArgs),
    /// Describe an index file, reading only its header.
    Inspect(inspect::InspectArgs),
    /// Run SQL with the extension registered.
    Sql(query::SqlArgs),
}

/// This binary's version and the FAISS the library was linked with.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| format!("{}, FAISS {}", env!("CARGO_PKG_VERSION"), datafusion_faiss::faiss_build()))
}

/// Runs one command.
pub async fn run(command: Command) -> CliResult {
    match command {
        Command::Attach(a) => build::attach(a).await,
        Command::Build(a) => build::run(a).await,
        Command::Demo(a) => demo::run(a).await,
        Command::Inspect(a) => inspect::run(a).await,
        Command::Sql(a) => query::run(a).await,
    }
}

/// `build` with the arguments the command line takes after `build`.
pub async fn build(argv: Vec<String>) -> CliResult {
    #[derive(Parser)]
    #[command(name = "build")]
    struct Build {
        #[command(flatten)]
        args: build::BuildArgs,
    }
    let parsed = Build::try_parse_from(std::iter::once("build".to_string()).chain(argv))?;
    build::run(parsed.args).await
}
