//! Vector tables for SQL tests: a Parquet base table and its FAISS index, written to any
//! store. Row `i` has key `3i + 11`, `bucket = (i · 7919) mod 1000` (so `bucket < 1`,
//! `< 100`, `< 900` pass 0.1 %, 10 %, 90 % of rows), `lang` 'en' for bucket < 900 else
//! 'de', and a clustered vector.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, Int64Array, ListArray, RecordBatch, StringArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion_faiss::Metric;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::{clustered, ids};

pub struct Docs {
    pub n: usize,
    pub d: usize,
    pub seed: u64,
    /// Scale every vector to unit length (for cosine through an inner-product index).
    pub normalized: bool,
    /// `List<Float32>` instead of `FixedSizeList<Float32, d>`.
    pub variable_lists: bool,
    pub rows_per_group: usize,
    /// Rows whose vector is row 0's (ties at any distance from a query).
    pub copies_of_first: Vec<usize>,
}

impl Docs {
    pub fn new(n: usize, d: usize, seed: u64) -> Docs {
        Docs { n, d, seed, normalized: false, variable_lists: false, rows_per_group: 1000, copies_of_first: vec![] }
    }

    pub fn vectors(&self) -> Vec<f32> {
        let mut x = clustered(self.n, self.d, 12, self.seed);
        for &row in &self.copies_of_first {
            x.copy_within(0..self.d, row * self.d);
        }
        if self.normalized {
            for v in x.chunks_mut(self.d) {
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.iter_mut().for_each(|a| *a /= norm);
            }
        }
        x
    }

    pub fn keys(&self) -> Vec<i64> {
        ids(self.n)
    }

    pub fn parquet(&self) -> Vec<u8> {
        let x = self.vectors();
        let item = Arc::new(Field::new("item", DataType::Float32, true));
        let values = Arc::new(Float32Array::from(x));
        let embedding: ArrayRef = if self.variable_lists {
            Arc::new(ListArray::new(item, OffsetBuffer::from_lengths(vec![self.d; self.n]), values, None))
        } else {
            Arc::new(FixedSizeListArray::new(item, self.d as i32, values, None))
        };
        let bucket: Vec<i64> = (0..self.n as i64).map(|i| i * 7919 % 1000).collect();
        let lang: Vec<&str> = bucket.iter().map(|&b| if b < 900 { "en" } else { "de" }).collect();
        let title: Vec<String> = (0..self.n).map(|i| format!("doc {i}")).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("title", DataType::Utf8, false),
            Field::new("bucket", DataType::Int64, false),
            Field::new("lang", DataType::Utf8, false),
            Field::new("embedding", embedding.data_type().clone(), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(self.keys())),
                Arc::new(StringArray::from(title)),
                Arc::new(Int64Array::from(bucket)),
                Arc::new(StringArray::from(lang)),
                embedding,
            ],
        )
        .unwrap();
        // Small pages, as the README advises, so key lookups skip most of the table.
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(self.rows_per_group))
            .set_data_page_row_count_limit(64)
            .set_write_batch_size(64)
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        out
    }

    /// The index bytes, built with `factory` over the table's vectors and keys.
    pub async fn index(&self, factory: &str, metric: Metric) -> Vec<u8> {
        // The builders' ids (3i + 11) are the table's keys.
        super::build_ours(&self.vectors(), self.d, factory, metric).await
    }

    /// Writes `{name}.parquet` and `{name}.faiss` under `prefix` of `store`.
    pub async fn write(&self, store: &dyn ObjectStore, prefix: &str, name: &str, factory: &str, metric: Metric) {
        let table = Path::from(format!("{prefix}/{name}.parquet"));
        store.put(&table, PutPayload::from(self.parquet())).await.unwrap();
        let index = Path::from(format!("{prefix}/{name}.faiss"));
        store.put(&index, PutPayload::from(self.index(factory, metric).await)).await.unwrap();
    }
}
