//! The copy programs of an image (`copyToRegistry`, `copyToPodman`,
//! `copyToDockerDaemon`): `internal write-script` writes one, a file whose
//! first line is `#!HELPER run-script` and whose second is what it does
//! (JSON); run, it is parsed here with a command line of its own, under
//! its own name (`copy-to-registry --help`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};

use super::read;

/// What a program does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `nixery push`.
    Push,
    /// `nixery load`.
    Load,
}

/// What the program's second line says.
#[derive(serde::Serialize, serde::Deserialize)]
struct Doc {
    action: Action,
    image: String,
    #[serde(rename = "defaultDest")]
    default_dest: Option<String>,
}

/// Writes `OUT/bin/NAME`, run by `helper` as its interpreter: no shell.
pub fn write(action: Action, out: &Path, name: &str, helper: &Path, image: &str, default_dest: Option<String>) -> anyhow::Result<()> {
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let path = bin.join(name);
    let doc = serde_json::to_string(&Doc { action, image: image.to_string(), default_dest })?;
    std::fs::write(&path, format!("#!{} run-script\n{doc}\n", helper.display())).with_context(|| format!("cannot write {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).with_context(|| format!("cannot make {} executable", path.display()))
}

/// `run-script PROGRAM [ARGS…]`, as the kernel runs a program's first line.
#[derive(clap::Args)]
pub struct RunScript {
    /// The program.
    script: PathBuf,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// The command line of a `copyToRegistry` program: `copy-to-registry
/// [DEST] [FLAGS]`.
#[derive(clap::Parser)]
struct PushProgram {
    /// Where to: `REGISTRY/REPOSITORY[:TAG]` (tag: latest); by default the
    /// image's own name, when it names a registry.
    dest: Option<String>,
    #[command(flatten)]
    flags: super::push::Flags,
}

/// The command line of a `copyToPodman` or `copyToDockerDaemon` program.
#[derive(clap::Parser)]
struct LoadProgram {
    /// `podman`, `docker`, `docker-archive:FILE` or `oci:DIR[:TAG]`; by
    /// default the program's own.
    target: Option<String>,
}

/// Runs a program, with its own name and command line.
pub fn run(run: RunScript) -> anyhow::Result<()> {
    let text = read(&run.script)?;
    let doc: Doc =
        serde_json::from_str(text.lines().nth(1).unwrap_or("")).with_context(|| format!("{} is not a program write-script wrote", run.script.display()))?;
    let name = run.script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "copy".into());
    let argv = std::iter::once(name.clone()).chain(run.args);
    match doc.action {
        Action::Load => {
            let command = LoadProgram::command().bin_name(name).about(format!("Load {} into podman or docker (nixery load)", doc.image));
            let program = LoadProgram::from_arg_matches(&command.try_get_matches_from(argv).unwrap_or_else(|e| e.exit()))?;
            let target = program.target.or(doc.default_dest).context("give the target: podman, docker, docker-archive:FILE or oci:DIR[:TAG]")?;
            super::load::load_image(&doc.image, &target)
        }
        Action::Push => {
            let command = PushProgram::command().bin_name(name).about(format!("Push {} to a registry (nixery push)", doc.image));
            let program = PushProgram::from_arg_matches(&command.try_get_matches_from(argv).unwrap_or_else(|e| e.exit()))?;
            let dest = program.dest.or(doc.default_dest).context("give the destination: REGISTRY/REPOSITORY[:TAG] (the image's name names no registry)")?;
            super::push::push_image(&doc.image, &dest, program.flags)
        }
    }
}
