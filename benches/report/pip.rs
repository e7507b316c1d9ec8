//! pip's faiss-cpu searching the same file and queries in memory: the FAISS users have,
//! and the figure they compare us with.

use std::path::Path as FsPath;
use std::process::Command;

use crate::data::Dataset;

#[derive(Debug, Clone)]
pub struct PipRow {
    pub dataset: String,
    pub factory: String,
    pub version: String,
    pub nprobe: usize,
    pub queries: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `pip_faiss.py` under the venv's Python: one thread, one query at a time.
pub fn measure(ds: &Dataset, factory: &str, file: &FsPath, nprobes: &[usize], max_queries: usize) -> Vec<PipRow> {
    let root = FsPath::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.f32");
    std::fs::write(&queries, ds.queries.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let out = Command::new(root.join(".work/venv/bin/python"))
        .arg(root.join("benches/report/pip_faiss.py"))
        .args([file.as_os_str(), queries.as_os_str()])
        .args([ds.d.to_string(), ds.k.to_string(), max_queries.to_string()])
        .args(nprobes.iter().map(|p| p.to_string()))
        .output()
        .expect("running .work/venv/bin/python (pip faiss-cpu): run scripts/setup.sh");
    assert!(out.status.success(), "pip_faiss.py: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("pip_faiss.py prints JSON lines");
            PipRow {
                dataset: ds.name.clone(),
                factory: factory.to_string(),
                version: v["faiss"].as_str().unwrap_or_default().to_string(),
                nprobe: v["nprobe"].as_u64().unwrap() as usize,
                queries: v["queries"].as_u64().unwrap() as usize,
                p50_ms: v["p50_ms"].as_f64().unwrap(),
                p99_ms: v["p99_ms"].as_f64().unwrap(),
            }
        })
        .collect()
}
