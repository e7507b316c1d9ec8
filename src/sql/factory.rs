//! `CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '<parquet>' OPTIONS ('index' '<url>',
//! 'key' 'id', 'vector' 'embedding')`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{plan_err, Result};
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::CreateExternalTable;

use object_store::ObjectMeta;

use super::config::FaissConfig;
use super::manifest;
use super::rows::{footer, TableIo};
use super::table::{VectorTable, VectorTableOptions};

/// Our options; DataFusion files un-namespaced options under `format.`. Every other
/// `format.*` option goes to the Parquet reader of the base table.
const OPTIONS: [&str; 4] = ["index", "key", "vector", "normalized"];

#[derive(Debug, Default)]
pub struct FaissTableFactory;

#[async_trait]
impl TableProviderFactory for FaissTableFactory {
    async fn create(&self, state: &dyn Session, cmd: &CreateExternalTable) -> Result<Arc<dyn TableProvider>> {
        let mut ours = std::collections::HashMap::new();
        let mut base_cmd = cmd.clone();
        base_cmd.file_type = "PARQUET".into();
        base_cmd.options.retain(|k, v| match k.strip_prefix("format.").filter(|k| OPTIONS.contains(k)) {
            Some(name) => {
                ours.insert(name.to_string(), v.clone());
                false
            }
            None => true,
        });
        let get = |name: &str| match ours.get(name) {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => plan_err!("STORED AS FAISS table '{}' needs OPTIONS ('{name}' '...')", cmd.name),
        };
        let normalized = match ours.get("normalized").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if v == "true" => true,
            Some(v) if v == "false" => false,
            Some(v) => return plan_err!("option 'normalized' must be true or false, got '{v}'"),
        };
        let options = VectorTableOptions {
            index: get("index")?,
            key: ours.get("key").filter(|v| !v.is_empty()).cloned(),
            vector: get("vector")?,
            normalized,
        };
        let base = async {
            let simple = base_cmd.locations.len() == 1
                && cmd.table_partition_cols.is_empty()
                && cmd.schema.fields().is_empty()
                && cmd.order_exprs.is_empty()
                && cmd.constraints.is_empty()
                && cmd.column_defaults.is_empty();
            let base = match simple {
                true => parquet_table(state, &base_cmd).await,
                false => ListingTableFactory::new().create(state, &base_cmd).await,
            };
            base.map_err(|e| {
                e.context(format!(
                    "STORED AS FAISS table '{}': base Parquet table (known options: {}, and Parquet format.* options)",
                    cmd.name,
                    OPTIONS.join(", ")
                ))
            })
        };
        Ok(Arc::new(VectorTable::create(state, base, options).await?))
    }
}

/// The Parquet file or folder `cmd` names, listed once (a HEAD or LIST), its schema
/// inferred by DataFusion's Parquet format from the footers: those the disk tier keeps of
/// the listed versions, the others read. DataFusion's own factory lists a location
/// three times to infer what a plain one leaves open, and reads every file of a folder
/// whatever its name, where the folder may hold the indexes too (one per data file).
async fn parquet_table(state: &dyn Session, cmd: &CreateExternalTable) -> Result<Arc<dyn TableProvider>> {
    let Some(state) = state.as_any().downcast_ref::<SessionState>() else {
        return plan_err!("STORED AS FAISS needs a SessionState");
    };
    let Some(factory) = state.get_file_format_factory("parquet") else {
        return plan_err!("no Parquet format registered");
    };
    let format = factory.create(state, &cmd.options)?;
    let url = ListingTableUrl::parse(&cmd.locations[0])?;
    // A single file is taken whatever its name ends with.
    let extension = if url.is_collection() { ".parquet" } else { "" };
    let store = state.runtime_env().object_store(url.object_store())?;
    let files: Vec<ObjectMeta> =
        manifest::parquet_files(&store, &url, extension).await?.into_iter().map(|(_, m)| m).filter(|m| m.size > 0).collect();
    if let Some(disk) = FaissConfig::from_options(state.config_options()).disk() {
        let io = Arc::new(TableIo::new(state.runtime_env().cache_manager.get_file_metadata_cache(), Some(disk)));
        footer::seed(&store, &files, &io).await;
    }
    let schema = format.infer_schema(state, &store, &files).await?;
    let options = ListingOptions::new(format).with_file_extension(extension);
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema);
    let table = ListingTable::try_new(config)?
        .with_cache(state.runtime_env().cache_manager.get_file_statistic_cache())
        .with_definition(cmd.definition.clone());
    Ok(Arc::new(table))
}
