//! The byte source of the row reads: serves the Parquet reader from ranges fetched
//! beforehand in one wave, and counts every GET the table side makes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::metadata::CachedParquetMetaData;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::execution::cache::cache_manager::{CachedFileMetadataEntry, FileMetadataCache};
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

/// GETs in flight at once for one wave.
const GETS_IN_FLIGHT: usize = 64;

/// What the table side cost: GETs, bytes, and waves of concurrent GETs (round trips);
/// and what one query's reads share.
#[derive(Default)]
pub(crate) struct TableIo {
    pub gets: AtomicU64,
    pub bytes: AtomicU64,
    pub waves: AtomicU64,
    /// DataFusion's cache of Parquet footers (the session's), shared with its own scans.
    footers: Option<Arc<FileMetadataCache>>,
    /// Whole column chunks this query read (walking their pages): the key map reads
    /// the same chunks.
    chunks: Mutex<HashMap<String, Vec<(u64, Bytes)>>>,
    /// The disk tier for footers and key maps.
    pub disk: Option<crate::DiskCache>,
    /// Footers and key maps read from the disk tier.
    pub disk_hits: AtomicU64,
}

impl TableIo {
    pub fn new(footers: Arc<FileMetadataCache>, disk: Option<crate::DiskCache>) -> TableIo {
        TableIo { footers: Some(footers), disk, ..Default::default() }
    }

    /// The bytes the disk tier keeps under `key`.
    pub async fn from_disk(&self, key: &str) -> Option<Bytes> {
        self.disk.as_ref()?.load(key.to_string()).await
    }

    /// Counts a footer or key map the disk tier served.
    pub fn disk_hit(&self) {
        self.disk_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn to_disk(&self, key: String, bytes: Bytes) {
        if let Some(disk) = &self.disk {
            disk.store(key, bytes).await;
        }
    }

    fn add(&self, gets: usize, bytes: u64) {
        if gets > 0 {
            self.gets.fetch_add(gets as u64, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.waves.fetch_add(gets.div_ceil(GETS_IN_FLIGHT) as u64, Ordering::Relaxed);
        }
    }

    /// The footer DataFusion read of this version of `file`, if it did.
    pub fn known_footer(&self, file: &ObjectMeta) -> Option<Arc<ParquetMetaData>> {
        let entry = self.footers.as_ref()?.get(&file.location).filter(|e| e.is_valid_for(file))?;
        entry.file_metadata.as_any().downcast_ref::<CachedParquetMetaData>().map(|c| c.parquet_metadata().clone())
    }

    pub fn keep_footer(&self, file: &ObjectMeta, metadata: Arc<ParquetMetaData>) {
        if let Some(footers) = &self.footers {
            let entry = CachedFileMetadataEntry::new(file.clone(), Arc::new(CachedParquetMetaData::new(metadata)));
            footers.put(&file.location, entry);
        }
    }

    pub fn keep_chunk(&self, file: &str, start: u64, bytes: Bytes) {
        let mut chunks = self.chunks.lock().expect("chunks");
        let kept = chunks.entry(file.to_string()).or_default();
        let at = kept.partition_point(|(s, _)| *s < start);
        kept.insert(at, (start, bytes));
    }

    /// Bytes `range` of `file`, when chunks this query read hold them (adjacent chunks
    /// joined: the row reads merge nearby pages of several columns).
    pub fn chunk(&self, file: &str, range: &Range<u64>) -> Option<Bytes> {
        let chunks = self.chunks.lock().expect("chunks");
        let kept = chunks.get(file)?;
        let mut i = kept.partition_point(|(s, _)| *s <= range.start).checked_sub(1)?;
        let mut pieces: Vec<Bytes> = vec![];
        let mut at = range.start;
        while at < range.end {
            let (start, bytes) = kept.get(i)?;
            let end = start + bytes.len() as u64;
            if *start > at || end <= at {
                return None;
            }
            pieces.push(bytes.slice((at - start) as usize..(range.end.min(end) - start) as usize));
            at = range.end.min(end);
            i += 1;
        }
        match pieces.len() {
            1 => pieces.pop(),
            _ => Some(pieces.concat().into()),
        }
    }
}

impl std::fmt::Debug for TableIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIo").field("gets", &self.gets).field("waves", &self.waves).finish()
    }
}

/// Every `(object, range)`: from the chunks this query already read where they hold it,
/// the rest fetched all at once (one wave), counted in `io`.
pub(crate) async fn fetch_all_files(
    store: &Arc<dyn ObjectStore>,
    ranges: Vec<(object_store::path::Path, Range<u64>)>,
    io: &TableIo,
) -> Result<Vec<Bytes>> {
    let mut out: Vec<Option<Bytes>> = ranges.iter().map(|(location, range)| io.chunk(location.as_ref(), range)).collect();
    let missing: Vec<_> = ranges.into_iter().enumerate().filter(|(i, _)| out[*i].is_none()).collect();
    let bytes: u64 = missing.iter().map(|(_, (_, r))| r.end - r.start).sum();
    let count = missing.len();
    let got: Vec<(usize, Bytes)> = futures::stream::iter(missing)
        .map(|(i, (location, range))| async move {
            let bytes = store.get_range(&location, range.clone()).await.map_err(|e| {
                DataFusionError::External(
                    format!("reading {location} bytes {}..{}: {e}", range.start, range.end).into(),
                )
            })?;
            Ok::<_, DataFusionError>((i, bytes))
        })
        .buffered(GETS_IN_FLIGHT)
        .try_collect()
        .await?;
    io.add(count, bytes);
    for (i, bytes) in got {
        out[i] = Some(bytes);
    }
    Ok(out.into_iter().map(|b| b.expect("every range filled")).collect())
}

/// One Parquet file as the reader sees it: its footer (when known) and the byte
/// ranges fetched for it beforehand; anything else is fetched when asked, and counted.
#[derive(Clone)]
pub(crate) struct FileReader {
    store: Arc<dyn ObjectStore>,
    file: ObjectMeta,
    io: Arc<TableIo>,
    metadata: Option<Arc<ParquetMetaData>>,
    /// Sorted by start, not overlapping.
    fetched: Arc<Vec<(u64, Bytes)>>,
}

impl FileReader {
    pub fn new(store: Arc<dyn ObjectStore>, file: ObjectMeta, io: Arc<TableIo>) -> FileReader {
        FileReader { store, file, io, metadata: None, fetched: Arc::new(vec![]) }
    }

    pub fn with_rows(mut self, metadata: Arc<ParquetMetaData>, fetched: Vec<(u64, Bytes)>) -> FileReader {
        self.metadata = Some(metadata);
        self.fetched = Arc::new(fetched);
        self
    }

    fn cached(&self, range: &Range<u64>) -> Option<Bytes> {
        let at = self.fetched.partition_point(|(start, _)| *start <= range.start).checked_sub(1)?;
        let (start, bytes) = &self.fetched[at];
        let from = (range.start - start) as usize;
        let to = (range.end - start) as usize;
        (to <= bytes.len()).then(|| bytes.slice(from..to))
    }

    /// `ranges`, from what was fetched beforehand where it holds them, the rest in one wave.
    pub async fn fetch_ranges(&self, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = ranges.iter().map(|r| self.cached(r)).collect();
        let missing: Vec<(usize, Range<u64>)> =
            ranges.into_iter().enumerate().filter(|(i, _)| out[*i].is_none()).collect();
        if !missing.is_empty() {
            let wanted = missing.iter().map(|(_, r)| (self.file.location.clone(), r.clone())).collect();
            let got = fetch_all_files(&self.store, wanted, &self.io).await?;
            for ((i, _), bytes) in missing.into_iter().zip(got) {
                out[i] = Some(bytes);
            }
        }
        Ok(out.into_iter().map(|b| b.expect("every range filled")).collect())
    }

    pub async fn fetch(&mut self, range: Range<u64>) -> Result<Bytes> {
        Ok(self.fetch_ranges(vec![range]).await?.remove(0))
    }
}

fn parquet_error(e: DataFusionError) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for FileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        async move { self.fetch(range).await.map_err(parquet_error) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        async move { self.fetch_ranges(ranges).await.map_err(parquet_error) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            match &self.metadata {
                Some(metadata) => Ok(metadata.clone()),
                None => Err(ParquetError::General(format!("no footer read for {}", self.file.location))),
            }
        }
        .boxed()
    }
}

/// Hands DataFusion's Parquet scan the prepared reader of each file it opens.
#[derive(Debug)]
pub(crate) struct Readers(pub HashMap<String, FileReaderHandle>);

/// A prepared reader (the factory may be asked more than once per file).
pub(crate) struct FileReaderHandle(pub FileReader);

impl std::fmt::Debug for FileReaderHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileReader({})", self.0.file.location)
    }
}

impl ParquetFileReaderFactory for Readers {
    fn create_reader(
        &self,
        _partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        _metrics: &ExecutionPlanMetricsSet,
    ) -> Result<Box<dyn AsyncFileReader + Send>> {
        match self.0.get(file.object_meta.location.as_ref()) {
            Some(reader) => Ok(Box::new(reader.0.clone())),
            None => Err(DataFusionError::Internal(format!("no reader prepared for {}", file.object_meta.location))),
        }
    }
}
