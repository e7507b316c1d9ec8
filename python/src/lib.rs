//! `datafusion_faiss._internal`: the extension's parts as datafusion-python 55 takes
//! them from another library, as FFI capsules. `datafusion_faiss/__init__.py` registers
//! them on a `SessionContext` and builds the search API on top.

mod engine;
mod local;
mod planner;

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider, TableProviderFactory};
use datafusion::common::config::{ExtensionOptions, DATAFUSION_FFI_CONFIG_NAMESPACE};
use datafusion::common::Result;
use datafusion::logical_expr::{CreateExternalTable, ScalarUDF};
use datafusion_faiss::sql::{FaissConfig, FaissSearch, FaissTableFactory};
use datafusion_faiss::Metric;
use datafusion_ffi::config::extension_options::{ExtensionOptionsPrivateData, FFI_ExtensionOptions};
use datafusion_ffi::ffi_option::FFI_Result;
use datafusion_ffi::proto::logical_extension_codec::FFI_LogicalExtensionCodec;
use datafusion_ffi::proto::physical_extension_codec::FFI_PhysicalExtensionCodec;
use datafusion_ffi::query_planner::FFI_QueryPlanner;
use datafusion_ffi::table_provider_factory::FFI_TableProviderFactory;
use datafusion_ffi::udf::FFI_ScalarUDF;
use datafusion_ffi::udtf::FFI_TableFunction;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use planner::{Handles, Planner};
use stabby::str::Str;
use url::Url;

fn logical_codec() -> PyResult<FFI_LogicalExtensionCodec> {
    Ok(FFI_LogicalExtensionCodec::new(Arc::new(Handles), Some(runtime()?), &local::tasks()))
}

fn runtime() -> PyResult<tokio::runtime::Handle> {
    local::runtime().map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// One distance function (`vec_distance`, `l2_distance`, ...).
#[pyclass(frozen, module = "datafusion_faiss._internal")]
struct Function(Arc<ScalarUDF>);

#[pymethods]
impl Function {
    #[getter]
    fn name(&self) -> &str {
        self.0.name()
    }

    fn __datafusion_scalar_udf__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        PyCapsule::new_with_value(py, FFI_ScalarUDF::from(self.0.clone()), c"datafusion_scalar_udf")
    }
}

/// The distance functions.
#[pyfunction]
fn functions() -> Vec<Function> {
    datafusion_faiss::sql::functions::all().into_iter().map(Function).collect()
}

/// `faiss_search('table', '[...]', k)`, planned in a session of ours standing for the
/// host's (its catalogs, our stores).
#[derive(Debug)]
struct Search;

impl TableFunctionImpl for Search {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let state = local::session(args.session())?;
        FaissSearch.call_with_args(TableFunctionArgs::new(args.exprs(), &state))
    }
}

#[pyclass(frozen, module = "datafusion_faiss._internal")]
struct SearchFunction;

#[pymethods]
impl SearchFunction {
    #[new]
    fn new() -> Self {
        SearchFunction
    }

    fn __datafusion_table_function__<'py>(
        &self,
        py: Python<'py>,
        _session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let function = FFI_TableFunction::new_with_ffi_codec(Arc::new(Search), Some(runtime()?), logical_codec()?);
        PyCapsule::new_with_value(py, function, c"datafusion_table_function")
    }
}

/// `STORED AS FAISS`, created in a session of ours standing for the host's.
#[derive(Debug)]
struct Factory;

#[async_trait]
impl TableProviderFactory for Factory {
    async fn create(&self, state: &dyn Session, cmd: &CreateExternalTable) -> Result<Arc<dyn TableProvider>> {
        let state = local::session(state)?;
        let cmd = cmd.clone();
        local::run(async move { FaissTableFactory.create(&state, &cmd).await }).await
    }
}

#[pyclass(frozen, module = "datafusion_faiss._internal")]
struct TableFactory;

#[pymethods]
impl TableFactory {
    #[new]
    fn new() -> Self {
        TableFactory
    }

    fn __datafusion_table_provider_factory__<'py>(
        &self,
        py: Python<'py>,
        _session: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let factory =
            FFI_TableProviderFactory::new_with_ffi_codec(Arc::new(Factory), Some(runtime()?), logical_codec()?);
        PyCapsule::new_with_value(py, factory, c"datafusion_table_provider_factory")
    }
}

/// `faiss.*` settings with their defaults, for `SessionConfig.with_extension`.
#[pyclass(frozen, module = "datafusion_faiss._internal")]
struct Settings;

#[pymethods]
impl Settings {
    #[new]
    fn new() -> Self {
        Settings
    }

    fn __datafusion_extension_options__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        // Keyed as SET names them (`faiss.nprobe`): our entries carry their prefix already.
        let mut options = checked(FFI_ExtensionOptions::default());
        for entry in FaissConfig::default().entries() {
            let value = entry.value.unwrap_or_default();
            options.set(&entry.key, &value).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        }
        PyCapsule::new_with_value(py, options, c"datafusion_extension_options")
    }
}

/// `options` checking a `faiss.*` value as it is set, as a Rust session does: datafusion-ffi's
/// own `set` keeps any value, so a bad `SET faiss.nprobe = 'x'` stayed in the context and
/// failed every later query. The host clones the options with the session, so the clone
/// checks too; other libraries' settings in the same options are kept as they come.
fn checked(mut options: FFI_ExtensionOptions) -> FFI_ExtensionOptions {
    options.set = set_checked;
    options.cloned = cloned_checked;
    options
}

/// The values behind options that datafusion-ffi's `From<HashMap>` made, which `checked`
/// keeps.
fn values(options: &mut FFI_ExtensionOptions) -> &mut HashMap<String, String> {
    unsafe { &mut (*(options.private_data as *mut ExtensionOptionsPrivateData)).options }
}

unsafe extern "C" fn cloned_checked(options: &FFI_ExtensionOptions) -> FFI_ExtensionOptions {
    let data = unsafe { &*(options.private_data as *const ExtensionOptionsPrivateData) };
    checked(data.options.clone().into())
}

unsafe extern "C" fn set_checked(options: &mut FFI_ExtensionOptions, key: Str, value: Str) -> FFI_Result<()> {
    let name = key.strip_prefix(DATAFUSION_FFI_CONFIG_NAMESPACE).and_then(|k| k.strip_prefix('.')).unwrap_or(&key);
    if let Some(setting) = name.strip_prefix("faiss.") {
        if let Err(e) = FaissConfig::default().set(setting, &value) {
            return Err::<(), _>(format!("SET {name} = '{}': {e}", &*value)).into();
        }
    }
    values(options).insert(key.to_string(), value.to_string());
    FFI_Result::Ok(())
}

/// The query planner: index rewrites and scans on the host's optimized plans. It encodes
/// with the session's codec chains (where the host installed [`Codecs`]) when given a
/// session, with [`Handles`] alone otherwise.
#[pyclass(frozen, module = "datafusion_faiss._internal")]
struct QueryPlanner;

#[pymethods]
impl QueryPlanner {
    #[new]
    fn new() -> Self {
        QueryPlanner
    }

    #[pyo3(signature = (session = None))]
    fn __datafusion_query_planner__<'py>(
        &self,
        py: Python<'py>,
        session: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let chains = match session {
            Some(session) if session.hasattr("__datafusion_physical_extension_codec__")? => Some((
                imported::<FFI_LogicalExtensionCodec>(
                    &session,
                    "__datafusion_logical_extension_codec__",
                    c"datafusion_logical_extension_codec",
                )?,
                imported::<FFI_PhysicalExtensionCodec>(
                    &session,
                    "__datafusion_physical_extension_codec__",
                    c"datafusion_physical_extension_codec",
                )?,
            )),
            _ => None,
        };
        let (logical, physical) = match chains {
            Some(chains) => chains,
            None => (logical_codec()?, physical_codec()?),
        };
        let planner = FFI_QueryPlanner::new_with_ffi_codecs(Arc::new(Planner), logical, physical);
        PyCapsule::new_with_value(py, planner, c"datafusion_query_planner")
    }
}

/// A copy of the FFI value in the capsule `object.method()` returns.
fn imported<T: Clone>(object: &Bound<'_, PyAny>, method: &str, name: &'static CStr) -> PyResult<T> {
    let capsule = object.call_method0(method)?;
    let capsule = capsule.cast::<PyCapsule>()?;
    let pointer = capsule.pointer_checked(Some(name))?.cast::<T>();
    // The capsule owns a valid T for as long as it lives, which spans this clone.
    Ok(unsafe { pointer.as_ref() }.clone())
}

fn physical_codec() -> PyResult<FFI_PhysicalExtensionCodec> {
    Ok(FFI_PhysicalExtensionCodec::new(Arc::new(Handles), Some(runtime()?), &local::tasks()))
}

/// [`Handles`] as the session's codecs: installed on the host's chains, so that the host
/// encodes vector tables (and anything else it cannot) for the planner and takes its
/// plans back.
#[pyclass(frozen, module = "datafusion_faiss._internal")]
struct Codecs;

#[pymethods]
impl Codecs {
    #[new]
    fn new() -> Self {
        Codecs
    }

    /// The id the host tags our payloads with.
    #[classattr]
    fn __datafusion_codec_id__() -> &'static str {
        "datafusion_faiss.handles"
    }

    #[pyo3(signature = (session = None))]
    fn __datafusion_logical_extension_codec__<'py>(
        &self,
        py: Python<'py>,
        session: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = session;
        PyCapsule::new_with_value(py, logical_codec()?, c"datafusion_logical_extension_codec")
    }

    #[pyo3(signature = (session = None))]
    fn __datafusion_physical_extension_codec__<'py>(
        &self,
        py: Python<'py>,
        session: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = session;
        PyCapsule::new_with_value(py, physical_codec()?, c"datafusion_physical_extension_codec")
    }
}

/// The header of the index at `url` (a path or any store's URL): metric, dimension,
/// lists, vectors, as the search API chooses its distance from it. Taken from the index
/// the table's CREATE opened, so it costs no read.
#[pyfunction]
fn index_info(py: Python<'_>, url: &str) -> PyResult<(String, usize, usize, u64, String)> {
    let (env, settings) = (local::env(), FaissConfig::default());
    let info = local::block(py, datafusion_faiss::sql::index_info(url, &env, &settings))?
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let metric = match info.metric {
        Metric::L2 => "l2",
        Metric::InnerProduct => "inner_product",
    };
    Ok((metric.into(), info.dimension, info.nlist, info.ntotal, info.description))
}

/// A query vector (`float64` values as bytes, in this machine's order) as the SQL string
/// literal the functions take, each value the shortest decimal that reads back as the
/// same (a NumPy `float32` widens exactly). Bytes, not a list: no Python float per value.
#[pyfunction]
fn vector_literal(values: &[u8]) -> PyResult<String> {
    if values.len() % 8 != 0 {
        return Err(PyValueError::new_err(format!(
            "a vector of float64 is a multiple of 8 bytes, got {}",
            values.len()
        )));
    }
    let values: Vec<f64> = values.chunks_exact(8).map(|v| f64::from_ne_bytes(v.try_into().expect("8 bytes"))).collect();
    Ok(datafusion_faiss::sql::functions::vector_literal(&values))
}

/// `datafusion-faiss build` with `argv` (what follows `build` on the command line):
/// trains and fills an index, showing progress on stderr, without the GIL.
#[pyfunction]
fn build(py: Python<'_>, argv: Vec<String>) -> PyResult<()> {
    let built = local::block(py, datafusion_faiss_cli::build(argv))?;
    built.map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// Serves `url`'s scheme and bucket (or host) with a store made from explicit options
/// (`aws_endpoint`, `aws_access_key_id`, ..., as `object_store` names them) instead of
/// the `AWS_*` variables.
#[pyfunction]
#[pyo3(signature = (url, options = None))]
fn register_store(url: &str, options: Option<HashMap<String, String>>) -> PyResult<()> {
    let parsed = Url::parse(url).map_err(|e| PyValueError::new_err(format!("{url}: {e}")))?;
    let (store, _) = object_store::parse_url_opts(&parsed, options.unwrap_or_default())
        .map_err(|e| PyValueError::new_err(format!("{url}: {e}")))?;
    local::env().register_object_store(&parsed, Arc::new(store));
    Ok(())
}

#[pymodule]
fn _internal(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DATAFUSION_MAJOR", datafusion_ffi::version())?;
    m.add("FAISS", datafusion_faiss::faiss_build())?;
    m.add_function(wrap_pyfunction!(functions, m)?)?;
    m.add_function(wrap_pyfunction!(index_info, m)?)?;
    m.add_function(wrap_pyfunction!(register_store, m)?)?;
    m.add_function(wrap_pyfunction!(build, m)?)?;
    m.add_function(wrap_pyfunction!(vector_literal, m)?)?;
    m.add_class::<Function>()?;
    m.add_class::<SearchFunction>()?;
    m.add_class::<TableFactory>()?;
    m.add_class::<Settings>()?;
    m.add_class::<QueryPlanner>()?;
    m.add_class::<Codecs>()?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::Batches>()?;
    m.add_class::<engine::Table>()?;
    Ok(())
}
