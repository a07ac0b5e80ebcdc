//! The commands of `nixery`, one module each, each with its arguments
//! (`Args`) and what it does (`run`), as cargo keeps its own.

use clap::Subcommand;

pub mod internal;
pub mod layers;
pub mod load;
pub mod lock_layers;
pub mod pack;
pub mod popcount;
pub mod programs;
pub mod push;
pub mod verify;

#[derive(Subcommand)]
pub enum Command {
    /// Print the layer plan for a closure graph, as JSON.
    ///
    /// The graph is the JSON Nix writes for `exportReferencesGraph` under
    /// `__structuredAttrs` (`{"graph": [{"path", "narSize", "references"}…],
    /// "exportReferencesGraph": {"graph": [roots…]}}`).
    Layers(layers::Args),
    /// Print the layer lock of a built image (`layers.lock.json`): each
    /// store layer's paths, by name, and digest, in image order. Commit it
    /// and pass it as `layerLock`, so the next release keeps the layers
    /// clients have.
    LockLayers(lock_layers::Args),
    /// Pack the layers of a plan (as `nixery layers` prints it) into
    /// `OUT/<digest>` blobs, in parallel; prints each layer's digest,
    /// diff_id and sizes as JSON.
    Pack(pack::Args),
    /// Compute popularity data, as the original Nixery's popcount: for each
    /// package name, how many packages have it in their runtime closure.
    /// Prints `{"glibc-2.37-8": 12345, ...}`.
    Popcount(popcount::Args),
    /// Push an image that buildNixeryImage or streamNixeryImage built to a
    /// registry: only the blobs it does not have, in parallel, the
    /// manifest last. Prints the manifest's digest.
    Push(push::Args),
    /// Check an image's cosign signatures and attestations in a registry
    /// with a public key, as `cosign verify` does, and list its referrers
    /// (SBOMs, provenance). Fails when no signature verifies.
    Verify(verify::Args),
    /// Load an image that buildNixeryImage or streamNixeryImage built
    /// into podman or docker (through `podman load` / `docker load`), a
    /// docker-archive file, or an OCI layout directory; a stream image's
    /// layers are packed on the fly.
    Load(load::Args),
    /// Run the registry shim: a pull-only registry that builds images on
    /// demand from their names (`docker pull HOST/shell/hello`).
    Serve(Box<nixery::serve::Settings>),
    /// The builders lib.nix and prepare-image run (not for use by hand).
    #[command(hide = true, subcommand)]
    Internal(internal::Command),
    /// Run a copy program (`copyToRegistry`, `copyToPodman`, …): the
    /// interpreter its first line names, `#!HELPER run-script`.
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    RunScript(programs::RunScript),
}

impl Command {
    /// Does what the command says.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Layers(args) => layers::run(args),
            Command::LockLayers(args) => lock_layers::run(args),
            Command::Pack(args) => pack::run(args),
            Command::Popcount(args) => popcount::run(args),
            Command::Push(args) => push::run(args),
            Command::Verify(args) => verify::run(args),
            Command::Load(args) => load::run(args),
            Command::Serve(settings) => Ok(nixery::serve::run(*settings)?),
            Command::Internal(command) => command.run(),
            Command::RunScript(args) => programs::run(args),
        }
    }
}

/// A file's text, or an error naming it.
pub fn read(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
