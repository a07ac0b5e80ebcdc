//! `nixery layers`: the layer plan of a closure graph.

use std::path::PathBuf;

use anyhow::Context;
use nixery::graph::{ClosureGraph, Popularity};
use nixery::layering;

use super::read;

#[derive(clap::Args)]
pub struct Args {
    /// The closure graph file.
    #[arg(long)]
    graph: PathBuf,
    /// Popularity data: a JSON object from package name to count.
    #[arg(long)]
    popularity: Option<PathBuf>,
    /// The most layers the plan may have.
    #[arg(long, default_value_t = 100)]
    max_layers: usize,
    /// The layering algorithm.
    #[arg(long, value_enum, default_value_t = layering::Algorithm::default())]
    algorithm: layering::Algorithm,
    /// What this command printed for the previous release of the same
    /// image (or a layers.lock.json): its layers are kept where they can
    /// be, as `layerLock` keeps them.
    #[arg(long, value_name = "FILE")]
    previous: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let g = ClosureGraph::from_json(&read(&args.graph)?).with_context(|| args.graph.display().to_string())?;
    let pop = match &args.popularity {
        Some(p) => Popularity::from_json(&read(p)?).with_context(|| p.display().to_string())?,
        None => Popularity::default(),
    };
    let previous = args.previous.as_deref().map(layering::lock::LayerLock::read).transpose().map_err(anyhow::Error::msg).context("--previous")?;
    let (plan, _) = layering::lock::plan(&g, &pop, args.max_layers, args.algorithm, previous.as_ref())?;
    println!("{}", serde_json::to_string_pretty(&plan)?);
    Ok(())
}
