//! An object-store registry configured from the environment, as datafusion-cli does, for
//! processes whose users name stores by URL only (the command line, Ballista's scheduler
//! and executors).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::aws::AmazonS3Builder;
use object_store::memory::InMemory;
use object_store::ObjectStore;
use url::Url;

/// The stores of every URL a process meets, made on first use: `s3://bucket` from the
/// `AWS_*` environment variables (endpoint, region, keys, allow-http) as datafusion-cli
/// does, `memory://name` as one in-memory store per name for the life of the process.
/// One registry serves a whole process (the CLI's subcommands and its DataFusion, a Ballista
/// scheduler or executor), so `memory://x` written by one is read by the other.
#[derive(Debug, Default)]
pub struct EnvStores {
    registered: DefaultObjectStoreRegistry,
    made: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl EnvStores {
    fn make(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let host = url.host_str().unwrap_or_default();
        let key = format!("{}://{host}", url.scheme());
        let mut made = self.made.lock().expect("store registry poisoned");
        if let Some(store) = made.get(&key) {
            return Ok(store.clone());
        }
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" => Arc::new(
                AmazonS3Builder::from_env()
                    .with_bucket_name(host)
                    .build()
                    .map_err(|e| DataFusionError::Configuration(format!("{key}: {e}")))?,
            ),
            "memory" => Arc::new(InMemory::new()),
            other => {
                return Err(DataFusionError::Configuration(format!(
                    "{url}: no object store for scheme {other:?} (use a local path, file://, s3:// or memory://)"
                )))
            }
        };
        made.insert(key, store.clone());
        Ok(store)
    }
}

impl ObjectStoreRegistry for EnvStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.registered.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.registered.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.registered.get_store(url).or_else(|_| self.make(url))
    }
}

