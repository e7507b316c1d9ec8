//! The `datafusion-faiss` binary, run as a user runs it: build → inspect → sql on local
//! files and on the S3 test server, the errors `build` must report, and the demo.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path as FsPath;
use std::process::{Command, Output};

use common::tables::Docs;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn bin(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_datafusion-faiss"));
    cmd.args(args).env_remove("AWS_PROFILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running datafusion-faiss")
}

fn ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = bin(args, env);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {stderr}\n{stdout}");
    stdout.into_owned()
}

/// Runs a build that must fail: one `error:` line naming `expected`, nothing at `output`.
fn fails(args: &[&str], expected: &str) {
    let out = bin(args, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: not one line: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{args:?}: {stderr:?} lacks {expected:?}");
}

fn query_vector(docs: &Docs, row: usize) -> String {
    let v: Vec<String> = docs.vectors()[row * docs.d..(row + 1) * docs.d].iter().map(|x| x.to_string()).collect();
    format!("[{}]", v.join(", "))
}

/// The ids column of the first result table in `out`.
fn ids(out: &str) -> Vec<i64> {
    out.lines()
        .skip_while(|l| !l.starts_with("| id"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches(['|', ' ']).split('|').next().unwrap().trim().parse().unwrap())
        .collect()
}

/// Builds `table` into `index`, inspects it and queries it through SQL with and without
/// the index; every list is probed, so both must return the exact top 10.
fn round_trip(table: &str, index: &str, docs: &Docs, env: &[(&str, String)]) {
    let built =
        ok(&["build", "--input", table, "--factory", "IVF16,Flat", "--train-size", "700", "--output", index], env);
    assert!(built.contains(&format!("vectors     {}", docs.n)), "{built}");
    assert!(built.contains("nlist       16 "), "{built}");
    let inspected = ok(&["inspect", index], env);
    assert!(inspected.contains("type        IVF16,Flat"), "{inspected}");
    assert!(inspected.contains(&format!("dimension   {}", docs.d)), "{inspected}");
    assert!(inspected.contains("list sizes  min "), "{inspected}");

    let ddl = format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{table}' \
         OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding')"
    );
    let select =
        format!("SELECT id, title FROM docs ORDER BY vec_distance(embedding, {}) LIMIT 10", query_vector(docs, 7));
    let indexed = ok(&["sql", "-c", &ddl, "-c", "SET faiss.nprobe = 16", "-c", &select], env);
    let exact = ok(&["sql", "-c", &ddl, "-c", "SET faiss.enabled = false", "-c", &select], env);
    assert!(indexed.contains("io: 16 lists probed"), "{indexed}");
    assert!(!exact.contains("io: "), "{exact}");
    assert_eq!(ids(&indexed).len(), 10, "{indexed}");
    assert_eq!(ids(&indexed), ids(&exact));
    assert_eq!(ids(&indexed)[0], 7 * 3 + 11);
}

#[test]
fn build_inspect_sql_on_local_files() {
    let dir = tempfile::tempdir().unwrap();
    // 3000 rows and a sample of 700: the rows are read twice, the sample is uniform.
    let docs = Docs::new(3000, 16, 5);
    let table = dir.path().join("docs.parquet");
    std::fs::write(&table, docs.parquet()).unwrap();
    let index = dir.path().join("out/docs.faiss");
    round_trip(table.to_str().unwrap(), index.to_str().unwrap(), &docs, &[]);
    let names: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["docs.faiss", "docs.faiss.json"], "temporary files left behind");
}

#[test]
fn build_from_a_query_with_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let docs = Docs::new(2000, 8, 9);
    let table = dir.path().join("docs.parquet");
    std::fs::write(&table, docs.parquet()).unwrap();
    let index = dir.path().join("en.faiss");
    let (table, index) = (table.to_str().unwrap(), index.to_str().unwrap());
    let built = ok(
        &[
            "build",
            "--table",
            &format!("docs={table}"),
            "--query",
            "SELECT id AS k, embedding AS v FROM docs WHERE lang = 'en'",
            "--key",
            "k",
            "--vector",
            "v",
            "--factory",
            "IVF8,Flat",
            "--metric",
            "cosine",
            "--output",
            index,
        ],
        &[],
    );
    let en = (0..2000).filter(|i| i * 7919 % 1000 < 900).count();
    assert!(built.contains(&format!("vectors     {en}")), "{built}");
    assert!(built.contains("metric      InnerProduct"), "{built}");
    // Cosine ranking through the normalised index equals the exact cosine ranking.
    let ddl = format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{table}' \
         OPTIONS ('index' '{index}', 'key' 'id', 'vector' 'embedding', 'normalized' 'true')"
    );
    let select = format!(
        "SELECT id FROM docs WHERE lang = 'en' ORDER BY cosine_distance(embedding, {}) LIMIT 10",
        query_vector(&docs, 3)
    );
    let indexed = ok(&["sql", "-c", &ddl, "-c", "SET faiss.nprobe = 8", "-c", &select], &[]);
    let exact = ok(&["sql", "-c", &ddl, "-c", "SET faiss.enabled = false", "-c", &select], &[]);
    assert!(indexed.contains("io: 8 lists probed"), "{indexed}");
    assert_eq!(ids(&indexed), ids(&exact));
}

#[tokio::test(flavor = "multi_thread")]
async fn build_inspect_sql_on_s3() {
    let store = common::s3_store();
    let prefix = common::unique_path("cli");
    let docs = Docs::new(3000, 16, 6);
    store.put(&prefix.clone().join("docs.parquet"), PutPayload::from(docs.parquet())).await.unwrap();
    let bucket = common::s3_bucket();
    let env = s3_env();
    let table = format!("s3://{bucket}/{prefix}/docs.parquet");
    let index = format!("s3://{bucket}/{prefix}/docs.faiss");
    tokio::task::spawn_blocking(move || round_trip(&table, &index, &docs, &env)).await.unwrap();
    let listed = list(&*store, &prefix).await;
    assert_eq!(listed, ["docs.faiss", "docs.faiss.json", "docs.parquet"], "temporary objects left behind");

    // A failed upload (the server refuses the keys) leaves nothing, and says so in one line.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("docs.parquet");
    std::fs::write(&local, Docs::new(500, 4, 2).parquet()).unwrap();
    let mut env = s3_env();
    env.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    env.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
    let refused = format!("s3://{bucket}/{prefix}/refused.faiss");
    let out = bin(&["build", "--input", local.to_str().unwrap(), "--factory", "IVF4,Flat", "-o", &refused], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("error: ") && stderr.lines().count() == 1 && stderr.contains("refused.faiss"),
        "{stderr}"
    );
    assert_eq!(list(&*store, &prefix).await, ["docs.faiss", "docs.faiss.json", "docs.parquet"], "{stderr}");
}

fn s3_env() -> Vec<(&'static str, String)> {
    let var = common::s3_var;
    vec![
        ("AWS_ENDPOINT", var("DFF_S3_ENDPOINT")),
        ("AWS_ACCESS_KEY_ID", var("DFF_S3_KEY")),
        ("AWS_SECRET_ACCESS_KEY", var("DFF_S3_SECRET")),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

async fn list(store: &dyn ObjectStore, prefix: &Path) -> Vec<String> {
    use futures::TryStreamExt;
    let mut names: Vec<String> =
        store.list(Some(prefix)).map_ok(|m| m.location.filename().unwrap().to_string()).try_collect().await.unwrap();
    names.sort();
    names
}

#[test]
fn build_errors_are_one_line_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let copy = |name: &str, select: &str| {
        ok(&["sql", "-c", &format!("COPY ({select}) TO '{}' STORED AS PARQUET", at(name))], &[]);
    };
    let rows = |vectors: &str| format!("SELECT CAST(column1 AS BIGINT) AS id, {vectors} AS embedding FROM (VALUES ");
    copy(
        "mixed.parquet",
        &(rows("CAST(column2 AS FLOAT[])") + "(1, [1.0, 2.0]), (2, [1.0, 2.0]), (3, [1.0, 2.0, 3.0]))"),
    );
    copy("null.parquet", &(rows("CAST(column2 AS FLOAT[])") + "(1, [1.0, 2.0]), (2, NULL))"));
    copy("nan.parquet", &(rows("CAST(column2 AS FLOAT[])") + "(1, [1.0, 2.0]), (2, [1.0, CAST('NaN' AS DOUBLE)]))"));
    copy("ints.parquet", &(rows("column2") + "(1, [1, 2]), (2, [3, 4]))"));
    copy("text.parquet", &(rows("column2") + "(1, 'a'), (2, 'b'))"));
    std::fs::write(at("garbage.parquet"), b"not a parquet file").unwrap();
    let docs = Docs::new(100, 4, 1);
    std::fs::write(at("docs.parquet"), docs.parquet()).unwrap();

    let out = at("out/index.faiss");
    let build = |input: &str, factory: &str, expected: &str| {
        fails(&["build", "--input", &at(input), "--factory", factory, "--output", &out], expected);
    };
    build("missing.parquet", "IVF1,Flat", "missing.parquet: no such file or folder");
    build("garbage.parquet", "IVF1,Flat", "garbage.parquet: Parquet error");
    build("mixed.parquet", "IVF1,Flat", "row 2 (key 3) has 3 values, expected 2");
    build("null.parquet", "IVF1,Flat", "row 1 (key 2) is NULL");
    build("nan.parquet", "IVF1,Flat", "row 1 (key 2) has NaN at component 1");
    build("ints.parquet", "IVF1,Flat", "vector column \"embedding\" is List(Int64)");
    build("text.parquet", "IVF1,Flat", "vector column \"embedding\" is Utf8");
    build("docs.parquet", "IVF8,Fluffy", "factory string \"IVF8,Fluffy\"");
    build("docs.parquet", "IVF256,Flat", "256 lists but only 100 vectors");
    build("docs.parquet", "HNSW32", "cannot be searched in place");
    fails(
        &["build", "--input", &at("docs.parquet"), "--key", "title", "--factory", "IVF2,Flat", "-o", &out],
        "key column \"title\" is Utf8",
    );
    fails(
        &["build", "--input", &at("docs.parquet"), "--vector", "vec", "--factory", "IVF2,Flat", "-o", &out],
        "No field named vec",
    );
    assert!(!FsPath::new(&out).exists());
    // The output's folder cannot be made: the upload fails before anything is visible.
    fails(
        &["build", "--input", &at("docs.parquet"), "--factory", "IVF2,Flat", "-o", &at("docs.parquet/index.faiss")],
        "docs.parquet",
    );
}

#[test]
fn sql_runs_files_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.sql");
    std::fs::write(&file, "SELECT 1 AS a; -- one; two\nSELECT 'x;y' AS b").unwrap();
    let out = ok(&["sql", "-f", file.to_str().unwrap()], &[]);
    assert!(out.contains("| a |") && out.contains("| x;y |"), "{out}");
    let failed = bin(&["sql", "-c", "SELECT * FROM nowhere"], &[]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("nowhere"));

    // The prompt: statements over several lines, an error that does not end the session,
    // history kept in $HOME.
    let mut child = Command::new(env!("CARGO_BIN_EXE_datafusion-faiss"))
        .arg("sql")
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = "SELECT 40\n + 2 AS answer;\nSELECT * FROM nowhere;\nSELECT 'still here' AS s;\n\\q\n";
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("| 42     |") && stdout.contains("| still here |"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nowhere"));
    let history = std::fs::read_to_string(dir.path().join(".datafusion_faiss_history")).unwrap();
    assert!(history.contains("SELECT 'still here' AS s;"), "{history}");
}

#[test]
fn demo_runs_and_reuses_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_str().unwrap();
    let args = ["demo", "--dir", dir, "--nlist", "64", "--nprobe", "4", "--queries", "20", "--sql-queries", "2"];
    let first = ok(&args, &[]);
    for line in [
        "written: id, label, embedding",
        "ids equal to FAISS: 1.0000",
        "io: 4 lists probed",
        "IvfTopKExec",
        "recall@10",
    ] {
        assert!(first.contains(line), "demo output lacks {line:?}:\n{first}");
    }
    let again = ok(&args, &[]);
    assert!(again.contains("(reused)") && !again.contains("written"), "{again}");
}

/// A folder of pyarrow-written files indexed with `build --positions`: the table is
/// declared without a key column, and the index plan's rows equal the exact plan's.
#[test]
fn positions_index_of_a_pyarrow_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = common::pyarrow_table(&folder, 6_000, 16, 3, 5);
    let (table, index) = (format!("{}/", folder.display()), dir.path().join("docs.faiss"));
    let index = index.to_str().unwrap();
    ok(&["build", "--input", &table, "--positions", "--factory", "IVF16,Flat", "--output", index], &[]);
    let ddl = format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{table}' OPTIONS ('index' '{index}', 'vector' 'embedding')"
    );
    let q: Vec<String> = x[700 * 16..701 * 16].iter().map(|v| v.to_string()).collect();
    let select = format!("SELECT id, title FROM docs ORDER BY vec_distance(embedding, '[{}]') LIMIT 10", q.join(", "));
    let indexed = ok(&["sql", "-c", &ddl, "-c", "SET faiss.nprobe = 16", "-c", &select], &[]);
    let exact = ok(&["sql", "-c", &ddl, "-c", "SET faiss.enabled = false", "-c", &select], &[]);
    assert!(indexed.contains("io: 16 lists probed") && indexed.contains("; rows: "), "{indexed}");
    assert_eq!(ids(&indexed).len(), 10, "{indexed}");
    assert_eq!(ids(&indexed), ids(&exact));
}

/// Changes a pyarrow file as tests/python/change_table.py does.
fn change(args: &[&str]) {
    let status = Command::new(common::root().join(".work/venv/bin/python"))
        .arg(common::root().join("tests/python/change_table.py"))
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "change_table.py {args:?}");
}

/// `build` records in a manifest which files the index covers; then the table changes
/// (a file appended, one file's vectors rewritten) and the index plan stays exact, ranking
/// those files exactly and saying so; `build --update` indexes only the files not covered,
/// as a delta trained as the index is, after which no file is ranked exactly.
#[test]
fn build_update_after_the_table_changed() {
    for positions in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("docs");
        let (x, _) = common::pyarrow_table(&folder, 6_000, 16, 3, 6);
        let table = format!("{}/", folder.display());
        let index = dir.path().join("docs.faiss");
        let index = index.to_str().unwrap();
        let ids_arg: &[&str] = if positions { &["--positions"] } else { &[] };
        let mut build = vec!["build", "--input", &table, "--factory", "IVF8,Flat", "--output", index];
        build.extend(ids_arg);
        let built = ok(&build, &[]);
        assert!(built.contains(&format!("manifest    {index}.json: 3 files, 6000 rows")), "{built}");

        let part = |name: &str| folder.join(name).to_str().unwrap().to_string();
        change(&["append", &part("part-99.parquet"), "3", &part("part-00.parquet")]);
        change(&["revector", &part("part-01.parquet"), "4"]);
        let key = if positions { "" } else { "'key' 'id', " };
        let ddl = format!(
            "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{table}' OPTIONS ('index' '{index}', {key}'vector' 'embedding')"
        );
        let select = |row: usize| {
            let q: Vec<String> = x[row * 16..(row + 1) * 16].iter().map(|v| v.to_string()).collect();
            format!("SELECT id, title FROM docs ORDER BY vec_distance(embedding, '[{}]'), id LIMIT 10", q.join(", "))
        };
        let same_as_exact = |row: usize| {
            let indexed = ok(&["sql", "-c", &ddl, "-c", "SET faiss.nprobe = 8", "-c", &select(row)], &[]);
            let exact = ok(&["sql", "-c", &ddl, "-c", "SET faiss.enabled = false", "-c", &select(row)], &[]);
            assert_eq!(ids(&indexed).len(), 10, "{indexed}");
            assert_eq!(ids(&indexed), ids(&exact), "positions {positions}, row {row}");
            indexed
        };
        let explain = ok(&["sql", "-c", &ddl, "-c", &format!("EXPLAIN {}", select(0))], &[]);
        assert!(
            explain.contains("indexes=1 covered_files=2 covered_rows=4000 uncovered_files=2 stale_files=1"),
            "{explain}"
        );
        for row in [100, 2_100, 4_100] {
            let indexed = same_as_exact(row);
            // 3,000 of 9,000 rows (1,000 new, 2,000 rewritten) are ranked exactly.
            assert!(indexed.contains("build --update"), "{indexed}");
        }

        let mut update = vec!["build", "--update", "--input", &table, "--output", index];
        update.extend(ids_arg);
        let updated = ok(&update, &[]);
        assert!(updated.contains("update      2 files not covered: part-01.parquet, part-99.parquet"), "{updated}");
        // The delta's manifest names just the two files it read.
        let delta = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_str().unwrap().contains("docs.delta-") && p.to_str().unwrap().ends_with(".faiss.json"))
            .unwrap_or_else(|| panic!("no delta manifest: {updated}"));
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&delta).unwrap()).unwrap();
        let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files[0].ends_with("part-01.parquet") && files[1].ends_with("part-99.parquet"), "{files:?}");
        let explain = ok(&["sql", "-c", &ddl, "-c", &format!("EXPLAIN {}", select(0))], &[]);
        assert!(explain.contains("indexes=2 covered_files=4") && explain.contains("uncovered_files=0"), "{explain}");
        for row in [100, 2_100, 4_100] {
            let indexed = same_as_exact(row);
            assert!(!indexed.contains("build --update"), "{indexed}");
        }
        assert!(ok(&update, &[]).contains("up to date"));
    }
}

/// `build --per-file` on a pyarrow folder: an index and a sidecar per file, up-to-date
/// files skipped on the next run, a rewritten file rebuilt; the sharded table's index plan
/// equals the exact plan.
#[test]
fn per_file_shards_of_a_pyarrow_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    let (x, _) = common::pyarrow_table(&folder, 6_000, 16, 3, 5);
    let table = format!("{}/", folder.display());
    let build = ["build", "--input", &table, "--per-file", "--positions", "--factory", "IVF8,Flat", "--output", &table];
    let first = ok(&build, &[]);
    assert!(first.contains("shards      3 built, 0 up to date"), "{first}");
    for f in 0..3 {
        let sidecar = std::fs::read_to_string(folder.join(format!("part-{f:02}.faiss.json"))).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&sidecar).unwrap();
        let files = manifest["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{sidecar}");
        assert_eq!(files[0]["rows"], 2000, "{sidecar}");
        assert!(files[0]["path"].as_str().unwrap().ends_with(&format!("part-{f:02}.parquet")), "{sidecar}");
    }
    let again = ok(&build, &[]);
    assert!(again.contains("shards      0 built, 3 up to date"), "{again}");
    // Rewritten (same bytes, a new date): its sidecar no longer matches, so it is rebuilt.
    let part = folder.join("part-01.parquet");
    let bytes = std::fs::read(&part).unwrap();
    std::fs::remove_file(&part).unwrap();
    std::fs::write(&part, bytes).unwrap();
    let after = ok(&build, &[]);
    assert!(after.contains("shards      1 built, 2 up to date"), "{after}");

    let ddl = format!(
        "CREATE EXTERNAL TABLE docs STORED AS FAISS LOCATION '{table}' OPTIONS ('index' '{table}', 'vector' 'embedding')"
    );
    let q: Vec<String> = x[700 * 16..701 * 16].iter().map(|v| v.to_string()).collect();
    let select = format!("SELECT id, title FROM docs ORDER BY vec_distance(embedding, '[{}]'), id LIMIT 10", q.join(", "));
    let explain = ok(&["sql", "-c", &ddl, "-c", &format!("EXPLAIN {select}")], &[]);
    assert!(explain.contains("indexes=3 covered_files=3"), "{explain}");
    let indexed = ok(&["sql", "-c", &ddl, "-c", "SET faiss.nprobe = 8", "-c", &select], &[]);
    let exact = ok(&["sql", "-c", &ddl, "-c", "SET faiss.enabled = false", "-c", &select], &[]);
    assert_eq!(ids(&indexed).len(), 10, "{indexed}");
    assert_eq!(ids(&indexed), ids(&exact));
}
