//! `datafusion-faiss`: build, inspect and search FAISS IVF indexes kept on object storage.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "datafusion-faiss", version = concat!(env!("CARGO_PKG_VERSION"), ", FAISS ", env!("DFF_FAISS_BUILD")), about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train and fill an IVF index from a Parquet table or a SQL query and publish it.
    Build(cli::build::BuildArgs),
    /// The main job on local files: Fashion-MNIST as Parquet, indexed, queried by SQL.
    Demo(cli::demo::DemoArgs),
    /// Describe an index file, reading only its header.
    Inspect(cli::inspect::InspectArgs),
    /// Run SQL with the extension registered.
    Sql(cli::query::SqlArgs),
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let result = match args.command {
        Command::Build(a) => cli::build::run(a).await,
        Command::Demo(a) => cli::demo::run(a).await,
        Command::Inspect(a) => cli::inspect::run(a).await,
        Command::Sql(a) => cli::query::run(a).await,
    };
    if let Err(e) = result {
        // One line, whatever the error's own layout.
        eprintln!("error: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "));
        std::process::exit(1);
    }
}
