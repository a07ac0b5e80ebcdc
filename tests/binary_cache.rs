//! The shim's builds on Nix's own machinery: shims with stores of their own
//! share a binary cache through Nix's settings (a post-build hook uploads,
//! `substituters` and `trusted-public-keys` download), and nothing of it is
//! the shim's code.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// The derivations a store has built (not substituted): Nix keeps a build
/// log for each, under var/log/nix/drvs. Names without hash and `.drv`.
fn built(nix_root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(dirs) = std::fs::read_dir(nix_root.join("var/log/nix/drvs")) {
        for d in dirs.flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let name = name.split_once('-').map(|(_, n)| n).unwrap_or(&name);
                names.push(name.trim_end_matches(".bz2").trim_end_matches(".drv").to_string());
            }
        }
    }
    names.sort();
    names
}

#[test]
fn a_shim_with_its_own_store_substitutes_from_a_binary_cache_another_shim_filled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (secret, public) = (d.join("cache-key.sec"), d.join("cache-key.pub"));
    run(Command::new("nix-store").args(["--generate-binary-cache-key", "nixery-test-cache"]).arg(&secret).arg(&public));
    let public_key = std::fs::read_to_string(&public).unwrap();
    let cache = format!("file://{}", d.join("cache").display());
    let roots: Vec<_> = ["a", "b", "c"].iter().map(|n| d.join(format!("{n}-nix"))).collect();
    for r in &roots {
        std::fs::create_dir(r).unwrap();
    }

    // The first shim builds, and its post-build hook (the example in
    // examples/) uploads every build, signed, to the cache.
    let config = format!("{NIX_CONFIG}post-build-hook = {}\nsecret-key-files = {}\n", repo().join("examples/post-build-hook.sh").display(), secret.display());
    let first = Shim::start_with_own_store(&roots[0], &d.join("storage-a"), &[("NIX_CONFIG", &config), ("NIX_UPLOAD_CACHE", &cache)]);
    let digest = manifest_digest(&first.host(), "shell/hello");
    let built_first = built(&roots[0]);
    for package in ["hello-2.10", "bash-interactive-5.2", "glibc-2.36"] {
        assert!(built_first.iter().any(|b| b == package), "{package} in {built_first:?}");
    }

    // A second shim with a store of its own and the cache as a substituter
    // builds nothing but the image's reference graph (allowSubstitutes =
    // false: it is cheap and local by design), and gives the same image.
    let reader = format!("{NIX_CONFIG}substituters = {cache}\ntrusted-public-keys = {}\n", public_key.trim());
    let second = Shim::start_with_own_store(&roots[1], &d.join("storage-b"), &[("NIX_CONFIG", &reader)]);
    assert_eq!(manifest_digest(&second.host(), "shell/hello"), digest);
    assert_eq!(built(&roots[1]), ["nixery-image-graph"], "everything else was substituted");
    assert!(std::fs::read_dir(roots[1].join("store")).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with("-hello-2.10")));

    // The same without trusting the cache's key: Nix refuses its paths and
    // builds them, so it is the cache that saved the builds above.
    let untrusting = format!("{NIX_CONFIG}substituters = {cache}\n");
    let third = Shim::start_with_own_store(&roots[2], &d.join("storage-c"), &[("NIX_CONFIG", &untrusting)]);
    assert_eq!(manifest_digest(&third.host(), "shell/hello"), digest);
    assert_eq!(built(&roots[2]), built_first);
}
