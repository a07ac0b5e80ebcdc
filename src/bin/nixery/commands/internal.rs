//! `nixery internal …`: the builders `lib.nix` and prepare-image run in
//! their derivations. Not for use by hand; their contract is the JSON Nix
//! writes for them (see `nixery::builder`).

use std::path::PathBuf;

use nixery::{builder, image};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Build an image from a derivation's attributes (buildNixeryImage,
    /// streamNixeryImage).
    BuildImage(Attrs),
    /// Plan an image's layers (the first stage of `incremental = true`).
    PlanLayers(Attrs),
    /// Pack one layer of a plan (the second stage of `incremental = true`).
    PackLayer(Attrs),
    /// Pack an explicit layer (`layers = [ … ]`).
    PackGroup(Attrs),
    /// Write the closure graph of prepare-image's derivation.
    WriteGraph(Attrs),
    /// Write an OCI layout whose entry is an image index of several images
    /// (one per platform; buildNixeryIndex).
    BuildIndex {
        /// The name recorded in index.json.
        #[arg(long)]
        name: String,
        /// The tag of the index.
        #[arg(long)]
        tag: String,
        /// The output directory.
        #[arg(long)]
        out: PathBuf,
        /// The images: OCI layouts of one image each.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Write a copy program (`copyToRegistry`, `copyToPodman`,
    /// `copyToDockerDaemon`): `OUT/bin/NAME`, run by this helper.
    WriteScript {
        /// What it does.
        #[arg(long, value_enum, default_value_t = super::programs::Action::Push)]
        action: super::programs::Action,
        /// The output directory.
        #[arg(long)]
        out: PathBuf,
        /// The program's name under `bin/`.
        #[arg(long)]
        name: String,
        /// This helper's path in the store (the interpreter).
        #[arg(long)]
        helper: PathBuf,
        /// The image (a build result).
        #[arg(long)]
        image: String,
        /// The destination used when the program is given none.
        #[arg(long)]
        default_dest: Option<String>,
    },
    /// Convert an OCI layout into a docker-archive tarball (the
    /// `dockerArchive` passthru).
    DockerArchive {
        /// The OCI layout directory.
        #[arg(long)]
        oci: PathBuf,
        /// The `name:tag` recorded in the archive.
        #[arg(long)]
        repo_tag: String,
        /// Where to write the tarball.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where a builder reads the derivation's attributes.
#[derive(clap::Args)]
pub struct Attrs {
    /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`, or
    /// `.attrs.json` in the build directory.
    #[arg(long)]
    attrs: Option<PathBuf>,
}

impl Attrs {
    fn path(self) -> PathBuf {
        self.attrs.unwrap_or_else(builder::default_attrs_path)
    }
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::BuildImage(a) => builder::build_from_attrs(&a.path())?,
            Command::PlanLayers(a) => builder::plan_from_attrs(&a.path())?,
            Command::PackLayer(a) => builder::pack_layer_from_attrs(&a.path())?,
            Command::PackGroup(a) => builder::pack_group_from_attrs(&a.path())?,
            Command::WriteGraph(a) => builder::write_graph_from_attrs(&a.path())?,
            Command::BuildIndex { name, tag, out, images } => {
                let digest = image::write_index_layout(&images, &name, &tag, &out)?;
                eprintln!("nixery: wrote index {name}:{tag} ({digest}) of {} images to {}", images.len(), out.display());
            }
            Command::WriteScript { action, out, name, helper, image, default_dest } => {
                super::programs::write(action, &out, &name, &helper, &image, default_dest)?
            }
            Command::DockerArchive { oci, repo_tag, out } => {
                let layout = image::read_oci_layout(&oci)?;
                image::write_docker_archive(&layout, &repo_tag, &out)?;
            }
        }
        Ok(())
    }
}
