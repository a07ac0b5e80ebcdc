//! The registry shim (`nixery serve`) against real clients, the reference
//! registry, git package sources and its own caches.

use std::process::Command;

use crate::support::world::World;
use crate::support::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn manifest(shim: &Shim, name: &str, tag: &str, accept: &str) -> (serde_json::Value, reqwest::blocking::Response) {
    let resp = http().get(shim.url(&format!("/v2/{name}/manifests/{tag}"))).header("Accept", accept).send().unwrap();
    assert_eq!(resp.status(), 200, "{name}:{tag}");
    let bytes = resp.bytes().unwrap();
    (serde_json::from_slice(&bytes).unwrap(), http().head(shim.url(&format!("/v2/{name}/manifests/{tag}"))).header("Accept", accept).send().unwrap())
}

fn layer_digests(m: &serde_json::Value) -> Vec<String> {
    m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

in_both_worlds! {
    fn real_clients_pull_and_run_images_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let shim = Shim::start(&dir.path().join("store"), &[]);
        let host = shim.host();

        // skopeo: inspect, copy to an OCI layout and to a docker-archive.
        let inspect: serde_json::Value =
            serde_json::from_str(&run_stdout(skopeo().args(["inspect", "--tls-verify=false"]).arg(format!("docker://{host}/shell/hello")))).unwrap();
        assert_eq!(inspect["Architecture"], "amd64");
        let oci = dir.path().join("oci");
        run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{host}/shell/hello:latest")).arg(format!("oci:{}:latest", oci.display())));
        let archive = dir.path().join("image.tar");
        run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{host}/hello/shell:latest")).arg(format!("docker-archive:{}", archive.display())));
        assert!(std::fs::metadata(&archive).unwrap().len() > 1000);
        assert_eq!(shim.nix_builds(), 1, "shell/hello and hello/shell are one image, built once:\n{}", shim.log_text());

        // podman pulls it with the command the start page gives, and runs it.
        let root = tempfile::tempdir().unwrap();
        let page = http().get(shim.url("/")).send().unwrap().text().unwrap();
        let pull = page.lines().find_map(|l| l.strip_prefix("<pre>podman pull ")).expect("the start page's podman command");
        assert_eq!(pull, format!("--tls-verify=false {host}/shell/hello"), "a plain-HTTP server's command says so");
        run(podman(root.path()).args(["pull", "-q"]).args(pull.split(' ')));
        let out = run_stdout(podman(root.path()).args(PODMAN_RUN).arg(format!("{host}/shell/hello")).args(["sh", "-c", "hello && bash -c 'echo from bash' && ls /etc/ssl/certs"]));
        assert_eq!(out, "Hello, world!\nfrom bash\nca-bundle.crt\nca-certificates.crt\n");

        // containerd, as Kubernetes pulls, and runs it.
        let ctrd_dir = tempfile::tempdir().unwrap();
        let ctrd = Containerd::start(ctrd_dir.path());
        run(ctrd.ctr().args(["images", "pull", "--plain-http"]).arg(format!("{host}/shell/hello:latest")));
        let out = run_stdout(ctrd.ctr().args(["run", "--rm"]).arg(format!("{host}/shell/hello:latest")).arg(format!("nixery-test-{}", std::process::id())).arg("hello"));
        assert_eq!(out.trim_end_matches('\r').trim(), "Hello, world!");
    }
}

#[test]
fn names_find_nested_case_folded_and_digit_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_BASE_PACKAGES", "")]);
    let host = shim.host();
    let root = tempfile::tempdir().unwrap();
    let image = format!("{host}/xorg.xev/haskellpackages.stylish-haskell/1password");
    run(podman(root.path()).args(["pull", "-q", "--tls-verify=false"]).arg(&image));
    let out = run_stdout(podman(root.path()).args(PODMAN_RUN).arg(&image).args(["/bin/xev"]));
    assert_eq!(out, "xev: no display here\n");
    let config = run_stdout(skopeo().args(["inspect", "--config", "--tls-verify=false"]).arg(format!("docker://{image}")));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let history: Vec<String> = config["history"].as_array().unwrap().iter().map(|h| h["comment"].as_str().unwrap().to_string()).collect();
    for name in ["stylish-haskell-0.14", "1password-8.10", "xev-1.2.5"] {
        assert!(history.iter().any(|h| h.contains(name)), "{name} in {history:?}");
    }
    assert!(!history.iter().any(|h| h.contains("cacert")), "base packages are configurable");
}

/// What each client prints when a pull fails, for the ways an image
/// can fail: the shim's one line, whole, in every client's own output.
/// (containerd prints only the status line: `not found` for a `404`.)
const FAILURES: &[(&str, &str)] = &[
    ("hellp", "the package set has no hellp (did you mean hello?)"),
    ("shell/broken", "cannot build shell/broken:latest: its package broken-1.0 failed to build in Nix; the server's log has Nix's output"),
    ("refused", "refused cannot be evaluated: the package set refuses it (broken, unfree or insecure) or its expression fails"),
    ("xorg/hello", "xorg is a set of packages, not a package: name one in it, as xorg.NAME"),
    ("slow", "building slow:latest took longer than NIX_TIMEOUT (10 s) and was stopped; what Nix built so far is kept: pull again in 600 s to go on"),
];

in_both_worlds! {
    fn clients_print_why_an_image_failed() {
        let dir = tempfile::tempdir().unwrap();
        // Failures are remembered for the whole test, so each builds once.
        let shim = Shim::start(&dir.path().join("store"), &[("NIX_TIMEOUT", "10"), ("NIXERY_FAILURE_TTL", "600")]);
        let host = shim.host();
        let root = tempfile::tempdir().unwrap();
        let output = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(!out.status.success());
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
        };
        for (name, line) in FAILURES {
            let podman = output(podman(root.path()).args(["pull", "--tls-verify=false"]).arg(format!("{host}/{name}")));
            assert!(podman.contains(line), "podman prints {line:?}:\n{podman}");
            let skopeo = output(skopeo().args(["inspect", "--tls-verify=false"]).arg(format!("docker://{host}/{name}")));
            assert!(skopeo.contains(line), "skopeo prints {line:?}:\n{skopeo}");
        }
        if World::this() == World::Debian12 {
            // Docker 20.10 (the current world has no docker).
            let docker = Dockerd::start(&dir.path().join("docker"), Dockerd::MINIMAL);
            for (name, line) in FAILURES {
                let out = output(docker.docker().args(["pull"]).arg(format!("{host}/{name}")));
                assert!(out.contains(line), "docker prints {line:?}:\n{out}");
            }
        }
        // Over HTTP/1.1 the status line says it too, for clients that
        // print only that (containerd, and the others for a 5xx).
        let mut conn = std::net::TcpStream::connect(&host).unwrap();
        use std::io::{BufRead, Write};
        write!(conn, "HEAD /v2/slow/manifests/latest HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut status = String::new();
        std::io::BufReader::new(conn).read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 404 building slow:latest took longer than NIX_TIMEOUT"), "{status}");
        assert_eq!(shim.nix_builds(), FAILURES.len(), "each failure built once:\n{}", shim.log_text());
    }
}

#[test]
fn errors_are_the_specs_json_and_build_failures_are_shown() {
    let dir = tempfile::tempdir().unwrap();
    // The timeout leaves a loaded machine time to evaluate and fail `broken`
    // while `slow` (30 s) still outlasts it.
    let shim = Shim::start(&dir.path().join("store"), &[("NIX_TIMEOUT", "10")]);
    let c = http();
    let error = |resp: reqwest::blocking::Response| -> (u16, serde_json::Value) {
        let status = resp.status().as_u16();
        assert_eq!(resp.headers()["content-type"], "application/json; charset=utf-8");
        (status, resp.json().unwrap())
    };
    let (s, e) = error(c.get(shim.url("/v2/hello/nosuchpackage/manifests/latest")).send().unwrap());
    assert_eq!((s, e["errors"][0]["code"].as_str().unwrap()), (404, "MANIFEST_UNKNOWN"));
    assert_eq!(e["errors"][0]["detail"]["NotFound"], serde_json::json!(["nosuchpackage"]));
    let (s, e) = error(c.get(shim.url("/v2/Hello/manifests/latest")).send().unwrap());
    assert_eq!((s, e["errors"][0]["code"].as_str().unwrap()), (400, "NAME_INVALID"));
    let (s, e) = error(c.get(shim.url("/v2/broken/manifests/latest")).send().unwrap());
    assert_eq!((s, e["errors"][0]["code"].as_str().unwrap()), (404, "MANIFEST_UNKNOWN"));
    let (s, e) = error(c.get(shim.url("/v2/slow/manifests/latest")).send().unwrap());
    assert_eq!((s, e["errors"][0]["code"].as_str().unwrap()), (404, "MANIFEST_UNKNOWN"));
    assert!(e["errors"][0]["message"].as_str().unwrap().contains("pull again in 30 s"), "{e}");
    // Pushes and deletes: 405 with Allow and a message of our own, the
    // method checked before the name, on every path.
    for (method, path) in [
        ("PUT", "/v2/hello/manifests/latest"),
        ("POST", "/v2/hello/blobs/uploads/"),
        ("DELETE", "/v2/hello/manifests/latest"),
        ("PATCH", "/v2/Not_A/Name!/blobs/uploads/1"),
        ("POST", "/v2/"),
        ("PUT", "/v2/hello/tags/list"),
    ] {
        let resp = c.request(method.parse().unwrap(), shim.url(path)).body("{}").send().unwrap();
        assert_eq!(resp.headers()["allow"], "GET, HEAD", "{method} {path}");
        let (s, e) = error(resp);
        assert_eq!((s, e["errors"][0]["code"].as_str().unwrap()), (405, "UNSUPPORTED"), "{method} {path}");
        assert!(e["errors"][0]["message"].as_str().unwrap().contains("pull-only"), "{e}");
    }
    let (s, e) = error(c.get(shim.url("/v2/hello/manifests/-bad")).send().unwrap());
    assert_eq!((s, e["errors"][0]["code"].as_str().unwrap()), (400, "TAG_INVALID"));

    // The start page shows the failures, newest first.
    let page = c.get(shim.url("/")).send().unwrap().text().unwrap();
    assert!(page.contains(&format!("podman pull --tls-verify=false {}/shell/hello", shim.host())), "{page}");
    assert!(page.contains("<b>broken:latest</b>: cannot build broken:latest: its package broken-1.0 failed to build"), "each failure with its line:\n{page}");
    assert!(page.contains(" ago)</small>") && !page.contains("since the epoch"), "{page}");
    let slow = page.find("<b>slow:latest</b>").expect("the timeout is listed");
    let broken = page.find("<b>broken:latest</b>").expect("the failure is listed");
    assert!(slow < broken);
    assert!(shim.log_text().contains("this package always fails to build"), "Nix's output is logged");
}

#[test]
fn manifests_negotiate_and_digests_fetch_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[]);
    let c = http();
    for (accept, want) in [(format!("{OCI}, {DOCKER}"), OCI), (DOCKER.to_string(), DOCKER), (String::new(), OCI)] {
        let resp = c.get(shim.url("/v2/hello/manifests/latest")).header("Accept", &accept).send().unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], want);
        let digest = h["docker-content-digest"].to_str().unwrap().to_string();
        assert_eq!(h["etag"].to_str().unwrap(), format!("\"{digest}\""));
        let body = resp.bytes().unwrap();
        assert_eq!(h["content-length"].to_str().unwrap(), body.len().to_string());
        assert_eq!(nixery::digest::Digest::of(&body).to_string(), digest, "the digest is of the bytes served");
        let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(m["mediaType"], want);
        // By digest, on /manifests/ and on /blobs/ (as containerd does): the same bytes.
        for path in [format!("/v2/hello/manifests/{digest}"), format!("/v2/hello/blobs/{digest}")] {
            let again = c.get(shim.url(&path)).send().unwrap();
            assert_eq!(again.status(), 200, "{path}");
            assert_eq!(again.headers()["cache-control"], "max-age=31536000, immutable", "{path}");
            assert_eq!(again.bytes().unwrap(), body, "{path}");
        }
        // A tag may move: caches revalidate it; a digest never changes.
        assert_eq!(h["cache-control"], "no-cache");
        // HEAD agrees with GET.
        let head = c.head(shim.url("/v2/hello/manifests/latest")).header("Accept", &accept).send().unwrap();
        assert_eq!(head.headers()["docker-content-digest"].to_str().unwrap(), digest);
        assert_eq!(head.headers()["content-length"], h["content-length"]);
    }
    assert_eq!(shim.nix_builds(), 1, "HEAD and GET, both flavours: one build");
    let tags: serde_json::Value = c.get(shim.url("/v2/shell/hello/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(tags, serde_json::json!({"name": "shell/hello", "tags": ["latest"]}));
}

#[test]
fn concurrent_cold_pulls_build_once_and_a_restart_builds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let digest = {
        let shim = Shim::start(&store, &[]);
        let url = shim.url("/v2/jq/shell/manifests/latest");
        let digests: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..10)
                .map(|_| {
                    let url = url.clone();
                    s.spawn(move || {
                        let resp = http().get(&url).header("Accept", OCI).send().unwrap();
                        assert_eq!(resp.status(), 200);
                        resp.headers()["docker-content-digest"].to_str().unwrap().to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(digests.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(shim.nix_builds(), 1, "ten concurrent cold pulls, one build:\n{}", shim.log_text());
        digests[0].clone()
    };
    // A new process on the same storage: a warm pull runs no nix-build.
    let shim = Shim::start(&store, &[]);
    let resp = http().get(shim.url("/v2/shell/jq/manifests/latest")).header("Accept", OCI).send().unwrap();
    assert_eq!(resp.headers()["docker-content-digest"].to_str().unwrap(), digest);
    assert_eq!(shim.nix_builds(), 0, "{}", shim.log_text());
    // The layers are served from storage.
    let m: serde_json::Value = resp.json().unwrap();
    for d in layer_digests(&m) {
        let head = http().head(shim.url(&format!("/v2/shell/jq/blobs/{d}"))).send().unwrap();
        assert_eq!(head.status(), 200);
    }
}

#[test]
fn layers_are_identical_to_build_nixery_image() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_BASE_PACKAGES", ""), ("NIXERY_MAX_LAYERS", "4")]);
    let (pulled, _) = manifest(&shim, "jq/hello", "latest", OCI);
    let built = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "same"; tag = "v1"; contents = [ pkgs.hello pkgs.jq ]; maxLayers = 4; }"#);
    let (local, _) = layout_manifest(&built);
    let (a, b) = (layer_digests(&pulled), layer_digests(&local));
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "same store paths, same budget: the same layers (the root layer too, contents being in the same order)");
}

/// A git repository holding the test package set, with tag `v1` and tag
/// `v2` in which one package (nano) differs.
pub fn package_repo(dir: &std::path::Path) -> std::path::PathBuf {
    let repo_dir = dir.join("pkgs-repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    for f in std::fs::read_dir(repo().join("tests/pkgs")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, repo_dir.join(f.file_name().unwrap())).unwrap();
    }
    let src = std::fs::read_to_string(repo().join("tests/pkgs/default.nix")).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git").arg("-C").arg(&repo_dir).args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]).args(args));
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "v1"]);
    git(&["tag", "v1"]);
    let changed = src.replace("exec ${busybox}/bin/vi", "echo nano 8; exec ${busybox}/bin/vi");
    assert_ne!(changed, src);
    std::fs::write(repo_dir.join("default.nix"), changed).unwrap();
    git(&["commit", "-qam", "v2: nano changes"]);
    git(&["tag", "v2"]);
    repo_dir
}

#[test]
fn git_sources_build_each_ref_and_share_unchanged_layers() {
    let dir = tempfile::tempdir().unwrap();
    let pkgs = package_repo(dir.path());
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_PKGS_REPO", pkgs.to_str().unwrap()), ("NIXERY_REVISION_TTL", "1")]);
    let (m1, _) = manifest(&shim, "shell/hello", "v1", OCI);
    let (m2, _) = manifest(&shim, "shell/hello", "v2", OCI);
    let (latest, _) = manifest(&shim, "shell/hello", "latest", OCI);
    assert_eq!(latest, m2, "latest is the default branch");
    let (l1, l2) = (layer_digests(&m1), layer_digests(&m2));
    assert_ne!(l1, l2);
    let shared = l1.iter().filter(|d| l2.contains(d)).count();
    assert!(shared >= l1.len() - 2, "only nano's layer and the root layer change: {l1:?} {l2:?}");
    // The two versions really differ inside.
    let root = tempfile::tempdir().unwrap();
    for (tag, want) in [("v1", ""), ("v2", "nano 8\n")] {
        let image = format!("{}/shell/hello:{tag}", shim.host());
        run(podman(root.path()).args(["pull", "-q", "--tls-verify=false"]).arg(&image));
        let out = run_stdout(podman(root.path()).args(PODMAN_RUN).arg(&image).args(["sh", "-c", "grep -o 'nano 8' /bin/nano; true"]));
        assert_eq!(out, want, "{tag}");
    }
    let tags: serde_json::Value = http().get(shim.url("/v2/hello/tags/list")).send().unwrap().json().unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest", "main", "v1", "v2"]));
    let unknown = http().get(shim.url("/v2/hello/manifests/v3")).send().unwrap();
    assert_eq!(unknown.status(), 404);

    // The branch moves: once the revision has been looked up again (a 1 s
    // TTL here), `latest` is the new commit, not the warm image of the old.
    let (again, _) = manifest(&shim, "shell/hello", "latest", OCI);
    assert_eq!(again, m2, "warm");
    let src = std::fs::read_to_string(pkgs.join("default.nix")).unwrap();
    std::fs::write(pkgs.join("default.nix"), src.replace("echo nano 8;", "echo nano 9;")).unwrap();
    run(Command::new("git").arg("-C").arg(&pkgs).args(["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "v3"]));
    // Polled: the shim looks the branch up again once the TTL has passed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (moved, _) = manifest(&shim, "shell/hello", "latest", OCI);
        if moved != m2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "latest did not follow the branch");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The shim keeps each name's last layer plan: after a package-set update
/// (a new git ref), the name's layers stay where they were, and only the
/// one holding what changed (nano) is new, with the root layer.
#[test]
fn a_rebuild_after_an_update_keeps_the_names_last_layers() {
    let dir = tempfile::tempdir().unwrap();
    let pkgs = package_repo(dir.path());
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_PKGS_REPO", pkgs.to_str().unwrap()), ("NIXERY_MAX_LAYERS", "5")]);
    let (m1, _) = manifest(&shim, "shell/hello", "v1", OCI);
    let (m2, _) = manifest(&shim, "shell/hello", "v2", OCI);
    assert!(shim.log_text().contains("planned from the name's last layer lock"), "{}", shim.log_text());
    let (l1, l2) = (layer_digests(&m1), layer_digests(&m2));
    assert_eq!(l1.len(), 5);
    assert_eq!(l2.len(), l1.len());
    // The lock the shim keeps for the name: each store layer's names.
    let locks: Vec<_> = std::fs::read_dir(dir.path().join("store/meta/locks")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(locks.len(), 1, "one name, one lock");
    let lock: serde_json::Value = serde_json::from_slice(&std::fs::read(&locks[0]).unwrap()).unwrap();
    let held: Vec<String> = lock["layers"].as_array().unwrap().iter().map(|l| l["paths"].to_string()).collect();
    assert_eq!(held.len(), l1.len() - 1, "every store layer, not the root");
    for (i, (a, b)) in l1.iter().zip(&l2).enumerate().take(held.len()) {
        assert_eq!(a == b, !held[i].contains("\"nano"), "store layer {i} ({}) changes only if it holds nano", held[i]);
    }
}

#[test]
fn popularity_from_a_url_and_a_static_web_dir() {
    let dir = tempfile::tempdir().unwrap();
    // Popularity data over HTTP: oniguruma, used by jq alone, is declared
    // popular, so it gets a layer of its own.
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("popularity.json"), r#"{"oniguruma-6.9.8": 1000}"#).unwrap();
    std::fs::write(site.join("index.html"), "<h1>our own page</h1>").unwrap();
    let (port, mut server) = serve_on_free_port(|port| {
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&site)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    });
    let url = format!("http://127.0.0.1:{port}/popularity.json");
    let shim = Shim::start(&dir.path().join("store"), &[("NIX_POPULARITY_URL", &url), ("WEB_DIR", site.to_str().unwrap()), ("NIXERY_BASE_PACKAGES", "")]);
    let _ = server.kill();
    let config = run_stdout(skopeo().args(["inspect", "--config", "--tls-verify=false"]).arg(format!("docker://{}/jq", shim.host())));
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let comments: Vec<&str> = config["history"].as_array().unwrap().iter().map(|h| h["comment"].as_str().unwrap()).collect();
    assert!(comments.contains(&"store paths: oniguruma-6.9.8"), "{comments:?}");
    let page = http().get(shim.url("/index.html")).send().unwrap().text().unwrap();
    assert_eq!(page, "<h1>our own page</h1>");
}

#[test]
fn s3_storage_serves_the_same_images_and_survives_a_restart() {
    in_loopback_netns("shim::s3_storage_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by s3_storage_serves_the_same_images_and_survives_a_restart"]
fn s3_storage_in_netns() {
    require_loopback_netns();
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let env = s3.env();
    let env = env_refs(&env);
    let unused = dir.path().join("unused");
    let digest = {
        let shim = Shim::start(&unused, &env);
        // A real client pulls and runs it.
        let root = tempfile::tempdir().unwrap();
        let image = format!("{}/shell/hello", shim.host());
        run(podman(root.path()).args(["pull", "-q", "--tls-verify=false"]).arg(&image));
        assert_eq!(run_stdout(podman(root.path()).args(PODMAN_RUN).arg(&image).arg("hello")), "Hello, world!\n");
        let (m, head) = manifest(&shim, "shell/hello", "latest", OCI);
        // The same manifest as from filesystem storage: same layers, bit for bit.
        let fs_shim = Shim::start(&dir.path().join("fs"), &[]);
        let (fs_m, _) = manifest(&fs_shim, "shell/hello", "latest", OCI);
        assert_eq!(m, fs_m);
        // Blob GETs are redirected to signed URLs of the bucket (HEAD is
        // answered by the shim); the bytes and ranges come from there.
        let layer = &layer_digests(&m)[0];
        let blob_url = shim.url(&format!("/v2/shell/hello/blobs/{layer}"));
        let no_follow = no_redirects();
        let redirect = no_follow.get(&blob_url).send().unwrap();
        assert_eq!(redirect.status(), 307);
        let location = redirect.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(&format!("http://127.0.0.1:{}/{}/blobs/sha256/", s3.port, s3.bucket)), "{location}");
        assert!(location.contains("X-Amz-Signature="), "{location}");
        assert_eq!(no_follow.head(&blob_url).send().unwrap().status(), 200);
        // A blob the bucket does not have is the spec's error, not a redirect.
        let missing = no_follow.get(shim.url(&format!("/v2/shell/hello/blobs/sha256:{}", "0".repeat(64)))).send().unwrap();
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value = missing.json().unwrap();
        assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
        let whole = http().get(&blob_url).send().unwrap().bytes().unwrap();
        assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(&whole)), *layer);
        let part = http().get(shim.url(&format!("/v2/shell/hello/blobs/{layer}"))).header("Range", "bytes=10-19").send().unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.bytes().unwrap(), whole.slice(10..20));
        let keys = s3.keys();
        assert!(keys.contains(&format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"))), "{keys:?}");
        assert!(keys.iter().any(|k| k.starts_with("meta/manifests/")), "{keys:?}");
        assert!(!unused.exists(), "nothing on the local filesystem");
        head.headers()["docker-content-digest"].to_str().unwrap().to_string()
    };
    // A new process on the same bucket, streaming blobs itself: a warm pull
    // runs no nix-build, and blobs come through the shim.
    let mut streaming = env.clone();
    streaming.push(("NIXERY_BLOB_REDIRECT", "false"));
    let shim = Shim::start(&unused, &streaming);
    let (m, head) = manifest(&shim, "shell/hello", "latest", OCI);
    assert_eq!(head.headers()["docker-content-digest"].to_str().unwrap(), digest);
    assert_eq!(shim.nix_builds(), 0, "{}", shim.log_text());
    let layer = &layer_digests(&m)[0];
    let no_follow = no_redirects();
    let resp = no_follow.get(shim.url(&format!("/v2/shell/hello/blobs/{layer}"))).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(resp.bytes().unwrap())), *layer);
}

#[test]
fn gcs_storage_redirects_to_signed_urls_that_expire_and_serves_a_second_shim_warm() {
    in_loopback_netns("shim::gcs_storage_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by gcs_storage_redirects_to_signed_urls_that_expire_and_serves_a_second_shim_warm"]
fn gcs_storage_in_netns() {
    require_loopback_netns();
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let gcs = Gcs::start();
    // Signed URLs last 5 s: long enough for a client that follows the
    // redirect at once, short enough to see one expire.
    let expiry = 5;
    let env = gcs.env(expiry);
    let env = env_refs(&env);
    let unused = dir.path().join("unused");
    let shim = Shim::start(&unused, &env);
    // A real client pulls through signed redirects and runs the image.
    let root = tempfile::tempdir().unwrap();
    let image = format!("{}/shell/hello", shim.host());
    run(podman(root.path()).args(["pull", "-q", "--tls-verify=false"]).arg(&image));
    assert_eq!(run_stdout(podman(root.path()).args(PODMAN_RUN).arg(&image).arg("hello")), "Hello, world!\n");
    let (m, head) = manifest(&shim, "shell/hello", "latest", OCI);
    let layers = layer_digests(&m);
    let checks = gcs.checks();
    assert!(checks["verified"].as_u64().unwrap() > layers.len() as u64, "every layer and the config came through a checked signed URL: {checks}");
    assert_eq!(checks["refused"], serde_json::json!({}), "{checks}");
    // The same manifest as from filesystem storage: same layers, bit for bit.
    let fs_shim = Shim::start(&dir.path().join("fs"), &[]);
    assert_eq!(manifest(&fs_shim, "shell/hello", "latest", OCI).0, m);
    let keys = gcs.keys();
    assert!(keys.contains(&format!("blobs/sha256/{}", layers[0].trim_start_matches("sha256:"))), "{keys:?}");
    assert!(keys.iter().any(|k| k.starts_with("meta/manifests/")), "{keys:?}");
    assert!(!unused.exists(), "nothing on the local filesystem");

    // A signed URL works until it expires, and a tampered one never does.
    let no_follow = no_redirects();
    let blob_url = shim.url(&format!("/v2/shell/hello/blobs/{}", layers[0]));
    let redirect = no_follow.get(&blob_url).send().unwrap();
    assert_eq!(redirect.status(), 307);
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    let signed_at = std::time::Instant::now();
    assert!(location.starts_with(&format!("http://127.0.0.1:{}/{}/blobs/sha256/", gcs.checker_port, gcs.bucket)), "{location}");
    assert!(location.contains(&format!("X-Goog-Expires={expiry}&")), "{location}");
    let whole = http().get(&location).send().unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(format!("sha256:{:x}", sha2::Sha256::digest(whole.bytes().unwrap())), layers[0]);
    let part = http().get(&location).header("Range", "bytes=10-19").send().unwrap();
    assert_eq!(part.status(), 206);
    let other = format!("{}/blobs/sha256/{}", gcs.bucket, layers[1].trim_start_matches("sha256:"));
    let tampered = location.replacen(&format!("{}/blobs/sha256/{}", gcs.bucket, layers[0].trim_start_matches("sha256:")), &other, 1);
    assert_eq!(http().get(&tampered).send().unwrap().status(), 403, "a URL signed for one blob does not open another");
    std::thread::sleep(std::time::Duration::from_secs(expiry + 1).saturating_sub(signed_at.elapsed()));
    let expired = http().get(&location).send().unwrap();
    assert_eq!(expired.status(), 400);
    assert!(expired.text().unwrap().contains("ExpiredToken"));
    assert_eq!(gcs.checks()["refused"], serde_json::json!({ "SignatureDoesNotMatch": 1, "ExpiredToken": 1 }));
    // The shim signs a fresh URL for the next request.
    let again = no_follow.get(&blob_url).send().unwrap();
    assert_eq!(http().get(again.headers()["location"].to_str().unwrap()).send().unwrap().status(), 200);

    // A second shim on the bucket, signing with the key of a service
    // account file instead: a warm pull runs no nix-build.
    let second_env: Vec<(&str, String)> = gcs
        .env(expiry)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("GCS_SIGNING_"))
        .chain([("GOOGLE_APPLICATION_CREDENTIALS", gcs.service_account.display().to_string())])
        .collect();
    let second_env = env_refs(&second_env);
    let second = Shim::start(&unused, &second_env);
    let root = tempfile::tempdir().unwrap();
    let image = format!("{}/shell/hello", second.host());
    run(podman(root.path()).args(["pull", "-q", "--tls-verify=false"]).arg(&image));
    let (_, second_head) = manifest(&second, "shell/hello", "latest", OCI);
    assert_eq!(second_head.headers()["docker-content-digest"], head.headers()["docker-content-digest"]);
    assert_eq!(second.nix_builds(), 0, "{}", second.log_text());
    assert_eq!(gcs.checks()["refused"], serde_json::json!({ "SignatureDoesNotMatch": 1, "ExpiredToken": 1 }), "the second shim's URLs pass too");
}

#[test]
fn unreachable_object_storage_fails_at_start_with_a_clear_error() {
    in_loopback_netns("shim::unreachable_object_storage_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by unreachable_object_storage_fails_at_start_with_a_clear_error"]
fn unreachable_object_storage_in_netns() {
    require_loopback_netns();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on the endpoint.
    let out = Command::new(helper())
        .arg("serve")
        .env("NIXERY_PKGS_PATH", repo().join("tests/pkgs"))
        .env("PORT", free_port().to_string())
        .envs(s3_env(free_port(), "missing"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot use the S3 bucket missing") && err.contains("Connection refused") && err.matches("Connection refused").count() == 1,
        "the cause, once: {err}"
    );
    let out = Command::new(helper()).arg("serve").env("NIXERY_STORAGE_BACKEND", "gcs").env_remove("GCS_BUCKET").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GCS_BUCKET"));
    // gcs on an emulator endpoint (STORAGE_EMULATOR_HOST) where nothing
    // listens: the endpoint is checked at start.
    let endpoint = format!("127.0.0.1:{}", free_port());
    let out = Command::new(helper())
        .arg("serve")
        .env("NIXERY_PKGS_PATH", repo().join("tests/pkgs"))
        .env("PORT", free_port().to_string())
        .env("NIXERY_STORAGE_BACKEND", "gcs")
        .env("GCS_BUCKET", "nixery-test")
        .env("STORAGE_EMULATOR_HOST", &endpoint)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot use the GCS bucket nixery-test") && err.contains(&endpoint) && err.matches("Connection refused").count() == 1, "{err}");
}

/// With `NIXERY_SIGNING_KEY` (here cosign's own encrypted key), the shim
/// signs what it builds: cosign 2.5 verifies the image and its SBOM and
/// provenance attestations straight from the shim, and refuses another
/// key; oras 1.2 finds the SBOMs and provenance through the referrers API,
/// which filters by artifact type. Without a key, a `.sig` tag says why
/// there is none.
#[test]
fn the_shim_serves_referrers_and_signs_for_cosign() {
    let dir = tempfile::tempdir().unwrap();
    let support = repo().join("src/supply_chain/testdata");
    let shim = Shim::start(
        &dir.path().join("store"),
        &[
            ("NIXERY_SIGNING_KEY", support.join("cosign-2.5.key").to_str().unwrap()),
            ("COSIGN_PASSWORD", "correct-horse"),
            ("NIXERY_SBOM_SUPPLIER", "Nixery Tests"),
        ],
    );
    assert!(shim.log_text().contains("images are signed for cosign"), "{}", shim.log_text());
    let image = format!("{}/shell/hello:latest", shim.host());
    let public = support.join("cosign-2.5.pub");
    let other = dir.path().join("other.pub");
    run(Command::new("openssl").args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(dir.path().join("other.pem")));
    run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(dir.path().join("other.pem")).arg("-out").arg(&other));
    let cosign = |args: &[&str], key: &std::path::Path| {
        crate::support::world::debian13_command("cosign", &[dir.path(), &support])
            .args(args)
            .args(["--insecure-ignore-tlog=true", "--allow-http-registry=true", "--key"])
            .arg(key)
            .arg(&image)
            .output()
            .unwrap()
    };
    let ok = cosign(&["verify"], &public);
    assert!(ok.status.success(), "{}{}", String::from_utf8_lossy(&ok.stdout), String::from_utf8_lossy(&ok.stderr));
    assert!(!cosign(&["verify"], &other).status.success(), "another key is refused");
    for kind in ["spdxjson", "cyclonedx", "slsaprovenance1"] {
        let out = cosign(&["verify-attestation", "--type", kind], &public);
        assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!cosign(&["verify-attestation", "--type", kind], &other).status.success(), "{kind}: another key is refused");
    }
    assert_eq!(shim.nix_builds(), 1, "one build for all of it");

    // oras lists the three documents through the referrers API.
    let out = run(crate::support::world::debian13_command("oras", &[dir.path()]).args(["discover", "--plain-http", "--format", "json"]).arg(&image));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut types: Vec<&str> = found["manifests"].as_array().unwrap().iter().map(|m| m["artifactType"].as_str().unwrap()).collect();
    types.sort();
    assert_eq!(types, ["application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]);

    // The API itself: filtered, and said to be.
    let resp = http().head(shim.url("/v2/shell/hello/manifests/latest")).header("Accept", OCI).send().unwrap();
    let digest = resp.headers()["docker-content-digest"].to_str().unwrap().to_string();
    let resp = http().get(shim.url(&format!("/v2/shell/hello/referrers/{digest}?artifactType=application%2Fspdx%2Bjson"))).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
    assert_eq!(resp.headers()["content-type"], "application/vnd.oci.image.index.v1+json");
    let index: serde_json::Value = resp.json().unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    let spdx_manifest: serde_json::Value =
        http().get(shim.url(&format!("/v2/shell/hello/manifests/{}", index["manifests"][0]["digest"].as_str().unwrap()))).send().unwrap().json().unwrap();
    let spdx: serde_json::Value =
        http().get(shim.url(&format!("/v2/shell/hello/blobs/{}", spdx_manifest["layers"][0]["digest"].as_str().unwrap()))).send().unwrap().json().unwrap();
    assert_eq!(spdx["spdxVersion"], "SPDX-2.3");
    // The package the name asks for, as its meta says (the same
    // expression as the library's), from the supplier the operator named.
    let hello = spdx["packages"].as_array().unwrap().iter().find(|p| p["name"] == "hello").unwrap_or_else(|| panic!("{spdx}"));
    assert_eq!(hello["licenseDeclared"], "GPL-3.0-or-later", "{hello}");
    assert_eq!(hello["versionInfo"], "2.10", "{hello}");
    assert_eq!(hello["supplier"], "Organization: Nixery Tests", "{hello}");
    assert_eq!(hello["homepage"], "https://www.gnu.org/software/hello/manual/", "{hello}");
    // Both SBOMs validate, and the SPDX one meets NTIA's minimum elements
    // (a supplier and a version for every package), as the library's do.
    let document = |artifact_type: &str| -> String {
        let url = format!("/v2/shell/hello/referrers/{digest}?artifactType={}", artifact_type.replace('/', "%2F").replace('+', "%2B"));
        let index: serde_json::Value = http().get(shim.url(&url)).send().unwrap().json().unwrap();
        let manifest: serde_json::Value =
            http().get(shim.url(&format!("/v2/shell/hello/manifests/{}", index["manifests"][0]["digest"].as_str().unwrap()))).send().unwrap().json().unwrap();
        http().get(shim.url(&format!("/v2/shell/hello/blobs/{}", manifest["layers"][0]["digest"].as_str().unwrap()))).send().unwrap().text().unwrap()
    };
    let (spdx_file, cdx_file) = (dir.path().join("sbom.spdx.json"), dir.path().join("sbom.cdx.json"));
    std::fs::write(&spdx_file, document("application/spdx+json")).unwrap();
    std::fs::write(&cdx_file, document("application/vnd.cyclonedx+json")).unwrap();
    let out = Command::new(SBOM_TOOLS_PYTHON).arg(repo().join("tests/support/validate_sbom.py")).arg(&spdx_file).arg(&cdx_file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("spdx-tools: 0 problems") && text.contains("cyclonedx schema 1.6: valid"), "{text}");
    let out = Command::new(SBOM_TOOLS_NTIA).arg(&spdx_file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Conformant: True"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // An unknown image has none.
    let none: serde_json::Value = http().get(shim.url(&format!("/v2/shell/hello/referrers/sha256:{}", "0".repeat(64)))).send().unwrap().json().unwrap();
    assert_eq!(none["manifests"], serde_json::json!([]));

    // nixery verify says the same.
    let out = Command::new(helper()).args(["verify", "--attestation", "spdxjson", "--key"]).arg(&public).arg(&image).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    // A shim without a key says why a signature is not there, in the
    // client's own output.
    drop(shim);
    let unsigned = Shim::start(&dir.path().join("store"), &[]);
    let image = format!("{}/shell/hello:latest", unsigned.host());
    let out = crate::support::world::debian13_command("cosign", &[&support])
        .args(["verify", "--insecure-ignore-tlog=true", "--allow-http-registry=true", "--key"])
        .arg(&public)
        .arg(&image)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no signatures found") || err.contains("NIXERY_SIGNING_KEY"), "{err}");
    let resp = http().get(unsigned.url(&format!("/v2/shell/hello/manifests/sha256-{}.sig", &digest[7..]))).send().unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().unwrap().contains("its operator has not set NIXERY_SIGNING_KEY"));
}
