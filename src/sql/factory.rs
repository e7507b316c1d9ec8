//! `CREATE EXTERNAL TABLE t STORED AS FAISS LOCATION '<parquet>' OPTIONS ('index' '<url>',
//! 'key' 'id', 'vector' 'embedding')`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::common::{plan_err, Result};
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::logical_expr::CreateExternalTable;

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
        let base = ListingTableFactory::new().create(state, &base_cmd).await.map_err(|e| {
            e.context(format!(
                "STORED AS FAISS table '{}': base Parquet table (known options: {}, and Parquet format.* options)",
                cmd.name,
                OPTIONS.join(", ")
            ))
        })?;
        Ok(Arc::new(VectorTable::try_new(state, base, options).await?))
    }
}
