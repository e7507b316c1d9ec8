//! Key → row position, for indexes whose ids are a key column's values: built once per
//! table version from the key column alone, kept (bounded in bytes) across queries.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use futures::TryStreamExt;
use object_store::{ObjectMeta, ObjectStore};

use super::footer::footers;
use super::reader::{fetch_all_files, FileReader};
use super::{FileVersion, TableIo, METADATA_BUDGET};

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

    /// As the disk tier keeps it: the keys, then the positions, little-endian.
    fn encode(&self) -> bytes::Bytes {
        let mut out = Vec::with_capacity(self.keys.len() * 16);
        self.keys.iter().for_each(|k| out.extend_from_slice(&k.to_le_bytes()));
        self.positions.iter().for_each(|p| out.extend_from_slice(&p.to_le_bytes()));
        out.into()
    }

    /// `None` unless sorted keys and positions of one length.
    fn decode(bytes: &[u8]) -> Option<KeyMap> {
        if !bytes.len().is_multiple_of(16) {
            return None;
        }
        let (keys, positions) = bytes.split_at(bytes.len() / 2);
        let word = |b: &[u8]| <[u8; 8]>::try_from(b).expect("8 bytes");
        let keys: Vec<i64> = keys.chunks_exact(8).map(|b| i64::from_le_bytes(word(b))).collect();
        let positions = positions.chunks_exact(8).map(|b| u64::from_le_bytes(word(b))).collect();
        keys.is_sorted().then_some(KeyMap { keys, positions })
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

/// The key map of the table made of `files` (in position order) for column `key`:
/// every file's key column chunks in one wave (those this query already read
/// reused), decoded here.
pub(crate) async fn key_map(
    store: &Arc<dyn ObjectStore>,
    files: &[ObjectMeta],
    key: &str,
    io: &Arc<TableIo>,
) -> Result<Arc<KeyMap>> {
    let version = files.iter().map(|f| FileVersion::of(store, f)).collect();
    let load = async {
        let names: Vec<String> =
            files.iter().map(|f| crate::fetch::version_key(f.location.as_ref(), f)).collect();
        let disk_key = format!("keys|{store}|{key}|{}", names.join(";"));
        if let Some(map) = io.from_disk(&disk_key).await.and_then(|b| KeyMap::decode(&b)) {
            io.disk_hit();
            return Ok(Arc::new(map));
        }
        let map = read(store, files, key, io).await?;
        io.to_disk(disk_key, map.encode()).await;
        Ok(map)
    };
    maps().try_get_with((version, key.to_string()), load).await.map_err(DataFusionError::Shared)
}

async fn read(store: &Arc<dyn ObjectStore>, files: &[ObjectMeta], key: &str, io: &Arc<TableIo>) -> Result<Arc<KeyMap>> {
    let footers = footers(store, files, io, &[]).await?;
    let names = [key.to_string()];
    let mut leaves = vec![];
    // (file, byte range) of every key column chunk.
    let mut wanted = vec![];
    for (f, (file, footer)) in files.iter().zip(&footers).enumerate() {
        let [leaf] = footer.leaves(&names)[..] else {
            return Err(DataFusionError::Plan(format!(
                "key column '{key}' of {} is not one flat integer column",
                file.location
            )));
        };
        leaves.push(leaf);
        for group in footer.plain.row_groups() {
            let (start, len) = group.column(leaf).byte_range();
            wanted.push((f, start..start + len));
        }
    }
    let ranges = wanted.iter().map(|(f, r)| (files[*f].location.clone(), r.clone())).collect();
    let mut chunks: Vec<Vec<(u64, bytes::Bytes)>> = vec![vec![]; files.len()];
    for ((f, range), bytes) in wanted.into_iter().zip(fetch_all_files(store, ranges, io).await?) {
        chunks[f].push((range.start, bytes));
    }
    chunks.iter_mut().for_each(|c| c.sort_by_key(|(start, _)| *start));
    let mut pairs: Vec<(i64, u64)> = Vec::new();
    let mut position = 0u64;
    for ((file, footer), (leaf, chunks)) in files.iter().zip(&footers).zip(leaves.into_iter().zip(chunks)) {
        let reader = FileReader::new(store.clone(), file.clone(), io.clone()).with_rows(footer.plain.clone(), chunks);
        let metadata = ArrowReaderMetadata::try_new(footer.plain.clone(), ArrowReaderOptions::new())?;
        let mask = ProjectionMask::leaves(footer.plain.file_metadata().schema_descr(), [leaf]);
        let batches: Vec<_> = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
            .with_projection(mask)
            .with_batch_size(64 * 1024)
            .build()?
            .try_collect()
            .await?;
        let start = position;
        for batch in &batches {
            let keys = cast(batch.column(0), &DataType::Int64)?;
            for k in keys.as_primitive::<Int64Type>() {
                if let Some(k) = k {
                    pairs.push((k, position));
                }
                position += 1;
            }
        }
        if position - start != footer.rows() {
            return Err(DataFusionError::Internal(format!(
                "key column '{key}' of {}: read {} rows of its {}",
                file.location,
                position - start,
                footer.rows()
            )));
        }
    }
    pairs.sort_unstable();
    let (keys, positions) = pairs.into_iter().unzip();
    Ok(Arc::new(KeyMap { keys, positions }))
}
