//! The DataFusion layer: SQL functions (and, built on them, the vector table and the
//! top-k rewrite).

pub mod functions;

use datafusion::prelude::SessionContext;

/// Registers the vector functions on `ctx`, keeping its catalogs and other functions.
/// `inner_product` and `cosine_distance` replace DataFusion's functions of those names
/// (same results, Float32 vectors read without conversion to Float64 lists).
pub fn register_all(ctx: &SessionContext) {
    for f in functions::all() {
        ctx.register_udf(f.as_ref().clone());
    }
}
