//! `nixery pack`: the layers of a plan, packed into blobs.

use std::path::PathBuf;

use nixery::layering;
use nixery::packing::{self, Compression, LayerContent, PackOptions};

use super::read;

#[derive(clap::Args)]
pub struct Args {
    /// The layer plan.
    #[arg(long)]
    plan: PathBuf,
    /// The directory for the blobs.
    #[arg(long)]
    out: PathBuf,
    /// Layer compression.
    #[arg(long, value_enum, default_value_t = Compression::Gzip)]
    compression: Compression,
    /// Compression level (gzip 0 to 12, default 5; zstd 1 to 19, default 3).
    #[arg(long)]
    level: Option<u32>,
    /// Where store paths are read from: `/`, or a chroot store's root.
    #[arg(long, default_value = "/")]
    store_root: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = layering::LayerPlan::from_json(&read(&args.plan)?).map_err(|e| anyhow::anyhow!("{} is not a layer plan: {e}", args.plan.display()))?;
    let opts = PackOptions::new(args.compression, args.level)?;
    let contents: Vec<LayerContent> =
        plan.layers.into_iter().map(|l| LayerContent { store_root: args.store_root.clone(), ..LayerContent::store_paths(l.paths) }).collect();
    let packed =
        packing::run_parallel(contents, packing::producers(opts), |c| packing::pack_to_dir(&c, &args.out, opts)).into_iter().collect::<Result<Vec<_>, _>>()?;
    println!("{}", serde_json::to_string_pretty(&packed)?);
    Ok(())
}
