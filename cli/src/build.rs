//! `build`: train and fill a FAISS IVF index from the rows of a table or a SQL query, and
//! publish it as a standard FAISS file.
//!
//! Memory stays at what FAISS needs: a first pass over the rows keeps only a reservoir
//! sample for training; a second pass streams the rows into the index batch by batch. When
//! the sample turned out to hold every row, the second pass is skipped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float32Array, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use datafusion_faiss::{IvfIndexBuilder, Metric};
use datafusion_faiss::sql::manifest::{self, Manifest};
use futures::{StreamExt, TryStreamExt};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use object_store::path::Path;
use object_store::ObjectStoreExt;

use super::{context, CliResult, Location};

#[derive(clap::Args)]
pub struct BuildArgs {
    /// Parquet file or folder to index, registered as table `input`.
    #[arg(long, short)]
    input: Option<String>,
    /// More Parquet tables for --query, as NAME=URL (repeatable).
    #[arg(long = "table", value_name = "NAME=URL")]
    tables: Vec<String>,
    /// SQL yielding the key and vector columns [default: SELECT <key>, <vector> FROM input].
    #[arg(long, short)]
    query: Option<String>,
    /// Integer column whose values become the index ids.
    #[arg(long, default_value = "id")]
    key: String,
    /// No ids: each vector's id is its row's position in the table (files in path order,
    /// rows in file order), as FAISS numbers `index.add(x)`; declare the table without 'key'.
    #[arg(long, conflicts_with_all = ["key", "query", "tables"])]
    positions: bool,
    /// Vector column: FixedSizeList or List of Float32.
    #[arg(long, default_value = "embedding")]
    vector: String,
    /// FAISS factory string of an IVF index with Flat, SQ or PQ codes.
    #[arg(long, default_value = "IVF1024,Flat")]
    factory: String,
    /// cosine normalises every vector and searches by inner product.
    #[arg(long, value_enum, default_value = "l2")]
    metric: MetricArg,
    /// Vectors sampled to train on [default: 64 × nlist; FAISS wants 30 to 256 per list].
    #[arg(long)]
    train_size: Option<usize>,
    /// Where the index goes: a local path, file://, s3://bucket/key or memory://name/key.
    #[arg(long, short)]
    output: String,
    /// Seed of the training sample.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One index per Parquet file of --input (a folder): `part-0.parquet` gets
    /// `<output>/part-0.faiss` and its manifest `part-0.faiss.json` recording the file's
    /// version; files whose index is up to date are skipped. Declare the table with
    /// OPTIONS ('index' '<output>/').
    #[arg(long, requires = "input", conflicts_with_all = ["query", "tables"])]
    per_file: bool,
    /// Index only the files of --input that --output (an index with a manifest) and its
    /// deltas do not cover, as a delta `<output stem>.delta-<time>.faiss` beside it that
    /// reuses the index's training (no retraining); the table keeps being searched
    /// through all of them. Give the index's --positions or --key and --metric.
    #[arg(long, requires = "input", conflicts_with_all = ["query", "tables", "per_file", "factory", "train_size"])]
    update: bool,
}

#[derive(clap::Args)]
pub struct AttachArgs {
    /// The Parquet file or folder the index was built from, as it is now.
    #[arg(long, short)]
    table: String,
    /// The index: its manifest goes next to it (`<index>.json`).
    #[arg(long, short)]
    index: String,
}

/// `attach`: record the table's files as what the index covers.
pub async fn attach(args: AttachArgs) -> CliResult {
    record(&context()?, &args.table, &args.index).await?;
    Ok(())
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MetricArg {
    L2,
    Ip,
    Cosine,
}

/// Vectors added to FAISS per call: large enough to use every core, small enough for a
/// progress bar to move.
const ADD_CHUNK: usize = 16_384;

pub async fn run(args: BuildArgs) -> CliResult {
    if args.per_file {
        return per_file(args).await;
    }
    if args.update {
        return update(args).await;
    }
    let ctx = context()?;
    let out = Location::parse(&args.output)?;
    if let Some(input) = &args.input {
        register_parquet(&ctx, "input", input).await?;
    }
    for table in &args.tables {
        let (name, url) = table.split_once('=').ok_or_else(|| format!("--table {table}: expected NAME=URL"))?;
        register_parquet(&ctx, name, url).await?;
    }
    let key = (!args.positions).then_some(args.key);
    // The files the index is built from, to record in its manifest (an index of a query's
    // rows covers no file as a whole: it gets none).
    let input = args.input.as_ref().filter(|_| args.query.is_none());
    let before = match input {
        Some(input) => Some(manifest_files(input).await?),
        None => None,
    };
    let query = match (&args.query, &args.input, &key) {
        (Some(q), _, _) => q.clone(),
        (None, Some(_), Some(key)) => format!("SELECT \"{key}\", \"{}\" FROM input", args.vector),
        (None, Some(_), None) => {
            // Positions are counted as the rows come: one partition reads the files in
            // path order, each in row order.
            ctx.sql("SET datafusion.execution.target_partitions = 1").await?;
            format!("SELECT \"{}\" FROM input", args.vector)
        }
        (None, None, _) => return Err("give --input (a Parquet file or folder) or --query".into()),
    };
    let spec = Spec {
        query,
        key,
        vector: args.vector,
        factory: args.factory,
        metric: args.metric,
        train_size: args.train_size,
        seed: args.seed,
        trained_from: None,
    };
    build(&ctx, &spec, &out).await?;
    match (input, before) {
        (Some(input), Some(before)) => {
            if manifest_files(input).await? != before {
                return Err(format!("{input} changed while it was indexed: no manifest written; build again").into());
            }
            record(&ctx, input, &args.output).await?;
        }
        _ => println!(
            "note        built from a query: no manifest records which files the index covers, so the table must not change (see `attach`)"
        ),
    }
    Ok(())
}

/// `build --update`: a delta index of the files no index of the set covers.
async fn update(args: BuildArgs) -> CliResult {
    let input = args.input.clone().expect("clap requires --input");
    let ctx = context()?;
    let (table, index) = (super::parse_url(&input)?, super::parse_url(&args.output)?);
    let (store, files) = manifest::uncovered(&ctx.state(), table.as_str(), index.as_str()).await?;
    if files.is_empty() {
        println!("up to date  {} and its deltas cover every file of {input}", args.output);
        return Ok(());
    }
    let names: Vec<&str> = files.iter().map(|m| m.location.filename().unwrap_or_default()).collect();
    println!("update      {} file{} not covered: {}", files.len(), if files.len() == 1 { "" } else { "s" }, names.join(", "));
    let root = datafusion::datasource::listing::ListingTableUrl::parse(table.as_str())?.object_store();
    let urls: Vec<String> = files.iter().map(|m| format!("{}{}", root.as_str(), m.location)).collect();
    register_files(&ctx, "input", &urls).await?;
    let key = (!args.positions).then_some(args.key);
    let query = match &key {
        Some(key) => format!("SELECT \"{key}\", \"{}\" FROM input", args.vector),
        None => {
            ctx.sql("SET datafusion.execution.target_partitions = 1").await?;
            format!("SELECT \"{}\" FROM input", args.vector)
        }
    };
    let delta = manifest::next_delta(index.as_str());
    let spec = Spec {
        query,
        key,
        vector: args.vector,
        factory: String::new(),
        metric: args.metric,
        train_size: None,
        seed: args.seed,
        trained_from: Some(Location::parse(index.as_str())?),
    };
    build(&ctx, &spec, &Location::parse(&delta)?).await?;
    let written = manifest::record(&ctx.state(), &store, files, &delta).await?;
    println!("manifest    {delta}.json: {} files, {} rows", written.files.len(), written.rows());
    Ok(())
}

/// Registers the Parquet files `urls` (in path order) as table `name`.
async fn register_files(ctx: &SessionContext, name: &str, urls: &[String]) -> CliResult {
    use datafusion::datasource::file_format::parquet::ParquetFormat;
    use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
    let urls = urls.iter().map(ListingTableUrl::parse).collect::<Result<Vec<_>, _>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()));
    let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).infer_schema(&ctx.state()).await?;
    ctx.register_table(name, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

/// The Parquet files at `url` now: path, size and ETag.
async fn manifest_files(url: &str) -> CliResult<Vec<(String, u64, Option<String>)>> {
    let at = Location::parse(url.trim_end_matches('/'))?;
    let files: Vec<object_store::ObjectMeta> = match &at.file {
        Some(f) if f.is_file() => vec![at.store.head(&at.path).await?],
        _ => at.store.list(Some(&at.path)).try_collect().await?,
    };
    let mut files: Vec<_> = files
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".parquet") || m.location == at.path)
        .map(|m| (m.location.to_string(), m.size, m.e_tag))
        .collect();
    files.sort();
    Ok(files)
}

/// Writes the manifest of the index at `index`, built from the files at `table` as they
/// are now, and says so.
pub async fn record(ctx: &SessionContext, table: &str, index: &str) -> CliResult<Manifest> {
    let table_url = super::parse_url(table)?;
    let index_url = super::parse_url(index)?;
    let written = manifest::attach(&ctx.state(), table_url.as_str(), index_url.as_str()).await?;
    println!("manifest    {index}.json: {} files, {} rows", written.files.len(), written.rows());
    Ok(written)
}

/// `build --per-file`: an index and its sidecar per Parquet file of the input folder.
async fn per_file(args: BuildArgs) -> CliResult {
    let input = args.input.clone().expect("clap requires --input");
    let folder = Location::parse(input.trim_end_matches('/'))?;
    let out = Location::parse(args.output.trim_end_matches('/'))?;
    let mut files: Vec<object_store::ObjectMeta> = folder
        .store
        .list(Some(&folder.path))
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| format!("{input}: listing: {e}"))?
        .into_iter()
        .filter(|m| m.location.as_ref().ends_with(".parquet"))
        .collect();
    if files.is_empty() {
        return Err(format!("{input}: no .parquet files to index").into());
    }
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let (mut built, mut skipped) = (0, 0);
    for meta in files {
        let relative: Vec<_> = meta.location.prefix_match(&folder.path).into_iter().flatten().collect();
        let relative = relative.iter().map(|p| p.as_ref()).collect::<Vec<_>>().join("/");
        let index = manifest::shard_path(&out.path, &relative);
        let sidecar = manifest::manifest_path(&index);
        let file_url = format!("{}/{relative}", input.trim_end_matches('/'));
        let index_url = format!("{}/{}", args.output.trim_end_matches('/'), manifest::shard_path(&Path::default(), &relative));
        if up_to_date(&out, &index, &sidecar, &meta).await {
            println!("up to date  {index_url} (built from {file_url} as it is now)");
            skipped += 1;
            continue;
        }
        let ctx = context()?;
        register_parquet(&ctx, "input", &file_url).await?;
        let key = (!args.positions).then(|| args.key.clone());
        if key.is_none() {
            ctx.sql("SET datafusion.execution.target_partitions = 1").await?;
        }
        let query = match &key {
            Some(key) => format!("SELECT \"{key}\", \"{}\" FROM input", args.vector),
            None => format!("SELECT \"{}\" FROM input", args.vector),
        };
        let spec = Spec {
            query,
            key,
            vector: args.vector.clone(),
            factory: args.factory.clone(),
            metric: args.metric,
            train_size: args.train_size,
            seed: args.seed,
            trained_from: None,
        };
        let at = Location::parse(&index_url)?;
        build(&ctx, &spec, &at).await.map_err(|e| format!("{file_url}: {e}"))?;
        record(&ctx, &file_url, &index_url).await?;
        built += 1;
    }
    println!("shards      {built} built, {skipped} up to date");
    Ok(())
}

/// Whether `index` exists and its manifest describes it, built from `data` as it is now.
async fn up_to_date(out: &Location, index: &Path, sidecar: &Path, data: &object_store::ObjectMeta) -> bool {
    let Ok(index) = out.store.head(index).await else { return false };
    let Ok(got) = out.store.get(sidecar).await else { return false };
    let own = got.meta.clone();
    let Ok(bytes) = got.bytes().await else { return false };
    Manifest::from_json(&bytes, sidecar.as_ref())
        .is_ok_and(|m| m.describes(&index, &own) && m.files.len() == 1 && m.files[0].matches(data))
}

/// What to index and how.
pub struct Spec {
    pub query: String,
    /// `None`: ids are row positions.
    pub key: Option<String>,
    pub vector: String,
    pub factory: String,
    pub metric: MetricArg,
    pub train_size: Option<usize>,
    pub seed: u64,
    /// Start from this index emptied (its training reused) instead of training anew.
    pub trained_from: Option<Location>,
}

/// Builds the index of `spec.query`'s rows, publishes it at `out` and prints a summary;
/// returns how many vectors it holds.
pub async fn build(ctx: &SessionContext, spec: &Spec, out: &Location) -> CliResult<u64> {
    let started = Instant::now();
    let query = &spec.query;
    let cosine = matches!(spec.metric, MetricArg::Cosine);
    let metric = if matches!(spec.metric, MetricArg::L2) { Metric::L2 } else { Metric::InnerProduct };
    let mut rows = Rows::new(ctx, query, spec.key.as_deref(), &spec.vector, cosine).await?;
    // Pass 1: validate every row, count them, keep a sample.
    let bar = spinner("reading", "{prefix:>9} {spinner} {human_pos} rows  {per_sec}  {elapsed}");
    let mut trained = match &spec.trained_from {
        Some(at) => Some(IvfIndexBuilder::trained_like(at.store.clone(), &at.path).await.map_err(|e| format!("{}: {e}", at.url))?),
        None => None,
    };
    let mut sample = None;
    let mut stream = rows.stream(ctx).await?;
    let mut n = 0u64;
    while let Some(batch) = stream.next().await {
        let (keys, vectors) = rows.extract(&batch.map_err(|e| format!("reading {query:?}: {e}"))?)?;
        if keys.is_empty() {
            continue;
        }
        let sample = match &mut sample {
            Some(s) => s,
            None => {
                let d = rows.dimension.expect("set by the first row");
                let (builder, size) = match trained.take() {
                    Some(b) if b.dimension() != d => {
                        return Err(format!("the vectors have dimension {d}, the index to extend {}", b.dimension()).into())
                    }
                    // Trained already: no sample kept.
                    Some(b) => (b, 0),
                    None => {
                        let b = IvfIndexBuilder::new(d, &spec.factory, metric)?;
                        let size = spec.train_size.unwrap_or(64 * b.nlist()).max(1);
                        (b, size)
                    }
                };
                sample.insert((builder, Reservoir::new(size, d, spec.seed)))
            }
        };
        sample.1.offer(&keys, &vectors);
        n += keys.len() as u64;
        bar.set_position(n);
    }
    bar.finish();
    let read_time = started.elapsed();
    let (mut builder, reservoir) = sample.ok_or_else(|| format!("{query:?} returned no rows: nothing to index"))?;
    let d = builder.dimension();
    let nlist = builder.nlist();
    if (n as usize) < nlist && spec.trained_from.is_none() {
        return Err(format!(
            "--factory {}: {nlist} lists but only {n} vectors; use fewer lists (FAISS wants 30 to 256 vectors per list)",
            spec.factory
        )
        .into());
    }

    // Training blocks this thread; FAISS itself runs on every core.
    let bar = spinner("training", "{prefix:>9} {spinner} {msg}  {elapsed}");
    bar.set_message(format!("{} on {} of {n} vectors, d={d}", spec.factory, reservoir.len()));
    let t = Instant::now();
    if spec.trained_from.is_none() {
        tokio::task::block_in_place(|| builder.train(&reservoir.vectors))?;
    }
    bar.finish();
    let train_time = t.elapsed();

    let bar = ProgressBar::new(n)
        .with_prefix("adding")
        .with_style(style("{prefix:>9} {bar:30} {human_pos}/{human_len} vectors  {per_sec}  {eta}"));
    let t = Instant::now();
    let mut added = 0u64;
    let mut add = |builder: &mut IvfIndexBuilder, keys: &[i64], vectors: &[f32]| -> CliResult {
        for (k, v) in keys.chunks(ADD_CHUNK).zip(vectors.chunks(ADD_CHUNK * d)) {
            tokio::task::block_in_place(|| builder.add(v, k))?;
            added += k.len() as u64;
            bar.set_position(added);
        }
        Ok(())
    };
    if reservoir.seen == reservoir.len() as u64 {
        add(&mut builder, &reservoir.keys, &reservoir.vectors)?;
    } else {
        drop(reservoir);
        let mut stream = rows.stream(ctx).await?;
        while let Some(batch) = stream.next().await {
            let (keys, vectors) = rows.extract(&batch.map_err(|e| format!("reading {query:?}: {e}"))?)?;
            add(&mut builder, &keys, &vectors)?;
        }
    }
    bar.finish();
    if added != n {
        return Err(format!("{query:?} returned {n} rows, then {added} on the second pass: the input changed").into());
    }
    let add_time = t.elapsed();

    let t = Instant::now();
    let size = publish(builder, out).await?;
    let upload_time = t.elapsed();

    let index = out.open().await.map_err(|e| format!("reopening {}: {e}", out.url))?;
    println!(
        "built       {} ({}, {}) in {:.1} s",
        out.url,
        index.info().description,
        HumanBytes(size),
        secs(started.elapsed())
    );
    println!(
        "phases      read {:.1} s, train {:.1} s, add {:.1} s, write {:.1} s",
        secs(read_time),
        secs(train_time),
        secs(add_time),
        secs(upload_time)
    );
    super::inspect::describe(&index);
    if cosine {
        println!("note        vectors were normalised: declare the table with OPTIONS ('normalized' 'true') to rank by cosine_distance");
    }
    Ok(n)
}

/// Writes the index under a temporary name next to `out`, then renames it into place, so
/// a failed build never leaves a partial file at `out`.
async fn publish(builder: IvfIndexBuilder, out: &Location) -> CliResult<u64> {
    if let Some(dir) = out.file.as_ref().and_then(|f| f.parent()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: creating {}: {e}", out.url, dir.display()))?;
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let tmp = Path::from(format!("{}.tmp-{}-{stamp}", out.path, std::process::id()));
    let bar = ProgressBar::new(0)
        .with_prefix("writing")
        .with_style(style("{prefix:>9} {bar:30} {bytes}/{total_bytes}  {bytes_per_sec}"));
    let written = builder
        .write_with_progress(out.store.clone(), &tmp, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
    bar.finish();
    let result = match written {
        Ok(size) => out
            .store
            .rename(&tmp, &out.path)
            .await
            .map(|()| size)
            .map_err(|e| format!("{}: publishing: {e}", out.url).into()),
        Err(e) => Err(format!("{}: {e}", out.url).into()),
    };
    if result.is_err() {
        out.store.delete(&tmp).await.ok();
    }
    result
}

pub async fn register_parquet(ctx: &SessionContext, name: &str, url: &str) -> CliResult {
    let at = Location::parse(url.trim_end_matches('/')).map_err(|e| format!("table {name}: {e}"))?;
    // A single file is read whatever its name; a folder, for its `.parquet` files.
    let is_file = match &at.file {
        Some(file) if !file.exists() => return Err(format!("table {name}: {url}: no such file or folder").into()),
        Some(file) => file.is_file(),
        None => at.store.head(&at.path).await.is_ok(),
    };
    let url = if is_file || url.ends_with('/') {
        super::parse_url(url)?.to_string()
    } else {
        format!("{}/", super::parse_url(url)?)
    };
    let options = ParquetReadOptions { file_extension: if is_file { "" } else { ".parquet" }, ..Default::default() };
    ctx.register_parquet(name, &url, options).await.map_err(|e| format!("table {name}: {url}: {e}"))?;
    Ok(())
}

/// The key and vector columns of a query's rows, checked as they come.
struct Rows {
    query: String,
    key: Option<String>,
    vector: String,
    normalise: bool,
    dimension: Option<usize>,
    row: u64,
}

impl Rows {
    async fn new(
        ctx: &SessionContext,
        query: &str,
        key: Option<&str>,
        vector: &str,
        normalise: bool,
    ) -> CliResult<Rows> {
        let schema = ctx.sql(query).await.map_err(|e| format!("{query:?}: {e}"))?.schema().as_arrow().clone();
        let column = |name: &str| {
            schema.field_with_name(name).map(|f| f.data_type().clone()).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                format!("{query:?} has no column {name:?} (it has {})", names.join(", "))
            })
        };
        if let Some(key) = key {
            let key_type = column(key)?;
            if !key_type.is_integer() || key_type == DataType::UInt64 {
                return Err(
                    format!("key column {key:?} is {key_type}; expected an integer type that fits in Int64").into()
                );
            }
        }
        let dimension = match column(vector)? {
            DataType::FixedSizeList(f, n) if f.data_type() == &DataType::Float32 => Some(n as usize),
            DataType::List(f) | DataType::LargeList(f) if f.data_type() == &DataType::Float32 => None,
            other => {
                return Err(format!(
                    "vector column {vector:?} is {other}; expected a FixedSizeList or List of Float32 \
                     (cast it in --query, e.g. CAST({vector} AS FLOAT[]))"
                )
                .into())
            }
        };
        if dimension == Some(0) {
            return Err(format!("vector column {vector:?} has dimension 0").into());
        }
        Ok(Rows {
            query: query.to_string(),
            key: key.map(str::to_string),
            vector: vector.to_string(),
            normalise,
            dimension,
            row: 0,
        })
    }

    async fn stream(
        &mut self,
        ctx: &SessionContext,
    ) -> CliResult<datafusion::physical_plan::SendableRecordBatchStream> {
        self.row = 0;
        let q = &self.query;
        Ok(ctx
            .sql(q)
            .await
            .map_err(|e| format!("{q:?}: {e}"))?
            .execute_stream()
            .await
            .map_err(|e| format!("{q:?}: {e}"))?)
    }

    /// Keys and row-major vectors of `batch`; an error names the row (counted from the
    /// query's first) and its key.
    fn extract(&mut self, batch: &RecordBatch) -> CliResult<(Vec<i64>, Vec<f32>)> {
        let (first, n) = (self.row, batch.num_rows());
        self.row += n as u64;
        let column =
            |name: &str| batch.column_by_name(name).cloned().ok_or_else(|| format!("batch lost column {name:?}"));
        let keys = match &self.key {
            Some(key) => cast(&column(key)?, &DataType::Int64)?,
            None => Arc::new(Int64Array::from_iter_values(first as i64..(first + n as u64) as i64)),
        };
        let keys = keys.as_primitive::<Int64Type>();
        if let Some(i) = (0..n).find(|&i| keys.is_null(i)) {
            return Err(format!(
                "key column {:?}: NULL at row {}",
                self.key.as_deref().unwrap_or(""),
                first + i as u64
            )
            .into());
        }
        let vectors = column(&self.vector)?;
        let (values, spans) = spans(&vectors);
        let at =
            |i: usize| format!("vector column {:?}: row {} (key {})", self.vector, first + i as u64, keys.value(i));
        let mut out = Vec::with_capacity(n * self.dimension.unwrap_or(0));
        for (i, (start, len)) in spans.into_iter().enumerate() {
            if vectors.is_null(i) {
                return Err(format!("{} is NULL", at(i)).into());
            }
            let d = *self.dimension.get_or_insert(len);
            if len != d {
                return Err(format!("{} has {len} values, expected {d} like the rows before it", at(i)).into());
            }
            if len == 0 {
                return Err(format!("{} is empty", at(i)).into());
            }
            if let Some(j) = (start..start + len).find(|&j| values.is_null(j)) {
                return Err(format!("{} has a NULL at component {}", at(i), j - start).into());
            }
            let v = &values.values()[start..start + len];
            if let Some(j) = v.iter().position(|x| !x.is_finite()) {
                return Err(format!("{} has {} at component {j}", at(i), v[j]).into());
            }
            if self.normalise {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm == 0.0 {
                    return Err(format!("{} is all zeros: it has no direction for cosine", at(i)).into());
                }
                out.extend(v.iter().map(|x| x / norm));
            } else {
                out.extend_from_slice(v);
            }
        }
        Ok((keys.values().to_vec(), out))
    }
}

/// The Float32 values of a list column and each row's `(start, length)` in them.
fn spans(column: &ArrayRef) -> (Float32Array, Vec<(usize, usize)>) {
    match column.data_type() {
        DataType::FixedSizeList(_, n) => {
            let list = column.as_fixed_size_list();
            let spans = (0..list.len()).map(|i| (list.value_offset(i) as usize, *n as usize)).collect();
            (list.values().as_primitive().clone(), spans)
        }
        DataType::List(_) => {
            let list = column.as_list::<i32>();
            let spans = list.offsets().windows(2).map(|w| (w[0] as usize, (w[1] - w[0]) as usize)).collect();
            (list.values().as_primitive().clone(), spans)
        }
        _ => {
            let list = column.as_list::<i64>();
            let spans = list.offsets().windows(2).map(|w| (w[0] as usize, (w[1] - w[0]) as usize)).collect();
            (list.values().as_primitive().clone(), spans)
        }
    }
}

/// A uniform sample of `size` rows (Algorithm R), deterministic for a seed. Until `size`
/// rows were offered it holds all of them, in order.
struct Reservoir {
    size: usize,
    d: usize,
    keys: Vec<i64>,
    vectors: Vec<f32>,
    seen: u64,
    rng: u64,
}

impl Reservoir {
    fn new(size: usize, d: usize, seed: u64) -> Reservoir {
        Reservoir {
            size,
            d,
            keys: Vec::new(),
            vectors: Vec::new(),
            seen: 0,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    fn offer(&mut self, keys: &[i64], vectors: &[f32]) {
        for (key, v) in keys.iter().zip(vectors.chunks(self.d)) {
            self.seen += 1;
            if self.keys.len() < self.size {
                self.keys.push(*key);
                self.vectors.extend_from_slice(v);
                continue;
            }
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let j = (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % self.seen) as usize;
            if j < self.size {
                self.keys[j] = *key;
                self.vectors[j * self.d..(j + 1) * self.d].copy_from_slice(v);
            }
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid progress template")
}

fn spinner(prefix: &'static str, template: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner().with_prefix(prefix).with_style(style(template));
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
