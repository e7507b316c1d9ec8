//! `datafusion-faiss`: build, inspect and search FAISS IVF indexes kept on object storage.

use clap::Parser;
use datafusion_faiss_cli::{run, Args};

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse().command).await {
        // One line, whatever the error's own layout.
        eprintln!("error: {}", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "));
        std::process::exit(1);
    }
}
