//! The rewrite: `Sort(fetch = k)` over a distance to a literal vector, through
//! projections, filters and aliases down to a vector table's scan, becomes the same plan
//! with an index scan ([`IvfTopKNode`]) in place of the table scan. Everything above it
//! stays, so the distance is recomputed exactly and the sort gives the final order.

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::split_conjunction_owned;
use datafusion::logical_expr::{Expr, Projection, SubqueryAlias};
use datafusion::logical_expr::{Extension, LogicalPlan, SortExpr, TableScan};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

use super::config::FaissConfig;
use super::functions::literal_vector;
use super::node::{IvfTopKNode, TopK};
use super::table::VectorTable;
use crate::{IndexInfo, Metric};

#[derive(Debug, Default)]
pub struct IvfTopKRule;

impl OptimizerRule for IvfTopKRule {
    fn name(&self) -> &str {
        "faiss_ivf_top_k"
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
        let LogicalPlan::Sort(sort) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let (Some(k), Some(order)) = (sort.fetch, sort.expr.first()) else {
            return Ok(Transformed::no(plan));
        };
        // A plan this rule cannot follow (e.g. a column it cannot resolve) keeps the exact
        // plan rather than failing the query.
        let Ok(Some(node)) = match_top_k(order, &sort.input, k, &settings) else {
            return Ok(Transformed::no(plan));
        };
        let input = Arc::unwrap_or_clone(sort.input.clone()).transform_up(|p| {
            Ok(match p {
                LogicalPlan::TableScan(_) => {
                    Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(node.clone()) }))
                }
                p => Transformed::no(p),
            })
        })?;
        let mut sort = sort.clone();
        sort.input = Arc::new(input.data);
        Ok(Transformed::yes(LogicalPlan::Sort(sort)))
    }
}

/// The index scan that can replace the scan under `input`, if the ORDER BY is a metric
/// the index answers and nothing in between changes which rows are the nearest.
fn match_top_k(order: &SortExpr, input: &LogicalPlan, k: usize, settings: &FaissConfig) -> Result<Option<IvfTopKNode>> {
    // What the plan above the scan can see: the sort's input columns, as scan expressions.
    let outputs = input.schema().columns().into_iter().map(Expr::Column);
    let exprs = std::iter::once(order.expr.clone().unalias_nested().data).chain(outputs).collect();
    let Some(Scanned { table, scan, mut exprs, filters }) = down_to_scan(input, exprs)? else { return Ok(None) };
    if filters.iter().any(|f| f.is_volatile() || has_subquery(f)) {
        return Ok(None);
    }
    let outputs = exprs.split_off(1);
    let distance = exprs.remove(0);
    let seen: Vec<Expr> = outputs.into_iter().chain(filters.iter().cloned()).collect();
    let vector_seen = seen.iter().any(|e| uses_outside(e, &distance, &table.options().vector));
    let Expr::ScalarFunction(ScalarFunction { func, args }) = distance else { return Ok(None) };
    let Some(mut query) = query_vector(&args, &table.options().vector) else { return Ok(None) };
    if query.len() != table.index_info().dimension {
        // The exact plan reports the mismatch.
        return Ok(None);
    }
    let function = func.name().to_string();
    let matches = match (table.metric(), function.as_str()) {
        (Metric::L2, "vec_distance" | "l2_distance_squared" | "array_distance") => order.asc,
        (Metric::InnerProduct, "inner_product") => !order.asc,
        (Metric::InnerProduct, "cosine_distance") if table.options().normalized => {
            let norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
            query.iter_mut().for_each(|v| *v /= norm);
            order.asc && norm > 0.0
        }
        _ => false,
    };
    // Rows with a NULL vector have a NULL distance, which the index cannot return first.
    let vector_nullable = table.schema().field(table.vector_index()).is_nullable();
    if !matches || (order.nulls_first && vector_nullable) {
        return Ok(None);
    }
    let projection = scan.projection.clone().unwrap_or_else(|| (0..table.schema().fields().len()).collect());
    let spec = TopK {
        table_name: scan.table_name.clone(),
        projection,
        filters,
        query,
        k,
        function,
        nprobe: settings.nprobe.max(1),
        refine: if exact_codes(table.index_info()) { 1 } else { settings.refine_factor.max(1) },
        // An IVF-Flat code is the row's vector: when the query only ranks by it, the
        // index's copy serves, and the table's vector column is not read.
        vectors_from_index: exact_codes(table.index_info()) && !table.options().normalized && !vector_seen,
        cache_bytes: settings.cache_bytes(),
        disk: settings.disk(),
        table,
    };
    Ok(Some(IvfTopKNode { spec, schema: scan.projected_schema.clone() }))
}

/// A vector table's scan reached from `plan` through projections, aliases and filters.
pub(super) struct Scanned<'a> {
    pub table: Arc<VectorTable>,
    pub scan: &'a TableScan,
    /// The expressions given (over `plan`'s output) in the scan's columns, unqualified.
    pub exprs: Vec<Expr>,
    /// The filters met on the way and the scan's own: split, unqualified, distinct.
    pub filters: Vec<Expr>,
}

pub(super) fn down_to_scan(plan: &LogicalPlan, mut exprs: Vec<Expr>) -> Result<Option<Scanned<'_>>> {
    let mut filters: Vec<Expr> = vec![];
    let mut plan = plan;
    let scan = loop {
        match plan {
            LogicalPlan::Projection(p) => {
                exprs = exprs.into_iter().map(|e| through_projection(e, p)).collect::<Result<_>>()?;
                filters = filters.into_iter().map(|f| through_projection(f, p)).collect::<Result<_>>()?;
                plan = &p.input;
            }
            LogicalPlan::Filter(f) => {
                filters.push(f.predicate.clone());
                plan = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => {
                exprs = exprs.into_iter().map(|e| through_alias(e, a)).collect::<Result<_>>()?;
                filters = filters.into_iter().map(|f| through_alias(f, a)).collect::<Result<_>>()?;
                plan = &a.input;
            }
            LogicalPlan::TableScan(scan) => break scan,
            _ => return Ok(None),
        }
    };
    let Some(table) = vector_table(scan) else { return Ok(None) };
    filters.extend(scan.filters.iter().cloned());
    // The same filter twice (above the scan and in it) is told by its text: a function
    // decoded twice across FFI is two values that datafusion-ffi compares by address, and
    // in one session a name is one function.
    let (mut unique, mut seen) = (vec![], HashSet::new());
    for f in filters.into_iter().flat_map(split_conjunction_owned) {
        let f = unqualify(f)?;
        if seen.insert(f.to_string()) {
            unique.push(f);
        }
    }
    let exprs = exprs.into_iter().map(unqualify).collect::<Result<_>>()?;
    Ok(Some(Scanned { table, scan, exprs, filters: unique }))
}

/// Whether the index stores the vectors themselves (IVF-Flat, no transform first), so its
/// ranking is already the exact one and re-ranking more candidates changes nothing.
pub(super) fn exact_codes(info: &IndexInfo) -> bool {
    info.description.split(',').next().is_some_and(|first| first.starts_with("IVF"))
        && info.code_size == 4 * info.dimension
}

fn vector_table(scan: &TableScan) -> Option<Arc<VectorTable>> {
    let provider: Arc<dyn Any + Send + Sync> = source_as_provider(&scan.source).ok()?;
    provider.downcast::<VectorTable>().ok()
}

/// The query vector of `f(vector_column, literal)` (either order).
fn query_vector(args: &[Expr], column: &str) -> Option<Vec<f32>> {
    let is_column = |e: &Expr| match e {
        Expr::Column(c) => c.name == column,
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Column(c) if c.name == column),
        _ => false,
    };
    match args {
        // A NaN or infinite component makes every distance NaN, which DataFusion's
        // functions return and sort like any value; FAISS cannot rank by it. Such a
        // query keeps the exact plan, so both plans give the same rows.
        [a, Expr::Literal(v, _)] | [Expr::Literal(v, _), a] if is_column(a) => {
            literal_vector(v).filter(|q| q.iter().all(|x| x.is_finite()))
        }
        _ => None,
    }
}

pub(super) fn through_projection(e: Expr, p: &Projection) -> Result<Expr> {
    e.transform_up(|x| match x {
        Expr::Column(c) => {
            let i = p.schema.index_of_column(&c)?;
            Ok(Transformed::yes(p.expr[i].clone().unalias()))
        }
        x => Ok(Transformed::no(x)),
    })
    .map(|t| t.data)
}

fn through_alias(e: Expr, a: &SubqueryAlias) -> Result<Expr> {
    e.transform_up(|x| match x {
        Expr::Column(c) => {
            let i = a.schema.index_of_column(&c)?;
            Ok(Transformed::yes(Expr::Column(Column::from(a.input.schema().qualified_field(i)))))
        }
        x => Ok(Transformed::no(x)),
    })
    .map(|t| t.data)
}

/// Columns by bare name: the index scan evaluates filters against the base table.
fn unqualify(e: Expr) -> Result<Expr> {
    e.transform_up(|x| match x {
        Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
        x => Ok(Transformed::no(x)),
    })
    .map(|t| t.data)
}

/// Whether `e` reads `column` other than through `distance`.
fn uses_outside(e: &Expr, distance: &Expr, column: &str) -> bool {
    let rest = e
        .clone()
        .transform_down(|x| match &x == distance {
            true => Ok(Transformed::new(
                Expr::Literal(datafusion::common::ScalarValue::Null, None),
                true,
                TreeNodeRecursion::Jump,
            )),
            false => Ok(Transformed::no(x)),
        })
        .map(|t| t.data);
    rest.map_or(true, |rest| rest.column_refs().iter().any(|c| c.name == column))
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|x| {
        Ok(matches!(x, Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) | Expr::SetComparison(_)))
    })
    .unwrap_or(true)
}
