//! `SET faiss.*` settings.

use std::any::Any;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ConfigField, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};

/// The settings struct, its defaults, and their `ExtensionOptions`. Written out instead of
/// DataFusion's `extensions_options!`, whose entries are keyed without the `faiss.`
/// prefix: `SHOW faiss.nprobe` and `information_schema.df_settings` would not find them,
/// and a Ballista client, which sends its settings as their entries, sent `nprobe = 2`,
/// which the scheduler could not set, so it planned with the defaults.
macro_rules! settings {
    ($(#[doc = $sd:tt])* pub struct $name:ident {
        $($(#[doc = $d:tt])* pub $field:ident: $ty:ty, default = $default:expr)*
    }) => {
        $(#[doc = $sd])*
        #[derive(Debug, Clone)]
        #[non_exhaustive]
        pub struct $name {
            $($(#[doc = $d])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($field: $default),* }
            }
        }

        impl ExtensionOptions for $name {
            fn as_any(&self) -> &dyn Any {
                self
            }

            fn as_any_mut(&mut self) -> &mut dyn Any {
                self
            }

            fn cloned(&self) -> Box<dyn ExtensionOptions> {
                Box::new(self.clone())
            }

            /// `key` without the prefix: `ConfigOptions::set` strips it.
            fn set(&mut self, key: &str, value: &str) -> Result<()> {
                match key {
                    $(stringify!($field) => ConfigField::set(&mut self.$field, "", value),)*
                    _ => Err(DataFusionError::Configuration(format!(
                        "unknown setting {}.{key} (known: {})",
                        <Self as ConfigExtension>::PREFIX,
                        [$(stringify!($field)),*].join(", ")
                    ))),
                }
            }

            fn entries(&self) -> Vec<ConfigEntry> {
                vec![$(ConfigEntry {
                    key: format!("{}.{}", <Self as ConfigExtension>::PREFIX, stringify!($field)),
                    value: Some(self.$field.to_string()),
                    description: concat!($($d),*).trim_ascii(),
                }),*]
            }
        }
    };
}

settings! {
    /// Settings of the index scan, read when a query is planned.
    pub struct FaissConfig {
        /// Rewrite `ORDER BY <distance> LIMIT k` on a vector table into an index scan.
        pub enabled: bool, default = true
        /// Lists probed per query (FAISS `nprobe`); raised automatically when fewer
        /// than k rows were found.
        pub nprobe: usize, default = 16
        /// The index scan returns k × refine_factor candidates, re-ranked exactly. An
        /// IVF-Flat index's distances are already exact, so it returns k.
        pub refine_factor: usize, default = 4
        /// List-cache budget in MiB of each index opened from an object store.
        pub cache_mb: usize, default = 256
        /// Folder of the disk tier under the memory caches (index headers, lists, Parquet
        /// footers, key maps), shared by the processes of one machine; empty: none.
        pub disk_cache_dir: String, default = String::new()
        /// Budget of the disk tier in GiB.
        pub disk_cache_gb: usize, default = 10
    }
}

impl ConfigExtension for FaissConfig {
    const PREFIX: &'static str = "faiss";
}

impl FaissConfig {
    /// The settings in `options`, or the defaults when none were registered.
    pub fn from_options(options: &datafusion::config::ConfigOptions) -> FaissConfig {
        options.extensions.get::<FaissConfig>().cloned().unwrap_or_default()
    }

    /// The list-cache budget in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb as u64 * 1024 * 1024
    }

    /// The disk tier these settings name, if any.
    pub fn disk(&self) -> Option<crate::DiskCache> {
        (!self.disk_cache_dir.is_empty())
            .then(|| crate::DiskCache::open(&self.disk_cache_dir, (self.disk_cache_gb as u64) << 30))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::config::ConfigOptions;

    use super::*;

    /// What a remote client does (Ballista sends `entries()` as key-value pairs, the
    /// scheduler `set`s each): every setting arrives.
    #[test]
    fn settings_travel_as_their_entries() {
        let mut client = ConfigOptions::new();
        client.extensions.insert(FaissConfig::default());
        for (key, value) in [
            ("faiss.enabled", "false"),
            ("faiss.nprobe", "2"),
            ("faiss.refine_factor", "7"),
            ("faiss.cache_mb", "9"),
        ] {
            client.set(key, value).unwrap();
        }
        let mut server = ConfigOptions::new();
        server.extensions.insert(FaissConfig::default());
        for e in client.entries().into_iter().filter(|e| e.key.starts_with("faiss")) {
            server.set(&e.key, e.value.as_deref().unwrap()).unwrap_or_else(|err| panic!("{}: {err}", e.key));
        }
        let got = FaissConfig::from_options(&server);
        assert!(!got.enabled);
        assert_eq!((got.nprobe, got.refine_factor, got.cache_mb), (2, 7, 9));
        let nprobe = server.entries().into_iter().find(|e| e.key == "faiss.nprobe").unwrap();
        assert!(nprobe.description.starts_with("Lists probed"), "{}", nprobe.description);
        assert!(server.set("faiss.nprobes", "1").unwrap_err().to_string().contains("unknown setting faiss.nprobes"));
    }
}
