//! datafusion-faiss on Ballista: vector tables and index scans travel through Ballista's
//! codecs, the scheduler plans index scans (one task per shard), the executors run them,
//! each opening the shards it is given from object storage (header only, one list cache
//! per executor).
//!
//! * [`scheduler_config`] and [`executor_config`] add the extension to Ballista's
//!   `SchedulerConfig` and `ExecutorProcessConfig`; the `datafusion-faiss-scheduler` and
//!   `datafusion-faiss-executor` binaries are Ballista's with them applied.
//! * [`remote`] is a client session on a scheduler.
//!
//! Every process resolves `s3://` URLs from the `AWS_*` variables ([`EnvStores`]).

use std::sync::{Arc, LazyLock};

use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use ballista_core::utils::default_session_builder;
use ballista_executor::executor_process::ExecutorProcessConfig;
use ballista_scheduler::config::SchedulerConfig;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_faiss::sql::codec::{FaissLogicalCodec, FaissPhysicalCodec};
use datafusion_faiss::sql::{register_all, register_sql, FaissConfig};
use datafusion_faiss::stores::EnvStores;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;

static STORES: LazyLock<Arc<EnvStores>> = LazyLock::new(Default::default);

/// Ballista's logical codec, with vector tables.
pub fn logical_codec() -> Arc<dyn LogicalExtensionCodec> {
    Arc::new(FaissLogicalCodec::new(Arc::new(BallistaLogicalExtensionCodec::default())))
}

/// Ballista's physical codec, with the index scan and the batch search.
pub fn physical_codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(FaissPhysicalCodec::new(Arc::new(BallistaPhysicalExtensionCodec::default())))
}

/// The session settings of every process: Ballista's, `faiss.*`, and the codecs.
pub fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_option_extension(FaissConfig::default())
        .with_ballista_logical_extension_codec(logical_codec())
        .with_ballista_physical_extension_codec(physical_codec())
}

/// The process's runtime: its stores resolved from the environment.
pub fn runtime() -> datafusion::error::Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new().with_object_store_registry(STORES.clone()).build_arc()
}

/// The scheduler's planning session: Ballista's, with [`register_all`] (the rewrite and
/// the index scan's planner) and the process's stores.
pub fn session_state(config: SessionConfig) -> datafusion::error::Result<datafusion::execution::SessionState> {
    let state = SessionStateBuilder::new_from_existing(default_session_builder(config)?).with_runtime_env(runtime()?);
    let ctx = SessionContext::new_with_state(state.build());
    register_all(&ctx);
    Ok(ctx.state())
}

/// `config` with the extension: codecs, settings, planning session.
pub fn scheduler_config(config: SchedulerConfig) -> SchedulerConfig {
    let mut config = config
        .with_override_config_producer(Arc::new(session_config))
        .with_override_session_builder(Arc::new(session_state));
    config.override_logical_codec = Some(logical_codec());
    config.override_physical_codec = Some(physical_codec());
    config
}

/// `config` with the extension: codecs, settings, functions, stores.
pub fn executor_config(mut config: ExecutorProcessConfig) -> ExecutorProcessConfig {
    let mut functions = BallistaFunctionRegistry::default();
    for f in datafusion_faiss::sql::functions::all() {
        functions.scalar_functions.insert(f.name().to_string(), f);
    }
    config.override_function_registry = Some(Arc::new(functions));
    config.override_config_producer = Some(Arc::new(session_config));
    config.override_runtime_producer = Some(Arc::new(|_| runtime()));
    config.override_logical_codec = Some(logical_codec());
    config.override_physical_codec = Some(physical_codec());
    config
}

/// A client session on the scheduler at `url` (`df://host:port`): SQL naming the
/// extension's functions and `STORED AS FAISS` tables plans here, and is optimized (index
/// scans chosen) and run by the cluster.
pub async fn remote(url: &str) -> datafusion::error::Result<SessionContext> {
    let state = SessionStateBuilder::new().with_default_features().with_config(session_config()).with_runtime_env(runtime()?).build();
    let ctx = SessionContext::remote_with_state(url, state).await?;
    register_sql(&ctx);
    Ok(ctx)
}
