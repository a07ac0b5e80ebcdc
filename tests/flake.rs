//! nixery's own flake as a flake user meets it, under Nix 2.26 (the
//! Debian 13 world), with tests/pkgs standing in for nixpkgs: `nix build
//! .#default` builds the helper as nixpkgs' rustPlatform does (its check
//! phase in the sandbox, offline, HOME=/homeless-shelter), `nix flake
//! check` passes, `nix run` runs a passthru program by its own name; and
//! Cargo.toml's rust-version is what the locked dependencies need.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::world::debian13_command;
use crate::support::*;

/// A `rust-version` as numbers (`1.89` is `[1, 89, 0]`).
fn rust_version(v: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    parts.resize(3, 0);
    parts
}

#[test]
fn rust_version_is_the_oldest_rust_the_locked_dependencies_build_with() {
    let out = run_stdout(Command::new("cargo").args(["metadata", "--format-version", "1", "--locked", "--offline"]).current_dir(repo()));
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours = packages.iter().find(|p| p["name"] == "nixery").unwrap()["rust_version"].as_str().expect("Cargo.toml has a rust-version").to_string();
    // Every locked package, every platform's.
    let (needed, by) = packages
        .iter()
        .filter(|p| p["name"] != "nixery")
        .filter_map(|p| Some((rust_version(p["rust_version"].as_str()?), format!("{} {}", p["name"].as_str()?, p["version"].as_str()?))))
        .max()
        .unwrap();
    assert_eq!(rust_version(&ours), needed, "Cargo.toml's rust-version {ours} is not the locked dependencies' minimum (set by {by})");
}

/// `nix` in the Debian 13 world (Nix 2.26), flakes on, in the repository,
/// with tests/pkgs as nixpkgs and `host` as its files (the inputs given
/// before a `--` that starts a program's arguments).
fn nix(host: &Path, args: &[&str]) -> Command {
    let (ours, program) = match args.iter().position(|a| *a == "--") {
        Some(i) => args.split_at(i),
        None => (args, &[][..]),
    };
    let mut c = debian13_command("nix", &[host]);
    c.env("NIX_CONFIG", format!("{NIX_CONFIG}experimental-features = nix-command flakes\n"))
        .current_dir(repo())
        .args(ours)
        .args(["--override-input", "nixpkgs", &format!("path:{}", repo().join("tests/pkgs").display())])
        .args(["--override-input", "nixpkgs/host", &format!("path:{}", host.display())])
        .arg("--no-write-lock-file")
        .args(program);
    c
}

/// Where cargo keeps downloaded crates on this machine.
fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"))
}

#[test]
fn the_flake_builds_its_helper_as_nixpkgs_does_and_flake_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    run(Command::new(repo().join("tests/support/standin-host")).arg(&host));
    // The crates cargo downloaded here, added to the world's store under
    // the names importCargoLock's downloads have, so that they are not
    // downloaded again (each is checked against the lock's checksum).
    let cache = Path::new("/run/host").join(cargo_home().strip_prefix("/").unwrap()).join("registry/cache");
    run(debian13_command("sh", &[]).arg("-c").arg("nix-store --add-fixed sha256 \"$0\"/*/*.crate >/dev/null").arg(&cache));

    // nix build .#default: the helper, built and checked as nixpkgs does.
    let out = run(&mut nix(&host, &["build", ".#default", "--print-out-paths", "--no-link"]));
    let helper_out = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    // Its build log, as Nix kept it (`nix log` does not find it through a
    // flake with overridden inputs; its deriver's log is the same file).
    let deriver = run_stdout(debian13_command("nix-store", &[]).arg("-qd").arg(&helper_out));
    let log = run_stdout(debian13_command("nix-store", &[]).arg("-l").arg(deriver.trim()));
    for step in
        ["Executing cargoBuildHook", "Executing cargoCheckHook", "HOME=/homeless-shelter (not writable)", "nix-build: unreachable", "podman: unreachable"]
    {
        assert!(log.contains(step), "{step:?} in the build log:\n{log}");
    }
    let tests = log.lines().find(|l| l.contains("test result:")).unwrap_or_else(|| panic!("the unit tests ran:\n{log}"));
    assert!(tests.contains("test result: ok.") && tests.contains(" 0 failed"), "{tests}");
    // It is linked against the store's glibc, and runs; it keeps nothing
    // of the compilers alive.
    let version = run_stdout(debian13_command(helper_out.join("bin/nixery"), &[]).arg("--version"));
    assert!(version.starts_with("nixery "), "{version}");
    let closure = run_stdout(debian13_command("nix-store", &[]).arg("-qR").arg(&helper_out));
    let mut names: Vec<&str> = closure.lines().map(|p| &p[44..]).collect();
    names.sort();
    assert_eq!(names, ["gcc-12-lib", "glibc-2.36", "nixery-0.1.0"], "{closure}");

    // nix flake check: every output evaluates, the checks (the example
    // images, built with this helper) build.
    let check = run(&mut nix(&host, &["flake", "check"]));
    let check_log = String::from_utf8_lossy(&check.stderr);
    assert!(!check_log.contains("error:"), "{check_log}");
    // The check planned from the first image's lock (pure evaluation, no
    // import-from-derivation) kept its layers: the same lock comes out.
    let outs = run_stdout(&mut nix(&host, &["build", ".#checks.x86_64-linux.hello", ".#checks.x86_64-linux.hello-locked", "--print-out-paths", "--no-link"]));
    let outs: Vec<PathBuf> = outs.lines().map(PathBuf::from).collect();
    assert_eq!(outs.len(), 2, "{outs:?}");
    let locks: Vec<String> = outs.iter().map(|o| run_stdout(debian13_command("cat", &[]).arg(o.join("layers.lock.json")))).collect();
    assert_eq!(locks[0], locks[1], "the locked build kept the first one's layers");
    let deriver = run_stdout(debian13_command("nix-store", &[]).arg("-qd").arg(&outs[1]));
    let log = run_stdout(debian13_command("nix-store", &[]).arg("-l").arg(deriver.trim()));
    assert!(log.contains("the layer lock kept"), "{log}");

    // nix run of a passthru program: it runs under its own name.
    let help = run_stdout(&mut nix(&host, &["run", ".#nixery-image.copyToRegistry", "--", "--help"]));
    assert!(help.contains("Usage: copy-to-registry"), "{help}");
}
