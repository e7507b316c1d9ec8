//! Ballista's executor with datafusion-faiss: its flags (`--help`), plus the index scans
//! it is sent, which open their shards from object storage.

use std::sync::Arc;

use ballista_core::error::Result;
use ballista_executor::config::Config;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use clap::Parser;

#[tokio::main]
async fn main() -> Result<()> {
    let config = ExecutorProcessConfig::try_from(Config::parse())?;
    start_executor_process(Arc::new(datafusion_faiss_ballista::executor_config(config))).await
}
