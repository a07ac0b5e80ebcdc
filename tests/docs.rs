//! The documentation tells the truth: every setting, command, `lib.nix`
//! argument and module it names exists, and every one that exists is
//! documented; its links lead somewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

use crate::support::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The pages users read: the README, docs/ and the benchmarks.
fn pages() -> Vec<(String, String)> {
    let mut pages = vec!["README.md".to_string(), "BENCHMARKS.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| format!("docs/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|p| p.ends_with(".md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages.into_iter().map(|p| (p.clone(), read(&p))).collect()
}

/// The lines of the section of `page` under `heading` (to the next heading
/// of the same or a higher level).
fn section<'a>(page: &'a str, heading: &str) -> Vec<&'a str> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = page.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no heading {heading:?}");
    lines
        .take_while(|l| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            hashes == 0 || hashes > level || !l[hashes..].starts_with(' ')
        })
        .collect()
}

/// The text in code: spans between backticks and fenced blocks.
fn code(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in page.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            out.push(line.to_string());
        } else {
            out.extend(line.split('`').skip(1).step_by(2).map(str::to_string));
        }
    }
    out
}

/// `nixery serve`'s settings: (variable, flag) for each, from the library's
/// own definition.
fn serve_settings() -> BTreeSet<(String, String)> {
    let command = nixery::serve::Settings::augment_args(clap::Command::new("serve"));
    command.get_arguments().filter_map(|a| Some((a.get_env()?.to_string_lossy().into_owned(), format!("--{}", a.get_long()?)))).collect()
}

#[test]
fn the_settings_table_lists_every_setting_of_serve_with_its_flag() {
    let shim = read("docs/shim.md");
    let cell = regex::Regex::new(r"`([^`]+)`").unwrap();
    let mut documented = BTreeSet::new();
    for row in section(&shim, "## Settings").into_iter().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let variables: Vec<String> = cell.captures_iter(cells[1]).map(|c| c[1].to_string()).collect();
        let flags: Vec<String> = cell.captures_iter(cells[2]).map(|c| c[1].to_string()).collect();
        assert_eq!(variables.len(), flags.len(), "each variable has its flag: {row}");
        documented.extend(variables.into_iter().zip(flags));
    }
    let settings = serve_settings();
    let undocumented: Vec<_> = settings.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&settings).collect();
    assert!(undocumented.is_empty() && unknown.is_empty(), "not in docs/shim.md's table: {undocumented:?}; in it but not a setting: {unknown:?}");
}

#[test]
fn every_variable_the_pages_name_is_read_by_something() {
    let settings: BTreeSet<String> = serve_settings().into_iter().map(|(v, _)| v).collect();
    // Variables read by other parts than the shim's settings: push's
    // credentials, the clouds' own clients, logs, the scripts and tests.
    let elsewhere = [
        "REGISTRY_AUTH_FILE",
        "XDG_RUNTIME_DIR",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT",
        "AWS_ALLOW_HTTP",
        "RUST_LOG",
        "NIX_CONFIG",
        "NIX_ATTRS_JSON_FILE",
        "NIX_BUILD_TOP",
        "NIX_UPLOAD_CACHE",
        "NIX_SSL_CERT_FILE",
        "OUT_PATHS",
        "DRV_PATH",
        "SSL_CERT_FILE",
        "COSIGN_PASSWORD",
        "HOME",
        "PATH",
        "TMPDIR",
    ];
    let name = regex::Regex::new(r"\b(NIXERY_[A-Z0-9_]+|[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9])\b").unwrap();
    let sources = source_text();
    for (page, text) in pages() {
        for span in code(&text) {
            for m in name.captures_iter(&span) {
                let var = &m[1];
                if settings.contains(var) || elsewhere.contains(&var) || !looks_like_variable(var) {
                    continue;
                }
                assert!(sources.contains(&format!("\"{var}\"")), "{page} names {var}, which nothing in src/, scripts/ or tests/ reads");
            }
        }
    }
}

/// `FOO_BAR` in code is a variable; `SHA256_X` constants and the like are
/// told apart by being read somewhere as a string.
fn looks_like_variable(name: &str) -> bool {
    name.starts_with("NIXERY_") || name.starts_with("GCS_") || name.starts_with("STORAGE_") || name.starts_with("NIX_") || name.starts_with("GOOGLE_")
}

/// Every Rust and shell source of the project, for what reads a variable.
fn source_text() -> String {
    let mut text = String::new();
    for dir in ["src", "scripts", "tests", "bench", "examples", "nix"] {
        for entry in walkdir::WalkDir::new(repo().join(dir)).into_iter().filter_map(Result::ok).filter(|e| e.file_type().is_file()) {
            if let Ok(t) = std::fs::read_to_string(entry.path()) {
                text.push_str(&t.replace('$', "\"").replace("${", "\""));
                text.push('\n');
            }
        }
    }
    text
}

/// The subcommands a `--help` lists.
fn subcommands(args: &[&str]) -> BTreeSet<String> {
    let help = run_stdout(Command::new(helper()).args(args).arg("--help"));
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_command_is_documented_and_every_documented_command_exists() {
    let cli = read("docs/cli.md");
    let heading = regex::Regex::new(r"^## `nixery ([a-z-]+)`$").unwrap();
    let documented: BTreeSet<String> = cli.lines().filter_map(|l| heading.captures(l)).map(|c| c[1].to_string()).collect();
    let mut commands = subcommands(&[]);
    commands.insert("internal".to_string()); // hidden from --help, documented as what it is
    assert_eq!(documented, commands, "docs/cli.md has a heading per command of `nixery --help`");

    let internal_item = regex::Regex::new(r"`nixery internal ([a-z-]+)`").unwrap();
    let internal: BTreeSet<String> = section(&cli, "## `nixery internal`")
        .into_iter()
        .filter(|l| l.starts_with("- "))
        .flat_map(|l| internal_item.captures_iter(l.split(':').next().unwrap()).map(|c| c[1].to_string()).collect::<Vec<_>>())
        .collect();
    assert_eq!(internal, subcommands(&["internal"]), "docs/cli.md lists every builder of `nixery internal --help`");

    // Wherever a page shows a command, it exists.
    let mut known = subcommands(&[]);
    known.extend(["internal".to_string(), "run-script".to_string()]);
    let shown = regex::Regex::new(r"(?:^|[\s(|;&$])nixery (internal )?([a-z][a-z-]*)").unwrap();
    for (page, text) in pages() {
        for span in code(&text) {
            for c in shown.captures_iter(&span) {
                let (internal, command) = (c.get(1).is_some(), &c[2]);
                let exists = if internal { subcommands(&["internal"]).contains(command) } else { known.contains(command) };
                // "in nixery image NAME: …", the library's messages, are not commands.
                let message = span[..c.get(0).unwrap().start()].ends_with("in") || command == "image" || command == "index";
                assert!(exists || message, "{page} shows `nixery {}{command}`, which is not a command: {span}", if internal { "internal " } else { "" });
            }
        }
    }
}

/// lib.nix's arguments for each function, as it declares them.
fn library_arguments() -> serde_json::Value {
    let out = run_stdout(
        Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "--expr"])
            .arg(format!("(import {}/lib.nix {{ helper = /bin/sh; system = \"x86_64-linux\"; }}).arguments", repo().display())),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn every_argument_of_the_library_is_documented_and_every_documented_one_exists() {
    let library = read("docs/library.md");
    let names = regex::Regex::new(r"`([a-zA-Z]+)`").unwrap();
    let documented: BTreeSet<String> = section(&library, "## `buildNixeryImage` arguments")
        .into_iter()
        .filter(|l| l.starts_with("- `"))
        .flat_map(|l| {
            // The names before the first description: "- `users`, `groups`: …"
            let head = l.split([':', '(']).next().unwrap();
            names.captures_iter(head).map(|c| c[1].to_string()).collect::<Vec<_>>()
        })
        .collect();
    let arguments = library_arguments();
    let declared: BTreeSet<String> = arguments["buildNixeryImage"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert_eq!(documented, declared, "docs/library.md documents every argument lib.nix declares, and no other");

    // streamNixeryImage takes the same but `format`; buildNixeryIndex's are
    // in its example.
    let stream: BTreeSet<String> = arguments["streamNixeryImage"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert_eq!(declared.difference(&stream).collect::<Vec<_>>(), vec!["format"]);
    let index_section = section(&library, "## `buildNixeryIndex`: one name, several platforms").join("\n");
    for argument in arguments["buildNixeryIndex"].as_array().unwrap() {
        let argument = argument.as_str().unwrap();
        assert!(index_section.contains(&format!("{argument} =")), "docs/library.md shows buildNixeryIndex's `{argument}`");
    }
}

#[test]
fn the_module_map_names_every_module_and_only_modules_that_exist() {
    let architecture = read("docs/architecture.md");
    let entry = regex::Regex::new(r"^(src/[a-z_/]+(?:\.rs|/))\s").unwrap();
    let listed: BTreeSet<String> = architecture.lines().filter_map(|l| entry.captures(l)).map(|c| c[1].to_string()).collect();
    for path in &listed {
        assert!(repo().join(path).exists(), "docs/architecture.md lists {path}, which does not exist");
    }
    for entry in std::fs::read_dir(repo().join("src")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if entry.file_type().unwrap().is_dir() { format!("src/{name}/") } else { format!("src/{name}") };
        let path = if path == "src/bin/" { "src/bin/nixery/".to_string() } else { path };
        assert!(listed.contains(&path), "docs/architecture.md's module map lacks {path}");
    }
}

/// GitHub's anchor for a heading.
fn anchor(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    let mut fenced = false;
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
            }
            !fenced && l.starts_with('#')
        })
        .map(anchor)
        .collect()
}

#[test]
fn links_between_pages_lead_to_files_and_headings_that_exist() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    for (page, text) in pages() {
        let here = repo().join(&page);
        for c in link.captures_iter(&text) {
            let target = &c[1];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = target.split_once('#').map_or((target, None), |(f, a)| (f, Some(a)));
            let file: PathBuf = if file.is_empty() { here.clone() } else { here.parent().unwrap().join(file) };
            assert!(file.exists(), "{page} links to {target}, which does not exist");
            if let Some(fragment) = fragment {
                assert!(anchors(&file).contains(fragment), "{page} links to {target}: no such heading in {}", file.display());
            }
        }
    }
}
