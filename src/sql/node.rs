//! The logical index-scan node the rewrite puts where the vector table's scan was.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::common::{DFSchemaRef, Result, TableReference};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

use super::table::VectorTable;

/// What one index scan does: find the `k × refine` nearest candidates of `query` among
/// the rows passing `filters`, and emit those rows of the base table (`projection`).
#[derive(Debug, Clone)]
pub struct TopK {
    pub table: Arc<VectorTable>,
    pub table_name: TableReference,
    /// Base-table columns emitted (the scan's projection).
    pub projection: Vec<usize>,
    /// Predicates over the base table's (unqualified) columns.
    pub filters: Vec<Expr>,
    /// The query vector as the index searches it (normalized for cosine).
    pub query: Vec<f32>,
    pub k: usize,
    /// The distance function of the ORDER BY.
    pub function: String,
    pub nprobe: usize,
    pub refine: usize,
    /// The vector column is emitted from the index's codes (IVF-Flat, where a code is
    /// the vector), not read from the table: nothing above uses it but the distance.
    pub vectors_from_index: bool,
    pub cache_bytes: u64,
    /// The disk tier under the memory caches, if the settings name one.
    pub disk: Option<crate::DiskCache>,
}

impl TopK {
    pub fn candidates(&self) -> usize {
        self.k.saturating_mul(self.refine.max(1))
    }
}

impl fmt::Display for TopK {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "table={} index={} metric={:?} function={} k={} nprobe={} refine={}",
            self.table_name,
            self.table.location().as_str(),
            self.table.metric(),
            self.function,
            self.k,
            self.nprobe,
            self.refine
        )?;
        if !self.filters.is_empty() {
            let filters: Vec<String> = self.filters.iter().map(|e| e.to_string()).collect();
            write!(f, " filters=[{}]", filters.join(", "))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct IvfTopKNode {
    pub spec: TopK,
    /// The replaced scan's schema, so every node above keeps resolving its columns.
    pub schema: DFSchemaRef,
}

impl IvfTopKNode {
    fn identity(&self) -> (String, Vec<u32>) {
        (self.spec.to_string(), self.spec.query.iter().map(|v| v.to_bits()).collect())
    }
}

impl PartialEq for IvfTopKNode {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity() && self.schema == other.schema
    }
}

impl Eq for IvfTopKNode {}

impl Hash for IvfTopKNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

impl PartialOrd for IvfTopKNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self == other).then_some(Ordering::Equal)
    }
}

impl UserDefinedLogicalNodeCore for IvfTopKNode {
    fn name(&self) -> &str {
        "IvfTopK"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "IvfTopK: {}", self.spec)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, _inputs: Vec<LogicalPlan>) -> Result<Self> {
        Ok(self.clone())
    }
}
