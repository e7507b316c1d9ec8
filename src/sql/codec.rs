//! Vector tables and index scans as bytes, for engines that ship plans between processes
//! (Ballista): a [`LogicalExtensionCodec`] for the table provider and a
//! [`PhysicalExtensionCodec`] for [`IvfTopKExec`] and [`IvfKnnExec`], each handing every
//! other node to the engine's own codec.
//!
//! An index is not opened by decoding: what planning needs of its header travels with the
//! table, and the index is opened (header only, once per process) when a part is searched.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::temporal_conversions::timestamp_ns_to_datetime;
use datafusion::catalog::TableProvider;
use datafusion::common::{internal_err, DataFusionError, Result, TableReference};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, LogicalPlanBuilder, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::{from_proto::parse_expr, to_proto::serialize_expr};
use datafusion_proto::logical_plan::{AsLogicalPlan, DefaultLogicalExtensionCodec, LogicalExtensionCodec};
use datafusion_proto::physical_plan::{from_proto::parse_physical_expr, to_proto::serialize_physical_expr};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use object_store::ObjectMeta;
use prost::Message;

use super::exec::{IvfKnnExec, IvfTopKExec};
use super::node::TopK;
use super::registry::IndexLocation;
use super::manifest::ObjectVersion;
use super::parts::{store_of, Ids, Part, Span};
use super::rows::FileVersion;
use super::table::{VectorTable, VectorTableOptions};
use crate::{IndexInfo, Metric};

/// Marks our payloads among the engine's.
const MAGIC: &[u8; 4] = b"DFF1";

#[derive(Clone, PartialEq, Message)]
struct TableMsg {
    /// A `LogicalPlanNode` scanning the base table.
    #[prost(bytes = "vec", tag = "1")]
    base: Vec<u8>,
    #[prost(string, tag = "2")]
    index: String,
    #[prost(string, optional, tag = "3")]
    key: Option<String>,
    #[prost(string, tag = "4")]
    vector: String,
    #[prost(bool, tag = "5")]
    normalized: bool,
    /// The index searched (a part's, or the table's first).
    #[prost(string, tag = "6")]
    location: String,
    #[prost(uint64, tag = "7")]
    dimension: u64,
    #[prost(bool, tag = "8")]
    inner_product: bool,
    #[prost(uint64, tag = "9")]
    nlist: u64,
    #[prost(uint64, tag = "10")]
    ntotal: u64,
    #[prost(uint64, tag = "11")]
    code_size: u64,
    #[prost(string, tag = "12")]
    description: String,
    #[prost(uint64, tag = "13")]
    file_size: u64,
    #[prost(uint64, tag = "14")]
    lists_start: u64,
    #[prost(uint64, tag = "15")]
    lists_end: u64,
}

#[derive(Clone, PartialEq, Message)]
struct PartMsg {
    #[prost(message, optional, tag = "1")]
    table: Option<TableMsg>,
    #[prost(bool, tag = "2")]
    exact: bool,
    /// 0 trusted, 1 positions, 2 keys, 3 keys of a complete manifest.
    #[prost(uint32, tag = "3")]
    ids: u32,
    /// (index, rows, part) per span, for positions.
    #[prost(uint64, repeated, tag = "4")]
    spans: Vec<u64>,
    #[prost(message, optional, tag = "5")]
    pinned: Option<VersionMsg>,
    #[prost(uint64, tag = "6")]
    files: u64,
    #[prost(uint64, tag = "7")]
    rows: u64,
    #[prost(uint64, tag = "8")]
    stale: u64,
    /// The part's files as listed at planning; `listed` false: not known, list anew.
    #[prost(bool, tag = "9")]
    listed: bool,
    #[prost(message, repeated, tag = "10")]
    versions: Vec<FileMsg>,
}

#[derive(Clone, PartialEq, Message)]
struct FileMsg {
    #[prost(string, tag = "1")]
    location: String,
    #[prost(uint64, tag = "2")]
    size: u64,
    #[prost(string, optional, tag = "3")]
    e_tag: Option<String>,
    #[prost(int64, tag = "4")]
    modified_nanos: i64,
    #[prost(string, optional, tag = "5")]
    version: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct VersionMsg {
    #[prost(uint64, tag = "1")]
    size: u64,
    #[prost(string, optional, tag = "2")]
    e_tag: Option<String>,
    #[prost(string, tag = "3")]
    last_modified: String,
}

fn encode_part(p: &Part) -> Result<PartMsg> {
    let (ids, spans) = match &p.ids {
        Ids::Trusted => (0, vec![]),
        Ids::Positions(spans) => (1, spans.iter().flat_map(|s| [s.index, s.rows, s.part]).collect()),
        Ids::Keys { complete } => (if *complete { 3 } else { 2 }, vec![]),
    };
    Ok(PartMsg {
        table: Some(encode_table(&p.table)?),
        exact: p.exact,
        ids,
        spans,
        pinned: p.pinned.as_ref().map(|v| VersionMsg {
            size: v.size,
            e_tag: v.e_tag.clone(),
            last_modified: v.last_modified.clone(),
        }),
        files: p.files as u64,
        rows: p.rows,
        stale: p.stale as u64,
        listed: p.versions.is_some(),
        versions: p.versions.iter().flat_map(|v| v.iter()).map(|v| encode_meta(v.meta())).collect::<Result<_>>()?,
    })
}

fn encode_meta(m: &ObjectMeta) -> Result<FileMsg> {
    let Some(modified_nanos) = m.last_modified.timestamp_nanos_opt() else {
        return internal_err!("{}: a modification time out of range", m.location);
    };
    Ok(FileMsg {
        location: m.location.to_string(),
        size: m.size,
        e_tag: m.e_tag.clone(),
        modified_nanos,
        version: m.version.clone(),
    })
}

fn decode_file(f: &FileMsg) -> Result<ObjectMeta> {
    let Some(modified) = timestamp_ns_to_datetime(f.modified_nanos) else {
        return internal_err!("{}: a modification time out of range", f.location);
    };
    Ok(ObjectMeta {
        location: object_store::path::Path::from(f.location.as_str()),
        last_modified: modified.and_utc(),
        size: f.size,
        e_tag: f.e_tag.clone(),
        version: f.version.clone(),
    })
}

/// The planned versions, named in this process's store for the part's table.
fn decode_versions(msg: &PartMsg, table: &VectorTable, ctx: &TaskContext) -> Result<Option<Arc<Vec<FileVersion>>>> {
    if !msg.listed {
        return Ok(None);
    }
    let Some(store) = store_of(table.base(), &ctx.runtime_env()) else {
        return internal_err!("a FAISS plan part with listed files over a table that is not a listing");
    };
    let files = msg.versions.iter().map(|f| Ok(FileVersion::of(&store, &decode_file(f)?)));
    Ok(Some(Arc::new(files.collect::<Result<_>>()?)))
}

fn decode_part(msg: &PartMsg, table: Arc<VectorTable>, ctx: &TaskContext) -> Result<Part> {
    let ids = match msg.ids {
        0 => Ids::Trusted,
        1 => Ids::Positions(Arc::new(
            msg.spans.chunks_exact(3).map(|s| Span { index: s[0], rows: s[1], part: s[2] }).collect(),
        )),
        2 => Ids::Keys { complete: false },
        3 => Ids::Keys { complete: true },
        other => return internal_err!("a FAISS plan part with ids of kind {other}"),
    };
    Ok(Part {
        versions: decode_versions(msg, &table, ctx)?,
        table,
        exact: msg.exact,
        ids,
        pinned: msg.pinned.as_ref().map(|v| ObjectVersion {
            size: v.size,
            e_tag: v.e_tag.clone(),
            last_modified: v.last_modified.clone(),
        }),
        files: msg.files as usize,
        rows: msg.rows,
        stale: msg.stale as usize,
    })
}

#[derive(Clone, PartialEq, Message)]
struct ScanMsg {
    #[prost(message, optional, tag = "1")]
    table: Option<TableMsg>,
    #[prost(string, tag = "2")]
    table_name: String,
    #[prost(uint64, repeated, tag = "3")]
    projection: Vec<u64>,
    /// `LogicalExprNode`s.
    #[prost(bytes = "vec", repeated, tag = "4")]
    filters: Vec<Vec<u8>>,
    #[prost(float, repeated, tag = "5")]
    query: Vec<f32>,
    #[prost(uint64, tag = "6")]
    k: u64,
    #[prost(string, tag = "7")]
    function: String,
    #[prost(uint64, tag = "8")]
    nprobe: u64,
    #[prost(uint64, tag = "9")]
    refine: u64,
    #[prost(bool, tag = "10")]
    vectors_from_index: bool,
    #[prost(uint64, tag = "12")]
    cache_bytes: u64,
    #[prost(message, repeated, tag = "13")]
    parts: Vec<PartMsg>,
    /// The batch search: its query vector (a `PhysicalExprNode` over the input), which
    /// side the table's columns are on, and its output schema (a `Schema`).
    #[prost(bytes = "vec", optional, tag = "14")]
    knn_query: Option<Vec<u8>>,
    #[prost(bool, tag = "15")]
    vector_left: bool,
    #[prost(bytes = "vec", tag = "16")]
    schema: Vec<u8>,
    /// The disk tier's folder (empty: none) and budget.
    #[prost(string, tag = "17")]
    disk_dir: String,
    #[prost(uint64, tag = "18")]
    disk_bytes: u64,
}

fn decode_err(e: prost::DecodeError) -> DataFusionError {
    DataFusionError::Internal(format!("decoding a FAISS plan node: {e}"))
}

fn ours(buf: &[u8]) -> Option<&[u8]> {
    buf.strip_prefix(MAGIC.as_slice())
}

fn framed(msg: &impl Message, buf: &mut Vec<u8>) {
    buf.extend_from_slice(MAGIC);
    msg.encode(buf).expect("a Vec grows");
}

fn encode_table(table: &VectorTable) -> Result<TableMsg> {
    let scan = LogicalPlanBuilder::scan("base", provider_as_source(table.base().clone()), None)?.build()?;
    let base = protobuf::LogicalPlanNode::try_from_logical_plan(&scan, &DefaultLogicalExtensionCodec {})?;
    let options = table.options();
    let info = table.index_info();
    Ok(TableMsg {
        base: base.encode_to_vec(),
        index: options.index.clone(),
        key: options.key.clone(),
        vector: options.vector.clone(),
        normalized: options.normalized,
        location: table.location().as_str().to_string(),
        dimension: info.dimension as u64,
        inner_product: info.metric == Metric::InnerProduct,
        nlist: info.nlist as u64,
        ntotal: info.ntotal,
        code_size: info.code_size as u64,
        description: info.description.clone(),
        file_size: info.file_size,
        lists_start: info.lists.start,
        lists_end: info.lists.end,
    })
}

fn decode_table(msg: &TableMsg, ctx: &TaskContext) -> Result<VectorTable> {
    let base = protobuf::LogicalPlanNode::decode(msg.base.as_slice()).map_err(decode_err)?;
    let LogicalPlan::TableScan(scan) = base.try_into_logical_plan(ctx, &DefaultLogicalExtensionCodec {})? else {
        return internal_err!("a vector table's base is a table scan");
    };
    let base = source_as_provider(&scan.source)?;
    let options = VectorTableOptions {
        index: msg.index.clone(),
        key: msg.key.clone(),
        vector: msg.vector.clone(),
        normalized: msg.normalized,
    };
    let info = IndexInfo {
        dimension: msg.dimension as usize,
        metric: if msg.inner_product { Metric::InnerProduct } else { Metric::L2 },
        nlist: msg.nlist as usize,
        ntotal: msg.ntotal,
        code_size: msg.code_size as usize,
        description: msg.description.clone(),
        file_size: msg.file_size,
        lists: msg.lists_start..msg.lists_end,
    };
    let location = IndexLocation::resolve(&msg.location, &ctx.runtime_env())?;
    VectorTable::assemble(base, options, location, info)
}

fn encode_scan(spec: &TopK, parts: &[Part], logical: &dyn LogicalExtensionCodec) -> Result<ScanMsg> {
    let filters = spec.filters.iter().map(|f| Ok(serialize_expr(f, logical)?.encode_to_vec()));
    let parts = parts.iter().map(encode_part);
    Ok(ScanMsg {
        table: Some(encode_table(&spec.table)?),
        table_name: spec.table_name.to_string(),
        projection: spec.projection.iter().map(|&c| c as u64).collect(),
        filters: filters.collect::<Result<_>>()?,
        query: spec.query.clone(),
        k: spec.k as u64,
        function: spec.function.clone(),
        nprobe: spec.nprobe as u64,
        refine: spec.refine as u64,
        vectors_from_index: spec.vectors_from_index,
        cache_bytes: spec.cache_bytes,
        disk_dir: spec.disk.as_ref().map(|d| d.dir().to_string_lossy().into_owned()).unwrap_or_default(),
        disk_bytes: spec.disk.as_ref().map_or(0, |d| d.budget()),
        parts: parts.collect::<Result<_>>()?,
        knn_query: None,
        vector_left: false,
        schema: vec![],
    })
}

fn decode_scan(msg: &ScanMsg, ctx: &TaskContext, logical: &dyn LogicalExtensionCodec) -> Result<(TopK, Vec<Part>)> {
    let table = |t: &Option<TableMsg>| match t {
        Some(t) => Ok(Arc::new(decode_table(t, ctx)?)),
        None => internal_err!("a FAISS plan node without its table"),
    };
    let filters = msg.filters.iter().map(|f| {
        let node = protobuf::LogicalExprNode::decode(f.as_slice()).map_err(decode_err)?;
        Ok(parse_expr(&node, ctx, logical)?)
    });
    let spec = TopK {
        table: table(&msg.table)?,
        table_name: TableReference::parse_str(&msg.table_name),
        projection: msg.projection.iter().map(|&c| c as usize).collect(),
        filters: filters.collect::<Result<_>>()?,
        query: msg.query.clone(),
        k: msg.k as usize,
        function: msg.function.clone(),
        nprobe: msg.nprobe as usize,
        refine: msg.refine as usize,
        vectors_from_index: msg.vectors_from_index,
        cache_bytes: msg.cache_bytes,
        disk: (!msg.disk_dir.is_empty()).then(|| crate::DiskCache::open(&msg.disk_dir, msg.disk_bytes)),
    };
    let parts = msg.parts.iter().map(|p| decode_part(p, table(&p.table)?, ctx));
    Ok((spec, parts.collect::<Result<_>>()?))
}

/// A session for the base-table reads of a decoded scan: the task's settings, stores and
/// functions.
fn session(ctx: &TaskContext) -> datafusion::execution::context::SessionState {
    SessionStateBuilder::new()
        .with_config(ctx.session_config().clone())
        .with_runtime_env(ctx.runtime_env())
        .with_scalar_functions(ctx.scalar_functions().values().cloned().collect())
        .with_aggregate_functions(ctx.aggregate_functions().values().cloned().collect())
        .with_window_functions(ctx.window_functions().values().cloned().collect())
        .build()
}

/// The logical codec: vector tables, and everything else by `inner`.
#[derive(Debug)]
pub struct FaissLogicalCodec {
    inner: Arc<dyn LogicalExtensionCodec>,
}

impl FaissLogicalCodec {
    pub fn new(inner: Arc<dyn LogicalExtensionCodec>) -> Self {
        FaissLogicalCodec { inner }
    }
}

impl LogicalExtensionCodec for FaissLogicalCodec {
    fn try_decode(&self, buf: &[u8], inputs: &[LogicalPlan], ctx: &TaskContext) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match ours(buf) {
            Some(buf) => Ok(Arc::new(decode_table(&TableMsg::decode(buf).map_err(decode_err)?, ctx)?)),
            None => self.inner.try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        match node.downcast_ref::<VectorTable>() {
            Some(table) => Ok(framed(&encode_table(table)?, buf)),
            None => self.inner.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

/// The physical codec: the index scan and the batch search, and everything else by `inner`.
#[derive(Debug)]
pub struct FaissPhysicalCodec {
    inner: Arc<dyn PhysicalExtensionCodec>,
}

impl FaissPhysicalCodec {
    pub fn new(inner: Arc<dyn PhysicalExtensionCodec>) -> Self {
        FaissPhysicalCodec { inner }
    }
}

impl PhysicalExtensionCodec for FaissPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(buf) = ours(buf) else { return self.inner.try_decode(buf, inputs, ctx, proto_converter) };
        let msg = ScanMsg::decode(buf).map_err(decode_err)?;
        let (spec, parts) = decode_scan(&msg, ctx, &DefaultLogicalExtensionCodec {})?;
        let [input] = inputs else { return internal_err!("a FAISS plan node has one input") };
        let Some(query) = &msg.knn_query else {
            return Ok(Arc::new(IvfTopKExec::with_numbers(spec, parts, input.clone(), session(ctx))));
        };
        let query = protobuf::PhysicalExprNode::decode(query.as_slice()).map_err(decode_err)?;
        let query = parse_physical_expr(&query, ctx, &input.schema(), self)?;
        let schema = protobuf::Schema::decode(msg.schema.as_slice()).map_err(decode_err)?;
        let schema = Arc::new(Schema::try_from(&schema)?);
        let exec = IvfKnnExec::new(spec, parts, input.clone(), query, msg.vector_left, schema, session(ctx));
        Ok(Arc::new(exec))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let logical = DefaultLogicalExtensionCodec {};
        if let Some(scan) = node.downcast_ref::<IvfTopKExec>() {
            return Ok(framed(&encode_scan(scan.spec(), scan.parts(), &logical)?, buf));
        }
        if let Some(knn) = node.downcast_ref::<IvfKnnExec>() {
            let mut msg = encode_scan(knn.spec(), knn.parts(), &logical)?;
            msg.knn_query = Some(serialize_physical_expr(knn.query(), self)?.encode_to_vec());
            msg.vector_left = knn.vector_left();
            msg.schema = protobuf::Schema::try_from(knn.schema().as_ref())?.encode_to_vec();
            return Ok(framed(&msg, buf));
        }
        self.inner.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.inner.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        self.inner.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> Result<Arc<WindowUDF>> {
        self.inner.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode_udwf(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file version decodes to the same version: an executor reads the footers the
    /// planner listed, not a neighbour's by a rounded mtime.
    #[test]
    fn file_versions_survive_encoding() {
        let meta = ObjectMeta {
            location: object_store::path::Path::from("docs/part-00.parquet"),
            last_modified: timestamp_ns_to_datetime(1_764_806_400_123_456_789).unwrap().and_utc(),
            size: 522_000_123,
            e_tag: Some("\"5d41402abc4b2a76b9719d911017c592\"".into()),
            version: Some("v7".into()),
        };
        let msg = FileMsg::decode(encode_meta(&meta).unwrap().encode_to_vec().as_slice()).unwrap();
        assert_eq!(decode_file(&msg).unwrap(), meta);
        let bare = ObjectMeta { e_tag: None, version: None, ..meta };
        assert_eq!(decode_file(&encode_meta(&bare).unwrap()).unwrap(), bare);
    }
}
