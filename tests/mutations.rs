//! Mutated index files never crash, hang or exhaust memory. For a small seed file of
//! every supported type, a few hundred deterministic mutations each (byte flips in the
//! header, the list-size table and the tail; truncations; extreme values in the counts)
//! are opened and searched in child processes (this test binary, re-run as
//! `mutant_child`) under a memory limit and a timeout: memory-mapped, through an object
//! store's range reads, and loaded whole as FAISS's reference. Every outcome must be a
//! result or a typed error; a signal, a panic, an abort or a timeout fails the test with
//! the mutation that caused it.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use datafusion_faiss::{InMemoryIndex, IvfIndex, IvfIndexBuilder, Metric};
use object_store::local::LocalFileSystem;
use object_store::ObjectStoreExt;

const D: usize = 16;
const LIST_ENV: &str = "DFF_MUTANT_LIST";
const FROM_ENV: &str = "DFF_MUTANT_FROM";
const END_ENV: &str = "DFF_MUTANT_END";
/// Address space of a child: far above what a valid small index needs, far below what a
/// count trusted blindly would ask for.
const MEMORY_KIB: u64 = 4 << 20;
/// A child's whole batch runs in well under a second; only a hang gets near this.
const BATCH_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Mutant {
    seed: &'static str,
    what: String,
    bytes: Vec<u8>,
}

/// The child side: opens and searches the listed files `FROM_ENV..END_ENV`, printing
/// `start N` before each so the parent can name the one that crashed.
#[test]
fn mutant_child() {
    let Some(list) = std::env::var_os(LIST_ENV) else { return };
    let from: usize = std::env::var(FROM_ENV).unwrap().parse().unwrap();
    let end: usize = std::env::var(END_ENV).unwrap().parse().unwrap();
    let files: Vec<PathBuf> = std::fs::read_to_string(list).unwrap().lines().map(PathBuf::from).collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut out = std::io::stdout();
    for (i, file) in files.iter().enumerate().take(end).skip(from) {
        writeln!(out, "start {i}").unwrap();
        out.flush().unwrap();
        let outcome = rt.block_on(exercise(file));
        writeln!(out, "outcome {i}: {outcome}").unwrap();
        out.flush().unwrap();
    }
}

/// Every way a user reaches a file; errors are fine, as long as they are errors.
/// Returns how each way ended, e.g. `mapped ok, store BadHeader, memory BadHeader`.
async fn exercise(file: &Path) -> String {
    let q = clustered(3, D, 8, 99);
    let kind = |e: &datafusion_faiss::Error| format!("{e:?}").split([' ', '(', '{']).next().unwrap_or("").to_string();
    let mapped = match IvfIndex::open_file(file).await {
        Ok(index) => search(index, &q).await,
        Err(e) => kind(&e),
    };
    let store = Arc::new(LocalFileSystem::new_with_prefix(file.parent().unwrap()).unwrap());
    let path = object_store::path::Path::from(file.file_name().unwrap().to_str().unwrap());
    let store = match IvfIndex::open(store, &path).await {
        Ok(index) => search(index, &q).await,
        Err(e) => kind(&e),
    };
    let bytes = std::fs::read(file).unwrap();
    let memory = match InMemoryIndex::from_bytes(&bytes) {
        Ok(index) if index.dimension() == D => match index.search(&q, 5, 1 << 20) {
            Ok(_) => "searched".to_string(),
            Err(e) => kind(&e),
        },
        Ok(_) => "opened".to_string(),
        Err(e) => kind(&e),
    };
    format!("mapped {mapped}, store {store}, memory {memory}")
}

async fn search(index: IvfIndex, q: &[f32]) -> String {
    let info = index.info().clone();
    if info.dimension != D {
        return "opened".into();
    }
    let found = index.search(q, 5, info.nlist).await;
    let _ = index.search_among(q, 5, info.nlist, &[11, 14, 17, 20, 1000]).await;
    let _ = index.check().await;
    match found {
        Ok(_) => "searched".into(),
        Err(e) => format!("opened, search {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_files_never_crash() {
    let x = clustered(600, D, 8, 71);
    let mut seeds = Vec::new();
    for (factory, metric) in [
        ("IVF8,Flat", Metric::L2),
        ("IVF8,SQ8", Metric::InnerProduct),
        ("IVF8,SQ4", Metric::L2),
        ("IVF8,SQfp16", Metric::L2),
        ("IVF8,PQ4x4", Metric::L2),
        ("IDMap2,IVF8,Flat", Metric::L2),
        ("PCA8,IVF8,SQ8", Metric::L2),
        ("OPQ4_16,IVF8,PQ4x4", Metric::L2),
        ("IVF8,SQbf16", Metric::InnerProduct),
        ("IVF8,RaBitQ", Metric::L2),
    ] {
        seeds.push((factory, build_ours(&x, D, factory, metric).await));
    }
    // Sparse size tables (`sprs`) come from an index with mostly empty lists.
    seeds.push(("IVF64,Flat (sparse sizes)", sparse_seed(&x).await));
    // A second writer: Debian's python3-faiss.
    seeds.push(("IDMap,IVF8,SQ8 (python)", build_python(&x, D, "IDMap,IVF8,SQ8", Metric::L2)));
    seeds
        .push(("IDMap2,PCA8,IVF8,PQ4x4 (python)", build_python(&x, D, "IDMap2,PCA8,IVF8,PQ4x4", Metric::InnerProduct)));
    // The writer most users have: pip's faiss-cpu.
    seeds.push(("IDMap2,IVF8,RaBitQ (pip)", build_pip(&x, D, "IDMap2,IVF8,RaBitQ", Metric::InnerProduct)));
    // HNSW coarse quantizers, as FAISS's guidelines build large-nlist indexes.
    seeds.push(("IVF8_HNSW4,Flat (pip)", build_pip(&x, D, "IVF8_HNSW4,Flat", Metric::L2)));
    seeds.push(("IDMap2,IVF8_HNSW2,SQ8 (pip)", build_pip(&x, D, "IDMap2,IVF8_HNSW2,SQ8", Metric::InnerProduct)));

    let mut mutants = Vec::new();
    for (name, bytes) in &seeds {
        // The seed itself must open and search: the check refuses nothing valid.
        let (store, path) = memory_store_with(bytes, "seed.faiss").await;
        let index = IvfIndex::open(store, &path).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        index.search(&x[..D], 5, 8).await.unwrap();
        mutants.extend(mutate(name, bytes));
    }
    eprintln!("{} mutants of {} seeds", mutants.len(), seeds.len());

    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for (i, m) in mutants.iter().enumerate() {
        let file = dir.path().join(format!("{i:05}.faiss"));
        std::fs::write(&file, &m.bytes).unwrap();
        list += &format!("{}\n", file.display());
    }
    let list_file = dir.path().join("list");
    std::fs::write(&list_file, list).unwrap();

    // Two children at a time, each taking every other chunk.
    let total = mutants.len();
    let failures = tokio::task::spawn_blocking(move || {
        let chunks: Vec<(usize, usize)> =
            (0..mutants.len()).step_by(64).map(|s| (s, (s + 64).min(mutants.len()))).collect();
        let run = |chunks: Vec<(usize, usize)>| {
            let (mut failures, mut outcomes) = (Vec::new(), Vec::new());
            for (start, end) in chunks {
                failures.extend(run_children(&list_file, start, end, &mut outcomes).into_iter().map(|(i, how)| {
                    let m = &mutants[i];
                    format!("mutant {i} ({}: {}): {how}", m.seed, m.what)
                }));
            }
            (failures, outcomes)
        };
        let (even, odd): (Vec<_>, Vec<_>) = chunks.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let strip = |v: Vec<(usize, (usize, usize))>| v.into_iter().map(|(_, c)| c).collect::<Vec<_>>();
        let (even, odd) = (strip(even), strip(odd));
        std::thread::scope(|s| {
            let a = s.spawn(|| run(even));
            let b = s.spawn(|| run(odd));
            let (mut failures, mut outcomes) = a.join().unwrap();
            let (f, o) = b.join().unwrap();
            failures.extend(f);
            outcomes.extend(o);
            (failures, outcomes)
        })
    })
    .await
    .unwrap();
    let (failures, outcomes) = failures;
    assert!(
        failures.is_empty(),
        "{} mutants crashed, hung or ran out of memory:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Each way of opening, tallied: the mutations must both pass and fail the check, or
    // they test nothing.
    let mut tally = std::collections::BTreeMap::<String, usize>::new();
    for o in &outcomes {
        for part in o.split(", ") {
            let key: String = part.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            *tally.entry(key).or_default() += 1;
        }
    }
    eprintln!("outcomes: {tally:?}");
    assert_eq!(outcomes.len(), total, "every mutant ran to the end");
    assert!(tally.get("mapped searched").is_some_and(|&n| n > total / 20), "{tally:?}");
    assert!(tally.get("mapped BadHeader").is_some_and(|&n| n > total / 20), "{tally:?}");
}

/// Runs mutants `start..end` in children, a new child after each crash; returns the
/// mutants that crashed, hung or panicked, with how.
fn run_children(list: &Path, start: usize, end: usize, outcomes: &mut Vec<String>) -> Vec<(usize, String)> {
    let mut failures = Vec::new();
    let mut next = start;
    while next < end {
        let out = tempfile::NamedTempFile::new().unwrap();
        let exe = std::env::current_exe().unwrap();
        // `ulimit -v` bounds the address space, so a runaway allocation fails in the child.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {MEMORY_KIB} && exec \"$0\" \"$@\""))
            .arg(&exe)
            .args(["mutant_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(LIST_ENV, list)
            .env(FROM_ENV, next.to_string())
            .env(END_ENV, end.to_string())
            .stdout(Stdio::from(out.reopen().unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > BATCH_TIMEOUT {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(out.path()).unwrap();
        outcomes.extend(log.lines().filter_map(|l| Some(l.strip_prefix("outcome ")?.split_once(": ")?.1.to_string())));
        if status.is_some_and(|s| s.success()) {
            break;
        }
        let last = log.lines().rev().find_map(|l| l.strip_prefix("start ")?.parse::<usize>().ok());
        let culprit = last.unwrap_or(next);
        let how = match status {
            None => format!("no answer within {BATCH_TIMEOUT:?} (hang)"),
            Some(s) => format!("child died: {s}"),
        };
        failures.push((culprit, how));
        next = culprit + 1;
    }
    failures
}

/// An index whose lists are mostly empty, so FAISS writes its sizes as `sprs` pairs.
async fn sparse_seed(x: &[f32]) -> Vec<u8> {
    let mut b = IvfIndexBuilder::new(D, "IVF64,Flat", Metric::L2).unwrap().threads(2);
    b.train(x).unwrap();
    b.add(&x[..10 * D], &ids(10)).unwrap();
    let store: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let path = object_store::path::Path::from("sparse.faiss");
    b.write(store.clone(), &path).await.unwrap();
    let bytes = store.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
    assert!(bytes.windows(4).any(|w| w == b"sprs"), "expected a sparse size table");
    bytes
}

/// Deterministic mutations of `bytes`.
fn mutate(seed: &'static str, bytes: &[u8]) -> Vec<Mutant> {
    let mut out = Vec::new();
    let mut push = |what: String, b: Vec<u8>| out.push(Mutant { seed, what, bytes: b });
    let lists_tag = bytes.windows(4).rposition(|w| w == b"ilar").expect("ilar");
    let table = lists_tag + 32; // after tag, nlist, code_size, `full`/`sprs`, count
    let count = u64::from_le_bytes(bytes[lists_tag + 24..lists_tag + 32].try_into().unwrap()) as usize;
    let data_start = table + 8 * count;
    let len = bytes.len();

    // Extreme values at every 4-byte offset of the first 160 bytes (the wrappers' and
    // the IVF index's headers), and at the fields found by their tags.
    const I64S: [i64; 7] = [-1, -2, -100, 1_000_000_000, 1 << 62, i64::MAX, i64::MIN];
    const I32S: [i32; 4] = [0, -1, i32::MAX, i32::MIN];
    for at in (0..160.min(data_start)).step_by(4) {
        for v in [I64S[0], I64S[4], I64S[6]] {
            push(format!("i64 {v} at {at}"), put(bytes, at, &v.to_le_bytes()));
        }
        for v in [I32S[1], I32S[2]] {
            push(format!("i32 {v} at {at}"), put(bytes, at, &v.to_le_bytes()));
        }
    }
    let mut fields = vec![8, lists_tag + 4, lists_tag + 12, lists_tag + 24, table, data_start - 8];
    for tag in [&b"IxF2"[..], b"IxFI", b"IxPT", b"IxM2", b"IxMp", b"IwPQ", b"IwSq", b"LTra", b"Pcam"] {
        if let Some(q) = bytes.windows(4).position(|w| w == tag) {
            // ntotal, and the first u64 count after the header.
            fields.extend([q + 8, q + 37, q + 41, q + 45, q + 53]);
        }
    }
    fields.extend(hnsw_fields(bytes));
    if len > data_start + 8 {
        let data_end = len.saturating_sub(8 + 8 * 600).max(data_start);
        fields.extend([data_end, len - 8]);
    }
    for at in fields.into_iter().filter(|&at| at + 8 <= len) {
        for v in I64S {
            push(format!("i64 {v} at field {at}"), put(bytes, at, &v.to_le_bytes()));
        }
        for v in I32S {
            push(format!("i32 {v} at field {at}"), put(bytes, at, &v.to_le_bytes()));
        }
    }

    // Random byte flips in the header, the size table and the tail.
    let mut rng = Rng(0x5EED ^ len as u64);
    let regions = [(0, data_start), (table, data_start), (len.saturating_sub(64), len)];
    for (from, to) in regions {
        for _ in 0..24 {
            let at = from + (rng.next() as usize) % (to - from).max(1);
            let mut b = bytes.to_vec();
            b[at] ^= (rng.next() % 255 + 1) as u8;
            push(format!("byte flip at {at}"), b);
        }
    }

    // Truncations: across the header, at the list boundaries, in the tail.
    let mut cuts: Vec<usize> = (1..16).map(|i| data_start * i / 16).collect();
    cuts.extend([0, 3, 4, data_start - 1, data_start, data_start + 1, len - 9, len - 8, len - 1]);
    cuts.extend((0..6).map(|_| (rng.next() as usize) % len));
    for cut in cuts {
        push(format!("truncated to {cut} bytes"), bytes[..cut.min(len)].to_vec());
    }
    out
}

/// Where an HNSW quantizer's fields are: every vector's count, the first, middle and
/// last elements of its level table, offsets and neighbours, and the entry point, max
/// level and efSearch after them.
fn hnsw_fields(bytes: &[u8]) -> Vec<usize> {
    let Some(tag) = bytes.windows(4).position(|w| w == b"IHNf") else { return Vec::new() };
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    // tag, d, ntotal, two unused i64, is_trained, metric (L2 / IP: no metric_arg)
    let mut at = tag + 4 + 4 + 8 + 16 + 1 + 4;
    let mut fields = Vec::new();
    for elem in [8, 4, 4, 8, 4] {
        let n = u64_at(at);
        fields.push(at);
        let start = at + 8;
        if n > 0 {
            fields.extend([start, start + elem * (n / 2), start + elem * (n - 1)]);
        }
        at = start + elem * n;
    }
    fields.extend([at, at + 4, at + 12]);
    fields
}

fn put(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let end = (at + value.len()).min(b.len());
    b[at..end].copy_from_slice(&value[..end - at]);
    b
}
