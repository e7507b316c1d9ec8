//! Ballista's scheduler with datafusion-faiss: its flags (`--help`), plus vector tables
//! and index scans in plans.

use std::sync::Arc;

use ballista_core::error::{BallistaError, Result};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{Config, SchedulerConfig};
use ballista_scheduler::scheduler_process::start_server;
use clap::Parser;

fn main() -> Result<()> {
    // Ballista's own binary runs planning on threads with 32 MiB stacks: deep plans recurse.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(32 << 20).build()?;
    runtime.block_on(async {
        let opt = Config::parse();
        let addr = format!("{}:{}", opt.bind_host, opt.bind_port);
        let addr = addr.parse().map_err(|e: std::net::AddrParseError| BallistaError::Configuration(e.to_string()))?;
        let config = datafusion_faiss_ballista::scheduler_config(SchedulerConfig::try_from(opt)?);
        let cluster = BallistaCluster::new_from_config(&config).await?;
        start_server(cluster, addr, Arc::new(config)).await
    })
}
