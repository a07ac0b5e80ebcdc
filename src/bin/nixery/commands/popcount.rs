//! `nixery popcount`: popularity data, as the original Nixery's popcount.

use std::path::PathBuf;

use anyhow::Context;
use nixery::graph::ClosureGraph;
use nixery::nix::popcount;

use super::read;

#[derive(clap::Args)]
#[group(id = "input", required = true, multiple = false)]
pub struct Args {
    /// A package set (a nixpkgs checkout, or any expression imported
    /// like one): its top-level packages that are in the local store
    /// are counted.
    #[arg(long, group = "input")]
    package_set: Option<PathBuf>,
    /// The system to evaluate the package set for.
    #[arg(long, default_value = "x86_64-linux")]
    system: String,
    /// Store paths with their references, as `nix path-info --json -r`
    /// prints them (a list, or an object keyed by path); every path
    /// counts as a package.
    #[arg(long, group = "input")]
    path_info: Option<PathBuf>,
    /// A closure graph as `exportReferencesGraph` writes it; every path
    /// counts as a package.
    #[arg(long, group = "input")]
    graph: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pop = match (args.package_set, args.path_info, args.graph) {
        (Some(dir), _, _) => {
            let dir = std::fs::canonicalize(&dir).with_context(|| format!("package set {}", dir.display()))?;
            let outputs = popcount::top_level_outputs(&dir, &args.system)?;
            let (refs, missing) = popcount::local_closure_references(&outputs)?;
            if !missing.is_empty() {
                eprintln!("nixery: {} of {} packages are not in the store and are not counted (build or substitute them first)", missing.len(), outputs.len());
            }
            nixery::graph::popcount(&refs, Some(&outputs))
        }
        (None, Some(file), _) => nixery::graph::popcount(&popcount::path_info_references(&read(&file)?).with_context(|| file.display().to_string())?, None),
        (None, None, Some(file)) => {
            let g = ClosureGraph::from_json(&read(&file)?).with_context(|| file.display().to_string())?;
            let refs = g.paths.into_values().map(|p| (p.path, p.references)).collect();
            nixery::graph::popcount(&refs, None)
        }
        (None, None, None) => anyhow::bail!("popcount needs --package-set, --path-info or --graph"),
    };
    println!("{}", serde_json::to_string_pretty(&pop.0)?);
    Ok(())
}
