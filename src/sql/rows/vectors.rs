//! The vectors of files no index covers, decoded once per table version and kept
//! (bounded in bytes), so that ranking them exactly costs a pass over floats, not a
//! Parquet decode, on every query.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float32Type;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;

use super::{FileVersion, Listed, Located, TableIo, METADATA_BUDGET};

/// Every row's vector, `d` floats each, in position order; `None` when a row's vector is
/// NULL, non-finite or of another length (the exact plan's own scan ranks those).
type Vectors = Option<Arc<Vec<f32>>>;

fn cache() -> &'static moka::future::Cache<(Vec<FileVersion>, String), Vectors> {
    static CACHE: OnceLock<moka::future::Cache<(Vec<FileVersion>, String), Vectors>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::future::Cache::builder()
            .max_capacity(METADATA_BUDGET)
            .weigher(|_, v: &Vectors| v.as_ref().map_or(0, |v| (v.len() * 4).min(u32::MAX as usize) as u32))
            .build()
    })
}

/// The vectors of `table` (this version) in column `vector` (`d` wide), read through
/// `vector_only` (a listing of the table with just that column) when not yet known.
pub(crate) async fn vectors(
    table: &Located,
    vector_only: Listed,
    vector: &str,
    d: usize,
    context: &Arc<TaskContext>,
    io: &Arc<TableIo>,
) -> Result<Vectors> {
    cache()
        .try_get_with((table.version(), vector.to_string()), async {
            let batches = table.read_all(Some(&vector_only), context, io).await?;
            let mut out = Vec::with_capacity(table.rows() as usize * d);
            for batch in &batches {
                let column = batch.column(0);
                let Some(list) = column.as_fixed_size_list_opt() else { return Ok(None) };
                if list.value_length() as usize != d || list.null_count() > 0 || list.values().null_count() > 0 {
                    return Ok(None);
                }
                let Some(values) = list.values().as_primitive_opt::<Float32Type>() else { return Ok(None) };
                let values = &values.values()[list.offset() * d..(list.offset() + list.len()) * d];
                if values.iter().any(|v| !v.is_finite()) {
                    return Ok(None);
                }
                out.extend_from_slice(values);
            }
            if out.len() as u64 != table.rows() * d as u64 {
                return Err(DataFusionError::Internal(format!(
                    "vector column '{vector}': read {} rows of the table's {}",
                    out.len() / d.max(1),
                    table.rows()
                )));
            }
            Ok(Some(Arc::new(out)))
        })
        .await
        .map_err(DataFusionError::Shared)
}
