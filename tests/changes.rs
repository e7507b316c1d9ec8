//! A table that changes under its single index, as lake tables do: a file appended that
//! sorts last or first, rows deleted, rows reordered, vectors rewritten under the same
//! keys, a whole file deleted. The table is written by pyarrow's defaults, the index by
//! pip's faiss-cpu (ids = row positions, or = the `id` column) and recorded with
//! `attach`; the index is not rebuilt. Every answer (top-k, `faiss_search`, the batch
//! k-NN join) equals the exact plan, locally and on the S3 server; EXPLAIN and EXPLAIN
//! ANALYZE say what was covered, ranked exactly and dropped. Without a manifest, what
//! cannot be checked is refused, never answered wrongly.
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use datafusion::prelude::SessionContext;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const D: usize = 16;
const ROWS: usize = 9_000;
const FILES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Change {
    None,
    /// A new file sorting after the others, its rows near existing ones.
    AppendLast,
    /// A new file sorting before the others: every later position shifts.
    InsertFirst,
    /// Half the rows of the middle file deleted.
    DeleteRows,
    /// The middle file's rows in another order.
    Reorder,
    /// The middle file's vectors replaced, keys kept.
    Revector,
    /// The middle file deleted.
    DropFile,
}

const CHANGES: [Change; 7] = [
    Change::None,
    Change::AppendLast,
    Change::InsertFirst,
    Change::DeleteRows,
    Change::Reorder,
    Change::Revector,
    Change::DropFile,
];

fn python(args: &[&str]) {
    let script = root().join("tests/python/change_table.py");
    let status = Command::new(root().join(".work/venv/bin/python"))
        .arg(script)
        .args(args)
        .status()
        .expect("running .work/venv/bin/python (pyarrow): run scripts/setup.sh");
    assert!(status.success(), "change_table.py {args:?} failed");
}

/// Applies `change` to the pyarrow folder `folder`.
fn apply(folder: &Path, change: Change) {
    let file = |name: &str| folder.join(name).to_str().unwrap().to_string();
    let middle = file("part-01.parquet");
    match change {
        Change::None => {}
        Change::AppendLast => python(&["append", &file("part-99.parquet"), "5", &middle]),
        // '-' sorts before '0'.
        Change::InsertFirst => python(&["append", &file("part-0-new.parquet"), "6", &middle]),
        Change::DeleteRows => python(&["delete", &middle, "7"]),
        Change::Reorder => python(&["reorder", &middle, "8"]),
        Change::Revector => python(&["revector", &middle, "9"]),
        Change::DropFile => std::fs::remove_file(&middle).unwrap(),
    }
}

fn pip_index(x: &[f32], ids: Option<&[i64]>, dir: &Path) -> Vec<u8> {
    common::pip_index(x, D, "IVF32,Flat", ids, dir)
}

fn vector(x: &[f32], row: usize) -> String {
    let v = &x[row * D..(row + 1) * D];
    format!("'[{}]'", v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))
}

fn top_k(x: &[f32], row: usize, filter: &str) -> String {
    format!(
        "SELECT id, title, vec_distance(embedding, {}) AS d FROM docs {filter} ORDER BY d, id LIMIT 10",
        vector(x, row)
    )
}

/// `faiss_search`'s ids, nearest first.
fn search(x: &[f32], row: usize) -> String {
    format!("SELECT id FROM faiss_search('docs', {}, 10) ORDER BY _distance, id", vector(x, row))
}

const BATCH: &str = "SELECT * FROM (SELECT q.qid, d.id, vec_distance(d.embedding, q.vec) AS dist, \
     row_number() OVER (PARTITION BY q.qid ORDER BY vec_distance(d.embedding, q.vec), d.id) AS r \
     FROM (SELECT id AS qid, embedding AS vec FROM docs WHERE id % 1999 = 0) q CROSS JOIN docs d) \
     WHERE r <= 5 ORDER BY qid, r";

/// Every query kind against the exact plan, with every list probed (each index part's
/// search is then exact, so the merged answer must be too).
async fn check_all(ctx: &SessionContext, x: &[f32], what: &str) {
    ctx.sql("SET faiss.nprobe = 32").await.unwrap();
    // Rows of each file, the middle one's (the changed one) among them.
    for row in [5, 3_100, 4_500, 5_900, 8_800] {
        same_as_exact(ctx, &top_k(x, row, ""), what).await;
        same_as_exact(ctx, &top_k(x, row, "WHERE label < 5"), what).await;
    }
    // `faiss_search` answers what the top-k answers.
    ctx.sql("SET faiss.enabled = false").await.unwrap();
    let exact = text(ctx, &format!("SELECT id FROM ({})", top_k(x, 3_200, ""))).await;
    ctx.sql("SET faiss.enabled = true").await.unwrap();
    assert_eq!(text(ctx, &search(x, 3_200)).await, exact, "{what}: faiss_search");
    same_as_exact(ctx, BATCH, what).await;
}

/// One table, one change, one id kind, local files.
async fn case(change: Change, keyed: bool) {
    let what = format!("{change:?} {}", if keyed { "keys" } else { "positions" });
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, ids) = pyarrow_table(&folder, ROWS, D, FILES, 31);
    let index = dir.path().join("docs.faiss");
    std::fs::write(&index, pip_index(&x, keyed.then_some(&ids[..]), dir.path())).unwrap();
    let ctx = changing_context(None);
    let table = format!("{}/", folder.display());
    datafusion_faiss::sql::manifest::attach(&ctx.state(), &table, index.to_str().unwrap()).await.unwrap();
    create(&ctx, "docs", &table, index.to_str().unwrap(), keyed).await;
    apply(&folder, change);
    check_all(&ctx, &x, &what).await;

    // What EXPLAIN says, and what was dropped.
    let plan = text(&ctx, &format!("EXPLAIN {}", top_k(&x, 3_100, ""))).await;
    let (unindexed, stale) = match change {
        Change::None => (0, 0),
        Change::AppendLast | Change::InsertFirst => (1, 0),
        Change::DeleteRows | Change::Reorder | Change::Revector => (1, 1),
        Change::DropFile => (0, 1),
    };
    match change {
        Change::None => assert!(!plan.contains("indexes="), "{what}: {plan}"),
        _ => assert!(
            plan.contains(&format!("uncovered_files={unindexed} stale_files={stale}")),
            "{what}: {plan}"
        ),
    }
    let sql = top_k(&x, 3_100, "");
    let dropped = metric(&ctx, &sql, "dropped_hits").await;
    let unindexed_rows = metric(&ctx, &sql, "unindexed_rows").await;
    match change {
        Change::None => assert_eq!((dropped, unindexed_rows), (0, 0), "{what}"),
        // The query is a row of the middle file: its old self and neighbours are hits in
        // rows the table no longer has as they were.
        Change::DeleteRows | Change::Reorder | Change::Revector | Change::DropFile => {
            assert!(dropped > 0, "{what}: nothing dropped")
        }
        Change::AppendLast | Change::InsertFirst => {
            assert_eq!(dropped, 0, "{what}");
            assert_eq!(unindexed_rows, 1_500, "{what}: the new file is read exactly");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_index_stays_exact_whatever_changed() {
    for change in CHANGES {
        case(change, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_index_stays_exact_whatever_changed() {
    for change in CHANGES {
        case(change, true).await;
    }
}

/// The same on the S3 server: every change kind, both id kinds, one table each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_s3() {
    let store = s3_store();
    let bucket = format!("s3://{}", s3_bucket());
    for keyed in [false, true] {
        for change in [Change::InsertFirst, Change::Reorder, Change::Revector, Change::DropFile] {
            let what = format!("S3 {change:?} {}", if keyed { "keys" } else { "positions" });
            let dir = tempfile::tempdir().unwrap();
            let folder = dir.path().join("docs");
            let (x, ids) = pyarrow_table(&folder, ROWS, D, FILES, 32);
            let prefix = unique_path("changes").to_string();
            let upload = |store: Arc<dyn ObjectStore>, folder: std::path::PathBuf, prefix: String| async move {
                let mut names = vec![];
                for entry in std::fs::read_dir(&folder).unwrap() {
                    let entry = entry.unwrap();
                    let name = entry.file_name().to_str().unwrap().to_string();
                    let key = format!("{prefix}/docs/{name}");
                    store.put(&key.into(), PutPayload::from(std::fs::read(entry.path()).unwrap())).await.unwrap();
                    names.push(name);
                }
                names
            };
            let before = upload(store.clone(), folder.clone(), prefix.clone()).await;
            let index_key = format!("{prefix}/docs.faiss");
            let bytes = pip_index(&x, keyed.then_some(&ids[..]), dir.path());
            store.put(&index_key.clone().into(), PutPayload::from(bytes)).await.unwrap();
            let ctx = changing_context(Some((&bucket, store.clone())));
            let (table, index) = (format!("{bucket}/{prefix}/docs/"), format!("{bucket}/{index_key}"));
            datafusion_faiss::sql::manifest::attach(&ctx.state(), &table, &index).await.unwrap();
            create(&ctx, "docs", &table, &index, keyed).await;
            apply(&folder, change);
            let after = upload(store.clone(), folder.clone(), prefix.clone()).await;
            for gone in before.iter().filter(|n| !after.contains(n)) {
                store.delete(&format!("{prefix}/docs/{gone}").into()).await.unwrap();
            }
            check_all(&ctx, &x, &what).await;
        }
    }
}

/// Without a manifest (pip's file as it is), a positions index is used only while the
/// table has as many rows as it has vectors, and a keyed one while every candidate key is
/// in the table; otherwise the query fails naming the fix. `attach` then makes it exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_manifest_refuses_what_it_cannot_check() {
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("docs");
        let (x, ids) = pyarrow_table(&folder, ROWS, D, FILES, 33);
        let index = dir.path().join("docs.faiss");
        std::fs::write(&index, pip_index(&x, keyed.then_some(&ids[..]), dir.path())).unwrap();
        let ctx = changing_context(None);
        let table = format!("{}/", folder.display());
        create(&ctx, "docs", &table, index.to_str().unwrap(), keyed).await;
        ctx.sql("SET faiss.nprobe = 32").await.unwrap();
        // Unchanged: trusted, and right.
        same_as_exact(&ctx, &top_k(&x, 3_100, ""), "no manifest, unchanged").await;
        // Positions: an appended file changes the row count; keys: the deleted file's rows
        // (the query's own among them) are candidates the table no longer has.
        apply(&folder, if keyed { Change::DropFile } else { Change::InsertFirst });
        let err = ctx.sql(&top_k(&x, 3_100, "")).await.unwrap().collect().await.unwrap_err().to_string();
        assert!(err.contains("no manifest") && err.contains("attach"), "keyed {keyed}: {err}");
        // Recording the table as it is now is wrong here (the index holds other rows):
        // attach checks what it can.
        let attached = datafusion_faiss::sql::manifest::attach(&ctx.state(), &table, index.to_str().unwrap()).await;
        assert!(attached.unwrap_err().to_string().contains("not built from exactly these rows"));
    }
}

/// The new file's keys and vectors, read back as DataFusion reads them.
async fn rows_of(file: &Path) -> (Vec<i64>, Vec<f32>) {
    use datafusion::arrow::array::{AsArray, FixedSizeListArray};
    use datafusion::arrow::datatypes::{Float32Type, Int64Type};
    let ctx = SessionContext::new();
    ctx.register_parquet("new", file.to_str().unwrap(), Default::default()).await.unwrap();
    let batches = ctx.sql("SELECT id, embedding FROM new").await.unwrap().collect().await.unwrap();
    let (mut ids, mut x) = (vec![], vec![]);
    for b in &batches {
        ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter().copied());
        let list: &FixedSizeListArray = b.column(1).as_fixed_size_list();
        x.extend(list.values().as_primitive::<Float32Type>().values().iter().copied());
    }
    (ids, x)
}

/// `build --update`'s steps through the Rust API, with a reader (its own session)
/// comparing the index plan with the exact plan all along: a file appended; a delta
/// trained as the index is (`IvfIndexBuilder::trained_like`: no training) published
/// beside it; then its manifest recorded (`manifest::record`). Until the manifest exists
/// the delta is not used and the new file is ranked exactly; after it, the new file is
/// searched through the delta. No answer differs from the exact plan at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_through_the_api_with_a_reader_all_along() {
    use datafusion_faiss::IvfIndexBuilder;
    use datafusion_faiss::sql::manifest;
    use object_store::local::LocalFileSystem;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    for keyed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("docs");
        let (x, ids) = pyarrow_table(&folder, ROWS, D, FILES, 34);
        let index = dir.path().join("docs.faiss");
        std::fs::write(&index, pip_index(&x, keyed.then_some(&ids[..]), dir.path())).unwrap();
        let table = format!("{}/", folder.display());
        let ctx = changing_context(None);
        manifest::attach(&ctx.state(), &table, index.to_str().unwrap()).await.unwrap();
        create(&ctx, "docs", &table, index.to_str().unwrap(), keyed).await;
        ctx.sql("SET faiss.nprobe = 32").await.unwrap();
        apply(&folder, Change::AppendLast);

        let reader = changing_context(None);
        create(&reader, "docs", &table, index.to_str().unwrap(), keyed).await;
        reader.sql("SET faiss.nprobe = 32").await.unwrap();
        let (stop, rounds) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let reading = {
            let (stop, rounds, x) = (stop.clone(), rounds.clone(), x.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) || rounds.load(Ordering::Relaxed) == 0 {
                    same_as_exact(&reader, &top_k(&x, 3_100, ""), "reader during the update").await;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            })
        };

        let explain = |ctx: SessionContext, x: Vec<f32>| async move { text(&ctx, &format!("EXPLAIN {}", top_k(&x, 5, ""))).await };
        let new = folder.join("part-99.parquet");
        let (new_ids, new_x) = rows_of(&new).await;
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
        let main = object_store::path::Path::from_absolute_path(&index).unwrap();
        let mut builder = IvfIndexBuilder::trained_like(store.clone(), &main).await.unwrap();
        let numbering: Vec<i64> = match keyed {
            true => new_ids.clone(),
            false => (0..new_ids.len() as i64).collect(),
        };
        builder = tokio::task::spawn_blocking(move || {
            builder.add(&new_x, &numbering).unwrap();
            builder
        })
        .await
        .unwrap();
        let delta = manifest::next_delta(index.to_str().unwrap());
        let delta_path = object_store::path::Path::from_absolute_path(&delta).unwrap();
        builder.write(store.clone(), &delta_path).await.unwrap();
        // Published, not yet recorded: not used.
        let plan = explain(ctx.clone(), x.clone()).await;
        assert!(plan.contains("indexes=1 ") && plan.contains("uncovered_files=1"), "{plan}");
        check_all(&ctx, &x, "delta without manifest").await;

        let new_meta = store.head(&object_store::path::Path::from_absolute_path(&new).unwrap()).await.unwrap();
        let recorded = manifest::record(&ctx.state(), &store, vec![new_meta], &delta).await.unwrap();
        assert_eq!(recorded.rows(), new_ids.len() as u64);
        let plan = explain(ctx.clone(), x.clone()).await;
        assert!(plan.contains("indexes=2 covered_files=4") && plan.contains("uncovered_files=0"), "{plan}");
        check_all(&ctx, &x, "delta recorded").await;
        // The new rows are found through the delta now: none is read exactly.
        assert_eq!(metric(&ctx, &top_k(&x, 3_100, ""), "unindexed_rows").await, 0);

        stop.store(true, Ordering::Relaxed);
        reading.await.unwrap();
        assert!(rounds.load(Ordering::Relaxed) > 0);
    }
}

/// Every file rewritten since the build: no index covers anything, and the whole table is
/// ranked from its vectors (decoded once, then kept), reading only the rows that can be
/// among the nearest, with the exact plan's answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_rewritten_is_ranked_from_its_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = pyarrow_table(&folder, ROWS, D, FILES, 35);
    let index = dir.path().join("docs.faiss");
    std::fs::write(&index, pip_index(&x, None, dir.path())).unwrap();
    let ctx = changing_context(None);
    let table = format!("{}/", folder.display());
    datafusion_faiss::sql::manifest::attach(&ctx.state(), &table, index.to_str().unwrap()).await.unwrap();
    create(&ctx, "docs", &table, index.to_str().unwrap(), false).await;
    for f in 0..FILES {
        python(&["revector", folder.join(format!("part-{f:02}.parquet")).to_str().unwrap(), &(40 + f).to_string()]);
    }
    let plan = text(&ctx, &format!("EXPLAIN {}", top_k(&x, 5, ""))).await;
    assert!(plan.contains("indexes=0 covered_files=0") && plan.contains("uncovered_files=3 stale_files=3"), "{plan}");
    for row in [5, 3_100, 4_500, 8_800] {
        same_as_exact(&ctx, &top_k(&x, row, ""), "every file rewritten").await;
        for k in [1, 3] {
            let sql = format!(
                "SELECT id, vec_distance(embedding, {}) AS d FROM docs ORDER BY d, id LIMIT {k}",
                vector(&x, row)
            );
            same_as_exact(&ctx, &sql, "every file rewritten, small k").await;
        }
    }
    let sql = top_k(&x, 3_100, "");
    assert_eq!(metric(&ctx, &sql, "unindexed_rows").await, ROWS);
    let read = metric(&ctx, &sql, "base_rows_read").await;
    assert!((10..=20).contains(&read), "read {read} rows to rank {ROWS}");
}
