//! `nixery load`: an image into podman, docker, a docker-archive or an OCI
//! layout.

#[derive(clap::Args)]
pub struct Args {
    /// The image: the build's result, with `:TAG` when it holds several.
    source: String,
    /// `podman`, `docker`, `docker-archive:FILE` or `oci:DIR[:TAG]`.
    target: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    load_image(&args.source, &args.target)
}

/// Loads `source` into `target`.
pub fn load_image(source: &str, target: &str) -> anyhow::Result<()> {
    let target: nixery::push::load::Target = target.parse()?;
    let source = nixery::push::Source::open(source)?;
    nixery::push::load::load(&source, &target)?;
    Ok(())
}
