//! Parquet footers, read once per file version and kept, with page locations found for
//! the columns whose writer left no page index (pyarrow's default), so that reading a
//! few rows costs a page each, not a row group.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::basic::Encoding;
use datafusion::parquet::column::page::{Page, PageReader};
use datafusion::parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataBuilder, ParquetMetaDataReader, ParquetMetaDataWriter,
};
use datafusion::parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use datafusion::parquet::file::reader::{ChunkReader, Length};
use datafusion::parquet::file::serialized_reader::SerializedPageReader;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;

use super::reader::{FileReader, TableIo};

/// Footers read at once.
const FOOTERS_IN_FLIGHT: usize = 16;

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
    /// Per leaf column: nothing more to learn of its pages (known, or walked).
    settled: Vec<bool>,
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

    /// The footer with `offsets` for its page locations.
    fn with_offsets(plain: ParquetMetaData, offsets: Vec<Vec<OffsetIndexMetaData>>, settled: Vec<bool>) -> Footer {
        let groups = plain.num_row_groups();
        let leaf_paged = (0..settled.len())
            .map(|c| (0..groups).all(|g| !offsets[g][c].page_locations.is_empty() || plain.row_group(g).num_rows() == 0))
            .collect();
        let paged = ParquetMetaDataBuilder::new_from_metadata(plain.clone()).set_offset_index(Some(offsets)).build();
        Footer { paged: Arc::new(paged), plain: Arc::new(plain), leaf_paged, settled }
    }

    fn offsets(&self) -> Vec<Vec<OffsetIndexMetaData>> {
        self.paged.offset_index().expect("an offset index, if empty").clone()
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
fn cache() -> &'static moka::future::Cache<FileVersion, Arc<Footer>> {
    static CACHE: OnceLock<moka::future::Cache<FileVersion, Arc<Footer>>> = OnceLock::new();
    CACHE.get_or_init(|| {
        moka::future::Cache::builder()
            .max_capacity(super::METADATA_BUDGET)
            .weigher(|_, footer: &Arc<Footer>| footer.weight())
            .build()
    })
}

/// The footer of `file`, from the cache or read (with its page index, if any), with page
/// locations found for the columns among `columns` whose writer left none, by
/// walking their page headers (their chunks read whole, one wave, kept for this query).
pub(crate) async fn footer(
    store: &Arc<dyn object_store::ObjectStore>,
    file: &ObjectMeta,
    io: &Arc<TableIo>,
    columns: &[String],
) -> Result<Arc<Footer>> {
    let version = FileVersion::of(store, file);
    let known = cache()
        .try_get_with(version.clone(), read_footer(store.clone(), file.clone(), io.clone()))
        .await
        .map_err(DataFusionError::Shared)?;
    let unsettled: Vec<usize> = known.leaves(columns).into_iter().filter(|&c| !known.settled[c]).collect();
    if unsettled.is_empty() {
        return Ok(known);
    }
    let walked = Arc::new(walk(store, file, io, &known, &unsettled).await?);
    cache().insert(version, walked.clone()).await;
    io.to_disk(disk_key(store, file), encode(file, &walked)).await;
    Ok(walked)
}

/// The [`footer`] of every file of `files`, in that order, several read at once.
pub(crate) async fn footers(
    store: &Arc<dyn object_store::ObjectStore>,
    files: &[ObjectMeta],
    io: &Arc<TableIo>,
    columns: &[String],
) -> Result<Vec<Arc<Footer>>> {
    futures::stream::iter(files.iter().cloned())
        .map(|file| async move { footer(store, &file, io, columns).await })
        .buffered(FOOTERS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Puts the footers the disk tier keeps of these versions of `files` into DataFusion's
/// cache (and ours), so that its schema inference and scans read none of them.
pub(crate) async fn seed(store: &Arc<dyn object_store::ObjectStore>, files: &[ObjectMeta], io: &Arc<TableIo>) {
    for file in files {
        if let Some(footer) = from_disk(store, file, io).await {
            cache().insert(FileVersion::of(store, file), Arc::new(footer)).await;
        }
    }
}

/// The footer of this version of `file` the disk tier keeps, also put in DataFusion's
/// cache.
async fn from_disk(store: &Arc<dyn object_store::ObjectStore>, file: &ObjectMeta, io: &TableIo) -> Option<Footer> {
    let (meta, footer) = decode(&io.from_disk(&disk_key(store, file)).await?, &file.location)?;
    if FileVersion::of(store, &meta) != FileVersion::of(store, file) {
        return None;
    }
    io.keep_footer(file, footer.plain.clone());
    io.disk_hit();
    Some(footer)
}

/// One entry per file: the latest version read replaces the one before.
fn disk_key(store: &Arc<dyn object_store::ObjectStore>, file: &ObjectMeta) -> String {
    format!("footer|{store}|{}", file.location)
}

async fn read_footer(
    store: Arc<dyn object_store::ObjectStore>,
    file: ObjectMeta,
    io: Arc<TableIo>,
) -> Result<Arc<Footer>> {
    let name = file.location.to_string();
    if let Some(footer) = from_disk(&store, &file, &io).await {
        return Ok(Arc::new(footer));
    }
    let mut reader = FileReader::new(store.clone(), file.clone(), io.clone());
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
    let offsets: Vec<Vec<OffsetIndexMetaData>> = match metadata.offset_index() {
        Some(index) if index.len() == groups && index.iter().all(|g| g.len() == leaves) => index.clone(),
        _ => vec![
            vec![OffsetIndexMetaData { page_locations: vec![], unencoded_byte_array_data_bytes: None }; leaves];
            groups
        ],
    };
    let settled = (0..leaves)
        .map(|c| (0..groups).all(|g| !offsets[g][c].page_locations.is_empty() || plain.row_group(g).num_rows() == 0))
        .collect();
    let footer = Footer::with_offsets(plain, offsets, settled);
    io.to_disk(disk_key(&store, &file), encode(&file, &footer)).await;
    Ok(Arc::new(footer))
}

/// `known` with the pages of `leaves` found: their chunks in one wave, kept for this
/// query (the row reads may take their pages from them), page headers walked.
async fn walk(
    store: &Arc<dyn object_store::ObjectStore>,
    file: &ObjectMeta,
    io: &Arc<TableIo>,
    known: &Footer,
    leaves: &[usize],
) -> Result<Footer> {
    let name = file.location.to_string();
    let metadata = &known.plain;
    let mut offsets = known.offsets();
    let missing: Vec<(usize, usize)> = (0..metadata.num_row_groups())
        .flat_map(|g| leaves.iter().map(move |&c| (g, c)))
        .filter(|&(g, c)| offsets[g][c].page_locations.is_empty() && metadata.row_group(g).num_rows() > 0)
        .collect();
    let ranges: Vec<_> = missing
        .iter()
        .map(|&(g, c)| {
            let (start, len) = metadata.row_group(g).column(c).byte_range();
            start..start + len
        })
        .collect();
    let reader = FileReader::new(store.clone(), file.clone(), io.clone());
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
    let mut settled = known.settled.clone();
    leaves.iter().for_each(|&c| settled[c] = true);
    Ok(Footer::with_offsets(metadata.as_ref().clone(), offsets, settled))
}

const SAVED_MAGIC: &[u8; 8] = b"DFFFOOT3";

/// A footer as the disk tier keeps it: the file version it is of, the Parquet footer
/// (without page index, as the file has it), and per column chunk the page locations
/// known, or -1 for a chunk not walked yet.
fn encode(file: &ObjectMeta, footer: &Footer) -> Bytes {
    let mut thrift = vec![];
    if ParquetMetaDataWriter::new(&mut thrift, &footer.plain).finish().is_err() {
        return Bytes::new();
    }
    let tag = file.e_tag.as_deref().unwrap_or("");
    let mut out = SAVED_MAGIC.to_vec();
    let mut put = |v: i64| out.extend_from_slice(&v.to_le_bytes());
    put(file.size as i64);
    put(file.last_modified.timestamp_nanos_opt().unwrap_or(0));
    put(tag.len() as i64);
    put(thrift.len() as i64);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&thrift);
    let offsets = footer.offsets();
    for group in &offsets {
        for (c, chunk) in group.iter().enumerate() {
            let settled = footer.settled[c] || !chunk.page_locations.is_empty();
            out.extend_from_slice(&(if settled { chunk.page_locations.len() as i64 } else { -1 }).to_le_bytes());
            for page in &chunk.page_locations {
                out.extend_from_slice(&page.offset.to_le_bytes());
                out.extend_from_slice(&(page.compressed_page_size as i64).to_le_bytes());
                out.extend_from_slice(&page.first_row_index.to_le_bytes());
            }
        }
    }
    out.into()
}

/// The version and footer `encode` wrote for the file at `location`; `None` for
/// anything else.
fn decode(bytes: &Bytes, location: &object_store::path::Path) -> Option<(ObjectMeta, Footer)> {
    if bytes.get(..8)? != SAVED_MAGIC {
        return None;
    }
    let mut at = 8usize;
    let mut read = || -> Option<i64> {
        let b = bytes.get(at..at + 8)?;
        at += 8;
        Some(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (size, nanos) = (u64::try_from(read()?).ok()?, read()?);
    let (tag_len, thrift_len) = (usize::try_from(read()?).ok()?, usize::try_from(read()?).ok()?);
    let tag = String::from_utf8(bytes.get(40..40usize.checked_add(tag_len)?)?.to_vec()).ok()?;
    let from = 40 + tag_len;
    let thrift = bytes.slice(from..from.checked_add(thrift_len).filter(|&e| e <= bytes.len())?);
    let plain = ParquetMetaDataReader::new().with_page_index_policy(PageIndexPolicy::Skip).parse_and_finish(&thrift).ok()?;
    let last_modified = datafusion::arrow::temporal_conversions::timestamp_ns_to_datetime(nanos)?.and_utc();
    let e_tag = (!tag.is_empty()).then_some(tag);
    let meta = ObjectMeta { location: location.clone(), last_modified, size, e_tag, version: None };
    let mut at = from + thrift_len;
    let mut read = || -> Option<i64> {
        let b = bytes.get(at..at + 8)?;
        at += 8;
        Some(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let leaves = plain.file_metadata().schema_descr().num_columns();
    let mut walked = vec![true; leaves];
    let mut offsets = vec![];
    for g in 0..plain.num_row_groups() {
        let mut group = vec![];
        for walked in walked.iter_mut() {
            let n = read()?;
            *walked &= n >= 0;
            let n = usize::try_from(n.max(0)).ok().filter(|&n| n <= plain.row_group(g).num_rows().max(0) as usize)?;
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
    Some((meta, Footer::with_offsets(plain, offsets, walked)))
}

/// The data pages of one column chunk (`bytes`, starting at file offset `start`) with
/// the row each starts at; `None` if the pages do not add up to the chunk's rows, or if a
/// page of a nested column starts inside a row (a v1 page may where there is no page
/// index), so that a row is not in one page.
fn page_locations(
    chunk: &datafusion::parquet::file::metadata::ColumnChunkMetaData,
    start: u64,
    bytes: Bytes,
    rows: usize,
) -> datafusion::parquet::errors::Result<Option<Vec<PageLocation>>> {
    let end = start + bytes.len() as u64;
    let max_rep = chunk.column_descr().max_rep_level();
    let source = Arc::new(Chunk { start, bytes, reads: Mutex::new(vec![]) });
    let mut pages = SerializedPageReader::new(source.clone(), chunk, rows, None)?;
    let mut found: Vec<(u64, i64)> = vec![];
    let mut row = 0i64;
    while let Some(page) = pages.peek_next_page()? {
        // The header was just read from where this page starts.
        let at = *source.reads.lock().expect("reads").last().expect("a header read");
        if page.is_dict {
            pages.skip_next_page()?;
            continue;
        }
        let page_rows = match (max_rep, page.num_rows) {
            (0, rows) => {
                pages.skip_next_page()?;
                rows.or(page.num_levels).unwrap_or(0)
            }
            // A v2 page starts a row and says how many it holds.
            (_, Some(rows)) => {
                pages.skip_next_page()?;
                rows
            }
            (_, None) => match pages.get_next_page()? {
                Some(Page::DataPage { buf, num_values, rep_level_encoding: Encoding::RLE, .. }) => {
                    match row_starts(&buf, num_values as usize, max_rep) {
                        Some((true, rows)) => rows,
                        _ => return Ok(None),
                    }
                }
                _ => return Ok(None),
            },
        };
        found.push((at, row));
        row += page_rows as i64;
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

/// Of a v1 data page (`buf`, decompressed) holding `levels` repetition levels at most
/// `max_rep`, RLE-encoded first: whether it starts a row, and how many rows start in it
/// (levels of 0). `None` for levels that do not decode. The parquet crate decodes levels
/// only behind its experimental API.
fn row_starts(buf: &[u8], levels: usize, max_rep: i16) -> Option<(bool, usize)> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let mut data = buf.get(4..4usize.checked_add(len)?)?;
    let width = (16 - (max_rep as u16).leading_zeros()) as usize;
    let (mut seen, mut starts, mut first) = (0usize, 0usize, None);
    while seen < levels {
        // A run header: ULEB128, its low bit telling bit-packed groups from a repeated value.
        let mut header = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = data.split_first()?;
            data = rest;
            header |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if header & 1 == 0 {
            let count = usize::try_from(header >> 1).ok()?.min(levels - seen);
            let bytes = width.div_ceil(8);
            let value = data.get(..bytes)?.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b));
            data = &data[bytes..];
            if count > 0 {
                first.get_or_insert(value);
                starts += if value == 0 { count } else { 0 };
            }
            seen += count;
        } else {
            let values = usize::try_from(header >> 1).ok()?.checked_mul(8)?;
            let packed = data.get(..values.checked_mul(width)? / 8)?;
            data = &data[packed.len()..];
            for i in 0..values.min(levels - seen) {
                let value = (0..width).fold(0u64, |v, b| {
                    let bit = i * width + b;
                    v | u64::from(packed[bit / 8] >> (bit % 8) & 1) << b
                });
                first.get_or_insert(value);
                starts += usize::from(value == 0);
            }
            seen += values.min(levels - seen);
        }
    }
    Some((first? == 0, starts))
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
