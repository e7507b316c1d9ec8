//! A ≥ 500 MB index opened by memory map: the process's resident memory stays well below
//! the file size after open and after 100 searches (only touched pages are read in).
//! Alone in its test binary, so no other test's memory is counted.
mod common;

use std::process::Command;

use datafusion_faiss::IvfIndex;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_mapped_index_stays_mostly_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("large.faiss");
    let (n, d, nlist) = (1_000_000, 128, 2048);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/write_large.py");
    let status = Command::new("/usr/bin/python3")
        .args([script, file.to_str().unwrap(), &n.to_string(), &d.to_string(), &nlist.to_string()])
        .status()
        .expect("running /usr/bin/python3 (python3-faiss)");
    assert!(status.success());
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size >= 500_000_000, "index is only {size} bytes");
    // Drop the file's pages from the page cache where allowed, so mapped reads are real.
    let _ = Command::new("dd").args([&format!("if={}", file.display()), "iflag=nocache", "count=0"]).status();

    let before = rss_bytes();
    let index = IvfIndex::open_file(&file).await.unwrap();
    let after_open = rss_bytes();
    let queries = common::clustered(100, d, 256, 71);
    let mut mapped = 0;
    for q in queries.chunks(d) {
        let r = index.search(q, 10, 4).await.unwrap();
        mapped += r.stats.fetch.bytes_mapped;
    }
    let after_search = rss_bytes();
    eprintln!(
        "file {size} B; RSS before {before} B, after open {after_open} B, after 100 searches {after_search} B; lists read {mapped} B"
    );
    let header = index.info().lists.start;
    assert!(
        after_open.saturating_sub(before) < header + 64 * 1024 * 1024,
        "open grew RSS by {} B",
        after_open - before
    );
    assert!(after_search < size / 3, "RSS {after_search} B after searches, file {size} B");
}
