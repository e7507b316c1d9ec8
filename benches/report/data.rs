//! The report's data: vectors, their Parquet table, the index files and the exact
//! neighbours, each made once and kept under the data set's folder.

use std::io::Read;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{FixedSizeListArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion_faiss::{InMemoryIndex, IvfIndexBuilder, Metric};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::common::Rng;

const FASHION: &str = "/usr/share/datasets/fashion-mnist";

/// Where a data set's vectors come from.
pub enum Source {
    /// Debian's `dataset-fashion-mnist`: the training images are the base, the test
    /// images the queries.
    FashionMnist,
    /// `n` base vectors and `nq` queries drawn around `centers` random centres.
    Clustered { n: usize, nq: usize, d: usize, centers: usize, seed: u64 },
}

pub struct Spec {
    pub name: String,
    pub source: Source,
    pub factories: Vec<String>,
    /// Rows the quantizers are trained on (the first rows; both sources are in random order).
    pub train_rows: usize,
    /// Lists of every factory (the truth probes them all).
    pub nlist: usize,
    pub k: usize,
}

pub struct Dataset {
    pub name: String,
    pub d: usize,
    pub n: usize,
    pub queries: Vec<f32>,
    /// The exact `k` nearest base rows of each query.
    pub truth: Vec<i64>,
    pub k: usize,
    pub parquet: PathBuf,
    /// One index file per factory, in `Spec::factories` order.
    pub indexes: Vec<(String, PathBuf)>,
    /// Seconds spent building what was not cached.
    pub build_secs: Vec<(String, f64)>,
}

impl Dataset {
    pub fn nq(&self) -> usize {
        self.queries.len() / self.d
    }
}

/// Loads the vectors and makes whatever of table, indexes and ground truth is missing.
pub fn prepare(spec: &Spec, root: &FsPath) -> Dataset {
    let dir = root.join(&spec.name);
    std::fs::create_dir_all(&dir).unwrap();
    let (base, labels, queries, d) = match spec.source {
        Source::FashionMnist => {
            let (base, d) = read_idx(&FsPath::new(FASHION).join("train-images-idx3-ubyte.gz"));
            let (queries, _) = read_idx(&FsPath::new(FASHION).join("t10k-images-idx3-ubyte.gz"));
            let labels = read_labels(&FsPath::new(FASHION).join("train-labels-idx1-ubyte.gz"));
            (base, labels, queries, d)
        }
        Source::Clustered { n, nq, d, centers, seed } => {
            let (mut all, which) = clustered(n + nq, d, centers, seed);
            let queries = all.split_off(n * d);
            (all, which[..n].iter().map(|&c| (c % 10) as u8).collect(), queries, d)
        }
    };
    let n = base.len() / d;
    let mut build_secs = Vec::new();

    let parquet = dir.join("table.parquet");
    if !parquet.exists() {
        let t = Instant::now();
        write_parquet(&parquet, &base, &labels, d);
        build_secs.push(("table.parquet".to_string(), t.elapsed().as_secs_f64()));
    }
    let mut indexes = Vec::new();
    for factory in &spec.factories {
        let file = dir.join(format!("{}.faiss", factory.replace(',', "-")));
        if !file.exists() {
            let t = Instant::now();
            build_index(&file, &base, d, factory, spec.train_rows);
            build_secs.push((factory.clone(), t.elapsed().as_secs_f64()));
            eprintln!("report: built {} in {:.1} s", file.display(), t.elapsed().as_secs_f64());
        }
        indexes.push((factory.clone(), file));
    }

    let nq = queries.len() / d;
    let truth_file = dir.join(format!("truth-k{}-nq{nq}.i64", spec.k));
    let truth = match std::fs::read(&truth_file) {
        Ok(raw) if raw.len() == nq * spec.k * 8 => {
            raw.chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
        }
        _ => {
            // An IVF-Flat index holds the vectors themselves: probing every list is an
            // exact search, done by FAISS's SIMD kernels on every core.
            let (_, flat) = indexes.iter().find(|(f, _)| f.ends_with(",Flat")).expect("a Flat index for the truth");
            let t = Instant::now();
            let exact = InMemoryIndex::from_bytes(&std::fs::read(flat).unwrap()).unwrap();
            let ids = faiss_all(&exact, &queries, d, spec.k, spec.nlist);
            std::fs::write(&truth_file, ids.iter().flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
            build_secs.push(("ground truth".to_string(), t.elapsed().as_secs_f64()));
            ids
        }
    };
    Dataset { name: spec.name.clone(), d, n, queries, truth, k: spec.k, parquet, indexes, build_secs }
}

/// FAISS in memory over every query, in two threads (its search is one thread per call).
pub fn faiss_all(index: &InMemoryIndex, queries: &[f32], d: usize, k: usize, nprobe: usize) -> Vec<i64> {
    let half = (queries.len() / d).div_ceil(2) * d;
    std::thread::scope(|s| {
        let parts: Vec<_> =
            queries.chunks(half).map(|part| s.spawn(move || index.search(part, k, nprobe).unwrap().0)).collect();
        parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
    })
}

/// Vectors around `centers` centres (uniform in ±1 per component, noise ±1: clusters
/// overlap, so recall grows with nprobe as on real data), and the centre of each.
fn clustered(n: usize, d: usize, centers: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let c: Vec<f32> = (0..centers * d).map(|_| rng.unit()).collect();
    let mut out = Vec::with_capacity(n * d);
    let mut which = Vec::with_capacity(n);
    for _ in 0..n {
        let k = (rng.next() % centers as u64) as usize;
        which.push(k);
        out.extend((0..d).map(|j| c[k * d + j] + rng.unit()));
    }
    (out, which)
}

fn build_index(file: &FsPath, base: &[f32], d: usize, factory: &str, train_rows: usize) {
    let n = base.len() / d;
    let mut builder = IvfIndexBuilder::new(d, factory, Metric::L2).unwrap().threads(2);
    builder.train(&base[..train_rows.min(n) * d]).unwrap();
    let ids: Vec<i64> = (0..n as i64).collect();
    for (x, ids) in base.chunks(65536 * d).zip(ids.chunks(65536)) {
        builder.add(x, ids).unwrap();
    }
    let tmp = file.with_extension("faiss.tmp");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(builder.write(store, &Path::from_absolute_path(std::path::absolute(&tmp).unwrap()).unwrap())).unwrap();
    std::fs::rename(tmp, file).unwrap();
}

/// `id, label, embedding FLOAT[d]` in 4096-row groups of ~32 KB pages: a lookup by key
/// decodes whole pages, so small pages keep it to about the rows it needs. Components
/// are not nullable, which spares the decoder a validity bitmap per value.
fn write_parquet(file: &FsPath, base: &[f32], labels: &[u8], d: usize) {
    let n = base.len() / d;
    let page_rows = (32768 / (4 * d)).clamp(8, 1024);
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let list = DataType::FixedSizeList(item.clone(), d as i32);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("label", DataType::Int64, false),
        Field::new("embedding", list, false),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(4096))
        .set_data_page_row_count_limit(page_rows)
        .set_write_batch_size(page_rows)
        .build();
    let tmp = file.with_extension("parquet.tmp");
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&tmp).unwrap(), schema.clone(), Some(props)).unwrap();
    for start in (0..n).step_by(65536) {
        let end = (start + 65536).min(n);
        let values = Float32Array::from(base[start * d..end * d].to_vec());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(start as i64..end as i64)),
                Arc::new(Int64Array::from_iter_values(labels[start..end].iter().map(|&l| l as i64))),
                Arc::new(FixedSizeListArray::new(item.clone(), d as i32, Arc::new(values), None)),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
    std::fs::rename(tmp, file).unwrap();
}

fn gunzip(file: &FsPath) -> Vec<u8> {
    let raw = std::fs::File::open(file)
        .unwrap_or_else(|e| panic!("{}: {e} (install dataset-fashion-mnist: scripts/setup.sh)", file.display()));
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(raw).read_to_end(&mut data).unwrap();
    data
}

/// An IDX image file: `n × (rows·cols)` floats.
fn read_idx(file: &FsPath) -> (Vec<f32>, usize) {
    let data = gunzip(file);
    let word = |i: usize| u32::from_be_bytes(data[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    assert_eq!(word(0), 0x803, "{}: not an IDX image file", file.display());
    let (n, d) = (word(1), word(2) * word(3));
    assert_eq!(data.len(), 16 + n * d, "{}: truncated", file.display());
    (data[16..].iter().map(|&b| b as f32).collect(), d)
}

fn read_labels(file: &FsPath) -> Vec<u8> {
    let mut data = gunzip(file);
    assert_eq!(data[..4], [0, 0, 8, 1], "{}: not an IDX label file", file.display());
    data.split_off(8)
}
