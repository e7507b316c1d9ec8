//! The physical index scan: search the index for candidate ids, then emit the base
//! table's rows for them, read by position ([`super::rows`]). With a WHERE filter, the
//! allowed ids come first (a scan of the key and filter columns, kept per table version),
//! then either their own entries in the index are searched (few pass) or they restrict a
//! search of the lists (many pass).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::{QueryPlanner, SessionState};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{col, lit, Expr, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNode};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

use super::knn::IvfKnnNode;
use super::node::{IvfTopKNode, TopK};
use super::registry;
use super::rows::footer::footers;
use super::rows::{keys, passing, vectors, Listed, Located, TableIo};
use super::parts::{self, Ids, Part};
use super::table::{index_error, VectorTable};
use crate::{SearchOptions, SearchStats};

mod batch;
pub use batch::IvfKnnExec;

/// Physical planning with the index scan added to DataFusion's own planner.
#[derive(Debug, Default)]
pub struct FaissQueryPlanner;

#[async_trait]
impl QueryPlanner for FaissQueryPlanner {
    async fn create_physical_plan(&self, plan: &LogicalPlan, session: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(FaissPlanner)])
            .create_physical_plan(plan, session)
            .await
    }
}

#[derive(Debug)]
struct FaissPlanner;

#[async_trait]
impl ExtensionPlanner for FaissPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return internal_err!("the FAISS index scan needs a SessionState");
        };
        if let Some(node) = node.as_any().downcast_ref::<IvfKnnNode>() {
            let [input] = physical_inputs else { return internal_err!("IvfKnn has one input") };
            let query = state.create_physical_expr(node.query.clone(), node.input.schema())?;
            let parts = parts::parts(&node.spec.table, state, node.spec.cache_bytes, node.spec.disk.as_ref()).await?;
            let schema = Arc::new(node.schema.as_arrow().clone());
            let exec = IvfKnnExec::new(node.spec.clone(), parts, input.clone(), query, node.vector_left, schema, state.clone());
            return Ok(Some(Arc::new(exec)));
        }
        let Some(node) = node.as_any().downcast_ref::<IvfTopKNode>() else { return Ok(None) };
        let parts = parts::parts(&node.spec.table, state, node.spec.cache_bytes, node.spec.disk.as_ref()).await?;
        Ok(Some(Arc::new(IvfTopKExec::new(node.spec.clone(), parts, state.clone())?)))
    }
}

/// Emits, for one query vector, the base-table rows of the nearest candidates (or of
/// every row passing a selective filter); the Sort above ranks them exactly. A partition
/// per part of the table: each index's candidates among the files it covers, and every
/// row of the files no index covers.
pub struct IvfTopKExec {
    spec: TopK,
    parts: Vec<Part>,
    /// Partition `i` of this yields the numbers of the parts partition `i` searches (`i`
    /// itself): a distributed engine that gives a task some partitions restricts this
    /// ordinary source (Ballista does), and the task then searches just those parts.
    numbers: Arc<dyn ExecutionPlan>,
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
    /// The scan of `spec` over `parts` (see [`parts::parts`]), planning its reads of the
    /// base table in `state`.
    pub fn new(spec: TopK, parts: Vec<Part>, state: SessionState) -> Result<Self> {
        let numbers = part_numbers(parts.len())?;
        Ok(Self::with_numbers(spec, parts, numbers, state))
    }

    /// With `numbers` as made by [`new`](Self::new), or restricted since.
    pub fn with_numbers(spec: TopK, parts: Vec<Part>, numbers: Arc<dyn ExecutionPlan>, state: SessionState) -> Self {
        let schema =
            Arc::new(spec.table.schema().project(&spec.projection).expect("projection of the scan it replaced"));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(numbers.properties().output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        IvfTopKExec { spec, parts, numbers, state, schema, properties, metrics: ExecutionPlanMetricsSet::new() }
    }

    pub fn spec(&self) -> &TopK {
        &self.spec
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }
}

/// A source of `n` partitions, partition `i` one row holding `i`.
fn part_numbers(n: usize) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::arrow::array::UInt32Array;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::memory::MemorySourceConfig;
    let schema = Arc::new(Schema::new(vec![Field::new("part", DataType::UInt32, false)]));
    let partitions = (0..n as u32)
        .map(|i| Ok(vec![RecordBatch::try_new(schema.clone(), vec![Arc::new(UInt32Array::from(vec![i]))])?]))
        .collect::<Result<Vec<_>>>()?;
    Ok(MemorySourceConfig::try_new_exec(&partitions, schema, None)?)
}

/// What the indexes cover, where it is not simply the whole table: indexes searched, the
/// files and rows they cover, files no index covers (ranked exactly), and files the
/// indexes' manifests name that are gone or rewritten (their hits dropped).
fn fmt_parts(parts: &[Part], f: &mut fmt::Formatter) -> fmt::Result {
    let indexed: Vec<&Part> = parts.iter().filter(|p| !p.exact).collect();
    let unindexed: usize = parts.iter().filter(|p| p.exact).map(|p| p.files).sum();
    let stale: usize = parts.iter().map(|p| p.stale).sum();
    if parts.len() > 1 || unindexed > 0 || stale > 0 || indexed.is_empty() {
        let files: usize = indexed.iter().map(|p| p.files).sum();
        let rows: u64 = indexed.iter().map(|p| p.rows).sum();
        write!(f, " indexes={} covered_files={files} covered_rows={rows}", indexed.len())?;
        write!(f, " uncovered_files={unindexed} stale_files={stale}")?;
    }
    Ok(())
}

impl DisplayAs for IvfTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IvfTopKExec: {}", self.spec)?;
        fmt_parts(&self.parts, f)
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
        vec![&self.numbers]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [numbers] = children.as_slice() else { return internal_err!("IvfTopKExec has one child") };
        let (spec, parts, state) = (self.spec.clone(), self.parts.clone(), self.state.clone());
        Ok(Arc::new(IvfTopKExec::with_numbers(spec, parts, numbers.clone(), state)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let numbers = self.numbers.execute(partition, context.clone())?;
        let (spec, parts, state, metrics) = (self.spec.clone(), self.parts.clone(), self.state.clone(), self.metrics.clone());
        let runs = numbers.map_ok(move |batch| {
            let numbers: Vec<u32> = batch.column(0).as_primitive::<datafusion::arrow::datatypes::UInt32Type>().values().to_vec();
            let runs: Vec<Result<Run>> = numbers
                .into_iter()
                .map(|p| match parts.get(p as usize) {
                    Some(part) => Ok(Run::new(&spec, part, &state, context.clone(), &metrics)),
                    None => internal_err!("IvfTopKExec has {} parts, asked for part {p}", parts.len()),
                })
                .collect();
            futures::stream::iter(runs)
        });
        let batches = runs.try_flatten().and_then(|run| run.rows()).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), batches)))
    }
}

/// What EXPLAIN ANALYZE reports.
struct Counts {
    allowed_rows: Count,
    filter_rows_read: Count,
    filter_cache_hits: Count,
    brute_force: Count,
    by_entries: Count,
    nprobe: Count,
    lists_probed: Count,
    codes_scanned: Count,
    gets: Count,
    waves: Count,
    bytes_fetched: Count,
    bytes_mapped: Count,
    cache_hits: Count,
    disk_hits: Count,
    candidates: Count,
    indexed_rows: Count,
    unindexed_rows: Count,
    dropped_hits: Count,
    base_rows_read: Count,
    rows_reranked: Count,
    table_gets: Count,
    table_waves: Count,
    table_bytes: Count,
    table_disk_hits: Count,
    filter_time: Time,
    search_time: Time,
    lookup_time: Time,
}

impl Counts {
    fn new(metrics: &ExecutionPlanMetricsSet) -> Counts {
        let c = |name: &'static str| MetricBuilder::new(metrics).global_counter(name);
        Counts {
            allowed_rows: c("allowed_rows"),
            filter_rows_read: c("filter_rows_read"),
            filter_cache_hits: c("filter_cache_hits"),
            brute_force: c("brute_force"),
            by_entries: c("by_entries"),
            nprobe: c("nprobe"),
            lists_probed: c("lists_probed"),
            codes_scanned: c("codes_scanned"),
            gets: c("gets"),
            waves: c("waves"),
            bytes_fetched: c("bytes_fetched"),
            bytes_mapped: c("bytes_mapped"),
            cache_hits: c("cache_hits"),
            disk_hits: c("disk_hits"),
            candidates: c("candidates"),
            indexed_rows: c("indexed_rows"),
            unindexed_rows: c("unindexed_rows"),
            dropped_hits: c("dropped_hits"),
            base_rows_read: c("base_rows_read"),
            filter_time: MetricBuilder::new(metrics).subset_time("filter_time", 0),
            search_time: MetricBuilder::new(metrics).subset_time("search_time", 0),
            lookup_time: MetricBuilder::new(metrics).subset_time("lookup_time", 0),
            rows_reranked: c("rows_reranked"),
            table_gets: c("table_gets"),
            table_waves: c("table_waves"),
            table_bytes: c("table_bytes"),
            table_disk_hits: c("table_disk_hits"),
        }
    }

    /// Moves what `io` counted since the last call into the metrics.
    fn add_table(&self, io: &TableIo) {
        use std::sync::atomic::Ordering::Relaxed;
        self.table_gets.add(io.gets.swap(0, Relaxed) as usize);
        self.table_waves.add(io.waves.swap(0, Relaxed) as usize);
        self.table_bytes.add(io.bytes.swap(0, Relaxed) as usize);
        self.table_disk_hits.add(io.disk_hits.swap(0, Relaxed) as usize);
    }

    fn add_search(&self, s: &SearchStats) {
        self.lists_probed.add(s.lists_probed as usize);
        self.codes_scanned.add(s.codes_scanned as usize);
        self.gets.add(s.fetch.gets as usize);
        self.waves.add(s.fetch.waves as usize);
        self.bytes_fetched.add(s.fetch.bytes as usize);
        self.bytes_mapped.add(s.fetch.bytes_mapped as usize);
        self.cache_hits.add(s.fetch.cache_hits as usize);
        self.disk_hits.add(s.fetch.disk_hits as usize);
    }
}

struct Run {
    spec: TopK,
    /// The part's rows are read whole: its files have no current index.
    exact: bool,
    ids: Ids,
    pinned: Option<crate::sql::manifest::ObjectVersion>,
    /// The part's files as planned, if known.
    versions: Option<Arc<Vec<super::rows::FileVersion>>>,
    /// For keys some of which may be gone: the key map of the part's files, read once.
    keys: tokio::sync::OnceCell<Arc<keys::KeyMap>>,
    state: SessionState,
    context: Arc<TaskContext>,
    counts: Counts,
    io: Arc<TableIo>,
}

type Batches = futures::stream::BoxStream<'static, Result<RecordBatch>>;

/// The table side of a row lookup, ready before the candidates are known.
pub(super) struct Lookup {
    located: Located,
    keys: Option<Arc<keys::KeyMap>>,
}

/// The index's candidates: ids (the part's), and their vectors where the index's copy
/// serves; `ntotal` of the index searched.
struct Candidates {
    ids: Vec<i64>,
    vectors: Option<Vec<f32>>,
    ntotal: u64,
}

impl Run {
    /// The search of `spec` in `part`.
    fn new(spec: &TopK, part: &Part, state: &SessionState, context: Arc<TaskContext>, metrics: &ExecutionPlanMetricsSet) -> Run {
        Run {
            spec: TopK { table: part.table.clone(), ..spec.clone() },
            exact: part.exact,
            ids: part.ids.clone(),
            pinned: part.pinned.clone(),
            versions: part.versions.clone(),
            keys: tokio::sync::OnceCell::new(),
            state: state.clone(),
            context,
            counts: Counts::new(metrics),
            io: Arc::new(TableIo::new(state.runtime_env().cache_manager.get_file_metadata_cache(), spec.disk.clone())),
        }
    }

    async fn rows(self) -> Result<Batches> {
        if self.exact {
            return match self.flat().await? {
                Some(rows) => Ok(rows),
                None => self.brute_force().await,
            };
        }
        let spec = &self.spec;
        self.counts.indexed_rows.add(spec.table.index_info().ntotal as usize);
        let allowed = match spec.filters.is_empty() {
            true => None,
            false => {
                let start = std::time::Instant::now();
                let ids = self.allowed_ids().await?;
                self.counts.filter_time.add_elapsed(start);
                Some(ids)
            }
        };
        if let Some(ids) = &allowed {
            self.counts.allowed_rows.add(ids.len());
            if ids.is_empty() {
                return Ok(futures::stream::empty().boxed());
            }
        }
        if spec.whole_index() {
            return self.brute_force().await;
        }
        let allowed = allowed.map(|ids| self.index_ids(&ids));
        // The table is listed (one LIST or HEAD) while the index is searched.
        let start = std::time::Instant::now();
        let search = async {
            let found = self.search(&spec.query, allowed.as_deref().map(Vec::as_slice)).await;
            self.counts.search_time.add_elapsed(start);
            found
        };
        let columns = self.read_columns(spec.vectors_from_index);
        let (found, lookup) = futures::join!(search, self.prepare(&columns));
        let Some(found) = found? else {
            // Fewer than k indexed rows pass, or the index was replaced since planning: the
            // index cannot answer this query.
            return self.brute_force().await;
        };
        self.counts.candidates.add(found.ids.len());
        let start = std::time::Instant::now();
        let rows = match lookup? {
            Some(lookup) => self.rows_at(found, lookup).await,
            None => self.rows_with_keys(found.ids).await,
        };
        self.counts.lookup_time.add_elapsed(start);
        self.counts.add_table(&self.io);
        rows
    }

    /// The table side of the row lookup, made while the index is searched: listed with
    /// `columns`, every footer, and the key map of a keyed table. The files as planned
    /// are read meanwhile (footers, page locations, key column), so that a listing that
    /// finds them unchanged costs no further request.
    pub(super) async fn prepare(&self, columns: &[usize]) -> Result<Option<Lookup>> {
        let table = &self.spec.table;
        let key = table.key_index().map(|k| table.schema().field(k).name().clone());
        let names: Vec<String> = columns.iter().map(|&c| table.schema().field(c).name().clone()).collect();
        let planned = self.read_planned(key.as_deref(), &names);
        let (listed, ()) = futures::join!(Listed::list(table.base(), &self.state, columns), planned);
        let Some(listed) = listed? else { return Ok(None) };
        let located = listed.locate(&self.io).await?;
        let keys = match &key {
            Some(name) => Some(keys::key_map(located.store(), &located.files(), name, &self.io).await?),
            None => None,
        };
        Ok(Some(Lookup { located, keys }))
    }

    /// Footers with the pages of `columns`, and the key map, of the part's files as
    /// listed at planning, ahead of the listing: one wave. Failures show again where
    /// they matter, in the lookup itself.
    async fn read_planned(&self, key: Option<&str>, columns: &[String]) {
        let Some(versions) = &self.versions else { return };
        let Some(store) = super::parts::store_of(self.spec.table.base(), &self.state.runtime_env()) else { return };
        let files: Vec<_> = versions.iter().map(|v| v.meta().clone()).collect();
        let footers = footers(&store, &files, &self.io, columns);
        let keys = async {
            match key {
                Some(name) => keys::key_map(&store, &files, name, &self.io).await.map(drop),
                None => Ok(()),
            }
        };
        let _ = futures::join!(footers, keys);
    }

    /// Base-table columns the row lookup reads: the scan's, but the key (a row's key is
    /// the id it was found by) and, when the index's vectors serve, the vector column.
    fn read_columns(&self, vectors_from_index: bool) -> Vec<usize> {
        let (key, vector) = (self.spec.table.key_index(), self.spec.table.vector_index());
        self.spec
            .projection
            .iter()
            .copied()
            .filter(|&c| Some(c) != key && !(vectors_from_index && c == vector))
            .collect()
    }

    /// Candidate ids from the index, probing more lists until at least k are found (and
    /// stand: hits in rows the part no longer has are dropped, and more asked for);
    /// `None` when even all lists hold fewer than k (allowed) entries, or the index was
    /// replaced since planning.
    async fn search(&self, query: &[f32], allowed: Option<&[i64]>) -> Result<Option<Candidates>> {
        let spec = &self.spec;
        let keys = self.key_gate().await?;
        let mut index = spec.table.index(spec.cache_bytes, spec.disk.as_ref()).await?;
        let mut nprobe = spec.nprobe_for(index.info(), allowed.map(<[i64]>::len));
        // Checked once per query: with the first search, and by the reopen after a change.
        let (mut reopened, mut checked) = (false, false);
        // One past the candidates, to see whether the k-th place ties beyond them.
        let mut want = spec.candidates() + 1;
        loop {
            // The search notices a replaced object only through the GETs it makes; with
            // every list cached it makes none, so the path is checked alongside it.
            let search = self.search_once(&index, query, want, nprobe, allowed, 1);
            let (result, entries) = match checked {
                true => search.await,
                false => {
                    let (current, pinned, (result, entries)) = futures::join!(index.check(), self.pinned_here(), search);
                    checked = true;
                    if !pinned? {
                        return Ok(None);
                    }
                    (current.and(result), entries)
                }
            };
            let result = match result {
                Err(e) if registry::is_changed(&e) && !reopened => {
                    registry::forget(spec.table.location(), &index);
                    index = spec.table.index(spec.cache_bytes, spec.disk.as_ref()).await?;
                    (reopened, checked) = (true, false);
                    continue;
                }
                r => r.map_err(|e| index_error(spec.table.location(), e))?,
            };
            self.counts.add_search(&result.stats);
            let mut found = Found::of(&result, 0..want);
            let last = (found.0.len() == want).then(|| found.0[want - 1].1);
            let dropped = found.standing(|id| self.to_part(keys.as_deref(), id));
            let (nlist, ntotal) = (index.info().nlist, index.info().ntotal as usize);
            // Rows tied with the k-th (duplicates, or FAISS's f32 rounding against the exact
            // re-rank's f64) may reach past the candidates; the exact plan breaks such ties
            // by the other sort keys, so all of them must be re-ranked: ask for more until
            // the last one found is clearly farther than the k-th, then keep the candidates
            // and the tie. Hits dropped likewise leave fewer than asked for: ask for more.
            let short = dropped > 0 && found.0.len() <= spec.candidates();
            if last.is_some() && want < ntotal && (short || found.ties_past(spec.k, last)) {
                want = want.saturating_mul(2).min(ntotal);
                continue;
            }
            if found.0.len() >= spec.k || nprobe >= nlist || entries {
                self.counts.dropped_hits.add(dropped);
                match entries {
                    true => self.counts.by_entries.add(1),
                    false => self.counts.nprobe.add(nprobe.min(nlist)),
                }
                if found.0.len() < spec.k {
                    // Every passing entry was compared: fewer than k stand. That is the
                    // answer when each passing row was among them.
                    if !entries || found.0.len() < allowed.map_or(0, <[i64]>::len) {
                        return Ok(None);
                    }
                } else {
                    found.keep(spec.k, spec.candidates());
                }
                return Ok(Some(found.candidates(spec.codes(index.info(), &result), ntotal as u64)));
            }
            nprobe = nprobe.saturating_mul(2).min(nlist);
        }
    }

    /// One search of `queries` for `want` each: among the `allowed` rows' own entries
    /// where the cost model picks them (then `true`), else probing `nprobe` lists.
    async fn search_once(
        &self,
        index: &crate::IvfIndex,
        queries: &[f32],
        want: usize,
        nprobe: usize,
        allowed: Option<&[i64]>,
        threads: usize,
    ) -> (crate::Result<crate::SearchResult>, bool) {
        let codes = self.spec.vectors_from_index;
        match allowed.filter(|a| self.spec.by_entries(index, a.len())) {
            Some(ids) => (index.search_entries(queries, want, ids, codes).await, true),
            None => (index.search_with(queries, want, nprobe, SearchOptions { allowed, codes, threads }).await, false),
        }
    }

    /// Whether the part's index object is still the version its manifest describes (a
    /// part without manifest pins none).
    async fn pinned_here(&self) -> Result<bool> {
        let Some(version) = &self.pinned else { return Ok(true) };
        match self.spec.table.location().head().await {
            Ok(meta) => Ok(version.matches(&meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(index_error(self.spec.table.location(), crate::Error::Store {
                path: self.spec.table.location().as_str().to_string(),
                source: Arc::new(e),
            })),
        }
    }

    /// For keys some of which may be gone since the build: the part's key map.
    async fn key_gate(&self) -> Result<Option<Arc<keys::KeyMap>>> {
        if !self.ids.checks_keys() {
            return Ok(None);
        }
        let map = self
            .keys
            .get_or_try_init(|| async {
                let table = &self.spec.table;
                let key = table.key_index().expect("keys");
                let name = table.schema().field(key).name().clone();
                let Some(listed) = Listed::list(table.base(), &self.state, &[key]).await? else {
                    return internal_err!("a table of keys some of which may be gone is read from Parquet files");
                };
                let located = listed.locate(&self.io).await?;
                keys::key_map(located.store(), &located.files(), &name, &self.io).await
            })
            .await?;
        Ok(Some(map.clone()))
    }

    /// The part's id of the index's `id`; `None` when the row it names is not the part's.
    fn to_part(&self, keys: Option<&keys::KeyMap>, id: i64) -> Option<i64> {
        match keys {
            Some(map) => (!map.positions(id).is_empty()).then_some(id),
            None => self.ids.to_part(id),
        }
    }

    /// The index's ids of the part's `ids` (sorted, and kept so).
    fn index_ids(&self, ids: &Arc<Vec<i64>>) -> Arc<Vec<i64>> {
        match self.ids {
            Ids::Positions(_) => Arc::new(ids.iter().map(|&id| self.ids.to_index(id)).collect()),
            _ => ids.clone(),
        }
    }

    /// Ids (keys, or row positions) of the rows passing the filters, sorted; kept per
    /// version of the table's files, unless a filter is volatile.
    async fn allowed_ids(&self) -> Result<Arc<Vec<i64>>> {
        self.passing(false).await
    }

    /// Ids of the rows passing the filters, sorted: their positions when `by_position`
    /// or the table has no key, else their keys. Kept per version of the part's files:
    /// as planned (no request here), else as listed now.
    async fn passing(&self, by_position: bool) -> Result<Arc<Vec<i64>>> {
        let table = &self.spec.table;
        let key = table.key_index().filter(|_| !by_position);
        if self.spec.filters.iter().any(Expr::is_volatile) {
            return Ok(Arc::new(self.find_allowed(key).await?));
        }
        let version = match &self.versions {
            Some(versions) => versions.clone(),
            None => {
                let mut columns = self.filter_columns();
                columns.extend(key);
                match Listed::list(table.base(), &self.state, &columns).await? {
                    Some(listed) => Arc::new(listed.version()),
                    None => return Ok(Arc::new(self.find_allowed(key).await?)),
                }
            }
        };
        let filter: Vec<String> = self.spec.filters.iter().map(|f| f.to_string()).collect();
        let name = key.map(|k| table.schema().field(k).name().clone());
        let find = self.find_allowed(key);
        let (ids, known) = passing::passing(version, filter.join(" AND "), name, find).await?;
        if known {
            self.counts.filter_cache_hits.add(1);
        }
        Ok(ids)
    }

    /// Ids of the rows passing the filters, found by scanning the key (or nothing, for
    /// positions) and the filters' columns.
    async fn find_allowed(&self, key: Option<usize>) -> Result<Vec<i64>> {
        let table = &self.spec.table;
        let mut ids = vec![];
        match key {
            Some(key) => {
                let (plan, mut stream) = self.planned(&[key], &self.spec.filters).await?;
                while let Some(batch) = stream.next().await {
                    let column = cast(batch?.column(0), &DataType::Int64)?;
                    ids.extend(column.as_primitive::<Int64Type>().iter().flatten());
                }
                self.counts.filter_rows_read.add(rows_scanned(&plan));
            }
            None => {
                // Positions need the rows in table order: every row of the filter's
                // columns, file by file.
                let columns = self.filter_columns();
                let Some(listed) = Listed::list(table.base(), &self.state, &columns).await? else {
                    return internal_err!("a table without key column is read from Parquet files");
                };
                let located = listed.locate(&self.io).await?;
                let batches = located.read_all(None, &self.context, &self.io).await?;
                let predicate = conjunction(self.spec.filters.iter().cloned()).expect("filters");
                let schema = match batches.first() {
                    Some(b) => b.schema(),
                    None => return Ok(ids),
                };
                let predicate = self.state.create_physical_expr(predicate, &DFSchema::try_from(schema)?)?;
                let mut position = 0i64;
                for batch in &batches {
                    self.counts.filter_rows_read.add(batch.num_rows());
                    let keep = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
                    for (i, pass) in keep.as_boolean().iter().enumerate() {
                        if pass == Some(true) {
                            ids.push(position + i as i64);
                        }
                    }
                    position += batch.num_rows() as i64;
                }
                if position as u64 != located.rows() {
                    return internal_err!("read {position} rows of the table's {}", located.rows());
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Base-table columns the filters read.
    fn filter_columns(&self) -> Vec<usize> {
        let schema = self.spec.table.schema();
        let mut columns: Vec<usize> = self
            .spec
            .filters
            .iter()
            .flat_map(|f| f.column_refs().into_iter().filter_map(|c| schema.index_of(&c.name).ok()).collect::<Vec<_>>())
            .collect();
        columns.sort_unstable();
        columns.dedup();
        columns
    }

    /// For files no index covers, by an L2 index: their vectors (kept once decoded)
    /// ranked here, those of the rows passing the filters only, and only the nearest rows
    /// (and any tied with the k-th) read and emitted for the exact ranking above. `None`
    /// where this does not apply.
    async fn flat(&self) -> Result<Option<Batches>> {
        let spec = &self.spec;
        let table = &spec.table;
        let d = table.index_info().dimension;
        let l2 = matches!(spec.function.as_str(), "vec_distance" | "l2_distance_squared");
        if !l2 || table.metric() != crate::Metric::L2 || spec.query.len() != d {
            return Ok(None);
        }
        let passing = match spec.filters.is_empty() {
            true => None,
            false => Some(self.passing(true).await?),
        };
        let vector = [table.vector_index()];
        let name = table.schema().field(vector[0]).name().clone();
        let (Some(listed), Some(rows)) = futures::try_join!(
            Listed::list(table.base(), &self.state, &spec.projection),
            Listed::list(table.base(), &self.state, &vector),
        )?
        else {
            return Ok(None);
        };
        let located = listed.locate(&self.io).await?;
        let Some(vectors) = vectors::vectors(&located, rows, &name, d, &self.context, &self.io).await? else {
            return Ok(None);
        };
        let n = located.rows() as usize;
        self.counts.unindexed_rows.add(n);
        let rows: Vec<usize> = match &passing {
            Some(p) => p.iter().map(|&p| p as usize).filter(|&p| p < n).collect(),
            None => (0..n).collect(),
        };
        let distance = |i: usize| -> f32 {
            let v = &vectors[i * d..][..d];
            v.iter().zip(&spec.query).map(|(a, b)| (a - b) * (a - b)).sum()
        };
        let distances: Vec<f32> = rows.iter().map(|&i| distance(i)).collect();
        // Everything within f32 rounding of the k-th: the exact f64 ranking above decides.
        let mut sorted = distances.clone();
        let kth = match sorted.len() > spec.k {
            true => *sorted.select_nth_unstable_by(spec.k - 1, f32::total_cmp).1,
            false => f32::INFINITY,
        };
        let bound = kth + 1e-4 * kth.abs() + 1e-6;
        let positions: Vec<u64> =
            rows.iter().zip(&distances).filter(|&(_, &dist)| dist <= bound).map(|(&i, _)| i as u64).collect();
        let batches = located.read(&positions, &self.context, &self.io).await?;
        self.counts.base_rows_read.add(positions.len());
        self.counts.rows_reranked.add(positions.len());
        self.counts.add_table(&self.io);
        let schema = Arc::new(table.schema().project(&spec.projection)?);
        let batches: Vec<RecordBatch> =
            batches.into_iter().map(|b| RecordBatch::try_new(schema.clone(), b.columns().to_vec())).collect::<Result<_, _>>()?;
        Ok(Some(futures::stream::iter(batches.into_iter().map(Ok)).boxed()))
    }

    /// Every row passing the filters.
    async fn brute_force(&self) -> Result<Batches> {
        if !self.exact {
            self.counts.brute_force.add(1);
        }
        let (plan, stream) = self.planned(&self.spec.projection, &self.spec.filters).await?;
        let read = match self.exact {
            true => vec![self.counts.base_rows_read.clone(), self.counts.unindexed_rows.clone()],
            false => vec![self.counts.base_rows_read.clone()],
        };
        let reranked = self.counts.rows_reranked.clone();
        let stream = stream.map(move |batch| {
            let batch = batch?;
            reranked.add(batch.num_rows());
            Ok(batch)
        });
        let done = futures::stream::once(async move {
            read.iter().for_each(|c| c.add(rows_scanned(&plan)));
            Ok::<_, DataFusionError>(None)
        });
        Ok(stream.map_ok(Some).chain(done).try_filter_map(|b| async move { Ok(b) }).boxed())
    }

    /// The rows of the candidates, looked up by position: the ids are positions, or keys
    /// mapped to positions.
    async fn rows_at(&self, found: Candidates, lookup: Lookup) -> Result<Batches> {
        let (rows, _) = self.rows_of(found, lookup).await?;
        Ok(futures::stream::iter(rows.into_iter().map(Ok)).boxed())
    }

    /// The rows of the candidates in table order, and for each row the candidate (its
    /// place in `found.ids`) it belongs to.
    pub(super) async fn rows_of(&self, found: Candidates, lookup: Lookup) -> Result<(Vec<RecordBatch>, Vec<usize>)> {
        let spec = &self.spec;
        let table = &spec.table;
        let Lookup { located, keys } = lookup;
        // (position, candidate) for every row of a candidate.
        let mut at: Vec<(u64, usize)> = vec![];
        let mut missing = vec![];
        match table.key_index() {
            Some(_) => {
                let map = keys.expect("keyed tables are prepared with their key map");
                for (c, &id) in found.ids.iter().enumerate() {
                    let positions = map.positions(id);
                    if positions.is_empty() {
                        missing.push(id);
                    }
                    at.extend(positions.iter().map(|&p| (p, c)));
                }
            }
            None => {
                if matches!(self.ids, Ids::Trusted) && located.rows() != found.ntotal {
                    return Err(unrecorded(table, found.ntotal, located.rows()));
                }
                for (c, &id) in found.ids.iter().enumerate() {
                    match u64::try_from(id).ok().filter(|&p| p < located.rows()) {
                        Some(p) => at.push((p, c)),
                        None => missing.push(id),
                    }
                }
            }
        }
        let present = found.ids.len() - missing.len();
        if !missing.is_empty() {
            let what = match table.key_index() {
                Some(key) => format!("key column '{}' of the table", table.schema().field(key).name()),
                None => format!("row positions of the table (it has {} rows)", located.rows()),
            };
            return Err(ids_mismatch(&what, table, found.ids.len(), present, &missing));
        }
        at.sort_unstable();
        at.dedup_by_key(|&mut (p, _)| p);
        // A key on several rows: those rows may hold other vectors than the index's.
        let repeated = at.len() > present;
        let vectors = found.vectors.filter(|_| !repeated);
        let (located, columns) = match vectors.is_some() || !spec.vectors_from_index {
            true => (located, self.read_columns(spec.vectors_from_index)),
            false => {
                let columns = self.read_columns(false);
                let Some(listed) = Listed::list(table.base(), &self.state, &columns).await? else {
                    return internal_err!("the table was listed as Parquet files before");
                };
                (listed.locate(&self.io).await?, columns)
            }
        };
        let positions: Vec<u64> = at.iter().map(|&(p, _)| p).collect();
        let batches = match columns.is_empty() {
            true => vec![],
            false => located.read(&positions, &self.context, &self.io).await?,
        };
        let read: usize = batches.iter().map(|b| b.num_rows()).sum();
        self.counts.base_rows_read.add(read);
        if !columns.is_empty() && read != positions.len() {
            // Rows are matched to candidates by order: a scan that skipped one would mix them.
            return internal_err!("the row lookup read {read} rows for {} positions", positions.len());
        }
        let schema = Arc::new(table.schema().project(&spec.projection)?);
        let d = table.index_info().dimension;
        let mut out = vec![];
        let mut row = 0;
        let batches: Vec<Option<RecordBatch>> = match columns.is_empty() {
            true => vec![None],
            false => batches.into_iter().map(Some).collect(),
        };
        for batch in batches {
            let n = batch.as_ref().map_or(at.len(), |b| b.num_rows());
            let mut arrays = vec![];
            for &c in &spec.projection {
                match columns.iter().position(|&x| x == c) {
                    Some(i) => arrays.push(batch.as_ref().expect("columns read").column(i).clone()),
                    None if Some(c) == table.key_index() => {
                        let ids: Int64Array = at[row..row + n].iter().map(|&(_, c)| found.ids[c]).collect();
                        arrays.push(cast(&ids, table.schema().field(c).data_type())?);
                    }
                    None => {
                        let vectors = vectors.as_ref().expect("vectors from the index");
                        let rows = at[row..row + n].iter().map(|&(_, c)| &vectors[c * d..(c + 1) * d]);
                        arrays.push(vector_array(table.schema().field(c).data_type(), d, rows)?);
                    }
                }
            }
            let options = RecordBatchOptions::new().with_row_count(Some(n));
            out.push(RecordBatch::try_new_with_options(schema.clone(), arrays, &options)?);
            row += n;
        }
        self.counts.rows_reranked.add(row);
        Ok((out, at.into_iter().map(|(_, c)| c).collect()))
    }

    /// The rows whose key is one of `ids`, for a base table not read from Parquet files:
    /// `key IN (...)` through DataFusion's planner, which hands it to the source.
    async fn rows_with_keys(&self, mut ids: Vec<i64>) -> Result<Batches> {
        let table = &self.spec.table;
        let Some(key_index) = table.key_index() else {
            return internal_err!("a table without key column is read from Parquet files");
        };
        ids.sort_unstable();
        ids.dedup();
        let key_field = table.schema().field(key_index).clone();
        let list: Vec<Expr> = ids
            .iter()
            .map(|&id| ScalarValue::Int64(Some(id)).cast_to(key_field.data_type()).map(lit))
            .collect::<Result<_>>()?;
        let filter = col(key_field.name().as_str()).in_list(list, false);
        let mut columns = self.spec.projection.clone();
        if !columns.contains(&key_index) {
            columns.push(key_index);
        }
        let (plan, stream) = self.planned(&columns, &[filter]).await?;
        let batches: Vec<RecordBatch> = stream.try_collect().await?;
        self.counts.base_rows_read.add(rows_scanned(&plan));
        let key_at = columns.iter().position(|&c| c == key_index).expect("key scanned");
        let mut found = std::collections::HashSet::new();
        for batch in &batches {
            let keys = cast(batch.column(key_at), &DataType::Int64)?;
            found.extend(keys.as_primitive::<Int64Type>().iter().flatten());
        }
        if found.len() < self.spec.k.min(ids.len()) {
            let missing: Vec<i64> = ids.iter().filter(|id| !found.contains(id)).copied().collect();
            let what = format!("key column '{}' of the table", key_field.name());
            return Err(ids_mismatch(&what, table, ids.len(), found.len(), &missing));
        }
        let keep: Vec<usize> = (0..self.spec.projection.len()).collect();
        let reranked = self.counts.rows_reranked.clone();
        Ok(futures::stream::iter(batches.into_iter().map(move |b| {
            let b = b.project(&keep)?;
            reranked.add(b.num_rows());
            Ok(b)
        }))
        .boxed())
    }

    /// `SELECT columns FROM base WHERE filters`, planned and optimized by DataFusion as
    /// any query (filters handed to the source: files, row groups and pages skipped).
    async fn planned(
        &self,
        columns: &[usize],
        filters: &[Expr],
    ) -> Result<(Arc<dyn ExecutionPlan>, SendableRecordBatchStream)> {
        let table = &self.spec.table;
        let source = provider_as_source(table.base().clone());
        let mut plan = LogicalPlanBuilder::scan(self.spec.table_name.clone(), source, None)?;
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            plan = plan.filter(predicate)?;
        }
        let schema = table.schema();
        let plan = plan.project(columns.iter().map(|&c| col(schema.field(c).name().as_str())))?.build()?;
        let plan = self.state.create_physical_plan(&plan).await?;
        let stream = execute_stream(plan.clone(), self.context.clone())?;
        Ok((plan, stream))
    }
}

/// One query's results from FAISS: (id, distance, slot in the result) of each found.
struct Found(Vec<(i64, f32, usize)>);

impl Found {
    fn of(result: &crate::SearchResult, slots: std::ops::Range<usize>) -> Found {
        Found(slots.filter(|&at| result.ids[at] >= 0).map(|at| (result.ids[at], result.distances[at], at)).collect())
    }

    /// All asked for were found (`last` is the last one's distance, standing or not) and
    /// the last ties with the k-th: more may tie.
    fn ties_past(&self, k: usize, last: Option<f32>) -> bool {
        let f = &self.0;
        last.is_some_and(|last| f.len() >= k && tied(f[k - 1].1, last))
    }

    /// Keeps the hits `to_part` accepts, with the ids it gives them; how many it dropped.
    fn standing(&mut self, to_part: impl Fn(i64) -> Option<i64>) -> usize {
        let before = self.0.len();
        self.0.retain_mut(|(id, _, _)| match to_part(*id) {
            Some(part) => {
                *id = part;
                true
            }
            None => false,
        });
        before - self.0.len()
    }

    /// Keeps the first `candidates` and every one tied with the k-th (at least k found).
    fn keep(&mut self, k: usize, candidates: usize) {
        let kth = self.0[k - 1].1;
        let ties = self.0.iter().rposition(|&(_, d, _)| tied(kth, d)).map_or(0, |p| p + 1);
        self.0.truncate(candidates.max(ties));
    }

    /// The ids, with their vectors decoded from `codes` (`code_size` bytes per slot).
    fn candidates(self, codes: Option<(&[u8], usize)>, ntotal: u64) -> Candidates {
        let vectors = codes.map(|(codes, code_size)| {
            self.0
                .iter()
                .flat_map(|&(_, _, at)| {
                    codes[at * code_size..][..code_size]
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                })
                .collect()
        });
        Candidates { ids: self.0.into_iter().map(|(id, _, _)| id).collect(), vectors, ntotal }
    }
}

impl TopK {
    /// With a filter passing `allowed` ids, as many more lists as it is selective, so
    /// about as many allowed vectors are compared as an unfiltered search compares.
    fn nprobe_for(&self, info: &crate::IndexInfo, allowed: Option<usize>) -> usize {
        match allowed {
            Some(n) => {
                let fraction = n as f64 / info.ntotal.max(1) as f64;
                (self.nprobe as f64 / fraction.min(1.0)).ceil() as usize
            }
            None => self.nprobe,
        }
        .clamp(1, info.nlist)
    }

    /// The result's codes and code size where they are the rows' vectors: asked for, and
    /// IVF-Flat (checked again here: the object may have been replaced since planning).
    fn codes<'r>(&self, info: &crate::IndexInfo, result: &'r crate::SearchResult) -> Option<(&'r [u8], usize)> {
        (self.vectors_from_index && !result.codes.is_empty() && info.code_size == 4 * info.dimension)
            .then_some((&result.codes, info.code_size))
    }

    /// Whether every row passing the filters is read instead of searching: the index
    /// would return every row anyway.
    fn whole_index(&self) -> bool {
        self.candidates() as u64 >= self.table.index_info().ntotal
    }

    /// Whether the `allowed` passing rows' own entries are searched (their codes fetched
    /// through the index's id map) rather than the lists a filtered search would probe:
    /// whichever costs less to read.
    fn by_entries(&self, index: &crate::IvfIndex, allowed: usize) -> bool {
        let info = index.info();
        index.has_entries()
            && info.ntotal.saturating_mul(16) <= MAX_ID_MAP_BYTES
            && index.entries_cost(allowed) <= index.lists_cost(self.nprobe_for(info, Some(allowed)))
    }
}

/// Largest id map an index is given (16 bytes per vector): beyond it, filtered searches
/// probe lists.
const MAX_ID_MAP_BYTES: u64 = 512 * 1024 * 1024;

/// Whether FAISS's distance `d` ties with the k-th, `kth`, within its f32 rounding (the
/// exact re-rank, in f64, may order them either way).
fn tied(kth: f32, d: f32) -> bool {
    (kth - d).abs() <= 8.0 * f32::EPSILON * kth.abs().max(d.abs())
}

/// The error for a positions index without manifest over a table of another row count.
fn unrecorded(table: &VectorTable, ntotal: u64, rows: u64) -> DataFusionError {
    DataFusionError::Execution(format!(
        "index {} holds {ntotal} vectors but the table has {rows} rows, and the index has no manifest recording which files it was built from: rebuild it with `datafusion-faiss build`, or, if it was built from the table's current files, record them with `datafusion-faiss attach`",
        table.location().as_str()
    ))
}

/// The error for candidate ids the table does not have: the wrong index, or rows deleted.
fn ids_mismatch(
    what: &str,
    table: &VectorTable,
    candidates: usize,
    present: usize,
    missing: &[i64],
) -> DataFusionError {
    let missing: Vec<String> = missing.iter().take(5).map(|id| id.to_string()).collect();
    let hint = if table.key_index().is_some() { ", with these keys" } else { ", its vectors added in table order" };
    DataFusionError::Execution(format!(
        "index ids do not match {what}: the index {} returned {candidates} candidate ids, only {present} of them are in the table (missing e.g. {}). Is OPTIONS ('index' ...) the index built from this table{hint}? The index has no manifest recording which files it was built from, so rows deleted since cannot be told apart: rebuild it with `datafusion-faiss build`, or record the table's files with `datafusion-faiss attach` right after building.",
        table.location().as_str(),
        missing.join(", "),
    ))
}

/// Rows the leaf scans of `plan` produced (before any filter above them).
fn rows_scanned(plan: &Arc<dyn ExecutionPlan>) -> usize {
    if plan.children().is_empty() {
        return plan.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
    }
    plan.children().into_iter().map(rows_scanned).sum()
}

/// A column of `rows` (each `d` floats) of the vector column's type.
fn vector_array<'a>(
    data_type: &DataType,
    d: usize,
    rows: impl Iterator<Item = &'a [f32]>,
) -> Result<datafusion::arrow::array::ArrayRef> {
    use datafusion::arrow::array::{FixedSizeListArray, Float32Array, LargeListArray, ListArray};
    use datafusion::arrow::buffer::OffsetBuffer;
    let mut values: Vec<f32> = Vec::with_capacity(rows.size_hint().0 * d);
    rows.for_each(|r| values.extend_from_slice(r));
    let n = values.len() / d.max(1);
    let values = Arc::new(Float32Array::from(values));
    Ok(match data_type {
        DataType::FixedSizeList(item, size) => {
            Arc::new(FixedSizeListArray::try_new(item.clone(), *size, values, None)?)
        }
        DataType::List(item) => {
            Arc::new(ListArray::try_new(item.clone(), OffsetBuffer::from_lengths(vec![d; n]), values, None)?)
        }
        DataType::LargeList(item) => {
            Arc::new(LargeListArray::try_new(item.clone(), OffsetBuffer::from_lengths(vec![d; n]), values, None)?)
        }
        other => return internal_err!("vector column of type {other}"),
    })
}
