//! The DataFusion layer: distance functions, the vector table (and its `STORED AS FAISS`
//! factory), the top-k rewrite and its index-scan exec, and `faiss.*` settings.

#[cfg(feature = "proto")]
pub mod codec;
mod config;
mod exec;
mod factory;
pub mod functions;
mod knn;
pub mod manifest;
mod node;
mod registry;
mod rows;
mod rule;
mod search;
mod parts;
mod table;

use std::sync::Arc;

use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::FunctionRegistry;
use datafusion::optimizer::OptimizerRule;
use datafusion::prelude::SessionContext;

pub use config::FaissConfig;
pub use exec::{IvfKnnExec, IvfTopKExec};
pub use factory::FaissTableFactory;
pub use search::{FaissSearch, DISTANCE_COLUMN};
pub use table::{VectorTable, VectorTableOptions};

/// Registers everything on `ctx`, keeping its catalogs, functions and settings: the
/// distance functions, `faiss_search`, `faiss.*` settings, `STORED AS FAISS`, the top-k rewrite and the
/// planner of its index scan (this replaces a custom query planner, if `ctx` had one).
/// Calling it again changes nothing.
/// `inner_product` and `cosine_distance` replace DataFusion's functions of those names
/// (same results, Float32 vectors read without conversion to Float64 lists).
pub fn register_all(ctx: &SessionContext) {
    let state = ctx.state_ref();
    let mut state = state.write();
    let mut next =
        SessionStateBuilder::new_from_existing(state.clone()).with_query_planner(Arc::new(exec::FaissQueryPlanner));
    for rule in rules() {
        if !state.optimizers().iter().any(|r| r.name() == rule.name()) {
            next = next.with_optimizer_rule(rule);
        }
    }
    *state = next.build();
    drop(state);
    register_sql(ctx);
}

/// The index rewrites `register_all` adds to a session's optimizer: the top-k and the
/// batch k-NN. Alone, for a front end handed plans another optimizer already ran on.
pub fn rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    vec![Arc::new(rule::IvfTopKRule), Arc::new(knn::IvfKnnRule)]
}

/// The header of the index at `url` (a URL or a local path, against `runtime`'s stores),
/// from the indexes vector tables opened: a front end describing a table's index reads
/// nothing more (an index no table opened is opened header-only).
pub async fn index_info(
    url: &str,
    runtime: &datafusion::execution::runtime_env::RuntimeEnv,
    settings: &FaissConfig,
) -> datafusion::common::Result<crate::IndexInfo> {
    let at = registry::IndexLocation::resolve(url, runtime)?;
    let index = registry::open(&at, settings.cache_bytes(), settings.disk().as_ref())
        .await
        .map_err(|e| datafusion::common::DataFusionError::External(Box::new(e)))?;
    Ok(index.info().clone())
}

/// What a session needs to plan SQL naming the extension's functions and tables, without
/// the rewrite and its planner: the distance functions, `faiss_search`, `STORED AS FAISS`
/// and `faiss.*` settings. For a client whose plans are optimized and run elsewhere (a
/// Ballista scheduler, which has [`register_all`]).
pub fn register_sql(ctx: &SessionContext) {
    let state = ctx.state_ref();
    let mut state = state.write();
    // After any rebuild of the state, which re-registers every function under each of its
    // names: an alias of DataFusion's `inner_product` would otherwise bring it back over ours.
    for f in functions::all() {
        state.register_udf(f).expect("SessionState::register_udf does not fail");
    }
    state.register_udtf("faiss_search", Arc::new(search::FaissSearch));
    state.table_factories_mut().insert("FAISS".into(), Arc::new(FaissTableFactory));
    if state.config().options().extensions.get::<FaissConfig>().is_none() {
        state.config_mut().options_mut().extensions.insert(FaissConfig::default());
    }
}
