//! Reading the base table's rows at given positions, at the cost of those rows.
//!
//! A row's position is its place in the table: files in path order (as DataFusion lists
//! and splits them), rows in file order. An index built from the table without ids
//! (`index.add(x)`) has positions for ids; an index of user keys goes through a key →
//! position map built once per table version ([`keys`]). Positions become a
//! `ParquetAccessPlan` (chosen rows of chosen row groups) per file, read by DataFusion's
//! own Parquet scan. Its reader gets the file's cached footer, completed with page
//! locations where the writer left no page index ([`footer`]), and the pages holding the
//! rows, fetched beforehand for every file in one wave ([`reader`]).

pub(crate) mod footer;
pub(crate) mod keys;
pub(crate) mod passing;
mod reader;
pub(crate) mod vectors;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::common::{exec_err, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::context::SessionState;
use datafusion::execution::TaskContext;
use datafusion::parquet::arrow::arrow_reader::RowSelection;
use datafusion::physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;

pub(crate) use footer::FileVersion;
use footer::Footer;
pub(crate) use reader::TableIo;
use reader::{FileReader, FileReaderHandle, Readers};

/// Memory for footers, and separately for key maps, kept across queries.
pub(crate) const METADATA_BUDGET: u64 = 256 * 1024 * 1024;

/// Ranges of one file closer than this are fetched as one: on object storage a GET costs
/// more than the bytes between them.
const GAP: u64 = 64 * 1024;

/// The base table as listed for one query: its Parquet files in position order and
/// the scan DataFusion would run over them, with the columns to read.
pub(crate) struct Listed {
    store: Arc<dyn ObjectStore>,
    scan: FileScanConfig,
    parquet: ParquetSource,
    files: Vec<PartitionedFile>,
}

impl Listed {
    /// Lists `base` as its own scan of `columns` does (one LIST, or a HEAD for a single
    /// file); `None` when the table is not read from Parquet files.
    pub async fn list(
        base: &Arc<dyn TableProvider>,
        state: &SessionState,
        columns: &[usize],
    ) -> Result<Option<Listed>> {
        let plan = base.scan(state, Some(&columns.to_vec()), &[], None).await?;
        let Some(exec) = plan.downcast_ref::<DataSourceExec>() else { return Ok(None) };
        let Some((scan, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else { return Ok(None) };
        let store = state.runtime_env().object_store(&scan.object_store_url)?;
        let mut files: Vec<PartitionedFile> = scan.file_groups.iter().flat_map(|g| g.files().iter().cloned()).collect();
        files.sort_by(|a, b| a.object_meta.location.cmp(&b.object_meta.location));
        files.dedup_by(|a, b| a.object_meta.location == b.object_meta.location);
        for f in &mut files {
            f.range = None;
        }
        Ok(Some(Listed { store, scan: scan.clone(), parquet: parquet.clone(), files }))
    }

    /// What identifies this version of the table: every file's version.
    pub fn version(&self) -> Vec<FileVersion> {
        self.files.iter().map(|f| FileVersion::of(&self.store, &f.object_meta)).collect()
    }

    /// The footer of every file, from the cache or read.
    pub async fn locate(self, io: &Arc<TableIo>) -> Result<Located> {
        let footers = footer::footers(&self.store, &self.metas(), io, &self.columns()).await?;
        let mut starts = Vec::with_capacity(footers.len());
        let mut total = 0u64;
        for f in &footers {
            starts.push(total);
            total += f.rows();
        }
        Ok(Located { listed: self, footers, starts, total })
    }

    /// The files, in position order.
    fn metas(&self) -> Vec<object_store::ObjectMeta> {
        self.files.iter().map(|f| f.object_meta.clone()).collect()
    }

    /// Names of the columns the table was listed with.
    fn columns(&self) -> Vec<String> {
        self.scan.projected_schema().map_or_else(|_| vec![], |s| s.fields().iter().map(|f| f.name().clone()).collect())
    }

    /// Runs DataFusion's Parquet scan over `groups` (a file each) with `readers`,
    /// returning the batches file by file, each file's in row order.
    async fn scan(
        &self,
        groups: Vec<FileGroup>,
        readers: HashMap<String, FileReaderHandle>,
        context: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        if groups.is_empty() {
            return Ok(vec![]);
        }
        let partitions = groups.len();
        let mut scan = self.scan.clone();
        scan.file_groups = groups;
        scan.limit = None;
        scan.output_ordering = vec![];
        // Each partition reads its own file, in row order: no work stealing between them.
        scan.preserve_order = true;
        scan.file_source = Arc::new(self.parquet.clone().with_parquet_file_reader_factory(Arc::new(Readers(readers))));
        let exec: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(scan);
        let per_file: Vec<Vec<RecordBatch>> = futures::stream::iter(0..partitions)
            .map(|p| {
                let exec = exec.clone();
                let context = context.clone();
                async move { exec.execute(p, context)?.try_collect::<Vec<_>>().await }
            })
            .buffered(context.session_config().target_partitions().max(1))
            .try_collect()
            .await?;
        Ok(per_file.into_iter().flatten().collect())
    }
}

/// A listed table with every file's footer: positions resolve to (file, row group, row).
pub(crate) struct Located {
    listed: Listed,
    footers: Vec<Arc<Footer>>,
    starts: Vec<u64>,
    total: u64,
}

impl Located {
    /// Rows in the table.
    pub fn rows(&self) -> u64 {
        self.total
    }

    /// What identifies this version of the table: every file's version.
    pub fn version(&self) -> Vec<FileVersion> {
        self.listed.version()
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.listed.store
    }

    /// The files, in position order.
    pub fn files(&self) -> Vec<object_store::ObjectMeta> {
        self.listed.metas()
    }

    /// The rows at `positions` (sorted, distinct, below [`rows`](Self::rows)), in that
    /// order, with the columns the table was listed with.
    pub async fn read(
        &self,
        positions: &[u64],
        context: &Arc<TaskContext>,
        io: &Arc<TableIo>,
    ) -> Result<Vec<RecordBatch>> {
        let mut per_file: Vec<(usize, Vec<u64>)> = vec![];
        for &p in positions {
            if p >= self.total {
                return exec_err!("row position {p} is beyond the table's {} rows", self.total);
            }
            let file = self.starts.partition_point(|&s| s <= p) - 1;
            let row = p - self.starts[file];
            match per_file.last_mut() {
                Some((f, rows)) if *f == file => rows.push(row),
                _ => per_file.push((file, vec![row])),
            }
        }
        let names = self.listed.columns();
        let mut plans = vec![];
        let mut wanted: Vec<(usize, Range<u64>)> = vec![];
        for (file, rows) in &per_file {
            let footer = &self.footers[*file];
            // Per file: files of one table may order (or lack) columns differently.
            let leaves = footer.leaves(&names);
            let paged = leaves.iter().all(|&c| footer.leaf_paged[c]);
            let metadata = if paged { &footer.paged } else { &footer.plain };
            let (plan, ranges) = access(metadata, rows, &leaves);
            plans.push((*file, metadata.clone(), plan));
            // Pages in chunks this query read are taken from them; the others are
            // fetched, those close together by one GET.
            let name = self.listed.files[*file].object_meta.location.to_string();
            let (known, fetch): (Vec<_>, Vec<_>) = ranges.into_iter().partition(|r| io.chunk(&name, r).is_some());
            let fetch = merged(fetch);
            let covered = |r: &Range<u64>| fetch.iter().any(|f| f.start <= r.start && r.end <= f.end);
            let known: Vec<_> = known.into_iter().filter(|r| !covered(r)).collect();
            wanted.extend(known.into_iter().chain(fetch).map(|r| (*file, r)));
        }
        // Every page of every file at once: the rows cost one round trip.
        let location = |f: usize| self.listed.files[f].object_meta.location.clone();
        let ranges = wanted.iter().map(|(f, r)| (location(*f), r.clone())).collect();
        let fetched = reader::fetch_all_files(&self.listed.store, ranges, io).await?;
        let mut by_file: HashMap<usize, Vec<(u64, bytes::Bytes)>> = HashMap::new();
        for ((file, range), bytes) in wanted.into_iter().zip(fetched) {
            by_file.entry(file).or_default().push((range.start, bytes));
        }
        by_file.values_mut().for_each(|segments| segments.sort_by_key(|(start, _)| *start));
        let mut readers = HashMap::new();
        let mut groups = vec![];
        for (file, metadata, plan) in plans {
            let meta = &self.listed.files[file].object_meta;
            let reader = FileReader::new(self.listed.store.clone(), meta.clone(), io.clone())
                .with_rows(metadata, by_file.remove(&file).unwrap_or_default());
            readers.insert(meta.location.to_string(), FileReaderHandle(reader));
            let mut part = self.listed.files[file].clone();
            part.extensions.insert(plan);
            groups.push(FileGroup::new(vec![part]));
        }
        self.listed.scan(groups, readers, context).await
    }

    /// Every row of every file, in position order, with the columns the table was listed
    /// with, or those of `columns` (a listing of the same table with other columns).
    pub async fn read_all(
        &self,
        columns: Option<&Listed>,
        context: &Arc<TaskContext>,
        io: &Arc<TableIo>,
    ) -> Result<Vec<RecordBatch>> {
        let mut readers = HashMap::new();
        let mut groups = vec![];
        for (file, part) in self.listed.files.iter().enumerate() {
            let reader = FileReader::new(self.listed.store.clone(), part.object_meta.clone(), io.clone())
                .with_rows(self.footers[file].plain.clone(), vec![]);
            readers.insert(part.object_meta.location.to_string(), FileReaderHandle(reader));
            groups.push(FileGroup::new(vec![part.clone()]));
        }
        columns.unwrap_or(&self.listed).scan(groups, readers, context).await
    }
}

/// The access plan selecting `rows` (sorted, within the file) and the byte ranges the
/// Parquet reader will ask for them: per selected row group and leaf, the dictionary
/// page and the data pages holding the rows where pages are known, else the whole chunk;
/// sorted.
fn access(
    metadata: &datafusion::parquet::file::metadata::ParquetMetaData,
    rows: &[u64],
    leaves: &[usize],
) -> (ParquetAccessPlan, Vec<Range<u64>>) {
    let groups = metadata.row_groups();
    let mut plan = ParquetAccessPlan::new_none(groups.len());
    let mut ranges: Vec<Range<u64>> = vec![];
    let mut start = 0u64;
    let mut next = 0usize;
    for (g, group) in groups.iter().enumerate() {
        let end = start + group.num_rows().max(0) as u64;
        let from = next;
        while next < rows.len() && rows[next] < end {
            next += 1;
        }
        let in_group: Vec<usize> = rows[from..next].iter().map(|&r| (r - start) as usize).collect();
        if !in_group.is_empty() {
            let selection =
                RowSelection::from_consecutive_ranges(in_group.iter().map(|&r| r..r + 1), group.num_rows() as usize);
            plan.set(g, RowGroupAccess::Selection(selection));
            for &c in leaves {
                let chunk = group.column(c);
                let (chunk_start, len) = chunk.byte_range();
                let pages = metadata.offset_index().map(|index| &index[g][c].page_locations);
                match pages {
                    Some(pages) if !pages.is_empty() => {
                        if pages[0].offset as u64 != chunk_start {
                            ranges.push(chunk_start..pages[0].offset as u64);
                        }
                        let mut last = usize::MAX;
                        for &r in &in_group {
                            let p = pages.partition_point(|l| l.first_row_index as usize <= r).saturating_sub(1);
                            if p != last {
                                let l = &pages[p];
                                ranges.push(l.offset as u64..l.offset as u64 + l.compressed_page_size as u64);
                                last = p;
                            }
                        }
                    }
                    _ => ranges.push(chunk_start..chunk_start + len),
                }
            }
        }
        start = end;
    }
    ranges.sort_by_key(|r| r.start);
    ranges.dedup();
    (plan, ranges)
}

/// `ranges` (sorted) with those less than [`GAP`] apart made one.
fn merged(ranges: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut merged: Vec<Range<u64>> = vec![];
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end + GAP => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}
