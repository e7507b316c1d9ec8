//! Open and search, cold (cache emptied before each search) and warm, next to FAISS's
//! own in-memory search, on a synthetic 50k × 64 IVF256,Flat index in a local file.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion_faiss::{InMemoryIndex, IvfIndex, IvfIndexBuilder, Metric};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ObjectStore;

const D: usize = 64;
const N: usize = 50_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.faiss");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new());
    let path = Path::from_absolute_path(&file).unwrap();
    let x = common::clustered(N, D, 100, 41);
    let mut builder = IvfIndexBuilder::new(D, "IVF256,Flat", Metric::L2).unwrap();
    builder.train(&x).unwrap();
    builder.add(&x, &common::ids(N)).unwrap();
    rt.block_on(builder.write(store.clone(), &path)).unwrap();
    let reference = InMemoryIndex::from_bytes(&std::fs::read(&file).unwrap()).unwrap();
    let index = rt.block_on(IvfIndex::open(store.clone(), &path)).unwrap();
    let queries = common::clustered(64, D, 100, 42);
    let mut next = queries.chunks(D).cycle();

    c.bench_function("open header-only", |b| {
        b.to_async(&rt).iter(|| async { IvfIndex::open(store.clone(), &path).await.unwrap() })
    });
    for nprobe in [4, 16] {
        c.bench_function(&format!("search cold nprobe={nprobe}"), |b| {
            b.to_async(&rt).iter(|| {
                let q = next.next().unwrap();
                index.cache().unwrap().clear();
                index.search(q, 10, nprobe)
            })
        });
        c.bench_function(&format!("search warm nprobe={nprobe}"), |b| {
            b.to_async(&rt).iter(|| index.search(next.next().unwrap(), 10, nprobe))
        });
        c.bench_function(&format!("faiss in memory nprobe={nprobe}"), |b| {
            b.iter(|| reference.search(next.next().unwrap(), 10, nprobe).unwrap())
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
