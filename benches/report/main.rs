//! The benchmark report: recall, I/O, latency and throughput of header-only search next
//! to FAISS's own in-memory search, and of SQL through the index next to DataFusion's
//! exact plan, on Fashion-MNIST and a synthetic 1M × 128 set.
//!
//! `cargo bench --bench report` (what `make bench` runs) measures everything and writes
//! `.work/bench/report.{md,json,png}`. Run by `cargo test --all-targets` it is a smoke run
//! on a tiny set that also checks the targets that do not depend on timing.

#[path = "../../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

mod batch;
mod cells;
mod data;
mod cold;
mod filtered;
mod lookup;
mod output;
mod pip;
mod sql;
mod wire;

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion_faiss::{InMemoryIndex, IvfIndex};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use cells::{Budget, Cell, Mode, Place, Reference};
use data::{Source, Spec};
use output::{RecallRow, Report};
use sql::SqlBudget;
use wire::Wire;

struct Plan {
    out: PathBuf,
    specs: Vec<Spec>,
    nprobes: Vec<usize>,
    budget: Budget,
    sql: SqlBudget,
    /// The cell of the cold-latency target: data set and nprobe (IVF-Flat, 30 ms).
    headline: (String, usize),
    lookup: LookupPlan,
    /// Batch search: queries per data set (by name), and how many single statements to time.
    batch: (Vec<(String, usize)>, usize),
    filtered: filtered::Plan,
    cold: cold::Plan,
}

/// The row-lookup section: the IVF-Flat table of `dataset` as pyarrow writes it and in
/// the tuned layout, plus a larger tuned set, local and on S3 with `latency`.
struct LookupPlan {
    dataset: String,
    larger: Option<Spec>,
    queries: usize,
    exact_queries: usize,
    latency: Duration,
}

fn full() -> Plan {
    let factories = |pq: &str| vec!["IVF1024,Flat".to_string(), "IVF1024,SQ8".into(), format!("IVF1024,{pq}")];
    Plan {
        out: root().join(".work/bench"),
        specs: vec![
            Spec {
                name: "fashion-mnist".into(),
                source: Source::FashionMnist,
                factories: factories("PQ16np"),
                train_rows: 65536,
                nlist: 1024,
                k: 10,
            },
            Spec {
                name: "clustered-1m-128".into(),
                source: Source::Clustered { n: 1_000_000, nq: 2_000, d: 128, centers: 1000, seed: 7 },
                factories: factories("PQ16np"),
                train_rows: 65536,
                nlist: 1024,
                k: 10,
            },
        ],
        nprobes: vec![1, 2, 4, 8, 16, 32, 64],
        budget: Budget {
            max_queries: 400,
            min_queries: 20,
            sequential: Duration::from_millis(600),
            concurrent: Duration::from_millis(250),
        },
        sql: SqlBudget { index: (40, Duration::from_secs(2)), exact: (10, Duration::from_secs(8)) },
        headline: ("fashion-mnist".into(), 16),
        lookup: LookupPlan {
            dataset: "clustered-1m-128".into(),
            larger: Some(Spec {
                name: "clustered-4m-128".into(),
                source: Source::Clustered { n: 4_000_000, nq: 60, d: 128, centers: 1000, seed: 8 },
                factories: vec!["IVF1024,Flat".into()],
                train_rows: 65536,
                nlist: 1024,
                k: 10,
            }),
            queries: 40,
            exact_queries: 3,
            latency: Duration::from_millis(30),
        },
        batch: (vec![("fashion-mnist".into(), 10_000), ("clustered-1m-128".into(), 1_000)], 2_000),
        filtered: filtered::Plan {
            rows: 1_000_000,
            d: 128,
            nlist: 1024,
            queries: 11,
            exact: (3, 1),
            latency: Duration::from_millis(30),
        },
        cold: cold::Plan { processes: 5, latency: Duration::from_millis(30) },
    }
}

fn smoke() -> Plan {
    Plan {
        out: root().join(".work/bench-smoke"),
        specs: vec![Spec {
            name: "clustered-4k-16".into(),
            source: Source::Clustered { n: 4000, nq: 50, d: 16, centers: 40, seed: 7 },
            factories: vec!["IVF32,Flat".into(), "IVF32,SQ8".into(), "IVF32,PQ4np".into()],
            train_rows: 4000,
            nlist: 32,
            k: 10,
        }],
        nprobes: vec![1, 4],
        budget: Budget {
            max_queries: 8,
            min_queries: 4,
            sequential: Duration::from_millis(50),
            concurrent: Duration::from_millis(20),
        },
        sql: SqlBudget { index: (3, Duration::ZERO), exact: (3, Duration::ZERO) },
        headline: ("clustered-4k-16".into(), 4),
        lookup: LookupPlan {
            dataset: "clustered-4k-16".into(),
            larger: None,
            queries: 3,
            exact_queries: 2,
            latency: Duration::ZERO,
        },
        batch: (vec![("clustered-4k-16".into(), 50)], 10),
        filtered: filtered::Plan { rows: 20_000, d: 16, nlist: 64, queries: 3, exact: (3, 3), latency: Duration::ZERO },
        cold: cold::Plan { processes: 2, latency: Duration::ZERO },
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    // A new process of the cold-start section.
    if let Ok(job) = std::env::var("DFF_COLD_CHILD") {
        return cold::child(&job);
    }
    // `cargo bench` passes --bench; `cargo test` runs bench targets without it.
    let is_full = std::env::args().any(|a| a == "--bench");
    let mut plan = if is_full { full() } else { smoke() };
    // DFF_REPORT=lookup measures the row-lookup section alone (its data set's IVF-Flat);
    // DFF_REPORT=batch the batch-search section alone (IVF-Flat); DFF_REPORT=flat every
    // section but the row lookup, on the IVF-Flat indexes only.
    let section = std::env::var("DFF_REPORT").unwrap_or_default();
    // DFF_REPORT=filtered (cold): the filtered-search (cold-start) section alone.
    if section == "filtered" || section == "cold" {
        plan.specs.clear();
    }
    let only_batch = section == "batch";
    let only_lookup = section == "lookup";
    if only_lookup {
        let name = plan.lookup.dataset.clone();
        plan.specs.retain(|s| s.name == name);
    }
    if only_lookup || only_batch || section == "flat" {
        plan.specs.iter_mut().for_each(|s| s.factories.retain(|f| f.ends_with(",Flat")));
    }
    let started = Instant::now();
    std::fs::create_dir_all(&plan.out).unwrap();
    let datasets: Vec<data::Dataset> = plan.specs.iter().map(|s| data::prepare(s, &plan.out)).collect();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let s3 = common::s3_store();
    let mut report = Report {
        title: format!("datafusion-faiss benchmark report ({})", if is_full { "full" } else { "smoke" }),
        setup: setup_lines(&plan, &datasets),
        recall: Vec::new(),
        cells: Vec::new(),
        sql: Vec::new(),
        lookup: Vec::new(),
        batch: Vec::new(),
        pip: Vec::new(),
        headline: plan.headline.clone(),
    };

    for ds in datasets.iter().filter(|_| !only_lookup && !only_batch) {
        for (factory, file) in &ds.indexes {
            let size = std::fs::metadata(file).unwrap().len();
            let key = Path::from(format!("bench/{}/{}", ds.name, file.file_name().unwrap().to_string_lossy()));
            rt.block_on(upload(&s3, file, &key, size));
            let places = [
                Place::Local(file.clone()),
                Place::Store {
                    wire: Wire::new(s3.clone(), Duration::ZERO),
                    path: key.clone(),
                    label: "S3 +0 ms".into(),
                },
                Place::Store {
                    wire: Wire::new(s3.clone(), Duration::from_millis(30)),
                    path: key.clone(),
                    label: "S3 +30 ms".into(),
                },
            ];
            let base = Cell { dataset: ds.name.clone(), factory: factory.clone(), ..Default::default() };

            // FAISS first, every query at every nprobe; then the whole file is dropped so
            // ours is measured without it resident.
            let faiss = InMemoryIndex::from_bytes(&std::fs::read(file).unwrap()).unwrap();
            let mut faiss_ids = Vec::new();
            for &nprobe in &plan.nprobes {
                faiss_ids.push(data::faiss_all(&faiss, &ds.queries, ds.d, ds.k, nprobe));
            }
            for (p, &nprobe) in plan.nprobes.iter().enumerate() {
                let r = reference(ds, &faiss_ids[p]);
                let cell = Cell { nprobe, mode: Mode::Faiss.name().into(), store: "memory".into(), ..base.clone() };
                report.cells.push(cells::faiss_cell(&faiss, &r, nprobe, plan.budget, cell));
            }
            drop(faiss);
            if factory.ends_with(",Flat") {
                report.pip.extend(pip::measure(ds, factory, file, &plan.nprobes, plan.budget.max_queries));
            }

            rt.block_on(async {
                let index = Arc::new(IvfIndex::open_file(file).await.unwrap());
                for (p, &nprobe) in plan.nprobes.iter().enumerate() {
                    let ours = ours_all(&index, &ds.queries, ds.d, ds.k, nprobe).await;
                    report.recall.push(recall_row(ds, factory, nprobe, &ours, &faiss_ids[p]));
                }
            });
            for (p, &nprobe) in plan.nprobes.iter().enumerate() {
                let r = reference(ds, &faiss_ids[p]);
                for place in &places {
                    for mode in [Mode::Warm, Mode::ColdHeader, Mode::Fresh] {
                        // A mapped file has no list cache: "header cached" would be warm again.
                        if mode == Mode::ColdHeader && matches!(place, Place::Local(_)) {
                            continue;
                        }
                        let cell = Cell { nprobe, mode: mode.name().into(), store: place.label(), ..base.clone() };
                        let cell = rt.block_on(cells::our_cell(place, mode, &r, nprobe, size, plan.budget, cell));
                        report.cells.push(cell);
                    }
                }
            }
            eprintln!("report: {} {factory} measured ({:.0} s so far)", ds.name, started.elapsed().as_secs_f64());
        }
        let (factory, file) = &ds.indexes[0];
        report.sql.push(rt.block_on(sql::compare(
            ds,
            factory,
            file,
            16.min(plan.nprobes[plan.nprobes.len() - 1]),
            &plan.sql,
        )));
    }

    if !only_lookup {
        let (sets, singles) = &plan.batch;
        for ds in &datasets {
            let Some((_, queries)) = sets.iter().find(|(name, _)| *name == ds.name) else { continue };
            let (_, flat) = ds.indexes.iter().find(|(f, _)| f.ends_with(",Flat")).expect("an IVF-Flat index");
            let nprobe = 16.min(plan.nprobes[plan.nprobes.len() - 1]);
            report.batch.push(rt.block_on(batch::measure(ds, flat, *queries, *singles, nprobe)));
            eprintln!("report: batch search on {} measured", ds.name);
        }
    }

    // Made outside the runtime: building an index blocks.
    if section != "flat" && !only_batch && section != "filtered" && section != "cold" {
        let larger = plan.lookup.larger.as_ref().map(|spec| data::prepare(spec, &plan.out));
        rt.block_on(measure_lookup(&plan, &datasets, larger.as_ref(), &s3, &mut report));
    }

    let mut filtered_md = String::new();
    if matches!(section.as_str(), "" | "filtered") {
        let (md, exact) = rt.block_on(filtered::measure(&plan.filtered, &plan.out, &s3));
        // Exactness does not depend on timing: checked in the smoke run too.
        assert!(exact, "a filtered query ranked by entries differs from the exact plan\n{md}");
        if section == "filtered" {
            std::fs::write(plan.out.join("filtered.md"), &md).unwrap();
            println!("{md}");
            return;
        }
        filtered_md = md;
    }

    report.setup.push(format!("whole run: {:.0} s", started.elapsed().as_secs_f64()));
    let mut cold_md = String::new();
    if matches!(section.as_str(), "" | "cold") {
        cold_md = rt.block_on(cold::measure(&plan.cold, &plan.filtered, &plan.out, &s3));
        assert!(!cold_md.contains("| NO |"), "a new process answered differently\n{cold_md}");
        if section == "cold" {
            std::fs::write(plan.out.join("cold.md"), &cold_md).unwrap();
            println!("{cold_md}");
            return;
        }
    }
    let md = report.markdown() + &filtered_md + &cold_md;
    std::fs::write(plan.out.join("report.md"), &md).unwrap();
    std::fs::write(plan.out.join("report.json"), report.json()).unwrap();
    if !only_lookup && !only_batch {
        report.png(&plan.out.join("report.png")).unwrap();
    }
    let targets = md.split("\n## SQL").next().unwrap();
    println!("{targets}\nreport: {}/report.{{md,json,png}}", plan.out.display());

    if !is_full {
        // Timing depends on the machine; these do not.
        let targets = report.targets();
        for t in &targets[..2] {
            assert!(t.pass, "smoke: {}: {}", t.what, t.figure);
        }
        assert!(report.sql.iter().all(|r| r.recall_vs_exact > 0.0), "smoke: SQL through the index found nothing");
    }
}

async fn measure_lookup(
    plan: &Plan,
    datasets: &[data::Dataset],
    larger: Option<&data::Dataset>,
    s3: &Arc<dyn ObjectStore>,
    report: &mut Report,
) {
    let lp = &plan.lookup;
    let ds = datasets.iter().find(|d| d.name == lp.dataset).expect("the lookup's data set");
    let (_, flat) = ds.indexes.iter().find(|(f, _)| f.ends_with(",Flat")).expect("an IVF-Flat index");
    let pyarrow = lookup::pyarrow_copy(ds, &plan.out);
    let rows = ds.n;
    let tables = [
        lookup::Table { name: format!("{} pyarrow defaults", ds.name), rows, parquet: pyarrow, index: flat.clone() },
        lookup::Table { name: format!("{} tuned", ds.name), rows, parquet: ds.parquet.clone(), index: flat.clone() },
    ];
    for t in &tables {
        report.lookup.push(lookup::local(ds, t, lp.queries, lp.exact_queries).await);
        let prefix = format!("bench/lookup/{}", t.name.replace(' ', "-"));
        report.lookup.push(lookup::s3(ds, t, s3.clone(), &prefix, lp.latency, lp.queries.min(20)).await);
        eprintln!("report: lookup on {} measured", t.name);
    }
    if let Some(big) = larger {
        let (_, flat) = &big.indexes[0];
        let t = lookup::Table {
            name: format!("{} tuned", big.name),
            rows: big.n,
            parquet: big.parquet.clone(),
            index: flat.clone(),
        };
        report.lookup.push(lookup::local(big, &t, lp.queries, lp.exact_queries).await);
    }
}

fn reference<'a>(ds: &'a data::Dataset, faiss_ids: &'a [i64]) -> Reference<'a> {
    Reference { queries: &ds.queries, d: ds.d, k: ds.k, truth: &ds.truth, faiss_ids }
}

/// Every query through ours, in two halves searched by two tasks (a scan is one thread).
async fn ours_all(index: &Arc<IvfIndex>, queries: &[f32], d: usize, k: usize, nprobe: usize) -> Vec<i64> {
    let half = (queries.len() / d).div_ceil(2) * d;
    let tasks: Vec<_> = queries
        .chunks(half)
        .map(|part| {
            let (index, part) = (index.clone(), part.to_vec());
            tokio::spawn(async move { index.search(&part, k, nprobe).await.unwrap().ids })
        })
        .collect();
    let mut ids = Vec::with_capacity(queries.len() / d * k);
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    ids
}

fn recall_row(ds: &data::Dataset, factory: &str, nprobe: usize, ours: &[i64], faiss: &[i64]) -> RecallRow {
    let k = ds.k;
    let recall = |found: &[i64]| {
        let hits: usize =
            found.chunks(k).zip(ds.truth.chunks(k)).map(|(f, t)| f.iter().filter(|id| t.contains(id)).count()).sum();
        hits as f64 / ds.truth.len() as f64
    };
    let same = ours.chunks(k).zip(faiss.chunks(k)).filter(|(a, b)| a == b).count();
    RecallRow {
        dataset: ds.name.clone(),
        factory: factory.to_string(),
        nprobe,
        queries: ds.nq(),
        faiss: recall(faiss),
        ours: recall(ours),
        same_ids: same as f64 / ds.nq() as f64,
    }
}

/// Puts `file` at `key` unless an object of its size is there. One PUT, not a multipart
/// upload: SeaweedFS gzips multipart parts it finds compressible, and a range GET of such
/// an object then decompresses whole chunks, which real S3 never does.
async fn upload(store: &Arc<dyn ObjectStore>, file: &FsPath, key: &Path, size: u64) {
    if store.head(key).await.is_ok_and(|m| m.size == size) {
        return;
    }
    let bytes = std::fs::read(file).unwrap();
    store.put(key, bytes.into()).await.unwrap();
}

fn setup_lines(plan: &Plan, datasets: &[data::Dataset]) -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let mut lines = vec![
        format!(
            "machine: {} cores ({cpu}), {mem}; FAISS {} built from source by build.rs, one build for every mode \
             (\"FAISS in memory\"); pip faiss-cpu in memory from Python, one thread, for comparison",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            datafusion_faiss::faiss_build(),
        ),
        format!(
            "per cell: up to {} queries one after another (at least {}, stopping after {:?}), then {:?} at each concurrency; k = 10",
            plan.budget.max_queries, plan.budget.min_queries, plan.budget.sequential, plan.budget.concurrent
        ),
        "stores: the local file (memory-mapped; the OS page cache is not dropped), SeaweedFS on 127.0.0.1 \
         through object_store's S3 client, and the same with 30 ms added before every GET"
            .into(),
        "cold, header cached: the list cache is emptied before each query; under concurrency one query's \
         emptying can drop lists another just fetched"
            .into(),
    ];
    for ds in datasets {
        let files: Vec<String> = ds
            .indexes
            .iter()
            .map(|(f, p)| {
                format!("{f} {:.1} MiB", std::fs::metadata(p).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64)
            })
            .collect();
        lines.push(format!(
            "{}: {} × {} base, {} queries, exact neighbours cached; {}",
            ds.name,
            ds.n,
            ds.d,
            ds.nq(),
            files.join(", ")
        ));
        for (what, secs) in &ds.build_secs {
            lines.push(format!("{}: made {what} in {secs:.1} s", ds.name));
        }
    }
    lines
}
