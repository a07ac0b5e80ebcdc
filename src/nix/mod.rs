//! Nix, as the registry shim runs it: pinning a package source to an
//! exact revision ([`source`]), running `prepare-image/` under `nix-build`
//! to get the closure graph of an image's packages ([`prepare`]), and
//! reading what the local store knows for popularity data ([`popcount`]).
//!
//! Package names and refs reach Nix only as `--argstr` values (lists as
//! JSON), never as Nix code. Every run is bounded by a timeout, after which
//! the whole process group is stopped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::graph::GraphError;

pub mod popcount;
pub mod prepare;
pub mod source;

pub use prepare::{Prepare, Prepared};
pub use source::{PackageSource, ResolvedSource};

/// Errors running Nix or git.
#[derive(Debug, thiserror::Error)]
pub enum NixError {
    /// A program cannot be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// nix-build failed; the log is its end.
    #[error("nix-build failed ({status}): {log}")]
    BuildFailed {
        /// The exit status.
        status: String,
        /// The end of Nix's output.
        log: String,
    },
    /// nix-build took longer than the timeout and was stopped.
    #[error("nix-build timed out after {} s: {log}", .timeout.as_secs())]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// The end of Nix's output so far.
        log: String,
    },
    /// Another command (git, nix-store, nix-instantiate) failed.
    #[error("{command} failed: {log}")]
    Command {
        /// The command.
        command: String,
        /// The end of its output.
        log: String,
    },
    /// A git ref the repository does not have.
    #[error("unknown git ref {0:?}")]
    UnknownRef(String),
    /// What Nix wrote is not what was expected.
    #[error("the output of {what} is unreadable: {detail}")]
    Output {
        /// Which output.
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// A file the runner needs cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The closure graph is not valid.
    #[error(transparent)]
    Graph(#[from] GraphError),
}

impl NixError {
    /// Whether the build failed for want of disk space or memory on this
    /// machine, not because of the packages: such a failure is not
    /// remembered, so the image builds once an operator frees some. Nix
    /// reports it only in its output, which is read here.
    pub fn is_resource_exhaustion(&self) -> bool {
        const SIGNS: [&str; 4] = ["No space left on device", "Disk quota exceeded", "Cannot allocate memory", "out of memory"];
        match self {
            NixError::BuildFailed { log, .. } | NixError::Timeout { log, .. } | NixError::Command { log, .. } => SIGNS.iter().any(|s| log.contains(s)),
            NixError::Io { source, .. } | NixError::Spawn { source, .. } => {
                matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::OutOfMemory | std::io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}

pub(crate) async fn output_of(cmd: &mut tokio::process::Command, what: &str) -> Result<String, NixError> {
    let out = cmd.stdin(Stdio::null()).output().await.map_err(|source| NixError::Spawn { command: what.to_string(), source })?;
    if !out.status.success() {
        return Err(NixError::Command { command: what.to_string(), log: tail(&String::from_utf8_lossy(&out.stderr)) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last lines of a log, enough to say what went wrong.
pub(crate) fn tail(log: &str) -> String {
    const KEEP: usize = 4000;
    let log = log.trim();
    if log.len() <= KEEP {
        return log.to_string();
    }
    let mut start = log.len() - KEEP;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &log[start..])
}

pub(crate) fn run_sync(cmd: &mut std::process::Command, what: &str) -> Result<String, NixError> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|source| NixError::Spawn { command: what.to_string(), source })?;
    if !out.status.success() {
        return Err(NixError::Command { command: what.to_string(), log: tail(&String::from_utf8_lossy(&out.stderr)) });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_their_end() {
        let long = format!("{}END", "x".repeat(10_000));
        let t = tail(&long);
        assert!(t.ends_with("END") && t.len() < 4100);
    }
}
