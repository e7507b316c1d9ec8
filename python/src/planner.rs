//! The query planner datafusion-python calls through FFI. The host optimizes a plan,
//! encodes it and hands it over; we run the index rewrites on it, plan it physically with
//! the index scans, and hand back one node that runs the whole plan here, with our
//! stores and runtime.
//!
//! Across the boundary everything goes by handle: tables the host could not encode
//! (ours, its in-memory ones) and the planned node are kept in a table of this process
//! and their number travels. Both sides are one process, and the plan is decoded once.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{
    exec_datafusion_err, exec_err, internal_datafusion_err, internal_err, plan_err, Result, TableReference,
};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, Extension, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::Optimizer;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchReceiverStreamBuilder;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion_ffi::execution::FFI_TaskContext;
use datafusion_ffi::execution_plan::{ExecutionPlanPrivateData, FFI_ExecutionPlan, ForeignExecutionPlan};
use datafusion_ffi::ffi_option::FFI_Result;
use datafusion_ffi::record_batch_stream::FFI_RecordBatchStream;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::StreamExt;
use tokio::runtime::Handle;

use crate::local;

#[derive(Debug)]
pub struct Planner;

#[async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        let state = local::planner_session(session)?;
        let plan = plan.clone();
        let planned = local::run(async move {
            // The host analyzed and optimized the plan: what it lacks are the index
            // rewrites (its whole optimizer again cost about 1 ms a query). EXPLAIN goes
            // the whole way, for the steps it shows.
            let plan = match plan {
                LogicalPlan::Explain(_) => state.optimize(&plan)?,
                plan => REWRITES.optimize(plan, &state, |_, _| {})?,
            };
            state.query_planner().create_physical_plan(&plan, &state).await
        })
        .await?;
        Ok(Arc::new(Here(planned)))
    }
}

/// `plan` as the host is to hold it: an FFI plan that runs with a task context made by
/// [`local::host_task`] rather than by datafusion-ffi, which makes a wrapper for every
/// function of the host's session at each `execute`. Made where a plan is decoded: on its
/// way out, a plan of ours crossing the host's codec chain comes back to us unwrapped. The
/// FFI handle of a foreign plan is re-exported as it is, so these functions go with it.
/// Only a [`Here`] is made so: those functions read the plan behind the handle as one
/// `FFI_ExecutionPlan::new` of ours made, which another library's plan, held by the same
/// codec, is not.
fn handed(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    match plan.is::<Here>() {
        true => Ok(Arc::new(ForeignExecutionPlan::try_from(ffi(plan, Some(local::runtime()?)))?)),
        false => Ok(plan),
    }
}

fn ffi(plan: Arc<dyn ExecutionPlan>, runtime: Option<Handle>) -> FFI_ExecutionPlan {
    let mut ffi = FFI_ExecutionPlan::new(plan, runtime);
    ffi.execute = execute;
    ffi.clone = clone;
    ffi
}

/// The plan behind an FFI plan that [`ffi`] made: `new` keeps it there.
fn held(plan: &FFI_ExecutionPlan) -> &ExecutionPlanPrivateData {
    unsafe { &*(plan.private_data as *const ExecutionPlanPrivateData) }
}

unsafe extern "C" fn clone(plan: &FFI_ExecutionPlan) -> FFI_ExecutionPlan {
    let held = held(plan);
    ffi(held.plan.clone(), held.runtime.clone())
}

unsafe extern "C" fn execute(
    plan: &FFI_ExecutionPlan,
    partition: usize,
    context: FFI_TaskContext,
) -> FFI_Result<FFI_RecordBatchStream> {
    let held = held(plan);
    let _runtime = held.runtime.as_ref().map(|rt| rt.enter());
    let stream = local::host_task(&context).and_then(|context| held.plan.execute(partition, context));
    stream.map(|stream| FFI_RecordBatchStream::new(stream, held.runtime.clone())).into()
}

static REWRITES: LazyLock<Optimizer> = LazyLock::new(|| Optimizer::with_rules(datafusion_faiss::sql::rules()));

/// A whole physical plan run in this library: the host sees a leaf.
#[derive(Debug)]
struct Here(Arc<dyn ExecutionPlan>);

impl DisplayAs for Here {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt_as(t, f)
    }
}

impl ExecutionPlan for Here {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.0.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.0.apply_expressions(f)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => internal_err!("{} runs in datafusion-faiss and takes no children", self.0.name()),
        }
    }

    /// Runs the partition in a task of our runtime and hands its batches over a channel.
    /// Polled from the host's threads, the plan would never yield (tokio's cooperative
    /// budget, which makes DataFusion's streams yield, belongs to our runtime's tasks):
    /// an endless query would then keep the host from seeing Ctrl-C. Dropping the
    /// stream aborts the task.
    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let (plan, context) = (self.0.clone(), local::task(&context)?);
        let runtime = local::runtime()?;
        let _runtime = runtime.enter();
        let mut channel = RecordBatchReceiverStreamBuilder::new(plan.schema(), 2);
        let tx = channel.tx();
        channel.spawn(async move {
            let mut batches = plan.execute(partition, context)?;
            while let Some(batch) = batches.next().await {
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            Ok(())
        });
        Ok(channel.build())
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.0.metrics()
    }
}

enum Held {
    Table(Arc<dyn TableProvider>),
    Plan(Arc<dyn ExecutionPlan>),
}

static HELD: LazyLock<Mutex<HashMap<u64, Held>>> = LazyLock::new(Default::default);
static NEXT: AtomicU64 = AtomicU64::new(1);
const TAG: &[u8; 8] = b"dff-held";

fn hold(item: Held, buf: &mut Vec<u8>) {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    HELD.lock().expect("handle table poisoned").insert(id, item);
    buf.extend_from_slice(TAG);
    buf.extend_from_slice(&id.to_le_bytes());
}

fn take(buf: &[u8]) -> Result<Held> {
    let id = buf
        .strip_prefix(TAG)
        .and_then(|id| <[u8; 8]>::try_from(id).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| internal_datafusion_err!("not a datafusion-faiss handle ({} bytes)", buf.len()))?;
    HELD.lock().expect("handle table poisoned").remove(&id).ok_or_else(|| {
        exec_datafusion_err!(
            "datafusion-faiss handle {id} was decoded already: a plan holding a vector table or an in-memory \
                 table decodes once, in the process that encoded it (its tables cross by handle)"
        )
    })
}

/// Tables and plans by handle; functions by name (DataFusion's default).
#[derive(Debug)]
pub struct Handles;

impl LogicalExtensionCodec for Handles {
    fn try_decode(&self, _buf: &[u8], _inputs: &[LogicalPlan], _ctx: &TaskContext) -> Result<Extension> {
        internal_err!("datafusion-faiss planner: no logical extension nodes cross FFI")
    }

    fn try_encode(&self, node: &Extension, _buf: &mut Vec<u8>) -> Result<()> {
        internal_err!("datafusion-faiss planner: cannot take the plan node {}", node.node.name())
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        _table_ref: &TableReference,
        _schema: SchemaRef,
        _ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match take(buf)? {
            Held::Table(table) => Ok(table),
            Held::Plan(_) => internal_err!("datafusion-faiss handle: a plan where a table was expected"),
        }
    }

    fn try_decode_udf(&self, name: &str, _buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        Ok(Arc::new(ScalarUDF::new_from_impl(HostFunction(name.to_string()))))
    }

    fn try_encode_table_provider(
        &self,
        _table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        hold(Held::Table(node), buf);
        Ok(())
    }
}

/// A function of the host's session that ours lacks (a Python UDF), known by its name
/// only. The host's filters reach the table (its pushdown question, its scan) decoded with
/// our functions; the table answers from the columns alone and its scan reads no predicate
/// into its files, so the host runs the filter. The planner decodes with the host's
/// functions and never sees one.
#[derive(Debug, PartialEq, Eq, Hash)]
struct HostFunction(String);

static ANY_ARGUMENTS: LazyLock<Signature> = LazyLock::new(|| Signature::variadic_any(Volatility::Volatile));

impl HostFunction {
    fn refused(&self) -> String {
        format!("{} is a function of the host's session: datafusion-faiss cannot run it", self.0)
    }
}

impl ScalarUDFImpl for HostFunction {
    fn name(&self) -> &str {
        &self.0
    }

    fn signature(&self) -> &Signature {
        &ANY_ARGUMENTS
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        plan_err!("{}", self.refused())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("{}", self.refused())
    }
}

impl PhysicalExtensionCodec for Handles {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match take(buf)? {
            Held::Plan(plan) => handed(plan),
            Held::Table(_) => internal_err!("datafusion-faiss handle: a table where a plan was expected"),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        hold(Held::Plan(node), buf);
        Ok(())
    }
}
