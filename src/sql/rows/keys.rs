//! Key → row position, for indexes whose ids are a key column's values: built once per
//! table version from the key column alone, kept (bounded in bytes) across queries.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;

use super::{FileVersion, Listed, Located, TableIo, METADATA_BUDGET};

/// Every non-NULL key of the table with its position, sorted by key (then position).
#[derive(Debug)]
pub(crate) struct KeyMap {
    keys: Vec<i64>,
    positions: Vec<u64>,
}

impl KeyMap {
    /// Positions of the rows whose key is `key` (several if the key repeats).
    pub fn positions(&self, key: i64) -> &[u64] {
        let from = self.keys.partition_point(|&k| k < key);
        let to = from + self.keys[from..].partition_point(|&k| k == key);
        &self.positions[from..to]
    }

    fn weight(&self) -> u32 {
        (self.keys.len() * 16).min(u32::MAX as usize) as u32
    }
}

type Versions = (Vec<FileVersion>, String);

fn maps() -> &'static moka::future::Cache<Versions, Arc<KeyMap>> {
    static CACHE: OnceLock<moka::future::Cache<Versions, Arc<KeyMap>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::future::Cache::builder()
            .max_capacity(METADATA_BUDGET)
            .weigher(|_, map: &Arc<KeyMap>| map.weight())
            .build()
    })
}

/// The key map of `table` (this version) for column `key`, read through `key_only` (a
/// listing of the table with just that column) when not yet known.
pub(crate) async fn key_map(
    table: &Located,
    key_only: impl std::future::Future<Output = Result<Listed>>,
    key: &str,
    context: &Arc<TaskContext>,
    io: &Arc<TableIo>,
) -> Result<Arc<KeyMap>> {
    maps()
        .try_get_with((table.version(), key.to_string()), async {
            let batches = table.read_all(Some(&key_only.await?), context, io).await?;
            let mut pairs: Vec<(i64, u64)> = Vec::with_capacity(table.rows() as usize);
            let mut position = 0u64;
            for batch in &batches {
                let keys = cast(batch.column(0), &DataType::Int64)?;
                for k in keys.as_primitive::<Int64Type>() {
                    if let Some(k) = k {
                        pairs.push((k, position));
                    }
                    position += 1;
                }
            }
            if position != table.rows() {
                return Err(DataFusionError::Internal(format!(
                    "key column '{key}': read {position} rows of the table's {}",
                    table.rows()
                )));
            }
            pairs.sort_unstable();
            let (keys, positions) = pairs.into_iter().unzip();
            Ok(Arc::new(KeyMap { keys, positions }))
        })
        .await
        .map_err(DataFusionError::Shared)
}
