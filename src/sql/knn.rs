//! The batch rewrite: the k nearest rows of a vector table for every row of a query
//! table, written as a window over a cross join:
//!
//! ```sql
//! SELECT * FROM (SELECT q.qid, d.id, row_number() OVER (PARTITION BY q.qid
//!     ORDER BY vec_distance(d.embedding, q.vec)) AS r FROM queries q CROSS JOIN docs d)
//! WHERE r <= 10
//! ```
//!
//! The cross join becomes [`IvfKnnNode`]: for each query row, only the rows of its
//! candidates (its k nearest and every row tied with the k-th), found by batched index
//! searches. The window and the filter above stay and rank those rows as they would
//! rank the whole cross product: a row ranked within k of its partition is within k of
//! its own query's rows, so it is a candidate.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchemaRef, Result, ScalarValue};
use datafusion::logical_expr::expr::{ScalarFunction, WindowFunction};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Extension, Filter, JoinType, LogicalPlan, Operator, UserDefinedLogicalNodeCore, Window,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::config::FaissConfig;
use super::node::TopK;
use super::rule::{down_to_scan, exact_codes, through_projection, Scanned};
use super::table::parquet_files;
use crate::Metric;

/// Query rows searched by one FAISS call.
pub(crate) const BATCH: usize = 1024;

#[derive(Debug, Default)]
pub struct IvfKnnRule;

impl OptimizerRule for IvfKnnRule {
    fn name(&self) -> &str {
        "faiss_ivf_knn"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let settings = FaissConfig::from_options(&config.options());
        if !settings.enabled {
            return Ok(Transformed::no(plan));
        }
        let LogicalPlan::Filter(filter) = &plan else { return Ok(Transformed::no(plan)) };
        // The filter on the rank, through the projections DataFusion may put in between.
        let mut predicate = filter.predicate.clone();
        let mut below = filter.input.as_ref();
        while let LogicalPlan::Projection(p) = below {
            predicate = through_projection(predicate, p)?;
            below = &p.input;
        }
        let LogicalPlan::Window(window) = below else { return Ok(Transformed::no(plan)) };
        // A shape this rule cannot follow keeps the exact plan.
        let Ok(Some(node)) = match_knn(&predicate, window, &settings) else { return Ok(Transformed::no(plan)) };
        let input = replace_window_input(&filter.input, node)?;
        Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(filter.predicate.clone(), Arc::new(input))?)))
    }
}

/// `plan` (projections over the window) with the window's cross join replaced by `node`.
fn replace_window_input(plan: &LogicalPlan, node: IvfKnnNode) -> Result<LogicalPlan> {
    let input = match plan {
        LogicalPlan::Projection(p) => replace_window_input(&p.input, node)?,
        LogicalPlan::Window(w) => replace_join(&w.input, node)?,
        _ => return datafusion::common::internal_err!("IvfKnn: expected the window below the filter"),
    };
    plan.with_new_exprs(plan.expressions(), vec![input])
}

/// `plan` (projections over the cross join) with the join replaced by `node`.
fn replace_join(plan: &LogicalPlan, node: IvfKnnNode) -> Result<LogicalPlan> {
    match plan {
        LogicalPlan::Projection(p) => plan.with_new_exprs(plan.expressions(), vec![replace_join(&p.input, node)?]),
        _ => Ok(LogicalPlan::Extension(Extension { node: Arc::new(node) })),
    }
}

/// The largest rank `predicate` lets through for `rank`, if it bounds it.
fn bound(predicate: &Expr, rank: &Column) -> Option<usize> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else { return None };
    let value = |e: &Expr| match e {
        Expr::Literal(v, _) => v.cast_to(&datafusion::arrow::datatypes::DataType::Int64).ok().and_then(|v| match v {
            ScalarValue::Int64(Some(v)) => Some(v),
            _ => None,
        }),
        _ => None,
    };
    let is_rank = |e: &Expr| matches!(e, Expr::Column(c) if c == rank);
    let limit = match (is_rank(left), is_rank(right), op) {
        (true, _, Operator::LtEq) | (_, true, Operator::GtEq) => value(if is_rank(left) { right } else { left })?,
        (true, _, Operator::Lt) | (_, true, Operator::Gt) => value(if is_rank(left) { right } else { left })? - 1,
        _ => return None,
    };
    usize::try_from(limit).ok().filter(|&k| k >= 1)
}

fn match_knn(predicate: &Expr, window: &Window, settings: &FaissConfig) -> Result<Option<IvfKnnNode>> {
    let [Expr::WindowFunction(function)] = window.window_expr.as_slice() else { return Ok(None) };
    let WindowFunction { fun, params } = function.as_ref();
    if !matches!(fun.name(), "row_number" | "rank") || params.filter.is_some() || params.distinct {
        return Ok(None);
    }
    let rank = Column::from(window.schema.qualified_field(window.input.schema().fields().len()));
    let Some(k) = split_conjunction(predicate).into_iter().filter_map(|p| bound(p, &rank)).min() else {
        return Ok(None);
    };
    let Some(order) = params.order_by.first() else { return Ok(None) };
    let mut distance = order.expr.clone();
    let mut partition = params.partition_by.clone();
    let mut plan = window.input.as_ref();
    let join = loop {
        match plan {
            LogicalPlan::Projection(p) => {
                distance = through_projection(distance, p)?;
                partition = partition.into_iter().map(|e| through_projection(e, p)).collect::<Result<_>>()?;
                plan = &p.input;
            }
            LogicalPlan::Join(j) if j.join_type == JoinType::Inner && j.on.is_empty() && j.filter.is_none() => break j,
            _ => return Ok(None),
        }
    };
    let Expr::ScalarFunction(ScalarFunction { func, args }) = distance.unalias_nested().data else { return Ok(None) };
    // Either side may be a vector table (the queries may come from one): the vector side
    // is the one whose vector column the distance takes, with the query from the other.
    let mut chosen = None;
    for (vector_left, side, queries) in [(false, &join.right, &join.left), (true, &join.left, &join.right)] {
        let Some(found) = vector_side(side)? else { continue };
        let on_queries = |e: &Expr| e.column_refs().iter().all(|c| queries.schema().has_column(c));
        let is_vector = |e: &Expr| match e {
            Expr::Column(c) => side
                .schema()
                .maybe_index_of_column(c)
                .is_some_and(|i| found.projection[i] == found.table.vector_index() && !queries.schema().has_column(c)),
            _ => false,
        };
        let query = match args.as_slice() {
            [a, q] | [q, a] if is_vector(a) && on_queries(q) && !q.is_volatile() => q.clone(),
            _ => continue,
        };
        if partition.iter().all(on_queries) {
            chosen = Some((vector_left, found, queries, query));
            break;
        }
    }
    let Some((vector_left, Side { table, table_name, projection, filters }, queries, query)) = chosen else {
        return Ok(None);
    };
    let function = func.name().to_string();
    let matches = match (table.metric(), function.as_str()) {
        (Metric::L2, "vec_distance" | "l2_distance_squared" | "array_distance") => order.asc,
        (Metric::InnerProduct, "inner_product") => !order.asc,
        _ => false,
    };
    let vector_nullable = table.schema().field(table.vector_index()).is_nullable();
    if !matches || (order.nulls_first && vector_nullable) || !parquet_files(table.base().as_ref()) {
        return Ok(None);
    }
    let spec = TopK {
        table_name,
        projection,
        filters,
        query: vec![],
        k,
        function,
        nprobe: settings.nprobe.max(1),
        refine: if exact_codes(table.index_info()) { 1 } else { settings.refine_factor.max(1) },
        // The index's copy is the table's vector (IVF-Flat), as for the single search.
        vectors_from_index: exact_codes(table.index_info()) && !table.options().normalized,
        cache_bytes: settings.cache_bytes(),
        disk: settings.disk(),
        table,
    };
    let input = queries.as_ref().clone();
    Ok(Some(IvfKnnNode { spec, input, query, vector_left, schema: join.schema.clone() }))
}

/// One side of the join when it is a vector table's scan (through aliases, projections
/// of columns and filters): its table, the base column of each output column, filters.
struct Side {
    table: Arc<super::table::VectorTable>,
    table_name: datafusion::common::TableReference,
    projection: Vec<usize>,
    filters: Vec<Expr>,
}

fn vector_side(plan: &LogicalPlan) -> Result<Option<Side>> {
    let outputs = plan.schema().columns().into_iter().map(Expr::Column).collect();
    let Some(Scanned { table, scan, exprs, filters }) = down_to_scan(plan, outputs)? else { return Ok(None) };
    let schema = table.schema();
    let column = |e: &Expr| match e {
        Expr::Column(c) => schema.index_of(&c.name).ok(),
        _ => None,
    };
    let Some(projection) = exprs.iter().map(column).collect::<Option<Vec<usize>>>() else { return Ok(None) };
    let on_table = |f: &Expr| f.column_refs().iter().all(|c| schema.index_of(&c.name).is_ok());
    if filters.iter().any(|f| f.is_volatile() || !on_table(f)) {
        return Ok(None);
    }
    Ok(Some(Side { table, table_name: scan.table_name.clone(), projection, filters }))
}

/// Every row of `input` (the queries) with the rows of its candidates in the vector
/// table: the cross join's rows that can rank within `k`, in its schema.
#[derive(Debug, Clone)]
pub struct IvfKnnNode {
    /// The search and lookup, as for one query (`query` empty: it comes per row).
    pub spec: TopK,
    pub input: LogicalPlan,
    /// The query vector, over the input's columns.
    pub query: Expr,
    /// The vector table was the join's left side (its columns come first).
    pub vector_left: bool,
    pub schema: DFSchemaRef,
}

impl IvfKnnNode {
    fn identity(&self) -> String {
        format!("{} {} {}", self, self.query, self.vector_left)
    }
}

impl fmt::Display for IvfKnnNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} query={} batch={BATCH}", self.spec, self.query)
    }
}

impl PartialEq for IvfKnnNode {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity() && self.input == other.input && self.schema == other.schema
    }
}

impl Eq for IvfKnnNode {}

impl Hash for IvfKnnNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialOrd for IvfKnnNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for IvfKnnNode {
    fn name(&self) -> &str {
        "IvfKnn"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![self.query.clone()]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IvfKnn: {self}")
    }

    fn with_exprs_and_inputs(&self, mut exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let (Some(query), Some(input)) = (exprs.pop(), inputs.pop()) else {
            return datafusion::common::internal_err!("IvfKnn takes one expression and one input");
        };
        Ok(IvfKnnNode { query, input, ..self.clone() })
    }
}
