//! The `nixery` command: the helper that `buildNixeryImage` derivations run
//! as their builder, and the tool users run by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use nixery::graph::{ClosureGraph, Popularity};
use nixery::{builder, image, layering};

#[derive(Parser)]
#[command(name = "nixery", version, about = "Container images from Nix")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the layer plan for a closure graph, as JSON.
    ///
    /// The graph is the JSON Nix writes for `exportReferencesGraph` under
    /// `__structuredAttrs` (`{"graph": [{"path", "narSize", "references"}…],
    /// "exportReferencesGraph": {"graph": [roots…]}}`).
    Layers {
        /// The closure graph file.
        #[arg(long)]
        graph: PathBuf,
        /// Popularity data: a JSON object from package name to count.
        #[arg(long)]
        popularity: Option<PathBuf>,
        /// The most layers the plan may have.
        #[arg(long, default_value_t = 100)]
        max_layers: usize,
    },
    /// Build an image from a derivation's attributes (the builder entry
    /// point of `buildNixeryImage`).
    BuildImage {
        /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`, or
        /// `.attrs.json` in the build directory.
        #[arg(long)]
        attrs: Option<PathBuf>,
    },
    /// Convert an OCI image layout directory into a docker-archive tarball.
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

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Layers { graph, popularity, max_layers } => {
            let g = ClosureGraph::from_json(&read(&graph)?).with_context(|| graph.display().to_string())?;
            let pop = match &popularity {
                Some(p) => Popularity::from_json(&read(p)?).with_context(|| p.display().to_string())?,
                None => Popularity::default(),
            };
            let plan = layering::plan(&g, &pop, max_layers)?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        Command::BuildImage { attrs } => {
            let attrs = attrs.unwrap_or_else(builder::default_attrs_path);
            builder::build_from_attrs(&attrs)?;
        }
        Command::DockerArchive { oci, repo_tag, out } => {
            let layout = image::read_oci_layout(&oci)?;
            image::write_docker_archive(&layout, &repo_tag, &out)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixery: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
