//! `inspect`: what an index holds and how its file is laid out, from its header alone.

use datafusion_faiss::IvfIndex;
use indicatif::HumanBytes;

use super::{CliResult, Location};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Index URL: a local path, file://, s3://bucket/key or memory://name/key.
    url: String,
}

pub async fn run(args: InspectArgs) -> CliResult {
    let at = Location::parse(&args.url)?;
    let index = at.open().await?;
    println!("type        {}", index.info().description);
    describe(&index);
    let open = index.open_stats();
    if at.file.is_some() {
        println!("read        memory-mapped: the header was parsed in place, no list was touched");
    } else {
        println!("read        {} GETs, {} B to open the header", open.gets, open.bytes);
    }
    Ok(())
}

/// Dimension, metric, list sizes with a histogram, and the file's byte layout.
pub fn describe(index: &IvfIndex) {
    let info = index.info();
    let mut sizes = index.cluster_sizes().to_vec();
    sizes.sort_unstable();
    let empty = sizes.iter().take_while(|&&s| s == 0).count();
    println!("dimension   {}", info.dimension);
    println!("metric      {:?}", info.metric);
    println!("vectors     {}", info.ntotal);
    println!("nlist       {} ({empty} empty)", info.nlist);
    println!("code size   {} B per vector", info.code_size);
    let at = |q: f64| sizes.get(((sizes.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or(0);
    println!("list sizes  min {} / median {} / p99 {} / max {}", at(0.0), at(0.5), at(0.99), at(1.0));
    for line in histogram(&sizes) {
        println!("            {line}");
    }
    let header = info.lists.start;
    let lists = info.lists.end - info.lists.start;
    let tail = info.file_size - info.lists.end;
    println!(
        "layout      header {header} B ({}) | lists {lists} B ({}) | tail {tail} B ({}) = {} B",
        HumanBytes(header),
        HumanBytes(lists),
        HumanBytes(tail),
        info.file_size
    );
}

/// Lists per size bucket, eight equal-width buckets from the smallest to the largest list.
fn histogram(sorted: &[u64]) -> Vec<String> {
    let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else { return Vec::new() };
    let buckets = if hi == lo { 1 } else { 8 };
    let width = (hi - lo).div_ceil(buckets).max(1);
    let mut counts = vec![0usize; buckets as usize];
    for &s in sorted {
        counts[(((s - lo) / width) as usize).min(buckets as usize - 1)] += 1;
    }
    let most = *counts.iter().max().unwrap_or(&1);
    counts
        .iter()
        .enumerate()
        .map(|(b, &c)| {
            let from = lo + b as u64 * width;
            let to = if b as u64 == buckets - 1 { hi } else { from + width - 1 };
            format!("{from:>8} - {to:<8} {c:>6} lists {}", "#".repeat((c * 40).div_ceil(most)))
        })
        .collect()
}
