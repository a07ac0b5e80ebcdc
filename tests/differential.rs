//! A differential test of the pull protocol: the same requests, good and
//! bad, go to the shim and to the reference registry (distribution)
//! serving the same image; status codes, error codes and the key headers
//! must agree.

use std::process::{Child, Command, Stdio};

use crate::support::*;

/// The reference registry on a storage directory, read-only or not.
struct Reference {
    port: u16,
    child: Child,
}

impl Reference {
    fn start(data: &std::path::Path, readonly: bool) -> Reference {
        let (port, child) = serve_on_free_port(|port| {
            let config = data.with_extension(format!("config-{port}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: {readonly}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    data.display()
                ),
            )
            .unwrap();
            Command::new("docker-registry").arg("serve").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
        });
        Reference { port, child }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    compare: &'static [&'static str],
}

fn send(port: u16, case: &Case) -> (u16, reqwest::header::HeaderMap, Option<String>) {
    let c = http();
    let url = format!("http://127.0.0.1:{port}{}", case.path);
    let mut req = c.request(case.method.parse().unwrap(), &url);
    for (k, v) in &case.headers {
        req = req.header(*k, v);
    }
    if case.method == "PUT" {
        req = req.header("Content-Type", "application/vnd.oci.image.manifest.v1+json").body("{}");
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let json = headers.get("content-type").is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let code = if case.method != "HEAD" && status >= 400 && json {
        let v: serde_json::Value = resp.json().unwrap_or_else(|e| panic!("{}: error body is not JSON: {e}", case.what));
        Some(v["errors"][0]["code"].as_str().unwrap().to_string())
    } else {
        None
    };
    (status, headers, code)
}

#[test]
fn shim_and_reference_registry_agree() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[]);
    let name = "shell/hello";
    let oci = "application/vnd.oci.image.manifest.v1+json";

    // The same image in both: the shim builds it, skopeo copies it over.
    let data = dir.path().join("reference");
    {
        let writable = Reference::start(&data, false);
        run(skopeo()
            .args(["copy", "--src-tls-verify=false", "--dest-tls-verify=false"])
            .arg(format!("docker://{}/{name}:latest", shim.host()))
            .arg(format!("docker://127.0.0.1:{}/{name}:latest", writable.port)));
    }
    let reference = Reference::start(&data, true);

    let m = http().get(shim.url(&format!("/v2/{name}/manifests/latest"))).header("Accept", oci).send().unwrap();
    let digest = m.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let manifest: serde_json::Value = m.json().unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let zero = format!("sha256:{}", "0".repeat(64));

    const MANIFEST_HEADERS: &[&str] = &["content-type", "docker-content-digest", "content-length", "etag", "docker-distribution-api-version"];
    const BLOB_HEADERS: &[&str] = &["content-type", "docker-content-digest", "content-length", "etag", "accept-ranges"];
    const RANGE_HEADERS: &[&str] = &["content-range", "content-length", "docker-content-digest", "accept-ranges"];
    let accept = || vec![("Accept", oci.to_string())];
    let cases = vec![
        Case { what: "base", method: "GET", path: "/v2/".into(), headers: vec![], compare: &["docker-distribution-api-version", "content-type"] },
        Case { what: "manifest by tag", method: "GET", path: format!("/v2/{name}/manifests/latest"), headers: accept(), compare: MANIFEST_HEADERS },
        Case { what: "manifest HEAD", method: "HEAD", path: format!("/v2/{name}/manifests/latest"), headers: accept(), compare: MANIFEST_HEADERS },
        Case { what: "manifest by digest", method: "GET", path: format!("/v2/{name}/manifests/{digest}"), headers: accept(), compare: MANIFEST_HEADERS },
        Case { what: "manifest by digest HEAD", method: "HEAD", path: format!("/v2/{name}/manifests/{digest}"), headers: accept(), compare: MANIFEST_HEADERS },
        Case { what: "layer", method: "GET", path: format!("/v2/{name}/blobs/{layer}"), headers: vec![], compare: BLOB_HEADERS },
        Case { what: "layer HEAD", method: "HEAD", path: format!("/v2/{name}/blobs/{layer}"), headers: vec![], compare: BLOB_HEADERS },
        Case { what: "config", method: "GET", path: format!("/v2/{name}/blobs/{config}"), headers: vec![], compare: BLOB_HEADERS },
        Case { what: "range", method: "GET", path: format!("/v2/{name}/blobs/{layer}"), headers: vec![("Range", "bytes=0-9".into())], compare: RANGE_HEADERS },
        Case {
            what: "suffix range",
            method: "GET",
            path: format!("/v2/{name}/blobs/{layer}"),
            headers: vec![("Range", "bytes=-5".into())],
            compare: RANGE_HEADERS,
        },
        Case {
            what: "open range",
            method: "GET",
            path: format!("/v2/{name}/blobs/{layer}"),
            headers: vec![("Range", "bytes=10-".into())],
            compare: RANGE_HEADERS,
        },
        Case {
            what: "unsatisfiable range",
            method: "GET",
            path: format!("/v2/{name}/blobs/{layer}"),
            headers: vec![("Range", "bytes=999999999-".into())],
            compare: &["content-range"],
        },
        Case {
            what: "if-none-match",
            method: "GET",
            path: format!("/v2/{name}/blobs/{layer}"),
            headers: vec![("If-None-Match", format!("\"{layer}\""))],
            compare: &["etag", "docker-content-digest"],
        },
        Case { what: "unknown blob", method: "GET", path: format!("/v2/{name}/blobs/{zero}"), headers: vec![], compare: &["content-type"] },
        Case { what: "unknown blob HEAD", method: "HEAD", path: format!("/v2/{name}/blobs/{zero}"), headers: vec![], compare: &[] },
        Case { what: "bad digest", method: "GET", path: format!("/v2/{name}/blobs/sha256:xyz"), headers: vec![], compare: &["content-type"] },
        Case { what: "short digest", method: "GET", path: format!("/v2/{name}/blobs/sha256:abcd"), headers: vec![], compare: &["content-type"] },
        Case { what: "unknown manifest digest", method: "GET", path: format!("/v2/{name}/manifests/{zero}"), headers: accept(), compare: &["content-type"] },
        // Pushes: the read-only reference answers 405 in plain text, the
        // shim 405 with the spec's UNSUPPORTED (checked below).
        Case { what: "push: start upload", method: "POST", path: format!("/v2/{name}/blobs/uploads/"), headers: vec![], compare: &["allow"] },
        Case { what: "push: put manifest", method: "PUT", path: format!("/v2/{name}/manifests/latest"), headers: vec![], compare: &["allow"] },
        Case { what: "delete", method: "DELETE", path: format!("/v2/{name}/manifests/{digest}"), headers: vec![], compare: &["allow"] },
        Case { what: "tags", method: "GET", path: format!("/v2/{name}/tags/list"), headers: vec![], compare: &["content-type"] },
    ];

    let mut disagreements = Vec::new();
    for case in &cases {
        let (s1, h1, c1) = send(shim.port, case);
        let (s2, h2, c2) = send(reference.port, case);
        if s1 != s2 {
            disagreements.push(format!("{}: status {s1} (shim) vs {s2} (reference)", case.what));
        }
        if case.what.starts_with("push") || case.what == "delete" {
            if c1.as_deref() != Some("UNSUPPORTED") {
                disagreements.push(format!("{}: the shim answers {c1:?}, not UNSUPPORTED", case.what));
            }
        } else if c1 != c2 {
            disagreements.push(format!("{}: error code {c1:?} vs {c2:?}", case.what));
        }
        for h in case.compare {
            let (a, b) = (h1.get(*h).map(|v| v.to_str().unwrap().to_ascii_lowercase()), h2.get(*h).map(|v| v.to_str().unwrap().to_ascii_lowercase()));
            if a != b {
                disagreements.push(format!("{}: header {h}: {a:?} vs {b:?}", case.what));
            }
        }
    }
    assert!(disagreements.is_empty(), "the shim and the reference registry disagree:\n{}", disagreements.join("\n"));
}
