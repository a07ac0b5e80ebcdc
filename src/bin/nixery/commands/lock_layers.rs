//! `nixery lock-layers`: the layer lock of a built image, for a
//! repository to commit and pass back as `layerLock`.

use std::path::PathBuf;

use nixery::layering::lock::LayerLock;

#[derive(clap::Args)]
pub struct Args {
    /// The image: a buildNixeryImage or streamNixeryImage result (or its
    /// layers.lock.json).
    image: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let lock = LayerLock::read(&args.image).map_err(anyhow::Error::msg)?;
    print!("{}", lock.to_json());
    Ok(())
}
