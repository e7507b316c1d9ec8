//! The parts a vector table is searched as, decided when a query is planned.
//!
//! A vector table is a set of index objects (see [`super::manifest`]), each covering some
//! data file versions. Every data file the store lists now is either covered (an index's
//! manifest records this version of it) and searched through that index, or not (new,
//! rewritten, or its index gone) and read whole and ranked exactly. An index's hits in
//! files that are no longer as it recorded them are dropped ([`Ids`]) and its search
//! widened until `k` hits stand. A single index and a folder of per-file indexes are the
//! same thing here: one index covering many files, or many covering one each.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::Result;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::context::SessionState;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectMeta;

use super::manifest::{self, IndexObject, IndexSet, ObjectVersion};
use super::registry;
use super::rows::FileVersion;
use super::table::{index_error, VectorTable};

/// One partition of an index scan: an index searched over the files it covers, or the
/// files no index covers, read whole (`exact`).
#[derive(Debug, Clone)]
pub struct Part {
    /// Its base table holds the part's files; its index is the part's.
    pub table: Arc<VectorTable>,
    pub exact: bool,
    pub ids: Ids,
    /// The index object version the manifest describes: a search finding another one
    /// there (replaced since planning) ranks the part's files exactly instead.
    pub pinned: Option<ObjectVersion>,
    /// For EXPLAIN: data files read, rows the index holds of them (0 when unknown), and
    /// files the index's manifest names that are no longer as it recorded them.
    pub files: usize,
    pub rows: u64,
    pub stale: usize,
    /// The part's files as listed at planning: what the query's filter is found on (and
    /// kept for). `None` where not known (a part sent to another process): listed again.
    pub(crate) versions: Option<Arc<Vec<FileVersion>>>,
}

/// How an index's ids name the rows of its part.
#[derive(Debug, Clone)]
pub enum Ids {
    /// No manifest: the ids are taken as the table's own and checked where they can be:
    /// row positions while the table has as many rows as the index vectors, keys while
    /// every candidate key is in the table.
    Trusted,
    /// Row positions among the manifest's files; the spans place the covered files' rows
    /// among the part's (both in path order). A hit in another file is dropped.
    Positions(Arc<Vec<Span>>),
    /// Keys. `complete`: every file of the manifest is covered, so every hit's key is in
    /// the part; else a hit whose key is not in the part's files is dropped.
    Keys { complete: bool },
}

/// The rows of one covered file: ids `index..index + rows` are positions `part..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub index: u64,
    pub rows: u64,
    pub part: u64,
}

impl Ids {
    /// Whether hits' keys must be looked up before ranking: some may be gone.
    pub fn checks_keys(&self) -> bool {
        matches!(self, Ids::Keys { complete: false })
    }

    /// The part's position for the index's id `id`, for positions; else `id`. `None`: a
    /// position in a file the part does not cover.
    pub fn to_part(&self, id: i64) -> Option<i64> {
        let Ids::Positions(spans) = self else { return Some(id) };
        let id = u64::try_from(id).ok()?;
        let at = spans.partition_point(|s| s.index <= id).checked_sub(1)?;
        let span = spans[at];
        (id < span.index + span.rows).then(|| (span.part + id - span.index) as i64)
    }

    /// The index's id of the part's `id` (the inverse of [`to_part`](Self::to_part)).
    pub fn to_index(&self, id: i64) -> i64 {
        let Ids::Positions(spans) = self else { return id };
        let p = id.max(0) as u64;
        match spans.partition_point(|s| s.part <= p).checked_sub(1) {
            Some(at) => (spans[at].index + p - spans[at].part) as i64,
            None => id,
        }
    }
}

/// What the planner decided for one index object.
struct Planned {
    index: IndexObject,
    /// Positions in the listing of the files it covers.
    files: Vec<usize>,
    ids: Ids,
    pinned: Option<ObjectVersion>,
    rows: u64,
    stale: usize,
}

/// The parts `table` is searched as now.
pub(crate) async fn parts(
    table: &Arc<VectorTable>,
    state: &SessionState,
    cache_bytes: u64,
    disk: Option<&crate::DiskCache>,
) -> Result<Vec<Part>> {
    let whole = |exact: bool| Part {
        table: table.clone(),
        exact,
        ids: Ids::Trusted,
        pinned: None,
        files: 0,
        rows: table.index_info().ntotal,
        stale: 0,
        versions: None,
    };
    let Some(listing) = (table.base().as_ref() as &dyn std::any::Any).downcast_ref::<ListingTable>() else {
        // Not a table of files: nothing to compare versions of.
        return Ok(vec![whole(false)]);
    };
    let runtime = state.runtime_env();
    let set = IndexSet::new(&table.options().index, runtime)?;
    // Listed from the store, not through DataFusion's listing cache (which keeps a file's
    // size and date from its first listing): a rewritten file must be seen as rewritten.
    let (files, indexes) = futures::join!(data_files(listing, state), set.list(runtime));
    let (files, indexes) = (files?, indexes?);
    let versions = |of: &mut dyn Iterator<Item = usize>| -> Result<Option<Arc<Vec<FileVersion>>>> {
        let Some(url) = listing.table_paths().first() else { return Ok(None) };
        let store = runtime.object_store(url.object_store())?;
        Ok(Some(Arc::new(of.map(|i| FileVersion::of(&store, &files[i].1)).collect())))
    };
    let by_path: HashMap<&str, usize> = files.iter().enumerate().map(|(i, (_, m))| (m.location.as_ref(), i)).collect();
    let mut taken = vec![false; files.len()];
    let mut planned: Vec<Planned> = vec![];
    // Files named by manifests of indexes that cover none of the current ones.
    let mut unplanned_stale = 0;
    for (n, index) in indexes.into_iter().enumerate() {
        let plan = match set.describing(&index).await? {
            Some(manifest) => {
                let (mut covered, mut spans, mut part, mut stale, mut rows) = (vec![], vec![], 0, 0, 0);
                for entry in &manifest.files {
                    match by_path.get(entry.path.as_str()).filter(|&&i| !taken[i] && entry.matches(&files[i].1)) {
                        Some(&i) => {
                            taken[i] = true;
                            covered.push(i);
                            spans.push(Span { index: entry.first, rows: entry.rows, part });
                            part += entry.rows;
                            rows += entry.rows;
                        }
                        None => stale += 1,
                    }
                }
                let ids = match table.key_index() {
                    Some(_) => Ids::Keys { complete: stale == 0 },
                    None => Ids::Positions(Arc::new(spans)),
                };
                let pinned = manifest.index.clone();
                Planned { index, files: covered, ids, pinned, rows, stale }
            }
            None if set.is_folder() => {
                // A per-file index without manifest (pip-written): found by name, and
                // taken as the file's while written after it.
                let Some(i) = files.iter().position(|(_, meta)| {
                    manifest::shard_path(set.prefix(), &relative(listing, meta)) == index.meta.location
                }) else {
                    continue;
                };
                if taken[i] || index.meta.last_modified < files[i].1.last_modified {
                    continue;
                }
                taken[i] = true;
                Planned { index, files: vec![i], ids: Ids::Trusted, pinned: None, rows: 0, stale: 0 }
            }
            // The named index without manifest is taken as the whole table's.
            None if n == 0 => {
                taken.iter_mut().for_each(|t| *t = true);
                let files = (0..files.len()).collect();
                Planned { index, files, ids: Ids::Trusted, pinned: None, rows: 0, stale: 0 }
            }
            // A delta without manifest was never (or is not yet) published.
            None => continue,
        };
        match plan.files.is_empty() {
            true => unplanned_stale += plan.stale,
            false => planned.push(plan),
        }
    }
    let uncovered: Vec<usize> = (0..files.len()).filter(|&i| !taken[i]).collect();
    // One index over every file as it recorded them: the table itself.
    if let [only] = planned.as_slice() {
        if uncovered.is_empty() && only.stale == 0 && !set.is_folder() {
            let part = whole(false);
            let rows = if only.rows > 0 { only.rows } else { part.rows };
            let versions = versions(&mut (0..files.len()))?;
            return Ok(vec![Part {
                ids: only.ids.clone(),
                pinned: only.pinned.clone(),
                files: files.len(),
                rows,
                stale: only.stale,
                versions,
                ..part
            }]);
        }
    }
    if planned.is_empty() && uncovered.is_empty() {
        return Ok(vec![whole(true)]);
    }
    if !listing.options().table_partition_cols.is_empty() {
        // Partition values come from the table's folders: its parts cannot be listed
        // apart. Read whole and ranked exactly until the index covers the table again.
        return Ok(vec![Part { files: files.len(), rows: 0, ..whole(true) }]);
    }
    let config = |of: &[usize]| -> Result<Arc<dyn TableProvider>> {
        let urls = of.iter().map(|&i| ListingTableUrl::parse(&files[i].0)).collect::<Result<Vec<_>>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(listing.options().clone())
            .with_schema(listing.schema());
        Ok(Arc::new(ListingTable::try_new(config)?))
    };
    let mut parts = vec![];
    for plan in planned {
        let location = plan.index.location;
        let opened = registry::open(&location, cache_bytes, disk).await.map_err(|e| index_error(&location, e))?;
        let part = table.part(config(&plan.files)?, location, opened.info().clone())?;
        let rows = if plan.rows > 0 { plan.rows } else { opened.info().ntotal };
        parts.push(Part {
            table: Arc::new(part),
            exact: false,
            ids: plan.ids,
            pinned: plan.pinned,
            files: plan.files.len(),
            rows,
            stale: plan.stale,
            versions: versions(&mut plan.files.iter().copied())?,
        });
    }
    if !uncovered.is_empty() {
        let rest = table.part(config(&uncovered)?, table.location().clone(), table.index_info().clone())?;
        parts.push(Part {
            table: Arc::new(rest),
            exact: true,
            ids: Ids::Trusted,
            pinned: None,
            files: uncovered.len(),
            rows: 0,
            stale: unplanned_stale,
            versions: versions(&mut uncovered.iter().copied())?,
        });
    }
    Ok(parts)
}

/// The store of a table of files.
pub(crate) fn store_of(base: &Arc<dyn TableProvider>, runtime: &RuntimeEnv) -> Option<Arc<dyn object_store::ObjectStore>> {
    let listing = (base.as_ref() as &dyn std::any::Any).downcast_ref::<ListingTable>()?;
    runtime.object_store(listing.table_paths().first()?.object_store()).ok()
}

/// `meta`'s path relative to the table's folder.
fn relative(listing: &ListingTable, meta: &ObjectMeta) -> String {
    let root = listing.table_paths().first().map(|u| u.prefix().clone()).unwrap_or_default();
    let relative = meta.location.prefix_match(&root).map(|p| p.map(|x| x.as_ref().to_string()).collect::<Vec<_>>().join("/"));
    relative.unwrap_or_else(|| meta.location.filename().unwrap_or_default().to_string())
}

/// The table's data files as the store lists them now, in path order, with their URLs.
async fn data_files(listing: &ListingTable, state: &SessionState) -> Result<Vec<(String, ObjectMeta)>> {
    let extension = &listing.options().file_extension;
    let mut files = vec![];
    for url in listing.table_paths() {
        let store = state.runtime_env().object_store(url.object_store())?;
        files.extend(manifest::parquet_files(&store, url, extension).await?);
    }
    files.sort_by(|a, b| a.1.location.cmp(&b.1.location));
    files.dedup_by(|a, b| a.1.location == b.1.location);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_map_only_inside_covered_files() {
        // Files of 10, 5 and 20 rows; the middle one rewritten since the build.
        let spans = vec![Span { index: 0, rows: 10, part: 0 }, Span { index: 15, rows: 20, part: 10 }];
        let ids = Ids::Positions(Arc::new(spans));
        assert_eq!(ids.to_part(9), Some(9));
        assert_eq!(ids.to_part(10), None);
        assert_eq!(ids.to_part(14), None);
        assert_eq!(ids.to_part(15), Some(10));
        assert_eq!(ids.to_part(34), Some(29));
        assert_eq!(ids.to_part(35), None);
        assert_eq!(ids.to_part(-1), None);
        for p in [0, 9, 10, 29] {
            assert_eq!(ids.to_part(ids.to_index(p)), Some(p));
        }
    }
}
