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

/// A bad value that came from a setting's environment variable (its flag
/// not given), said as the variable and its value: clap names the flag,
/// which the operator never typed.
fn variable_error(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else { return None };
    let long = arg.split([' ', '=']).next()?.strip_prefix("--")?;
    let cli = Cli::command();
    let args = cli.get_subcommands().flat_map(|c| c.get_arguments());
    let var = args.filter(|a| a.get_long() == Some(long)).find_map(|a| a.get_env())?.to_str()?.to_string();
    let flag = format!("--{long}");
    if std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
        return None;
    }
    let value = std::env::var(&var).ok()?;
    let why = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("expected one of {}", valid.join(", ")),
        _ => match std::error::Error::source(e).map(|s| s.to_string()) {
            Some(s) if s.contains("invalid digit") => "expected a whole number".into(),
            Some(s) => s,
            None => "not a valid value".into(),
        },
    };
    Some(format!("{var}={value:?} is not a valid value: {why}"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match variable_error(&e) {
            Some(message) => {
                eprintln!("nixery: error: {message}");
                return ExitCode::from(2);
            }
            None => e.exit(),
        },
    };
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixery: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
