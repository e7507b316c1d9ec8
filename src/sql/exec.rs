//! The physical index scan: search the index for candidate ids, then emit the base
//! table's rows for them. With a WHERE filter, the allowed keys come first (a scan of the
//! key and filter columns) and either restrict the index search or, when few rows pass,
//! are emitted whole for an exact ranking.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{exec_err, internal_err, DFSchema, Result, ScalarValue};
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{col, lit, Expr, LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_optimizer::filter_pushdown::FilterPushdown;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

use super::node::{IvfTopKNode, TopK};
use super::registry;
use super::table::index_error;
use crate::SearchStats;

/// Physical planning with the index scan added to DataFusion's own planner.
#[derive(Debug, Default)]
pub struct FaissQueryPlanner;

#[async_trait]
impl QueryPlanner for FaissQueryPlanner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(IvfTopKPlanner)])
            .create_physical_plan(plan, session)
            .await
    }
}

#[derive(Debug)]
struct IvfTopKPlanner;

#[async_trait]
impl ExtensionPlanner for IvfTopKPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        _physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<IvfTopKNode>() else { return Ok(None) };
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return internal_err!("the FAISS index scan needs a SessionState");
        };
        Ok(Some(Arc::new(IvfTopKExec::new(node.spec.clone(), state.clone()))))
    }
}

/// Emits, for one query vector, the base-table rows of the nearest candidates (or of
/// every row passing a selective filter); the Sort above ranks them exactly.
pub struct IvfTopKExec {
    spec: TopK,
    /// Plans the base-table scans at run time; the candidate keys are known only then.
    state: SessionState,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for IvfTopKExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IvfTopKExec: {}", self.spec)
    }
}

impl IvfTopKExec {
    fn new(spec: TopK, state: SessionState) -> Self {
        let schema =
            Arc::new(spec.table.schema().project(&spec.projection).expect("projection of the scan it replaced"));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        IvfTopKExec { spec, state, schema, properties, metrics: ExecutionPlanMetricsSet::new() }
    }

    pub fn spec(&self) -> &TopK {
        &self.spec
    }
}

impl DisplayAs for IvfTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IvfTopKExec: {}", self.spec)
    }
}

impl ExecutionPlan for IvfTopKExec {
    fn name(&self) -> &str {
        "IvfTopKExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return internal_err!("IvfTopKExec has no children");
        }
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return internal_err!("IvfTopKExec has one partition, asked for {partition}");
        }
        let run =
            Run { spec: self.spec.clone(), state: self.state.clone(), context, counts: Counts::new(&self.metrics) };
        let batches = futures::stream::once(run.rows()).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches)))
    }
}

/// What EXPLAIN ANALYZE reports.
struct Counts {
    allowed_rows: Count,
    brute_force: Count,
    nprobe: Count,
    lists_probed: Count,
    codes_scanned: Count,
    gets: Count,
    waves: Count,
    bytes_fetched: Count,
    bytes_mapped: Count,
    cache_hits: Count,
    candidates: Count,
    base_rows_read: Count,
    rows_reranked: Count,
    filter_time: Time,
    search_time: Time,
}

impl Counts {
    fn new(metrics: &ExecutionPlanMetricsSet) -> Counts {
        let c = |name: &'static str| MetricBuilder::new(metrics).global_counter(name);
        Counts {
            allowed_rows: c("allowed_rows"),
            brute_force: c("brute_force"),
            nprobe: c("nprobe"),
            lists_probed: c("lists_probed"),
            codes_scanned: c("codes_scanned"),
            gets: c("gets"),
            waves: c("waves"),
            bytes_fetched: c("bytes_fetched"),
            bytes_mapped: c("bytes_mapped"),
            cache_hits: c("cache_hits"),
            candidates: c("candidates"),
            base_rows_read: c("base_rows_read"),
            filter_time: MetricBuilder::new(metrics).subset_time("filter_time", 0),
            search_time: MetricBuilder::new(metrics).subset_time("search_time", 0),
            rows_reranked: c("rows_reranked"),
        }
    }

    fn add_search(&self, s: &SearchStats) {
        self.lists_probed.add(s.lists_probed as usize);
        self.codes_scanned.add(s.codes_scanned as usize);
        self.gets.add(s.fetch.gets as usize);
        self.waves.add(s.fetch.waves as usize);
        self.bytes_fetched.add(s.fetch.bytes as usize);
        self.bytes_mapped.add(s.fetch.bytes_mapped as usize);
        self.cache_hits.add(s.fetch.cache_hits as usize);
    }
}

struct Run {
    spec: TopK,
    state: SessionState,
    context: Arc<TaskContext>,
    counts: Counts,
}

type Batches = futures::stream::BoxStream<'static, Result<RecordBatch>>;

impl Run {
    async fn rows(self) -> Result<Batches> {
        let spec = &self.spec;
        let allowed = match spec.filters.is_empty() {
            true => None,
            false => {
                let start = std::time::Instant::now();
                let keys = self.allowed_keys().await?;
                self.counts.filter_time.add_elapsed(start);
                Some(keys)
            }
        };
        if let Some(keys) = &allowed {
            self.counts.allowed_rows.add(keys.len());
            let rows = spec.table.index_info().ntotal as f64;
            if keys.is_empty() {
                return Ok(futures::stream::empty().boxed());
            }
            if keys.len() <= spec.candidates() || keys.len() as f64 <= spec.brute_force_fraction * rows {
                return self.brute_force().await;
            }
        }
        if spec.candidates() as u64 >= spec.table.index_info().ntotal {
            // The index would return every row anyway.
            return self.brute_force().await;
        }
        let start = std::time::Instant::now();
        let found = self.search(allowed.as_deref()).await?;
        self.counts.search_time.add_elapsed(start);
        let Some(ids) = found else {
            // Fewer than k indexed rows pass: the index cannot be complete for this query.
            return self.brute_force().await;
        };
        self.counts.candidates.add(ids.len());
        self.rows_with_keys(ids).await
    }

    /// Candidate ids from the index, probing more lists until at least k are found;
    /// `None` when even all lists hold fewer than k (allowed) entries.
    async fn search(&self, allowed: Option<&[i64]>) -> Result<Option<Vec<i64>>> {
        let spec = &self.spec;
        let mut index = spec.table.index(spec.cache_bytes).await?;
        // With a filter, probe as many more lists as the filter is selective, so about as
        // many allowed vectors are compared as an unfiltered search compares.
        let mut nprobe = match allowed {
            Some(keys) => {
                let fraction = keys.len() as f64 / index.info().ntotal.max(1) as f64;
                (spec.nprobe as f64 / fraction.min(1.0)).ceil() as usize
            }
            None => spec.nprobe,
        }
        .clamp(1, index.info().nlist);
        // Checked once per query: with the first search, and by the reopen after a change.
        let (mut reopened, mut checked) = (false, false);
        // One past the candidates, to see whether the k-th place ties beyond them.
        let mut want = spec.candidates() + 1;
        loop {
            // The search notices a replaced object only through the GETs it makes; with
            // every list cached it makes none, so the path is checked alongside it.
            let search = async {
                match allowed {
                    Some(keys) => index.search_among(&spec.query, want, nprobe, keys).await,
                    None => index.search(&spec.query, want, nprobe).await,
                }
            };
            let result = match checked {
                true => search.await,
                false => {
                    let (current, result) = futures::join!(index.check(), search);
                    checked = true;
                    current.and(result)
                }
            };
            let result = match result {
                Err(e) if registry::is_changed(&e) && !reopened => {
                    registry::forget(spec.table.location(), &index);
                    index = spec.table.index(spec.cache_bytes).await?;
                    reopened = true;
                    continue;
                }
                r => r.map_err(|e| index_error(spec.table.location(), e))?,
            };
            self.counts.add_search(&result.stats);
            let mut found: Vec<(i64, f32)> =
                result.ids.into_iter().zip(result.distances).filter(|&(id, _)| id >= 0).collect();
            let (nlist, ntotal) = (index.info().nlist, index.info().ntotal as usize);
            // Rows tied with the k-th (duplicates, or FAISS's f32 rounding against the exact
            // re-rank's f64) may reach past the candidates; the exact plan breaks such ties
            // by the other sort keys, so all of them must be re-ranked: ask for more until
            // the last one found is clearly farther than the k-th, then keep the candidates
            // and the tie.
            if found.len() >= spec.k {
                let kth = found[spec.k - 1].1;
                let tied = |d: f32| (kth - d).abs() <= 8.0 * f32::EPSILON * kth.abs().max(d.abs());
                if found.len() == want && want < ntotal && tied(found[want - 1].1) {
                    want = want.saturating_mul(2).min(ntotal);
                    continue;
                }
                let ties = found.iter().rposition(|&(_, d)| tied(d)).map_or(0, |p| p + 1);
                found.truncate(spec.candidates().max(ties));
            }
            let ids: Vec<i64> = found.into_iter().map(|(id, _)| id).collect();
            if ids.len() >= spec.k || nprobe >= nlist {
                self.counts.nprobe.add(nprobe.min(nlist));
                return Ok((ids.len() >= spec.k).then_some(ids));
            }
            nprobe = nprobe.saturating_mul(2).min(nlist);
        }
    }

    /// Keys of the rows passing the filters, sorted.
    async fn allowed_keys(&self) -> Result<Vec<i64>> {
        let key = self.spec.table.key_index();
        let mut stream = self.scan(&[key], &self.spec.filters, &self.spec.filters).await?;
        let mut keys = vec![];
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let column = batch.column_by_name(&self.spec.table.options().key).expect("key column scanned");
            let column = cast(column, &DataType::Int64)?;
            keys.extend(column.as_primitive::<Int64Type>().iter().flatten());
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Every row passing the filters.
    async fn brute_force(&self) -> Result<Batches> {
        self.counts.brute_force.add(1);
        let stream = self.scan(&self.spec.projection, &self.spec.filters, &self.spec.filters).await?;
        Ok(self.emit(stream, &self.spec.projection))
    }

    /// The rows whose key is one of `ids`; key-range pruning of the base table skips the
    /// row groups (and pages) holding none of them.
    async fn rows_with_keys(&self, mut ids: Vec<i64>) -> Result<Batches> {
        ids.sort_unstable();
        ids.dedup();
        let key_type = self.spec.table.schema().field(self.spec.table.key_index()).data_type().clone();
        let list: Vec<Expr> =
            ids.iter().map(|&id| ScalarValue::Int64(Some(id)).cast_to(&key_type).map(lit)).collect::<Result<_>>()?;
        let key = col(self.spec.table.options().key.as_str());
        let prune = any_equal(&key, &list);
        let filter = Expr::InList(InList::new(Box::new(key), list, false));
        let mut columns = self.spec.projection.clone();
        if !columns.contains(&self.spec.table.key_index()) {
            columns.push(self.spec.table.key_index());
        }
        let stream = self.scan(&columns, &[filter], &[prune]).await?;
        // At most k × refine rows: held to check them against the index before any leaves.
        let schema = stream.schema();
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        let key_at = columns.iter().position(|&c| c == self.spec.table.key_index()).expect("key scanned");
        let mut found = std::collections::HashSet::new();
        for batch in &batches {
            let keys = cast(batch.column(key_at), &DataType::Int64)?;
            found.extend(keys.as_primitive::<Int64Type>().iter().flatten());
        }
        if found.len() < self.spec.k.min(ids.len()) {
            let missing: Vec<String> =
                ids.iter().filter(|id| !found.contains(id)).take(5).map(|id| id.to_string()).collect();
            return exec_err!(
                "index ids do not match key column '{}' of the table: the index {} returned {} candidate ids, only {} of them are keys in the table (missing e.g. {}). Is OPTIONS ('index' ...) the index built from this table, with these keys? (Rows deleted since the build are missing too: rebuild the index.)",
                self.spec.table.options().key,
                self.spec.table.location().as_str(),
                ids.len(),
                found.len(),
                missing.join(", ")
            );
        }
        let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches.into_iter().map(Ok)));
        Ok(self.emit(Box::pin(stream), &columns))
    }

    /// Batches of `stream` (scanned with `columns`) narrowed to the projection, counted.
    fn emit(&self, stream: SendableRecordBatchStream, columns: &[usize]) -> Batches {
        let keep: Vec<usize> =
            self.spec.projection.iter().map(|c| columns.iter().position(|x| x == c).expect("scanned")).collect();
        let reranked = self.counts.rows_reranked.clone();
        stream
            .map(move |batch| {
                let batch = batch?.project(&keep)?;
                reranked.add(batch.num_rows());
                Ok(batch)
            })
            .boxed()
    }

    /// Scans `columns` (plus the filters' columns) of the base table, keeping the rows
    /// that pass `filters`; output columns are `columns` then any filter-only ones.
    /// `prune` goes to the base table for skipping files, row groups and pages.
    async fn scan(&self, columns: &[usize], filters: &[Expr], prune: &[Expr]) -> Result<SendableRecordBatchStream> {
        let table = &self.spec.table;
        let schema = table.schema();
        let mut scanned = columns.to_vec();
        for f in filters {
            for c in f.column_refs() {
                let i = schema.index_of(&c.name)?;
                if !scanned.contains(&i) {
                    scanned.push(i);
                }
            }
        }
        let mut plan = table.base().scan(&self.state, Some(&scanned), prune, None).await?;
        // Planned at run time, this scan misses the physical optimizer that hands filters
        // to the data source: do that step here so its statistics skip what they can.
        if let Some(prune) = conjunction(prune.iter().cloned()) {
            let prune = self.state.create_physical_expr(prune, &DFSchema::try_from(plan.schema())?)?;
            let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(prune, plan.clone())?);
            let pushed = FilterPushdown::new().optimize(filtered, self.state.config_options())?;
            // The exact predicate is applied below, after counting the rows read.
            plan = match pushed.downcast_ref::<FilterExec>() {
                Some(filter) => filter.input().clone(),
                None => pushed,
            };
        }
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(p) => Some(self.state.create_physical_expr(p, &DFSchema::try_from(plan.schema())?)?),
            None => None,
        };
        let out_schema = plan.schema();
        let read = self.counts.base_rows_read.clone();
        let stream = execute_stream(plan, self.context.clone())?.map(move |batch| {
            let batch = batch?;
            read.add(batch.num_rows());
            match &predicate {
                None => Ok(batch),
                Some(p) => {
                    let keep = p.evaluate(&batch)?.into_array(batch.num_rows())?;
                    Ok(filter_record_batch(&batch, keep.as_boolean())?)
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// `key = a OR key = b OR ...` as a balanced tree: statistics pruning understands it at
/// any length (an `IN` list is used for pruning only up to `max_in_list_size` values).
fn any_equal(key: &Expr, values: &[Expr]) -> Expr {
    match values {
        [] => lit(false),
        [v] => key.clone().eq(v.clone()),
        _ => {
            let (a, b) = values.split_at(values.len() / 2);
            any_equal(key, a).or(any_equal(key, b))
        }
    }
}
