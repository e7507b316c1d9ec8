//! `SET faiss.*` settings.

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;

extensions_options! {
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
        /// With a WHERE filter: when at most this fraction of the rows pass it, the
        /// passing rows are ranked exactly instead of searching the index.
        pub brute_force_fraction: f64, default = 0.02
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
}
