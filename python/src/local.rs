//! What runs in this library rather than in datafusion-python's: a tokio runtime (this
//! library has its own copy of tokio, whose reactor the host's threads do not drive),
//! the object stores of `AWS_*` and friends, shared with the command line's `build` (the
//! host's registry does not cross FFI),
//! and sessions rebuilt from the host's with our settings read out of its FFI options.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use datafusion::catalog::Session;
use datafusion::common::config::{ExtensionOptions, DATAFUSION_FFI_CONFIG_NAMESPACE};
use datafusion::common::{exec_err, DataFusionError, Result};
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{TaskContext, TaskContextProvider};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_faiss::sql::FaissConfig;
use datafusion_ffi::config::extension_options::FFI_ExtensionOptions;
use datafusion_ffi::execution::FFI_TaskContext;
use pyo3::exceptions::PyRuntimeError;
use pyo3::{PyResult, Python};
use tokio::runtime::{Handle, Runtime};

/// The process that started this library's threads (its runtime); 0 before any did.
static STARTED_IN: AtomicU32 = AtomicU32::new(0);

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    STARTED_IN.store(std::process::id(), Ordering::Release);
    tokio::runtime::Builder::new_multi_thread()
        .thread_name("datafusion-faiss")
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

/// Refuses a process forked after this library started its threads in the parent (a
/// `multiprocessing` pool, a pre-forking server): the child has none of them, and what
/// they held at the fork stays held there (locks, pooled connections, FAISS's OpenMP
/// team), so its queries hung or crashed. A child forked before the first use starts its
/// own. Checked where our work starts: the runtime and the sessions standing for the host's.
pub fn here() -> Result<()> {
    match STARTED_IN.load(Ordering::Acquire) {
        0 => Ok(()),
        started if started == std::process::id() => Ok(()),
        started => exec_err!(
            "datafusion-faiss cannot run in process {}, forked from process {started} after datafusion-faiss \
             started its threads there: start workers with multiprocessing's 'spawn' or 'forkserver' method, \
             or fork before the first use",
            std::process::id()
        ),
    }
}

fn rt() -> Result<&'static Runtime> {
    here()?;
    Ok(&RUNTIME)
}

/// One runtime environment for the process, so the file-metadata and list caches of one
/// query serve the next.
static ENV: LazyLock<Arc<RuntimeEnv>> = LazyLock::new(|| {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(datafusion_faiss_cli::stores::stores())
        .build_arc()
        .expect("a runtime environment")
});

/// Answers the FFI codecs' requests for a task context when they decode on our side,
/// with one made once: making one copies every function of its session, a quarter of a
/// millisecond at each plan handed over.
static TASKS: LazyLock<Arc<Tasks>> = LazyLock::new(|| {
    let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), ENV.clone());
    datafusion_faiss::sql::register_sql(&ctx);
    Arc::new(Tasks(ctx.task_ctx()))
});

struct Tasks(Arc<TaskContext>);

impl TaskContextProvider for Tasks {
    fn task_ctx(&self) -> Arc<TaskContext> {
        self.0.clone()
    }
}

pub fn runtime() -> Result<Handle> {
    Ok(rt()?.handle().clone())
}

/// Runs `work` on our runtime from this thread, as a binary's main does, with the GIL
/// released, waking every 50 ms (or when it is done) to look for Ctrl-C: a
/// `KeyboardInterrupt` drops it, which cancels it.
pub fn block<T: Send>(py: Python<'_>, work: impl Future<Output = T> + Send) -> PyResult<T> {
    let runtime = rt().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let mut work = Box::pin(work);
    loop {
        // The timer is made inside block_on, where the runtime's clock is.
        let waited =
            py.detach(|| runtime.block_on(async { tokio::time::timeout(Duration::from_millis(50), &mut work).await }));
        match waited {
            Ok(done) => return Ok(done),
            Err(_) => py.check_signals()?,
        }
    }
}

/// Runs `work` on our runtime, whose reactor its I/O needs, and waits for it from the
/// host's.
pub async fn run<T: Send + 'static>(work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    rt()?.spawn(work).await.map_err(|e| DataFusionError::External(Box::new(e)))?
}

pub fn tasks() -> Arc<dyn TaskContextProvider> {
    TASKS.clone()
}

pub fn env() -> Arc<RuntimeEnv> {
    ENV.clone()
}

/// `config` with `faiss.*` as our settings. The host keeps them among its FFI options,
/// which reach us with its namespace in front (`datafusion_ffi.faiss.nprobe`); a value
/// the host took unchecked is checked here.
pub fn config(mut config: SessionConfig) -> Result<SessionConfig> {
    let mut faiss = FaissConfig::from_options(config.options());
    if let Some(ffi) = config.options().extensions.get::<FFI_ExtensionOptions>() {
        for entry in ffi.entries() {
            let key = entry.key.strip_prefix(DATAFUSION_FFI_CONFIG_NAMESPACE).and_then(|k| k.strip_prefix('.'));
            if let (Some(name), Some(value)) = (key.unwrap_or(&entry.key).strip_prefix("faiss."), &entry.value) {
                faiss.set(name, value).map_err(|e| e.context(format!("setting faiss.{name} = '{value}'")))?;
            }
        }
    }
    config.options_mut().extensions.insert(faiss);
    Ok(config)
}

/// DataFusion's functions and formats with the extension registered, built once: a
/// build registers every function anew, a millisecond or more per query.
static TEMPLATE: LazyLock<SessionState> = LazyLock::new(|| {
    let ctx = SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_create_default_catalog_and_schema(false))
            .with_runtime_env(ENV.clone())
            .with_default_features()
            .build(),
    );
    datafusion_faiss::sql::register_all(&ctx);
    ctx.state()
});

/// A session of ours standing for the host's in planning: its settings, our stores,
/// DataFusion's functions and the extension. Its tables come with the plan.
pub fn planner_session(host: &dyn Session) -> Result<SessionState> {
    here()?;
    let mut state = TEMPLATE.clone();
    *state.config_mut() = config(host.config().clone())?;
    Ok(state)
}

/// [`planner_session`] with the host's catalogs, for what names a table (`faiss_search`).
pub fn session(host: &dyn Session) -> Result<SessionState> {
    here()?;
    let settings = config(host.config().clone())?.with_create_default_catalog_and_schema(false);
    let ctx = SessionContext::new_with_state(
        SessionStateBuilder::new_from_existing(TEMPLATE.clone())
            .with_config(settings)
            .with_catalog_list(host.catalog_list())
            .build(),
    );
    // The rebuild registered every function under each of its names again.
    datafusion_faiss::sql::register_sql(&ctx);
    Ok(ctx.state())
}

/// The host's task context as it crosses FFI, read as datafusion-ffi's conversion reads
/// it but for the host's functions: that makes a wrapper for each of several hundred, at
/// every `execute`, and a plan planned already looks none up.
pub fn host_task(host: &FFI_TaskContext) -> Result<Arc<TaskContext>> {
    let (task, session, settings) =
        unsafe { ((host.task_id)(host), (host.session_id)(host), (host.session_config)(host)) };
    Ok(Arc::new(TaskContext::new(
        task.into_option().map(|id| id.to_string()),
        session.to_string(),
        SessionConfig::try_from(&settings)?,
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        ENV.clone(),
    )))
}

/// The host's task context with our settings and stores.
pub fn task(ctx: &TaskContext) -> Result<Arc<TaskContext>> {
    Ok(Arc::new(TaskContext::new(
        ctx.task_id(),
        ctx.session_id(),
        config(ctx.session_config().clone())?,
        ctx.scalar_functions().clone(),
        HashMap::new(),
        ctx.aggregate_functions().clone(),
        ctx.window_functions().clone(),
        ENV.clone(),
    )))
}
