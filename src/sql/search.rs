//! `faiss_search('table', '[...]', k)`: the `k` nearest rows of a vector table to a
//! literal query, with their `_distance`, for tools that cannot write `ORDER BY ...
//! LIMIT`. It is that query, planned by DataFusion: the top-k rewrite makes it an index
//! scan, and with `faiss.enabled = false` it is the exact plan, so both answer the same.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_datafusion_err, plan_err, Column, Result, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, TableType};
use datafusion::physical_plan::ExecutionPlan;
use futures::FutureExt;

use datafusion::logical_expr::ScalarUDF;

use super::functions::{Distance, DistanceUdf};
use super::table::VectorTable;
use crate::Metric;

/// Name of the distance column `faiss_search` adds to the table's columns.
pub const DISTANCE_COLUMN: &str = "_distance";

/// The `faiss_search` table function.
#[derive(Debug)]
pub struct FaissSearch;

impl TableFunctionImpl for FaissSearch {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let usage = "faiss_search('table', '[query vector]', k)";
        let [name, query, k] = args.exprs() else {
            return plan_err!("{usage}: expected 3 arguments, got {}", args.exprs().len());
        };
        let name = match name {
            Expr::Literal(
                ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
                _,
            ) => s,
            other => return plan_err!("{usage}: the table must be a string literal, got {other}"),
        };
        if !matches!(query, Expr::Literal(..)) {
            return plan_err!("{usage}: the query vector must be a literal, got {query}");
        }
        let k = match k {
            Expr::Literal(v, _) if v.data_type().is_integer() => {
                v.cast_to(&datafusion::arrow::datatypes::DataType::Int64)?
            }
            other => return plan_err!("{usage}: k must be an integer literal, got {other}"),
        };
        let k = match k {
            ScalarValue::Int64(Some(k)) if k >= 1 => k as usize,
            other => return plan_err!("{usage}: k must be at least 1, got {other}"),
        };
        let state = args
            .session()
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| plan_datafusion_err!("{usage}: needs a SessionState"))?;
        let reference = TableReference::from(name.as_str());
        // Catalogs in memory answer at once; the call itself cannot wait.
        let provider = state
            .schema_for_ref(reference.clone())?
            .table(reference.table())
            .now_or_never()
            .ok_or_else(|| plan_datafusion_err!("faiss_search: the catalog of '{name}' cannot answer at planning"))??
            .ok_or_else(|| plan_datafusion_err!("faiss_search: no table '{name}'"))?;
        let Some(table) = (provider.as_ref() as &dyn Any).downcast_ref::<VectorTable>() else {
            return plan_err!(
                "faiss_search: '{name}' is not a vector table (CREATE EXTERNAL TABLE ... STORED AS FAISS)"
            );
        };
        let (distance, ascending) = match table.metric() {
            Metric::L2 => (Distance::L2, true),
            Metric::InnerProduct => (Distance::InnerProduct, false),
        };
        let column = |name: &str| Expr::Column(Column::new(Some(reference.clone()), name));
        let schema = table.schema();
        let vector = column(schema.field(table.vector_index()).name());
        let mut columns: Vec<Expr> = schema.fields().iter().map(|f| column(f.name())).collect();
        columns.push(
            ScalarUDF::new_from_impl(DistanceUdf::new(distance))
                .call(vec![vector, query.clone()])
                .alias(DISTANCE_COLUMN),
        );
        // Rows tied at the k-th distance: the key decides, as `ORDER BY d, id` would.
        let mut order = vec![Expr::Column(Column::new_unqualified(DISTANCE_COLUMN)).sort(ascending, false)];
        if let Some(key) = table.key_index() {
            order.push(Expr::Column(Column::new_unqualified(schema.field(key).name())).sort(true, false));
        }
        let plan = LogicalPlanBuilder::scan(reference, provider_as_source(provider.clone()), None)?
            .project(columns)?
            .sort_with_limit(order, Some(k))?
            .build()?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok(Arc::new(SearchTable { plan, schema }))
    }
}

/// The result of one `faiss_search` call: its plan, run when scanned.
#[derive(Debug)]
struct SearchTable {
    plan: LogicalPlan,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for SearchTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut plan = LogicalPlanBuilder::from(self.plan.clone());
        if let Some(columns) = projection {
            plan = plan.select(columns.iter().copied())?;
        }
        state.create_physical_plan(&plan.build()?).await
    }
}
