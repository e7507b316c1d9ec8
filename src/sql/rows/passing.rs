//! Ids of the rows passing a filter, kept per table version (bounded in bytes): the same
//! tenant or label filter comes back query after query, and finding its rows scans the
//! key and filter columns of the whole table.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use datafusion::common::{DataFusionError, Result};

use super::{FileVersion, METADATA_BUDGET};

/// The table's version, the filter as text, and what the ids are (a key column's name,
/// or positions).
type Filter = (Arc<Vec<FileVersion>>, String, Option<String>);

fn sets() -> &'static moka::future::Cache<Filter, Arc<Vec<i64>>> {
    static CACHE: OnceLock<moka::future::Cache<Filter, Arc<Vec<i64>>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::future::Cache::builder()
            .max_capacity(METADATA_BUDGET)
            .weigher(|_, ids: &Arc<Vec<i64>>| (ids.len() * 8).min(u32::MAX as usize) as u32)
            .build()
    })
}

/// The ids passing `filter` on this `version` of the table, found by `find` when not yet
/// known; whether they were known.
pub(crate) async fn passing(
    version: Arc<Vec<FileVersion>>,
    filter: String,
    key: Option<String>,
    find: impl Future<Output = Result<Vec<i64>>>,
) -> Result<(Arc<Vec<i64>>, bool)> {
    let mut found = false;
    let ids = sets()
        .try_get_with((version, filter, key), async {
            found = true;
            find.await.map(Arc::new)
        })
        .await
        .map_err(DataFusionError::Shared)?;
    Ok((ids, !found))
}
