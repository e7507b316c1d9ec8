//! `datafusion-faiss`: build, inspect and search FAISS IVF indexes kept on object storage.

mod cli;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "datafusion-faiss", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an IVF index of Fashion-MNIST in a local folder and search it header-only.
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
        Command::Demo(a) => cli::demo::run(a).await,
        Command::Inspect(a) => cli::inspect::run(a).await,
        Command::Sql(a) => cli::query::run(a).await,
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
