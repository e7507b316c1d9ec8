use super::{CliResult, Location};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Index URL: a local path, file://, s3://bucket/key or memory://key.
    url: String,
}

pub async fn run(args: InspectArgs) -> CliResult {
    let index = Location::parse(&args.url)?.open().await?;
    let info = index.info();
    let mut sizes = index.cluster_sizes().to_vec();
    sizes.sort_unstable();
    let empty = sizes.iter().take_while(|&&s| s == 0).count();
    println!("type        {}", info.description);
    println!("dimension   {}", info.dimension);
    println!("metric      {:?}", info.metric);
    println!("nlist       {} ({empty} empty)", info.nlist);
    println!("ntotal      {}", info.ntotal);
    println!("code size   {} bytes", info.code_size);
    println!(
        "list sizes  min {} / median {} / max {}",
        sizes.first().unwrap_or(&0),
        sizes.get(sizes.len() / 2).unwrap_or(&0),
        sizes.last().unwrap_or(&0)
    );
    println!(
        "layout      header {} B, lists {} B, tail {} B (file {} B)",
        info.lists.start,
        info.lists.end - info.lists.start,
        info.file_size - info.lists.end,
        info.file_size
    );
    let open = index.open_stats();
    println!("open read   {} GETs, {} B", open.gets, open.bytes);
    Ok(())
}
