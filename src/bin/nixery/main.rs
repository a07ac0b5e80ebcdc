//! The `nixery` command. Its rooms ([`commands`]): a module per command
//! users run (`layers`, `pack`, `popcount`, `push`, `load`, `serve`); the
//! interpreter of the copy programs (`run-script`, a shebang's one
//! argument); and, hidden under `internal`, the plumbing `lib.nix` and
//! prepare-image run as derivation builders.
//!
//! Errors are printed here, once each: `nixery: error: what: why`.

use std::process::ExitCode;

use clap::Parser;

mod commands;

#[derive(Parser)]
#[command(name = "nixery", version, about = "Container images from Nix")]
struct Cli {
    #[command(subcommand)]
    command: commands::Command,
}

/// An error and its causes, each said once: many errors (a library's
/// above all) repeat their cause's words in their own message, and a cause
/// already said is not said again.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixery: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
