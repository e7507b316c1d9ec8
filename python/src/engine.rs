//! The search API's own session. A query through datafusion-python's is planned across
//! FFI, where datafusion-ffi 55 converts every function of the host's session twice: about
//! 4 ms a query. The search API plans and runs its SQL here instead, handing rows back as
//! an Arrow C stream, and lends its tables to the host's context for SQL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use datafusion::arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::config::ExtensionOptions;
use datafusion::common::Result;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_faiss::sql::FaissConfig;
use datafusion_ffi::table_provider::FFI_TableProvider;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::local;

fn failed(e: impl ToString) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
}

/// A session of this library with the extension registered, on the process's stores.
#[pyclass(frozen, module = "datafusion_faiss._internal")]
pub struct Engine(SessionContext);

#[pymethods]
impl Engine {
    #[new]
    fn new() -> Self {
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_information_schema(true), local::env());
        datafusion_faiss::sql::register_all(&ctx);
        Engine(ctx)
    }

    /// Runs `query` with `settings` (`nprobe`, ... as `SET faiss.*` names them) for it
    /// alone and `tables` (name to an Arrow stream, e.g. a pyarrow table) registered while
    /// it runs, without the GIL. Ctrl-C cancels it.
    #[pyo3(signature = (query, settings = None, tables = None))]
    fn sql(
        &self,
        py: Python<'_>,
        query: String,
        settings: Option<HashMap<String, String>>,
        tables: Option<HashMap<String, Bound<'_, PyAny>>>,
    ) -> PyResult<Batches> {
        local::here().map_err(failed)?;
        let ctx = match settings.filter(|s| !s.is_empty()) {
            None => self.0.clone(),
            Some(settings) => {
                let mut state = self.0.state();
                let mut faiss = FaissConfig::from_options(state.config().options());
                for (name, value) in settings {
                    faiss
                        .set(&name, &value)
                        .map_err(|e| PyValueError::new_err(format!("faiss.{name} = {value}: {e}")))?;
                }
                state.config_mut().options_mut().extensions.insert(faiss);
                SessionContext::new_with_state(state)
            }
        };
        // Every table read before any is registered: a bad one leaves none behind.
        let mut imported = vec![];
        for (name, table) in tables.unwrap_or_default() {
            let (schema, batches) = import(&table).map_err(|e| PyValueError::new_err(format!("table {name}: {e}")))?;
            imported.push((name, MemTable::try_new(schema, vec![batches]).map_err(failed)?));
        }
        // Registered in the work, so that one cleanup follows whatever failed.
        let mut registered = vec![];
        let run = async {
            for (name, table) in imported {
                ctx.register_table(name.as_str(), Arc::new(table))?;
                registered.push(name);
            }
            let frame = ctx.sql(&query).await?;
            let schema = frame.schema().inner().clone();
            Ok::<_, datafusion::error::DataFusionError>((schema, frame.collect().await?))
        };
        let result = local::block(py, run);
        for name in &registered {
            let _ = ctx.deregister_table(name.as_str());
        }
        let (schema, batches) = result?.map_err(failed)?;
        Ok(Batches(Mutex::new(Some((schema, batches)))))
    }

    /// The table `name`, for `SessionContext.register_table` of datafusion-python: the
    /// host's SQL then reads the same open index.
    fn table(&self, py: Python<'_>, name: String) -> PyResult<Table> {
        let table = local::block(py, self.0.table_provider(name.as_str()))?.map_err(failed)?;
        Ok(Table(table))
    }
}

/// The batches of a pyarrow stream (`__arrow_c_stream__`).
fn import(stream: &Bound<'_, PyAny>) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>), String> {
    let capsule = stream.call_method0("__arrow_c_stream__").map_err(|e| e.to_string())?;
    let capsule = capsule.cast::<PyCapsule>().map_err(|e| e.to_string())?;
    let pointer = capsule.pointer_checked(Some(c"arrow_array_stream")).map_err(|e| e.to_string())?;
    // The capsule holds a stream; from_raw moves it out, leaving a released one behind
    // for the capsule's destructor.
    let reader = unsafe { ArrowArrayStreamReader::from_raw(pointer.cast::<FFI_ArrowArrayStream>().as_ptr()) }
        .map_err(|e| e.to_string())?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    Ok((schema, batches))
}

/// A query's rows, read once through `__arrow_c_stream__` (`pyarrow.table(...)`).
#[pyclass(frozen, module = "datafusion_faiss._internal")]
pub struct Batches(Mutex<Option<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>)>>);

#[pymethods]
impl Batches {
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The rows are handed over as they are: a consumer casts if it asked otherwise.
        let _ = requested_schema;
        let (schema, batches) = self
            .0
            .lock()
            .expect("batches poisoned")
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("these rows were read already"))?;
        let reader: Box<dyn RecordBatchReader + Send> =
            Box::new(RecordBatchIterator::new(batches.into_iter().map(Ok), schema));
        PyCapsule::new_with_value(py, FFI_ArrowArrayStream::new(reader), c"arrow_array_stream")
    }
}

/// One of the engine's tables, as datafusion-python takes a table of another library.
#[pyclass(frozen, module = "datafusion_faiss._internal")]
pub struct Table(Arc<dyn TableProvider>);

#[pymethods]
impl Table {
    fn __datafusion_table_provider__<'py>(
        &self,
        py: Python<'py>,
        session: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = session;
        let provider = FFI_TableProvider::new_with_ffi_codec(
            self.0.clone(),
            true,
            Some(crate::runtime()?),
            crate::logical_codec()?,
        );
        PyCapsule::new_with_value(py, provider, c"datafusion_table_provider")
    }
}
