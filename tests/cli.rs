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
