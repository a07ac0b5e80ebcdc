//! The `nixery layers` contract: the documented plan for a hand-written
//! graph, and one-line errors for bad input.

use std::process::Command;

use crate::support::helper;

const GLIBC: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-glibc-2.37-8";
const HELLO: &str = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-hello-2.12";
const JQ: &str = "/nix/store/cccccccccccccccccccccccccccccccc-jq-1.7";
const ONIG: &str = "/nix/store/dddddddddddddddddddddddddddddddd-oniguruma-6.9";

fn graph_json() -> String {
    format!(
        r#"{{"exportReferencesGraph": {{"graph": ["{HELLO}", "{JQ}"]}},
            "graph": [
              {{"path": "{HELLO}", "narSize": 100, "closureSize": 1100, "references": ["{GLIBC}", "{HELLO}"]}},
              {{"path": "{JQ}", "narSize": 300, "closureSize": 1500, "references": ["{GLIBC}", "{ONIG}"]}},
              {{"path": "{ONIG}", "narSize": 200, "closureSize": 1200, "references": ["{GLIBC}"]}},
              {{"path": "{GLIBC}", "narSize": 1000, "closureSize": 1000, "references": []}}
            ]}}"#
    )
}

fn layers(dir: &std::path::Path, graph: &str, extra: &[&str]) -> std::process::Output {
    let g = dir.join(format!("graph-{}.json", crate::support::unique()));
    std::fs::write(&g, graph).unwrap();
    Command::new(helper()).arg("layers").arg("--graph").arg(&g).args(extra).output().unwrap()
}

#[test]
fn layers_gives_every_path_a_layer_within_budget_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let out = layers(dir.path(), &graph_json(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan,
        // Image order: the first content's closure first (hello's), then
        // the next's, each most popular first, so that images on the same
        // base share a prefix of layers.
        serde_json::json!({"version": 1, "layers": [
            {"paths": [GLIBC], "size": 1000},
            {"paths": [HELLO], "size": 100},
            {"paths": [ONIG], "size": 200},
            {"paths": [JQ], "size": 300},
        ]})
    );
    // Over budget: glibc, which both programs need, keeps a layer apart.
    let out = layers(dir.path(), &graph_json(), &["--max-layers", "2"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["layers"][0]["paths"], serde_json::json!([GLIBC]));
    assert_eq!(plan["layers"][1]["paths"], serde_json::json!([HELLO, JQ, ONIG]));
}

#[test]
fn layers_prints_the_documented_nixery_plan() {
    let dir = tempfile::tempdir().unwrap();
    let out = layers(dir.path(), &graph_json(), &["--algorithm", "nixery"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        plan,
        serde_json::json!({"version": 1, "layers": [
            {"paths": [HELLO], "size": 100},
            {"paths": [JQ, ONIG], "size": 500},
            {"paths": [GLIBC], "size": 1000},
        ]})
    );
}

#[test]
fn layers_honours_popularity_and_budget() {
    let dir = tempfile::tempdir().unwrap();
    let pop = dir.path().join("pop.json");
    std::fs::write(&pop, r#"{"oniguruma-6.9": 1000, "glibc-2.37-8": 5000}"#).unwrap();
    let out = layers(dir.path(), &graph_json(), &["--popularity", pop.to_str().unwrap(), "--algorithm", "nixery"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups: Vec<Vec<String>> = serde_json::from_value(plan["layers"].as_array().unwrap().iter().map(|l| l["paths"].clone()).collect()).unwrap();
    assert_eq!(groups, vec![vec![HELLO.to_string()], vec![JQ.to_string()], vec![ONIG.to_string()], vec![GLIBC.to_string()]]);
    let out = layers(dir.path(), &graph_json(), &["--popularity", pop.to_str().unwrap(), "--max-layers", "2", "--algorithm", "nixery"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["layers"].as_array().unwrap().len(), 2);
    assert_eq!(plan["layers"][1]["paths"], serde_json::json!([GLIBC]));
}

fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    assert_eq!(out.status.code(), Some(1), "exit status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("nixery: error: "), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_gives_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_one_line_error(&layers(dir.path(), "{not json", &[]), "not valid JSON");
    assert_one_line_error(&layers(dir.path(), r#"{"graph": 3}"#, &[]), "not valid JSON");
    let dangling = graph_json().replace(r#""references": []"#, r#""references": ["/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-ghost"]"#);
    assert_one_line_error(&layers(dir.path(), &dangling, &[]), "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-ghost, which is not in the graph");
    assert_one_line_error(&layers(dir.path(), &graph_json(), &["--max-layers", "0"]), "budget must be at least 1");
    let out = layers(dir.path(), &graph_json(), &["--algorithm", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'bogus'") && err.contains("[possible values: nixery, popularity-contest, sharing]"), "{err}");
    let out = Command::new(helper()).args(["layers", "--graph", "/nonexistent/graph.json"]).output().unwrap();
    assert_one_line_error(&out, "/nonexistent/graph.json");
    let pop = dir.path().join("bad-pop.json");
    std::fs::write(&pop, r#"{"glibc": "many"}"#).unwrap();
    assert_one_line_error(&layers(dir.path(), &graph_json(), &["--popularity", pop.to_str().unwrap()]), "popularity");
}

#[test]
fn build_image_outside_nix_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(helper())
        .current_dir(dir.path())
        .env_remove("NIX_ATTRS_JSON_FILE")
        .env("NIX_BUILD_TOP", dir.path())
        .args(["internal", "build-image"])
        .output()
        .unwrap();
    assert_one_line_error(&out, ".attrs.json");
}

#[test]
fn popcount_reads_path_info_in_both_shapes_and_graphs() {
    let dir = tempfile::tempdir().unwrap();
    let list = format!(
        r#"[{{"path": "{HELLO}", "references": ["{GLIBC}"]}}, {{"path": "{JQ}", "references": ["{ONIG}", "{GLIBC}"]}},
            {{"path": "{ONIG}", "references": ["{GLIBC}"]}}, {{"path": "{GLIBC}", "references": []}}]"#
    );
    let map = format!(
        r#"{{"{HELLO}": {{"references": ["{GLIBC}"]}}, "{JQ}": {{"references": ["{ONIG}", "{GLIBC}"]}},
            "{ONIG}": {{"references": ["{GLIBC}"]}}, "{GLIBC}": {{"references": []}}}}"#
    );
    let want = serde_json::json!({"glibc-2.37-8": 4, "hello-2.12": 1, "jq-1.7": 1, "oniguruma-6.9": 2});
    for (i, text) in [list, map].iter().enumerate() {
        let f = dir.path().join(format!("info-{i}.json"));
        std::fs::write(&f, text).unwrap();
        let out = Command::new(helper()).args(["popcount", "--path-info"]).arg(&f).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), want);
    }
    let g = dir.path().join("graph.json");
    std::fs::write(&g, graph_json()).unwrap();
    let out = Command::new(helper()).args(["popcount", "--graph"]).arg(&g).output().unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), want);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[{\"references\": []}]").unwrap();
    let out = Command::new(helper()).args(["popcount", "--path-info"]).arg(&bad).output().unwrap();
    assert_one_line_error(&out, "no \"path\"");
}

#[test]
fn pack_gives_the_same_digests_whatever_the_thread_count() {
    // Real files (this repository's sources and the helper binary), a
    // multi-chunk layer among them, packed with 1 and with 4 threads.
    let dir = tempfile::tempdir().unwrap();
    let src = crate::support::repo().join("src");
    let plan = serde_json::json!({"version": 1, "layers": [
        {"paths": [src.to_str().unwrap()], "size": 0},
        {"paths": [helper().to_str().unwrap()], "size": 0},
    ]});
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, plan.to_string()).unwrap();
    let mut results = Vec::new();
    for (threads, compression) in [("1", "gzip"), ("4", "gzip"), ("1", "zstd"), ("4", "zstd")] {
        let out = dir.path().join(format!("blobs-{threads}-{compression}"));
        let o = Command::new(helper())
            .env("RAYON_NUM_THREADS", threads)
            .args(["pack", "--compression", compression, "--plan"])
            .arg(&plan_file)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let packed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(packed[1]["tar_size"].as_u64().unwrap() > 2 * 1024 * 1024, "the binary spans several chunks");
        results.push(packed);
    }
    assert_eq!(results[0], results[1], "gzip");
    assert_eq!(results[2], results[3], "zstd");
    assert_ne!(results[0][1]["digest"], results[2][1]["digest"]);
}

/// `nixery serve` in an environment of only `env` (and PATH, and storage
/// in a folder of its own).
fn serve(env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let storage = tempfile::tempdir().unwrap();
    let mut c = Command::new(helper());
    c.env_clear().env("PATH", std::env::var_os("PATH").unwrap()).env("TMPDIR", std::env::temp_dir()).env("STORAGE_PATH", storage.path());
    c.args(["serve", "--port", "0"]).args(args).envs(env.iter().copied());
    c.stdin(std::process::Stdio::null()).output().unwrap()
}

#[test]
fn serve_names_the_variable_a_bad_value_came_from() {
    for (var, value, why) in [
        ("NIXERY_MAX_BUILDS", "two", "expected a whole number"),
        ("NIXERY_MAX_LAYERS", "500", "500 is not in 2..=125"),
        ("NIXERY_LAYERING", "popular", "expected one of nixery, popularity-contest, sharing"),
        ("NIXERY_STORAGE_BACKEND", "s4", "expected one of filesystem, gcs, s3"),
    ] {
        let out = serve(&[(var, value)], &[]);
        assert_eq!(out.status.code(), Some(2), "a bad setting");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err, format!("nixery: error: {var}={value:?} is not a valid value: {why}\n"));
    }
    // A flag typed on the command line is named as typed, by clap.
    let out = serve(&[("NIXERY_MAX_BUILDS", "2")], &["--max-builds", "two"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'two' for '--max-builds <MAX_BUILDS>'"));
}

#[test]
fn serve_stops_at_start_when_its_package_set_cannot_be_used() {
    // A repository that is not there: the error names it, says why, and
    // points at the misspelt variable that was meant to name the set.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-repo");
    let repo_url = format!("file://{}", missing.display());
    let out = serve(&[("NIXERY_PKGS_REPO", &repo_url), ("NIXERY_PKGS_PTH", "/somewhere"), ("NIX_TIMOUT", "5")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.starts_with(&format!("nixery: error: cannot use the package set, the git repository {repo_url}")), "{err}");
    assert!(last.contains("git ls-remote failed") && last.ends_with("NIXERY_PKGS_PTH is set, which is no setting of nixery serve: did you mean NIXERY_PKGS_PATH?; NIX_TIMOUT is set, which is no setting of nixery serve: did you mean NIX_TIMEOUT?"), "{err}");
    // Each stray variable is also a warning in the log.
    assert!(err.contains("WARN") && err.contains("NIXERY_PKGS_PTH is set"), "{err}");
    // Variables of this repository's scripts are not settings, and not stray.
    let names = ["NIXERY_TEST_WORLD", "NIXERY_PKGS_PATH", "NIXERY_PKG_PATH", "NIXERY_FROBNICATE", "PATH", "STORAGE_PATHS"].map(String::from);
    let stray: Vec<String> = nixery::serve::stray_variables(names).iter().map(|s| s.to_string()).collect();
    assert_eq!(
        stray,
        [
            "NIXERY_FROBNICATE is set, which is no setting of nixery serve (docs/shim.md lists them)",
            "NIXERY_PKG_PATH is set, which is no setting of nixery serve: did you mean NIXERY_PKGS_PATH?",
            "STORAGE_PATHS is set, which is no setting of nixery serve: did you mean STORAGE_PATH?",
        ]
    );
}

#[test]
fn serve_without_a_package_set_says_it_fell_back_to_the_channel() {
    crate::support::in_loopback_netns("cli::serve_default_channel_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by serve_without_a_package_set_says_it_fell_back_to_the_channel"]
fn serve_default_channel_in_netns() {
    crate::support::require_loopback_netns();
    // The misspelt variable of the first hour: the default channel cannot
    // be fetched here, and the error says so and what was meant.
    let out = serve(&[("NIXERY_PKG_PATH", "/somewhere")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(
        last.starts_with("nixery: error: cannot use the package set, nixpkgs nixos-unstable (the default: none of NIXERY_PKGS_PATH, NIXERY_PKGS_REPO or NIXERY_CHANNEL is set): git ls-remote failed"),
        "{err}"
    );
    assert!(last.ends_with("NIXERY_PKG_PATH is set, which is no setting of nixery serve: did you mean NIXERY_PKGS_PATH?"), "{err}");
}

#[test]
fn load_mistakes_are_said_once_with_what_to_do() {
    let image = crate::support::nix_build(&crate::support::repo().join("examples/hello.nix"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let load = |env: &[(&str, &str)], args: &[&std::ffi::OsStr]| Command::new(helper()).arg("load").args(args).envs(env.iter().copied()).output().unwrap();
    let img = image.as_os_str();
    assert_one_line_error(
        &load(&[], &[img, "podmn".as_ref()]),
        r#""podmn" is not where an image loads: expected podman, docker, docker-archive:FILE or oci:DIR[:TAG]; did you mean podman?"#,
    );
    assert_one_line_error(
        &load(&[], &[dir.path().as_os_str(), "podman".as_ref()]),
        "is not an image (it has no index.json): pass the result of nix-build of a buildNixeryImage or streamNixeryImage",
    );
    let path = std::env::var("PATH").unwrap();
    assert_one_line_error(&load(&[("PATH", "/nonexistent")], &[img, "docker".as_ref()]), "docker: is not installed here (not on PATH)");
    // No daemon: docker says so, and nixery adds one line, not the broken
    // pipe that followed.
    let out = load(&[("PATH", &path), ("DOCKER_HOST", "unix:///nonexistent/docker.sock")], &[img, "docker".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Cannot connect to the Docker daemon"), "{err}");
    assert!(err.ends_with("nixery: error: docker load: failed (exit status: 1); its message above says why\n") && !err.contains("Broken pipe"), "{err}");
}
