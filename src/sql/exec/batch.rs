//! The batch k-NN operator: for every row of a query input, the rows of its candidates
//! in the vector table. Queries are taken [`BATCH`] at a time: one FAISS search for the
//! batch (each probed list fetched once for all of it), then one row lookup for the
//! candidates of all of them. Memory holds one batch.

use std::collections::HashMap;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::common::exec_err;
use datafusion::common::runtime::SpawnedTask;
use datafusion::physical_plan::ExecutionPlanProperties;

use super::*;
use crate::sql::functions::row_vectors;
use crate::sql::knn::BATCH;

pub struct IvfKnnExec {
    spec: TopK,
    /// Each query batch is searched in every part and the rows joined.
    parts: Vec<Part>,
    state: SessionState,
    input: Arc<dyn ExecutionPlan>,
    /// The query vector, over the input's rows.
    query: Arc<dyn PhysicalExpr>,
    vector_left: bool,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl IvfKnnExec {
    /// The join of `input`'s rows (query vector `query`) with their candidates in the
    /// parts of `spec`'s table, the table's columns first when `vector_left`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: TopK,
        parts: Vec<Part>,
        input: Arc<dyn ExecutionPlan>,
        query: Arc<dyn PhysicalExpr>,
        vector_left: bool,
        schema: SchemaRef,
        state: SessionState,
    ) -> Self {
        let properties = properties(&schema, &input);
        IvfKnnExec { spec, parts, state, input, query, vector_left, schema, properties, metrics: ExecutionPlanMetricsSet::new() }
    }

    pub fn spec(&self) -> &TopK {
        &self.spec
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    pub fn query(&self) -> &Arc<dyn PhysicalExpr> {
        &self.query
    }

    pub fn vector_left(&self) -> bool {
        self.vector_left
    }
}

/// One output partition per input partition, each emitted batch by batch.
fn properties(schema: &SchemaRef, input: &Arc<dyn ExecutionPlan>) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema.clone()),
        Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

impl fmt::Debug for IvfKnnExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IvfKnnExec: {} query={} batch={BATCH}", self.spec, self.query)
    }
}

impl DisplayAs for IvfKnnExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IvfKnnExec: {} query={} batch={BATCH}", self.spec, self.query)?;
        fmt_parts(&self.parts, f)
    }
}

impl ExecutionPlan for IvfKnnExec {
    fn name(&self) -> &str {
        "IvfKnnExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.query)
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = children.as_slice() else { return internal_err!("IvfKnnExec has one child") };
        Ok(Arc::new(IvfKnnExec::new(
            self.spec.clone(),
            self.parts.clone(),
            input.clone(),
            self.query.clone(),
            self.vector_left,
            self.schema.clone(),
            self.state.clone(),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let metric = |name: &'static str| MetricBuilder::new(&self.metrics).global_counter(name);
        let (queries, searches, alone) = (metric("queries"), metric("batch_searches"), metric("searched_alone"));
        let parts: Vec<Arc<Batches>> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                Arc::new(Batches {
                    run: Run::new(&self.spec, part, &self.state, context.clone(), &self.metrics),
                    query: self.query.clone(),
                    vector_left: self.vector_left,
                    schema: self.schema.clone(),
                    // Every part sees the same queries: counted once.
                    queries: if i == 0 { queries.clone() } else { Count::new() },
                    searches: searches.clone(),
                    alone: alone.clone(),
                    allowed: tokio::sync::OnceCell::new(),
                    everything: tokio::sync::OnceCell::new(),
                })
            })
            .collect();
        let schema = self.schema.clone();
        let stream = query_batches(input)
            .map_ok(move |(first, queries)| {
                let (parts, schema) = (parts.clone(), schema.clone());
                // A task each (aborted if the query is dropped): one batch looks up its
                // rows while the next searches (on as many threads as partitions).
                let task = SpawnedTask::spawn(async move {
                    let mut joined = vec![];
                    for part in &parts {
                        joined.push(part.join(first, &queries).await?);
                    }
                    Ok::<_, DataFusionError>(concat_batches(&schema, &joined)?)
                });
                async move { task.join_unwind().await.map_err(|e| DataFusionError::External(e.into()))? }
            })
            .try_buffered(2)
            .try_filter(|b| futures::future::ready(b.num_rows() > 0));
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream)))
    }
}

/// The input's rows in batches of at most [`BATCH`], each with its first row's number.
fn query_batches(input: SendableRecordBatchStream) -> impl futures::Stream<Item = Result<(usize, RecordBatch)>> {
    let schema = input.schema();
    futures::stream::try_unfold((input, None::<RecordBatch>, 0usize), move |(mut input, mut pending, seen)| {
        let schema = schema.clone();
        async move {
            let mut parts = vec![];
            let mut rows = 0;
            while rows < BATCH {
                let batch = match pending.take() {
                    Some(b) => b,
                    None => match input.next().await {
                        Some(b) => b?,
                        None => break,
                    },
                };
                let take = (BATCH - rows).min(batch.num_rows());
                if take < batch.num_rows() {
                    pending = Some(batch.slice(take, batch.num_rows() - take));
                }
                parts.push(batch.slice(0, take));
                rows += take;
            }
            if rows == 0 {
                return Ok(None);
            }
            Ok(Some(((seen, concat_batches(&schema, &parts)?), (input, pending, seen + rows))))
        }
    })
}

/// What the batches of one partition share.
struct Batches {
    run: Run,
    query: Arc<dyn PhysicalExpr>,
    vector_left: bool,
    schema: SchemaRef,
    queries: Count,
    /// FAISS calls for whole batches, and for single queries searched again alone.
    searches: Count,
    alone: Count,
    /// Ids passing the vector table's filters (`None`: no filter), found once.
    allowed: tokio::sync::OnceCell<Option<Arc<Vec<i64>>>>,
    /// Every row passing the filters, read once where a query needs them all.
    everything: tokio::sync::OnceCell<RecordBatch>,
}

impl Batches {
    async fn allowed(&self) -> Result<Option<Arc<Vec<i64>>>> {
        let run = &self.run;
        let allowed = self
            .allowed
            .get_or_try_init(|| async {
                if run.spec.filters.is_empty() {
                    return Ok::<_, DataFusionError>(None);
                }
                let start = std::time::Instant::now();
                let ids = run.index_ids(&run.allowed_ids().await?);
                run.counts.filter_time.add_elapsed(start);
                run.counts.allowed_rows.add(ids.len());
                Ok(Some(ids))
            })
            .await?;
        Ok(allowed.clone())
    }

    async fn everything(&self) -> Result<RecordBatch> {
        let run = &self.run;
        let rows = self
            .everything
            .get_or_try_init(|| async {
                let batches: Vec<RecordBatch> = run.brute_force().await?.try_collect().await?;
                let schema = Arc::new(run.spec.table.schema().project(&run.spec.projection)?);
                Ok::<_, DataFusionError>(concat_batches(&schema, &batches)?)
            })
            .await?;
        Ok(rows.clone())
    }

    /// The join's rows for `queries`: each query row with each row of its candidates.
    async fn join(&self, first: usize, queries: &RecordBatch) -> Result<RecordBatch> {
        let n = queries.num_rows();
        let d = self.run.spec.table.index_info().dimension;
        let vectors = row_vectors(&self.query.evaluate(queries)?, n)?;
        for (i, v) in vectors.iter().enumerate() {
            if let Some(v) = v.as_ref().filter(|v| v.len() != d) {
                return exec_err!(
                    "query row {}: a vector of dimension {}, the index {} has dimension {d}",
                    first + i,
                    v.len(),
                    self.run.spec.table.location().as_str()
                );
            }
        }
        // A NULL query vector has no nearest rows.
        let valid: Vec<usize> = (0..n).filter(|&i| vectors[i].is_some()).collect();
        self.queries.add(valid.len());
        let spec = &self.run.spec;
        // A query with a NaN or infinite component has a NaN distance to every row, as
        // the exact plan computes it; FAISS cannot rank by that, so such a batch is
        // joined with every passing row, as the exact plan joins it.
        let finite = valid.iter().all(|&i| vectors[i].iter().flatten().all(|x| x.is_finite()));
        let (allowed, all) = match self.run.exact {
            true => (None, true),
            false => {
                let allowed = self.allowed().await?;
                let all = !finite || spec.whole_index();
                (allowed, all)
            }
        };
        // Per valid query, the rows (of `rows`) to join it with.
        let (rows, per_query): (RecordBatch, Vec<Vec<u32>>) = if valid.is_empty() {
            (RecordBatch::new_empty(Arc::new(spec.table.schema().project(&spec.projection)?)), vec![])
        } else {
            let found = match all {
                true => None,
                false => {
                    let flat: Vec<f32> = valid.iter().flat_map(|&i| vectors[i].iter().flatten().copied()).collect();
                    let start = std::time::Instant::now();
                    let (found, alone) = self.run.search_batch(&flat, allowed.as_deref().map(|a| a.as_slice())).await?;
                    self.run.counts.search_time.add_elapsed(start);
                    self.searches.add(1);
                    self.alone.add(alone);
                    // `None` for a query: fewer than k indexed rows pass the filters.
                    found.into_iter().collect::<Option<Vec<Candidates>>>()
                }
            };
            match found {
                Some(found) => Self::lookup(&self.run, found).await?,
                // Every passing row for every query, as for one query.
                None => {
                    let rows = self.everything().await?;
                    let every: Vec<u32> = (0..rows.num_rows() as u32).collect();
                    (rows, vec![every; valid.len()])
                }
            }
        };
        let mut query_rows: Vec<u32> = vec![];
        let mut table_rows: Vec<u32> = vec![];
        for (&q, rows) in valid.iter().zip(&per_query) {
            query_rows.extend(std::iter::repeat_n(q as u32, rows.len()));
            table_rows.extend(rows);
        }
        let (query_rows, table_rows) = (UInt32Array::from(query_rows), UInt32Array::from(table_rows));
        let query_columns = queries.columns().iter().map(|c| Ok(take(c, &query_rows, None)?));
        let table_columns = rows.columns().iter().map(|c| gather(c, &table_rows));
        let columns: Vec<_> = match self.vector_left {
            true => table_columns.chain(query_columns).collect::<Result<_>>()?,
            false => query_columns.chain(table_columns).collect::<Result<_>>()?,
        };
        let options = RecordBatchOptions::new().with_row_count(Some(query_rows.len()));
        Ok(RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?)
    }

    /// The rows of every query's candidates, read together, and per query its rows.
    async fn lookup(run: &Run, found: Vec<Candidates>) -> Result<(RecordBatch, Vec<Vec<u32>>)> {
        let spec = &run.spec;
        let start = std::time::Instant::now();
        let d = spec.table.index_info().dimension;
        let mut ids: Vec<i64> = found.iter().flat_map(|f| f.ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let vectors = found.iter().all(|f| f.vectors.is_some()).then(|| {
            let mut by_id: HashMap<i64, &[f32]> = HashMap::new();
            for f in &found {
                let v = f.vectors.as_deref().expect("all have vectors");
                for (c, id) in f.ids.iter().enumerate() {
                    by_id.entry(*id).or_insert(&v[c * d..(c + 1) * d]);
                }
            }
            let mut vectors = Vec::with_capacity(ids.len() * d);
            ids.iter().for_each(|id| vectors.extend_from_slice(by_id[id]));
            vectors
        });
        run.counts.candidates.add(ids.len());
        let columns = run.read_columns(spec.vectors_from_index);
        let Some(lookup) = run.prepare(&columns).await? else {
            return internal_err!("the batch search needs a table of Parquet files");
        };
        let ntotal = found.first().map_or(0, |f| f.ntotal);
        let (batches, candidate_of) = run.rows_of(Candidates { ids: ids.clone(), vectors, ntotal }, lookup).await?;
        run.counts.add_table(&run.io);
        let schema = Arc::new(spec.table.schema().project(&spec.projection)?);
        let rows = concat_batches(&schema, &batches)?;
        let mut rows_of: HashMap<i64, Vec<u32>> = HashMap::new();
        for (row, &c) in candidate_of.iter().enumerate() {
            rows_of.entry(ids[c]).or_default().push(row as u32);
        }
        let per_query =
            found.iter().map(|f| f.ids.iter().flat_map(|id| rows_of.get(id).into_iter().flatten().copied()).collect());
        let per_query = per_query.collect();
        run.counts.lookup_time.add_elapsed(start);
        Ok((rows, per_query))
    }
}

/// `take(array, rows)`, with vectors (Float32 lists of one size, no NULLs: the usual
/// vector column, thousands of values a row) copied a row at a time rather than a value.
fn gather(array: &ArrayRef, rows: &UInt32Array) -> Result<ArrayRef> {
    use datafusion::arrow::array::{Array, FixedSizeListArray, Float32Array};
    use datafusion::arrow::datatypes::Float32Type;
    if let (Some(list), DataType::FixedSizeList(item, size)) = (array.as_fixed_size_list_opt(), array.data_type()) {
        if list.null_count() == 0 && list.values().null_count() == 0 && *item.data_type() == DataType::Float32 {
            let n = *size as usize;
            let values = list.values().as_primitive::<Float32Type>().values();
            let mut out = Vec::with_capacity(rows.len() * n);
            rows.values().iter().for_each(|&r| out.extend_from_slice(&values[r as usize * n..][..n]));
            return Ok(Arc::new(FixedSizeListArray::try_new(
                item.clone(),
                *size,
                Arc::new(Float32Array::from(out)),
                None,
            )?));
        }
    }
    Ok(take(array, rows, None)?)
}

impl Run {
    /// [`Run::search`] of `queries` (`n × d`) in one FAISS call; a query whose result
    /// is short (a filter) or ties past its candidates is searched again alone.
    async fn search_batch(&self, queries: &[f32], allowed: Option<&[i64]>) -> Result<(Vec<Option<Candidates>>, usize)> {
        let spec = &self.spec;
        let keys = self.key_gate().await?;
        let mut index = spec.table.index(spec.cache_bytes, spec.disk.as_ref()).await?;
        let d = index.info().dimension;
        let nprobe = spec.nprobe_for(index.info(), allowed.map(<[i64]>::len));
        let want = spec.candidates() + 1;
        let threads = self.context.session_config().target_partitions();
        let search = self.search_once(&index, queries, want, nprobe, allowed, threads);
        let (current, pinned, (result, mut entries)) = futures::join!(index.check(), self.pinned_here(), search);
        if !pinned? {
            // Replaced since planning: every query is answered from the part's rows.
            return Ok((queries.chunks_exact(d).map(|_| None).collect(), 0));
        }
        let result = match current.and(result) {
            Err(e) if registry::is_changed(&e) => {
                registry::forget(spec.table.location(), &index);
                index = spec.table.index(spec.cache_bytes, spec.disk.as_ref()).await?;
                let result;
                (result, entries) = self.search_once(&index, queries, want, nprobe, allowed, threads).await;
                result
            }
            r => r,
        }
        .map_err(|e| index_error(spec.table.location(), e))?;
        self.counts.add_search(&result.stats);
        match entries {
            true => self.counts.by_entries.add(1),
            false => self.counts.nprobe.add(nprobe),
        }
        let codes = spec.codes(index.info(), &result);
        let ntotal = index.info().ntotal;
        let (mut out, mut alone) = (vec![], 0);
        for (q, query) in queries.chunks_exact(d).enumerate() {
            let mut found = Found::of(&result, q * want..(q + 1) * want);
            let last = (found.0.len() == want).then(|| found.0[want - 1].1);
            let dropped = found.standing(|id| self.to_part(keys.as_deref(), id));
            // Every passing entry compared, and every passing row among them: fewer than
            // k is the answer.
            let all = entries && last.is_none() && found.0.len() >= allowed.map_or(0, <[i64]>::len);
            let short = found.0.len() < spec.k && !all;
            if short || found.ties_past(spec.k, last) || (dropped > 0 && found.0.len() <= spec.candidates()) {
                out.push(self.search(query, allowed).await?);
                alone += 1;
                continue;
            }
            self.counts.dropped_hits.add(dropped);
            if found.0.len() >= spec.k {
                found.keep(spec.k, spec.candidates());
            }
            out.push(Some(found.candidates(codes, ntotal)));
        }
        Ok((out, alone))
    }
}
