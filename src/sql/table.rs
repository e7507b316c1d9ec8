//! The vector table: a base table plus the FAISS index of one of its vector columns.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{plan_err, Constraints, DataFusionError, Result, Statistics};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;

use super::config::FaissConfig;
use super::registry::{self, IndexLocation};
use super::manifest::IndexSet;
use crate::{IndexInfo, IvfIndex, Metric};

/// How a base table's rows map to an index.
#[derive(Debug, Clone)]
pub struct VectorTableOptions {
    /// URL (or local path) of the FAISS index file; or, ending in `/`, of a folder of
    /// indexes, e.g. one per data file (`part-0.parquet` → `part-0.faiss`). Each index's
    /// manifest (`<index>.json`) says which data file versions it covers; see
    /// [`super::manifest`].
    pub index: String,
    /// Integer column holding the ids the index was built with; `None` when the ids are
    /// row positions (FAISS's own ids for `index.add(x)`, with `x` the table's vectors in
    /// its order: files by path, rows in file order).
    pub key: Option<String>,
    /// Column of vectors (`FixedSizeList` or `List` of Float32) the index was built from.
    pub vector: String,
    /// The indexed vectors have unit length, so an inner-product index also serves
    /// `cosine_distance`.
    pub normalized: bool,
}

/// A table whose SQL behaves exactly like its base table's; the top-k rewrite turns
/// `ORDER BY <distance>(vector, [...]) LIMIT k` on it into an index scan.
#[derive(Debug, Clone)]
pub struct VectorTable {
    base: Arc<dyn TableProvider>,
    options: VectorTableOptions,
    /// The index; for a folder of indexes, the first (its dimension and metric are every
    /// index's).
    location: IndexLocation,
    key: Option<usize>,
    vector: usize,
    info: IndexInfo,
}

impl VectorTable {
    /// Checks that `options` fit `base` and opens the index (header only) through the
    /// object store `session` has registered for its URL.
    pub async fn try_new(
        session: &dyn Session,
        base: Arc<dyn TableProvider>,
        options: VectorTableOptions,
    ) -> Result<VectorTable> {
        Self::create(session, async { Ok(base) }, options).await
    }

    /// [`try_new`](Self::try_new) with the index opened while `base` is made (its
    /// listing and footers): `CREATE EXTERNAL TABLE` costs the round trips of the
    /// slower of the two.
    pub(crate) async fn create(
        session: &dyn Session,
        base: impl std::future::Future<Output = Result<Arc<dyn TableProvider>>>,
        options: VectorTableOptions,
    ) -> Result<VectorTable> {
        let opening = async {
            let set = IndexSet::new(&options.index, session.runtime_env())?;
            let location = match set.is_folder() {
                true => match set.list(session.runtime_env()).await?.into_iter().next() {
                    Some(first) => first.location,
                    None => return plan_err!("no FAISS index (*.faiss) under {}: build them with `datafusion-faiss build --per-file`", options.index),
                },
                false => IndexLocation::resolve(&options.index, session.runtime_env())?,
            };
            let settings = FaissConfig::from_options(session.config_options());
            let index = registry::open_current(&location, settings.cache_bytes(), settings.disk().as_ref()).await;
            Ok((index.map_err(|e| index_error(&location, e))?, location))
        };
        let (base, opened) = futures::join!(base, opening);
        let base = base?;
        let schema = base.schema();
        let column = |name: &str, role: &str| {
            schema.index_of(name).map_err(|_| {
                let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                DataFusionError::Plan(format!(
                    "{role} column '{name}' is not in the table (columns: {})",
                    names.join(", ")
                ))
            })
        };
        let key = options.key.as_deref().map(|key| column(key, "key")).transpose()?;
        let vector = column(&options.vector, "vector")?;
        if let Some(key) = key {
            let key_type = schema.field(key).data_type();
            if !key_type.is_integer() || *key_type == DataType::UInt64 {
                return plan_err!(
                    "key column '{}' must be an integer column of FAISS ids, got {key_type}",
                    schema.field(key).name()
                );
            }
        }
        if key.is_none() && !parquet_files(base.as_ref()) {
            return plan_err!(
                "a vector table without 'key' (ids are row positions) needs a base table of Parquet files, got {:?}",
                base.table_type()
            );
        }
        let (index, location) = opened?;
        let info = index.info().clone();
        match schema.field(vector).data_type() {
            DataType::FixedSizeList(item, d) if item.data_type() == &DataType::Float32 => {
                if *d as usize != info.dimension {
                    return plan_err!(
                        "vector column '{}' has dimension {d} but index {} has dimension {}",
                        options.vector,
                        location.as_str(),
                        info.dimension
                    );
                }
            }
            DataType::List(item) | DataType::LargeList(item) if item.data_type() == &DataType::Float32 => {}
            other => return plan_err!("vector column '{}' must be a list of Float32, got {other}", options.vector),
        }
        Ok(VectorTable { base, options, location, key, vector, info })
    }

    /// The table described by a plan another process made (see `codec`), the index not
    /// opened: `info` is what its header said there.
    #[cfg(feature = "proto")]
    pub(crate) fn assemble(
        base: Arc<dyn TableProvider>,
        options: VectorTableOptions,
        location: IndexLocation,
        info: IndexInfo,
    ) -> Result<VectorTable> {
        let schema = base.schema();
        let key = options.key.as_deref().map(|k| schema.index_of(k)).transpose()?;
        let vector = schema.index_of(&options.vector)?;
        Ok(VectorTable { base, options, location, key, vector, info })
    }

    /// One part of the table (see [`super::parts`]): `base` (some of its files) with the
    /// index at `location`, which must search the same vectors the same way.
    pub(crate) fn part(&self, base: Arc<dyn TableProvider>, location: IndexLocation, info: IndexInfo) -> Result<VectorTable> {
        if info.dimension != self.info.dimension || info.metric != self.info.metric {
            return plan_err!(
                "index {} has dimension {} / {:?}, the table's first index {} has {} / {:?}",
                location.as_str(),
                info.dimension,
                info.metric,
                self.location.as_str(),
                self.info.dimension,
                self.info.metric
            );
        }
        Ok(VectorTable { base, location, info, ..self.clone() })
    }

    pub fn base(&self) -> &Arc<dyn TableProvider> {
        &self.base
    }

    pub fn options(&self) -> &VectorTableOptions {
        &self.options
    }

    /// What the index header said when the table was created.
    pub fn index_info(&self) -> &IndexInfo {
        &self.info
    }

    pub(crate) fn metric(&self) -> Metric {
        self.info.metric
    }

    pub(crate) fn location(&self) -> &IndexLocation {
        &self.location
    }

    /// Position of the key column in the base schema; `None` when ids are row positions.
    pub(crate) fn key_index(&self) -> Option<usize> {
        self.key
    }

    /// Position of the vector column in the base schema.
    pub(crate) fn vector_index(&self) -> usize {
        self.vector
    }

    /// The shared open index, reopened when the object was replaced since (then checked
    /// again against the table).
    pub(crate) async fn index(&self, cache_bytes: u64, disk: Option<&crate::DiskCache>) -> Result<Arc<IvfIndex>> {
        let index =
            registry::open(&self.location, cache_bytes, disk).await.map_err(|e| index_error(&self.location, e))?;
        let now = index.info();
        if now.dimension != self.info.dimension || now.metric != self.info.metric {
            return plan_err!(
                "index {} was replaced by one of dimension {} / {:?} (the table was created with {} / {:?}): recreate the table",
                self.location.as_str(),
                now.dimension,
                now.metric,
                self.info.dimension,
                self.info.metric
            );
        }
        Ok(index)
    }
}

/// Whether `base` reads Parquet files (where rows have positions).
pub(super) fn parquet_files(base: &dyn TableProvider) -> bool {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::ListingTable;
    (base as &dyn std::any::Any)
        .downcast_ref::<ListingTable>()
        .is_some_and(|t| t.options().format.downcast_ref::<ParquetFormat>().is_some())
}

/// An index error as a DataFusion error that names the index URL.
pub(crate) fn index_error(at: &IndexLocation, e: crate::Error) -> DataFusionError {
    DataFusionError::External(format!("FAISS index {}: {e}", at.as_str()).into())
}

#[async_trait]
impl TableProvider for VectorTable {
    fn schema(&self) -> SchemaRef {
        self.base.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.base.constraints()
    }

    fn table_type(&self) -> TableType {
        self.base.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.base.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        self.base.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.base.statistics()
    }
}
