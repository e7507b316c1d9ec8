//! Filtered top-k at every selectivity, from one passing row to half the table, over a
//! table written by pyarrow's defaults and indexes written by pip's faiss-cpu (ids = row
//! positions, or = the `id` column; IVF-Flat and a lossy code): every answer equals the
//! exact plan, locally and on the S3 server, and the plan decides and reads what it
//! should: few passing rows are ranked from their own entries in the index (only their
//! codes read, the id map once), many by a filtered search of the lists, and neither
//! reads more of the table than the candidates' rows.
mod common;

use std::path::Path;

use common::*;
use datafusion::prelude::SessionContext;
use datafusion_faiss::{IvfIndex, SearchOptions};
use object_store::{ObjectStoreExt, PutPayload};

const D: usize = 16;
const ROWS: usize = 20_000;
const NLIST: usize = 64;

/// (what, filter, rows passing). Ids are 7 × a permutation of 0..ROWS and `label` is
/// `id % 10`, so each filter passes an exact number of rows, scattered over the lists.
const FILTERS: [(&str, &str, usize); 6] = [
    ("one row", "id = 700", 1),
    ("fewer than k", "id < 35", 5),
    ("0.1 %", "id < 140", 20),
    ("1 %", "id < 1400", 200),
    ("10 %", "label = 3", 2_000),
    ("50 %", "label < 5", 10_000),
];

/// Query rows: one in each part of the table.
const QUERIES: [usize; 3] = [11, 7_000, 15_000];

fn vector(x: &[f32], row: usize) -> String {
    let v = &x[row * D..(row + 1) * D];
    format!("'[{}]'", v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

fn top_k(x: &[f32], row: usize, filter: &str) -> String {
    format!(
        "SELECT id, title, vec_distance(embedding, {}) AS d FROM docs WHERE {filter} ORDER BY d, id LIMIT 10",
        vector(x, row)
    )
}

/// The batch k-NN join with the filter on the vector table's side.
fn batch(filter: &str) -> String {
    format!(
        "SELECT * FROM (SELECT q.qid, d.id, vec_distance(d.embedding, q.vec) AS dist, \
         row_number() OVER (PARTITION BY q.qid ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r \
         FROM (SELECT id AS qid, embedding AS vec FROM docs WHERE id % 3001 = 0) q \
         CROSS JOIN (SELECT * FROM docs WHERE {filter}) d) WHERE r <= 5 ORDER BY qid, r"
    )
}

/// The table (two pyarrow files of `rows` rows in all) and a pip index of it, as files
/// under `dir`.
fn fixtures(dir: &Path, rows: usize, factory: &str, keyed: bool) -> (Vec<f32>, std::path::PathBuf) {
    let folder = dir.join("docs");
    let (x, ids) = pyarrow_table(&folder, rows, D, 2, 41);
    let index = dir.join("docs.faiss");
    std::fs::write(&index, pip_index(&x, D, factory, keyed.then_some(&ids[..]), dir)).unwrap();
    (x, folder)
}

/// Every filter × query against the exact plan, at a low nprobe: by entries, the
/// answer does not depend on it; by lists, the search widens until it is exact enough
/// (nprobe = nlist makes it exhaustive, checked after).
async fn check_answers(ctx: &SessionContext, x: &[f32], what: &str) {
    for nprobe in [2, NLIST] {
        ctx.sql(&format!("SET faiss.nprobe = {nprobe}")).await.unwrap();
        for (name, filter, _) in FILTERS {
            // Lists searched at a low nprobe are approximate, as without a filter.
            if nprobe < NLIST && name.ends_with(" %") && !name.starts_with("0.") {
                continue;
            }
            for row in QUERIES {
                same_as_exact(ctx, &top_k(x, row, filter), &format!("{what} {name} nprobe {nprobe}")).await;
            }
        }
    }
    for filter in ["id < 1400", "label < 5"] {
        same_as_exact(ctx, &batch(filter), &format!("{what} batch {filter}")).await;
    }
}

/// The batch k-NN join with the filter on the vector table's side searches entries too.
async fn check_batch_plan(ctx: &SessionContext, what: &str) {
    let sql = batch("id < 140");
    assert!(text(ctx, &format!("EXPLAIN {sql}")).await.contains("IvfKnnExec"), "{what}: not a batch search");
    // A search per batch of query rows, each by entries, none of the lists.
    assert!(metric(ctx, &sql, "by_entries").await >= 1, "{what}: batch");
    assert_eq!(metric(ctx, &sql, "nprobe").await, 0, "{what}: batch");
}

/// What the plan decided and read, per selectivity, on a memory-mapped index.
async fn check_local_plan(ctx: &SessionContext, x: &[f32], code_size: usize, what: &str) {
    ctx.sql("SET faiss.nprobe = 16").await.unwrap();
    for (name, filter, passing) in FILTERS {
        let sql = top_k(x, 7_000, filter);
        let what = format!("{what} {name}");
        assert_eq!(metric(ctx, &sql, "allowed_rows").await, passing, "{what}");
        // Run before: the passing ids are known, the filter columns not scanned again.
        assert_eq!(metric(ctx, &sql, "filter_cache_hits").await, 1, "{what}");
        assert_eq!(metric(ctx, &sql, "filter_rows_read").await, 0, "{what}");
        // The table is read for the candidates only (k, or k × refine for lossy codes).
        let read = metric(ctx, &sql, "base_rows_read").await;
        assert!(read <= passing.min(45), "{what}: read {read} rows");
        assert_eq!(metric(ctx, &sql, "brute_force").await, 0, "{what}");
        // 1 % goes either way, by the code size.
        let entries = metric(ctx, &sql, "by_entries").await;
        if passing <= 20 {
            assert_eq!(entries, 1, "{what}: few pass, their entries are searched");
            // The id map is read: only the passing rows' codes are.
            assert_eq!(metric(ctx, &sql, "bytes_mapped").await, passing * code_size, "{what}");
            assert_eq!(metric(ctx, &sql, "codes_scanned").await, passing, "{what}");
        } else if passing >= 2_000 {
            assert_eq!(entries, 0, "{what}: many pass, the lists are searched");
        }
    }
}

async fn local_case(factory: &str, code_size: usize, keyed: bool) {
    let what = format!("{factory} {}", if keyed { "keys" } else { "positions" });
    let dir = tempfile::tempdir().unwrap();
    let (x, folder) = fixtures(dir.path(), ROWS, factory, keyed);
    let ctx = changing_context(None);
    let index = dir.path().join("docs.faiss");
    create(&ctx, "docs", &format!("{}/", folder.display()), index.to_str().unwrap(), keyed).await;
    check_answers(&ctx, &x, &what).await;
    check_local_plan(&ctx, &x, code_size, &what).await;
    check_batch_plan(&ctx, &what).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_index_every_selectivity() {
    local_case("IVF64,Flat", 4 * D, false).await;
    local_case("IVF64,Flat", 4 * D, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_index_every_selectivity() {
    local_case("IVF64,SQ8", D, false).await;
    local_case("IVF64,SQ8", D, true).await;
}

/// On the S3 server: the same answers; once the id map and the passing ids are known, a
/// selective query fetches just the passing rows' codes, in one wave. (A table five times
/// the local one's: the cost model reads a smaller index whole, in one wave of lists.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_on_s3() {
    let store = s3_store();
    let bucket = format!("s3://{}", s3_bucket());
    for keyed in [false, true] {
        let what = format!("S3 {}", if keyed { "keys" } else { "positions" });
        let dir = tempfile::tempdir().unwrap();
        let (x, folder) = fixtures(dir.path(), 5 * ROWS, "IVF64,Flat", keyed);
        let prefix = unique_path("filtered").to_string();
        for entry in std::fs::read_dir(&folder).unwrap() {
            let entry = entry.unwrap();
            let key = format!("{prefix}/docs/{}", entry.file_name().to_str().unwrap());
            store.put(&key.into(), PutPayload::from(std::fs::read(entry.path()).unwrap())).await.unwrap();
        }
        let index_key = format!("{prefix}/docs.faiss");
        let bytes = std::fs::read(dir.path().join("docs.faiss")).unwrap();
        store.put(&index_key.clone().into(), PutPayload::from(bytes)).await.unwrap();
        let ctx = changing_context(Some((&bucket, store.clone())));
        create(&ctx, "docs", &format!("{bucket}/{prefix}/docs/"), &format!("{bucket}/{index_key}"), keyed).await;
        // First query: the id map (each list's ids, one wave) and the passing rows' codes.
        let first = top_k(&x, 15_000, FILTERS[0].1);
        assert_eq!(metric(&ctx, &first, "waves").await, 2, "{what}: first query");
        for (name, filter, passing) in &FILTERS[..3] {
            let sql = top_k(&x, 15_000, filter);
            assert_eq!(metric(&ctx, &sql, "by_entries").await, 1, "{what} {name}");
            // The codes, and at most the gaps between close ones (fetched by one GET).
            let bytes = metric(&ctx, &sql, "bytes_fetched").await;
            assert!((passing * 4 * D..=passing * (4 * D + 16 * 1024)).contains(&bytes), "{what} {name}: {bytes}");
            assert_eq!(metric(&ctx, &sql, "waves").await, 1, "{what} {name}");
        }
        check_answers(&ctx, &x, &what).await;
    }
}

/// The library's search by entries equals its filtered search of every list (itself
/// checked against FAISS's own), for lossy codes whose scanners use the coarse distance
/// (PQ, by residual) too, after a transform (OPQ); ids the index lacks are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_equal_a_filtered_search_of_every_list() {
    for factory in ["IVF64,Flat", "IVF64,SQ8", "IVF64,PQ4", "IVF64_HNSW8,Flat", "OPQ4,IVF64,PQ4"] {
        let dir = tempfile::tempdir().unwrap();
        let (x, _) = fixtures(dir.path(), ROWS, factory, false);
        let index = IvfIndex::open_file(dir.path().join("docs.faiss")).await.unwrap();
        let allowed: Vec<i64> = (0..ROWS as i64).filter(|p| p % 97 == 5).chain([ROWS as i64 + 3]).collect();
        let queries: Vec<f32> = QUERIES.iter().flat_map(|&r| x[r * D..(r + 1) * D].to_vec()).collect();
        let options = SearchOptions { allowed: Some(&allowed), ..Default::default() };
        let lists = index.search_with(&queries, 10, NLIST, options).await.unwrap();
        let entries = index.search_entries(&queries, 10, &allowed, false).await.unwrap();
        assert_eq!(entries.ids, lists.ids, "{factory}");
        for (a, b) in entries.distances.iter().zip(&lists.distances) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{factory}: {a} vs {b}");
        }
        assert_eq!(entries.stats.codes_scanned, QUERIES.len() as u64 * (allowed.len() as u64 - 1), "{factory}");
        // Fewer entries than k: padded as FAISS pads.
        let few = index.search_entries(&queries[..D], 10, &allowed[..3], false).await.unwrap();
        assert_eq!(few.ids.iter().filter(|&&id| id >= 0).count(), 3, "{factory}");
        assert_eq!(few.ids[3..], [-1; 7], "{factory}");
    }
}

/// The table changes under the index (recorded with `attach`): half of one file's rows
/// deleted. The passing ids found before are not used for the new version: the filter is
/// run again, the rewritten file's passing rows are ranked from its vectors (only they),
/// and every answer still equals the exact plan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_after_the_table_changed() {
    for keyed in [false, true] {
        let what = format!("changed, {}", if keyed { "keys" } else { "positions" });
        let dir = tempfile::tempdir().unwrap();
        let (x, folder) = fixtures(dir.path(), ROWS, "IVF64,Flat", keyed);
        let ctx = changing_context(None);
        let (table, index) = (format!("{}/", folder.display()), dir.path().join("docs.faiss"));
        datafusion_faiss::sql::manifest::attach(&ctx.state(), &table, index.to_str().unwrap()).await.unwrap();
        create(&ctx, "docs", &table, index.to_str().unwrap(), keyed).await;
        for (name, filter, _) in &FILTERS[2..4] {
            same_as_exact(&ctx, &top_k(&x, 15_000, filter), &format!("{what} {name} before")).await;
        }
        let status = std::process::Command::new(root().join(".work/venv/bin/python"))
            .arg(root().join("tests/python/change_table.py"))
            .args(["delete", folder.join("part-01.parquet").to_str().unwrap(), "3"])
            .status()
            .unwrap();
        assert!(status.success());
        for (name, filter, passing) in &FILTERS[2..4] {
            let sql = top_k(&x, 15_000, filter);
            assert_eq!(metric(&ctx, &sql, "filter_cache_hits").await, 0, "{what} {name}: found again");
            same_as_exact(&ctx, &sql, &format!("{what} {name} after")).await;
            // Half of the second file's rows are gone: fewer pass.
            let allowed = metric(&ctx, &sql, "allowed_rows").await;
            assert!(allowed < *passing, "{what} {name}: {allowed} of {passing}");
            // The rewritten file is ranked from its vectors: its rows are read only
            // for the nearest (the index part's for its own candidates).
            let read = metric(&ctx, &sql, "base_rows_read").await;
            assert!(read <= 2 * 12, "{what} {name}: read {read} rows");
            assert!(metric(&ctx, &sql, "unindexed_rows").await > 0, "{what} {name}");
        }
    }
}
