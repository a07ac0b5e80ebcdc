//! Images built by `nix-build` through `lib.nix`: reproducible, complete,
//! within budget, and clear about bad arguments.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::*;

fn example(max_layers: u32) -> std::path::PathBuf {
    nix_build(&repo().join("examples/hello.nix"), &[("maxLayers", &max_layers.to_string())])
}

/// Maps each store path in an image's layers to the layers holding it.
fn store_paths_by_layer(layout: &Path) -> BTreeMap<String, Vec<usize>> {
    let (manifest, _) = layout_manifest(layout);
    let mut found: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        for e in layer_entries(layout, l["digest"].as_str().unwrap()) {
            let parts: Vec<&str> = e.split('/').collect();
            if parts.len() == 3 && parts[0] == "nix" && parts[1] == "store" {
                found.entry(format!("/{e}")).or_default().push(i);
            }
        }
    }
    found
}

fn example_contents() -> Vec<String> {
    let out = run_stdout(std::process::Command::new("nix-build").env("NIX_CONFIG", NIX_CONFIG).arg(repo().join("tests/pkgs")).arg("--no-out-link").args([
        "-A",
        "bashInteractive",
        "-A",
        "coreutils",
        "-A",
        "hello",
        "-A",
        "jq",
    ]));
    out.lines().map(str::to_string).collect()
}

#[test]
fn example_image_is_reproducible_bit_for_bit() {
    let out = example(20);
    // nix-build --check builds the image again and fails if any byte differs.
    let mut c = nix_build_cmd(&repo().join("examples/hello.nix"));
    c.args(["--arg", "maxLayers", "20", "--check"]);
    run(&mut c);
    assert!(out.join("oci-layout").exists());
}

#[test]
fn every_closure_path_is_in_exactly_one_layer_within_budget() {
    let contents = example_contents();
    let refs: Vec<&str> = contents.iter().map(String::as_str).collect();
    let want = closure(&refs);
    assert!(want.len() >= 8, "the example has a real graph: {want:?}");
    for max_layers in [2u32, 3, 5, 20] {
        let out = example(max_layers);
        let (manifest, _) = layout_manifest(&out);
        let n = manifest["layers"].as_array().unwrap().len();
        assert!(n <= max_layers as usize, "{n} layers > maxLayers {max_layers}");
        let found = store_paths_by_layer(&out);
        assert_eq!(found.keys().cloned().collect::<Vec<_>>(), want, "maxLayers {max_layers}");
        for (p, layers) in &found {
            assert_eq!(layers.len(), 1, "{p} is in layers {layers:?}");
        }
    }
}

#[test]
fn budgets_that_do_not_change_the_plan_give_identical_manifests() {
    let (_, a) = layout_manifest(&example(20));
    let (_, b) = layout_manifest(&example(57));
    assert_eq!(a, b);
    let (_, c) = layout_manifest(&example(3));
    assert_ne!(a, c, "a budget of 3 must merge layers");
}

#[test]
fn the_root_layer_links_contents_and_has_tmp() {
    let out = example(20);
    let (manifest, _) = layout_manifest(&out);
    let root = manifest["layers"].as_array().unwrap().last().unwrap()["digest"].as_str().unwrap().to_string();
    let entries = layer_entries(&out, &root);
    for want in ["bin", "bin/hello", "bin/jq", "bin/sh", "bin/env", "tmp", "usr/bin/env"] {
        assert!(entries.iter().any(|e| e == want), "{want} missing from the root layer: {entries:?}");
    }
    let config = layout_blob(&out, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["hello"]));
    assert_eq!(config["config"]["Env"], serde_json::json!([nixery::image::DEFAULT_PATH, "FOO=bar"]));
    assert_eq!(config["created"], "1970-01-01T00:00:01Z");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), manifest["layers"].as_array().unwrap().len());
    assert_eq!(config["history"].as_array().unwrap().len(), manifest["layers"].as_array().unwrap().len());
}

#[test]
fn large_paths_get_a_layer_of_their_own() {
    // Nine store paths, three store layers (maxLayers 4, the root layer
    // included): most paths must share, and only what sharing saves most
    // (size, weighed by popularity) keeps a layer alone. The more popular
    // glibc and busybox lose to the 110 MB path; without the size in the
    // ranking they would win.
    let dir = tempfile::tempdir().unwrap();
    let out = nix_build_expr(
        dir.path(),
        r#"nixery.buildNixeryImage { name = "big"; tag = "v1"; contents = [ pkgs.hello pkgs.jq pkgs.bashInteractive pkgs.coreutils pkgs.bigdata ]; maxLayers = 4; compressionLevel = 1; }"#,
    );
    let found = store_paths_by_layer(&out);
    let mut layers: Vec<usize> = found.values().map(|l| l[0]).collect();
    layers.sort();
    layers.dedup();
    assert!(found.len() >= 8 && layers.len() == 3, "{} paths must share 3 store layers: {found:?}", found.len());
    let big = found.keys().find(|p| p.ends_with("-bigdata-1.0")).expect("bigdata in the image").clone();
    let big_layer = found[&big][0];
    let sharing: Vec<&String> = found.iter().filter(|(_, l)| l[0] == big_layer).map(|(p, _)| p).collect();
    assert_eq!(sharing, vec![&big], "the 110 MB path has its layer to itself");
}

#[test]
fn bad_arguments_fail_with_the_image_name() {
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        (r#"nixery.buildNixeryImage { name = "tiny"; contents = [ pkgs.hello ]; maxLayers = 1; }"#, "in nixery image tiny: `maxLayers` must be"),
        (
            r#"nixery.buildNixeryImage { name = "typo"; contents = [ pkgs.hello ]; config.Cmnd = [ "hello" ]; }"#,
            "in nixery image typo: config has no `Cmnd`: did you mean `Cmd`?",
        ),
        (r#"nixery.buildNixeryImage { name = "fmt"; format = "tarball"; }"#, "in nixery image fmt: `format` must be"),
    ] {
        let file = expr_file(dir.path(), body);
        let out = nix_build_cmd(&file).output().unwrap();
        assert!(!out.status.success(), "{body} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn popularity_gives_popular_paths_their_own_layer() {
    let dir = tempfile::tempdir().unwrap();
    // With the nixery algorithm, oniguruma, used only by jq's closure,
    // travels with jq; declared popular, it gets a layer of its own.
    let out = nix_build_expr(
        dir.path(),
        r#"nixery.buildNixeryImage { name = "pop"; tag = "v1"; contents = [ pkgs.jq ]; layering = "nixery"; popularity = { "oniguruma-6.9.8" = 1000; }; }"#,
    );
    let found = store_paths_by_layer(&out);
    let onig = found.keys().find(|p| p.ends_with("-oniguruma-6.9.8")).unwrap();
    let layer = found[onig][0];
    assert_eq!(found.values().filter(|l| l[0] == layer).count(), 1);
    let plain = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "pop"; tag = "v1"; contents = [ pkgs.jq ]; layering = "nixery"; }"#);
    let found = store_paths_by_layer(&plain);
    let onig = found.keys().find(|p| p.ends_with("-oniguruma-6.9.8")).unwrap();
    let jq = found.keys().find(|p| p.ends_with("-jq-1.6")).unwrap();
    assert_eq!(found[onig], found[jq]);
    // The default layering gives every path its own layer within budget.
    let default = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "pop"; tag = "v1"; contents = [ pkgs.jq ]; }"#);
    let found = store_paths_by_layer(&default);
    let mut layers: Vec<usize> = found.values().map(|l| l[0]).collect();
    layers.sort();
    layers.dedup();
    assert_eq!(layers.len(), found.len());
}

#[test]
fn popcount_counts_a_package_set_and_images_accept_it() {
    run(std::process::Command::new("nix-build").env("NIX_CONFIG", NIX_CONFIG).arg(repo().join("tests/pkgs")).args([
        "--no-out-link",
        "-A",
        "hello",
        "-A",
        "jq",
    ]));
    let out = run_stdout(std::process::Command::new(helper()).env("NIX_CONFIG", NIX_CONFIG).args(["popcount", "--package-set"]).arg(repo().join("tests/pkgs")));
    let pop: serde_json::Value = serde_json::from_str(&out).unwrap();
    // glibc is in the closures of glibc, hello, oniguruma, libjq, jq and nix.
    assert_eq!(pop["glibc-2.36"], 6, "{pop}");
    assert_eq!(pop["oniguruma-6.9.8"], 3, "{pop}");
    assert_eq!(pop["jq-1.6"], 1, "{pop}");
    // buildNixeryImage takes the file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("popularity.json");
    std::fs::write(&file, &out).unwrap();
    let image = nix_build_expr(
        dir.path(),
        &format!(
            r#"nixery.buildNixeryImage {{ name = "pop"; tag = "v1"; contents = [ pkgs.jq pkgs.hello ]; maxLayers = 3; popularity = {}; }}"#,
            file.display()
        ),
    );
    let (manifest, _) = layout_manifest(&image);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
}

#[test]
fn incremental_builds_give_the_same_image_and_pack_only_new_layers() {
    let dir = tempfile::tempdir().unwrap();
    let image = |contents: &str, incremental: bool| {
        format!(r#"nixery.buildNixeryImage {{ name = "inc"; tag = "v1"; contents = [ {contents} ]; incremental = {incremental}; }}"#)
    };
    let plain = nix_build_expr(dir.path(), &image("pkgs.hello pkgs.jq pkgs.bashInteractive", false));
    let incremental = nix_build_expr(dir.path(), &image("pkgs.hello pkgs.jq pkgs.bashInteractive", true));
    let (_, a) = layout_manifest(&plain);
    let (_, b) = layout_manifest(&incremental);
    assert_eq!(a, b, "the same image either way");
    // Layers are links to the layer derivations' outputs; clients follow them.
    let copy = dir.path().join("copy");
    run(skopeo().arg("copy").arg(format!("oci:{}:v1", incremental.display())).arg(format!("oci:{}:v1", copy.display())));
    // Changing one package packs one new layer, not the others. The
    // package is new on every run, so the store's cache cannot hide work.
    let nonce = format!("{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    let changing = |version: u32| {
        format!(
            r#"(derivation {{ name = "changing-{version}-{nonce}"; system = builtins.currentSystem; builder = "${{pkgs.busybox}}/bin/sh"; args = [ "-c" "echo {version} > $out" ]; }})"#
        )
    };
    let write = |version: u32| expr_file(dir.path(), &image(&format!("pkgs.hello pkgs.jq {}", changing(version)), true));
    run(&mut nix_build_cmd(&write(1)));
    let out = run(&mut nix_build_cmd(&write(2)));
    let log = String::from_utf8_lossy(&out.stderr);
    let packed_layers = log.lines().filter(|l| l.contains("building") && l.contains("-nixery-layer.drv")).count();
    assert_eq!(packed_layers, 1, "only the changed package's layer is packed:\n{log}");
}
