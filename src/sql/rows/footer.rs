//! Parquet footers, read once per file version and kept, with page locations found for
//! the columns whose writer left no page index (pyarrow's default), so that reading a
//! few rows costs a page each, not a row group.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::column::page::PageReader;
use datafusion::parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataBuilder, ParquetMetaDataReader, ParquetMetaDataWriter,
};
use datafusion::parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use datafusion::parquet::file::reader::{ChunkReader, Length};
use datafusion::parquet::file::serialized_reader::SerializedPageReader;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;

use super::reader::{FileReader, TableIo};

/// Column chunks whose page headers are walked at once.
const WALKS_IN_FLIGHT: usize = 8;

/// What a file version's footer says, in the two forms the row reads use.
#[derive(Debug)]
pub(crate) struct Footer {
    /// With an offset index for every column chunk whose pages are known (from the
    /// file's page index, or found by walking the page headers); other chunks have an
    /// empty one and must not be read through this form.
    pub paged: Arc<ParquetMetaData>,
    /// Without any page index: a selected row group's column chunks are read whole.
    pub plain: Arc<ParquetMetaData>,
    /// Per leaf column: its pages are known in every row group.
    pub leaf_paged: Vec<bool>,
}

impl Footer {
    pub fn rows(&self) -> u64 {
        self.plain.file_metadata().num_rows().max(0) as u64
    }

    /// This file's Parquet leaf columns under the columns `names`.
    pub fn leaves(&self, names: &[String]) -> Vec<usize> {
        let descr = self.plain.file_metadata().schema_descr();
        (0..descr.num_columns())
            .filter(|&c| descr.column(c).path().parts().first().is_some_and(|root| names.contains(root)))
            .collect()
    }

    fn weight(&self) -> u32 {
        (self.paged.memory_size() + self.plain.memory_size()).min(u32::MAX as usize) as u32
    }
}

/// One file version: a rewritten file (another size, mtime or ETag) is another key.
#[derive(Debug, Clone)]
pub(crate) struct FileVersion {
    store: usize,
    meta: ObjectMeta,
}

impl FileVersion {
    pub fn of(store: &Arc<dyn object_store::ObjectStore>, meta: &ObjectMeta) -> FileVersion {
        FileVersion { store: Arc::as_ptr(store) as *const () as usize, meta: meta.clone() }
    }

    /// The file as listed.
    pub fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn key(&self) -> (usize, &str, u64, Option<i64>, Option<&str>) {
        let m = &self.meta;
        (self.store, m.location.as_ref(), m.size, m.last_modified.timestamp_nanos_opt(), m.e_tag.as_deref())
    }
}

impl PartialEq for FileVersion {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for FileVersion {}

impl std::hash::Hash for FileVersion {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

/// Footers of every file version read so far, bounded in bytes.
fn footers() -> &'static moka::future::Cache<FileVersion, Arc<Footer>> {
    static CACHE: OnceLock<moka::future::Cache<FileVersion, Arc<Footer>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::future::Cache::builder()
            .max_capacity(super::METADATA_BUDGET)
            .weigher(|_, footer: &Arc<Footer>| footer.weight())
            .build()
    })
}

/// The footer of `file`, from the cache or read (with its page index, if any) and
/// completed with page locations found by walking the pages of the flat columns.
pub(crate) async fn footer(
    store: &Arc<dyn object_store::ObjectStore>,
    file: &ObjectMeta,
    io: &Arc<TableIo>,
) -> Result<Arc<Footer>> {
    let version = FileVersion::of(store, file);
    footers()
        .try_get_with(version, read_footer(store.clone(), file.clone(), io.clone()))
        .await
        .map_err(DataFusionError::Shared)
}

/// Puts the footers the disk tier keeps of `files` into DataFusion's cache (and ours),
/// so that its schema inference and scans read none of them from the store.
pub(crate) async fn seed(store: &Arc<dyn object_store::ObjectStore>, files: &[ObjectMeta], io: &Arc<TableIo>) {
    for file in files {
        let version = FileVersion::of(store, file);
        if footers().get(&version).await.is_some() {
            continue;
        }
        if let Some(footer) = io.from_disk(&disk_key(store, file)).await.and_then(|b| decode(&b)) {
            io.keep_footer(file, footer.plain.clone());
            footers().insert(version, Arc::new(footer)).await;
        }
    }
}

fn disk_key(store: &Arc<dyn object_store::ObjectStore>, file: &ObjectMeta) -> String {
    format!("footer|{store}|{}", crate::fetch::version_key(file.location.as_ref(), file))
}

async fn read_footer(
    store: Arc<dyn object_store::ObjectStore>,
    file: ObjectMeta,
    io: Arc<TableIo>,
) -> Result<Arc<Footer>> {
    let name = file.location.to_string();
    let disk_key = disk_key(&store, &file);
    if let Some(footer) = io.from_disk(&disk_key).await.and_then(|b| decode(&b)) {
        io.keep_footer(&file, footer.plain.clone());
        return Ok(Arc::new(footer));
    }
    let mut reader = FileReader::new(store, file.clone(), io.clone());
    // DataFusion keeps the footers it read (the schema inference of CREATE among them).
    let metadata = match io.known_footer(&file) {
        Some(metadata) => metadata,
        None => {
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .load_and_finish(&mut reader, file.size)
                .await
                .map_err(|e| DataFusionError::External(format!("Parquet footer of {name}: {e}").into()))?;
            let metadata = Arc::new(metadata);
            io.keep_footer(&file, metadata.clone());
            metadata
        }
    };
    let metadata = Arc::unwrap_or_clone(metadata);
    let plain = ParquetMetaDataBuilder::new_from_metadata(metadata.clone())
        .set_offset_index(None)
        .set_column_index(None)
        .build();
    let leaves = metadata.file_metadata().schema_descr().num_columns();
    let groups = metadata.num_row_groups();
    let mut offsets: Vec<Vec<OffsetIndexMetaData>> = match metadata.offset_index() {
        Some(index) if index.len() == groups && index.iter().all(|g| g.len() == leaves) => index.clone(),
        _ => vec![
            vec![OffsetIndexMetaData { page_locations: vec![], unencoded_byte_array_data_bytes: None }; leaves];
            groups
        ],
    };
    // Chunks without locations: walk the page headers of the flat columns, whose pages
    // hold one level per row. (A nested column's v1 pages may end inside a row: such a
    // chunk is read whole when a row of it is needed.)
    let descr = metadata.file_metadata().schema_descr_ptr();
    let missing: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (0..leaves).map(move |c| (g, c)))
        .filter(|&(g, c)| {
            offsets[g][c].page_locations.is_empty()
                && metadata.row_group(g).num_rows() > 0
                && descr.column(c).max_rep_level() == 0
        })
        .collect();
    // Every chunk in one wave, kept for this query (the key map reads the same ones).
    let ranges: Vec<_> = missing
        .iter()
        .map(|&(g, c)| {
            let (start, len) = metadata.row_group(g).column(c).byte_range();
            start..start + len
        })
        .collect();
    let chunks = reader.fetch_ranges(ranges.clone()).await?;
    let walked: Vec<(usize, usize, Option<Vec<PageLocation>>)> = futures::stream::iter(missing.into_iter().zip(ranges).zip(chunks))
        .map(|(((g, c), range), bytes)| {
            let chunk = metadata.row_group(g).column(c).clone();
            let rows = metadata.row_group(g).num_rows() as usize;
            io.keep_chunk(&name, range.start, bytes.clone());
            let name = name.clone();
            async move {
                let pages = tokio::task::spawn_blocking(move || page_locations(&chunk, range.start, bytes, rows))
                    .await
                    .map_err(|e| DataFusionError::External(e.into()))?
                    .map_err(|e| {
                        DataFusionError::External(
                            format!("Parquet file {name}: row group {g}, column {c}: reading page headers: {e}").into(),
                        )
                    })?;
                Ok::<_, DataFusionError>((g, c, pages))
            }
        })
        .buffer_unordered(WALKS_IN_FLIGHT)
        .try_collect()
        .await?;
    for (g, c, pages) in walked {
        if let Some(pages) = pages {
            offsets[g][c].page_locations = pages;
        }
    }
    let leaf_paged: Vec<bool> = (0..leaves)
        .map(|c| (0..groups).all(|g| !offsets[g][c].page_locations.is_empty() || metadata.row_group(g).num_rows() == 0))
        .collect();
    let paged = ParquetMetaDataBuilder::new_from_metadata(metadata).set_offset_index(Some(offsets)).build();
    let footer = Footer { paged: Arc::new(paged), plain: Arc::new(plain), leaf_paged };
    if let Some(bytes) = encode(&footer) {
        io.to_disk(disk_key, bytes).await;
    }
    Ok(Arc::new(footer))
}

const SAVED_MAGIC: &[u8; 8] = b"DFFFOOT1";

/// A footer as the disk tier keeps it: the Parquet footer (without page index, as the
/// file has it) and the page locations known for each column chunk.
fn encode(footer: &Footer) -> Option<Bytes> {
    let mut thrift = vec![];
    ParquetMetaDataWriter::new(&mut thrift, &footer.plain).finish().ok()?;
    let mut out = SAVED_MAGIC.to_vec();
    out.extend_from_slice(&(thrift.len() as u64).to_le_bytes());
    out.extend_from_slice(&thrift);
    for group in footer.paged.offset_index()? {
        for chunk in group {
            out.extend_from_slice(&(chunk.page_locations.len() as u64).to_le_bytes());
            for page in &chunk.page_locations {
                out.extend_from_slice(&page.offset.to_le_bytes());
                out.extend_from_slice(&(page.compressed_page_size as i64).to_le_bytes());
                out.extend_from_slice(&page.first_row_index.to_le_bytes());
            }
        }
    }
    Some(out.into())
}

/// `None` for anything but what `encode` wrote.
fn decode(bytes: &Bytes) -> Option<Footer> {
    if bytes.get(..8)? != SAVED_MAGIC {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(bytes.get(8..16)?.try_into().expect("8 bytes"))).ok()?;
    let thrift = bytes.slice(16..16usize.checked_add(len).filter(|&e| e <= bytes.len())?);
    let plain = ParquetMetaDataReader::new().with_page_index_policy(PageIndexPolicy::Skip).parse_and_finish(&thrift).ok()?;
    let mut at = 16 + len;
    let mut read = || -> Option<i64> {
        let b = bytes.get(at..at + 8)?;
        at += 8;
        Some(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let leaves = plain.file_metadata().schema_descr().num_columns();
    let mut offsets = vec![];
    for g in 0..plain.num_row_groups() {
        let mut group = vec![];
        for _ in 0..leaves {
            let n = usize::try_from(read()?).ok().filter(|&n| n <= plain.row_group(g).num_rows().max(0) as usize)?;
            let mut pages = Vec::with_capacity(n);
            for _ in 0..n {
                let (offset, size, first_row_index) = (read()?, read()?, read()?);
                pages.push(PageLocation { offset, compressed_page_size: i32::try_from(size).ok()?, first_row_index });
            }
            group.push(OffsetIndexMetaData { page_locations: pages, unencoded_byte_array_data_bytes: None });
        }
        offsets.push(group);
    }
    if read().is_some() {
        return None;
    }
    let groups = plain.num_row_groups();
    let leaf_paged: Vec<bool> = (0..leaves)
        .map(|c| (0..groups).all(|g| !offsets[g][c].page_locations.is_empty() || plain.row_group(g).num_rows() == 0))
        .collect();
    let paged = ParquetMetaDataBuilder::new_from_metadata(plain.clone()).set_offset_index(Some(offsets)).build();
    Some(Footer { paged: Arc::new(paged), plain: Arc::new(plain), leaf_paged })
}

/// The data pages of one flat column chunk (`bytes`, starting at file offset `start`)
/// with the row each starts at; `None` if the pages do not add up to the chunk's rows.
fn page_locations(
    chunk: &datafusion::parquet::file::metadata::ColumnChunkMetaData,
    start: u64,
    bytes: Bytes,
    rows: usize,
) -> datafusion::parquet::errors::Result<Option<Vec<PageLocation>>> {
    let end = start + bytes.len() as u64;
    let source = Arc::new(Chunk { start, bytes, reads: Mutex::new(vec![]) });
    let mut pages = SerializedPageReader::new(source.clone(), chunk, rows, None)?;
    let mut found: Vec<(u64, i64)> = vec![];
    let mut row = 0i64;
    while let Some(page) = pages.peek_next_page()? {
        // The header was just read from where this page starts.
        let at = *source.reads.lock().expect("reads").last().expect("a header read");
        if !page.is_dict {
            let page_rows = page.num_rows.or(page.num_levels).unwrap_or(0);
            found.push((at, row));
            row += page_rows as i64;
        }
        pages.skip_next_page()?;
    }
    if row != rows as i64 {
        return Ok(None);
    }
    let ends: Vec<u64> = found.iter().skip(1).map(|&(at, _)| at).chain([end]).collect();
    Ok(Some(
        found
            .iter()
            .zip(ends)
            .map(|(&(at, first_row_index), end)| PageLocation {
                offset: at as i64,
                compressed_page_size: (end - at) as i32,
                first_row_index,
            })
            .collect(),
    ))
}

/// A column chunk's bytes at their file offsets, noting where each read starts (a page
/// header, when the page reader peeks).
struct Chunk {
    start: u64,
    bytes: Bytes,
    reads: Mutex<Vec<u64>>,
}

impl Length for Chunk {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl ChunkReader for Chunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> datafusion::parquet::errors::Result<Self::T> {
        self.reads.lock().expect("reads").push(start);
        Ok(bytes::Buf::reader(self.get_bytes(start, (self.len() - start.min(self.len())) as usize)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> datafusion::parquet::errors::Result<Bytes> {
        let from = start.checked_sub(self.start).map(|s| s as usize);
        match from {
            Some(from) if from + length <= self.bytes.len() => Ok(self.bytes.slice(from..from + length)),
            _ => Err(datafusion::parquet::errors::ParquetError::EOF(format!(
                "page at {start} ({length} bytes) is outside its column chunk"
            ))),
        }
    }
}
