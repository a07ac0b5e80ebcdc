//! The shim exposed to a network: a bounded build pool, remembered
//! failures, timeouts and a connection limit, builds that die with the
//! shim, several shims on one store, TLS and credentials with real
//! clients, Docker's push, and error bodies that name no host path.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The nix-builds of a shim whose temporary directory is `tmp`: their
/// command line names its prepare-image file there.
fn builds_under(tmp: &Path) -> Vec<u32> {
    processes_with(&format!("{}/nixery-prepare.", tmp.display())).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn builds_are_bounded_queued_and_failures_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_MAX_BUILDS", "2"), ("NIXERY_MAX_PACKAGES", "3"), ("NIXERY_MAX_QUEUED_BUILDS", "100")]);
    let cheap = ["hello", "jq", "busybox", "coreutils", "nano", "moreutils", "iana-etc", "libjq", "oniguruma", "bashinteractive", "cacert", "glibc"];
    let mut names = Vec::new();
    for (i, a) in cheap.iter().enumerate() {
        for b in &cheap[i + 1..] {
            names.push(format!("{a}/{b}"));
        }
    }
    names.truncate(40);

    // 40 distinct cold names at once; the shim counts the most nix-builds
    // that ran at once (a counter raised as each starts: it misses no peak).
    let pulls: Vec<_> = names
        .iter()
        .map(|name| {
            let url = shim.url(&format!("/v2/{name}/manifests/latest"));
            std::thread::spawn(move || http().get(url).send().unwrap().status().as_u16())
        })
        .collect();
    let statuses: Vec<u16> = pulls.into_iter().map(|p| p.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "every queued image is built: {statuses:?}");
    assert_eq!(shim.nix_builds(), 40, "one build per image");
    let most = shim.metric("nixery_builds_running_peak ");
    assert!((1.0..=2.0).contains(&most), "at most NIXERY_MAX_BUILDS nix-builds ran at once, seen {most}");

    // Ten pulls of an unknown name run one build: the failure is
    // remembered (NIXERY_FAILURE_TTL, 30 s by default).
    let before = shim.nix_builds();
    let c = http();
    for _ in 0..10 {
        let resp = c.get(shim.url("/v2/nosuchpackage/manifests/latest")).send().unwrap();
        assert_eq!(resp.status(), 404);
    }
    // Docker asks with HEAD, then GET: a failing build runs once.
    assert_eq!(c.head(shim.url("/v2/broken/manifests/latest")).send().unwrap().status(), 404);
    assert_eq!(c.get(shim.url("/v2/broken/manifests/latest")).send().unwrap().status(), 404);
    assert_eq!(shim.nix_builds() - before, 2, "one build for the unknown name, one for the broken one");

    // A cap on packages per image, before any build.
    let resp = c.get(shim.url("/v2/hello/jq/busybox/nano/manifests/latest")).send().unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("more than the 3"), "{body}");
    assert_eq!(shim.nix_builds() - before, 2);

    // The operator sees the same in /metrics.
    let resp = c.get(shim.url("/metrics")).send().unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let metrics = resp.text().unwrap();
    let value = |line: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
    };
    assert_eq!(value("nixery_builds_started_total "), 42.0);
    assert_eq!(value("nixery_builds_failed_total "), 2.0);
    assert_eq!(value("nixery_manifest_cache_total{result=\"built\"}"), 40.0);
    assert_eq!(value("nixery_manifest_cache_total{result=\"failed_cached\"}"), 10.0, "9 retries of the unknown name, 1 of the broken one");
    assert_eq!(value("nixery_build_duration_seconds_count "), 40.0);
    assert_eq!(value("nixery_builds_running "), 0.0);
    assert_eq!(value("nixery_builds_queued "), 0.0);
    assert!(value("nixery_layers_total{result=\"reused\"}") > 0.0, "40 images share layers");
    assert!(value("nixery_served_bytes_total ") > 0.0);
}

/// Reads from `stream` until the server closes it; panics if it does not
/// within `limit` (a bound for the test, far above the timeout).
fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the server kept the connection open ({e}); read so far: {:?}", String::from_utf8_lossy(&got)),
    }
}

/// How many connections the shim has open, asked over `conn` (one of
/// them), from /metrics.
fn shim_connections(conn: &TcpStream) -> u32 {
    let mut conn = conn.try_clone().unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 || got.ends_with(b"# EOF\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().find(|l| l.starts_with("nixery_connections_open ")).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_HEADER_TIMEOUT", "2"), ("NIXERY_MAX_CONNECTIONS", "4")]);
    let addr = ("127.0.0.1", shim.port);

    // Partial headers, then nothing: closed after the timeout.
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    closed_by_server(&mut partial, Duration::from_secs(60));
    // No byte at all: closed too.
    let mut silent = TcpStream::connect(addr).unwrap();
    closed_by_server(&mut silent, Duration::from_secs(60));
    // A kept-alive connection after its request: closed when idle.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = closed_by_server(&mut kept, Duration::from_secs(60));
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

    // Four connections hold every slot: the fifth client gets 503 with the
    // spec's error, not a refused or hanging connection.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Once the shim has taken all four (/metrics needs no slot of its own
    // here: it is asked before the fifth and answered on a fresh slot only
    // while one is free, so the count is read from a held connection).
    let deadline = Instant::now() + Duration::from_secs(30);
    while shim_connections(&held[0]) < 4 {
        assert!(Instant::now() < deadline, "the shim did not take the four connections");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fifth = TcpStream::connect(addr).unwrap();
    fifth.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = String::from_utf8_lossy(&closed_by_server(&mut fifth, Duration::from_secs(60))).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"code\":\"UNAVAILABLE\"") && answer.contains("Retry-After: 1"), "{answer}");
    drop(held);
    // Once they are gone (closed by the clients), clients are served again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http().get(shim.url("/v2/")).send().map(|r| r.status().as_u16()).unwrap_or(0);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slots were not freed: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_shim_killed_mid_build_leaves_no_build_and_two_shims_share_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A temporary directory of their own, shared by the shims here.
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp_env = tmp.to_str().unwrap();
    let mut first = Shim::start(&store, &[("NIX_TIMEOUT", "300"), ("TMPDIR", tmp_env)]);
    let url = first.url("/v2/slow/manifests/latest");
    let _pull = std::thread::spawn(move || http().get(url).send().map(|r| r.status().as_u16()));
    // Wait for the slow package's builder, a descendant of this shim's
    // nix-build (other tests build `slow` too: their builders are not
    // children of this shim's nix-build).
    let deadline = Instant::now() + Duration::from_secs(120);
    let builder = loop {
        let ours = builds_under(&tmp);
        let builder = processes_with("slow-1.0: building for a long time").into_iter().map(|(p, _)| p).find(|p| descends_from(*p, &ours));
        if let Some(b) = builder {
            break b;
        }
        assert!(Instant::now() < deadline, "the slow build did not start:\n{}", first.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    first.kill_hard();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !builds_under(&tmp).is_empty() || alive(builder) {
        assert!(Instant::now() < deadline, "the build outlived the shim: {:?}", builds_under(&tmp));
        std::thread::sleep(Duration::from_millis(50));
    }
    let prepare_folders = || -> Vec<String> {
        std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .filter(|n| n.starts_with("nixery-prepare.") && !n.ends_with(".owner"))
            .collect()
    };
    assert_eq!(prepare_folders().len(), 1, "a killed shim cannot clean up its prepare folder");

    // Two shims on the store start: the killed shim's folder is removed,
    // and both complete a cold pull started at the same moment, with the
    // same manifest and no staging file left behind.
    let a = Shim::start(&store, &[("TMPDIR", tmp_env)]);
    let b = Shim::start(&store, &[("TMPDIR", tmp_env)]);
    assert_eq!(prepare_folders().len(), 2, "the next shims remove the dead one's prepare folder, and keep each other's");
    let (la, lb) = pull_from_both(dir.path(), &a, &b, "shell/jq");
    assert_eq!(layout_manifest(&la).1, layout_manifest(&lb).1, "both shims serve the same image");
    let staging: Vec<_> =
        std::fs::read_dir(store.join("staging")).unwrap().flatten().map(|e| e.file_name()).filter(|n| !n.to_string_lossy().ends_with(".owner")).collect();
    assert!(staging.is_empty(), "no staging file is left: {staging:?}");
    // The config is the one the original Nixery gives a shell image.
    let config = layout_config(&la);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/bash"]));
    assert!(config["config"]["Env"].as_array().unwrap().iter().any(|e| e == "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt"), "{config}");
}

/// Pulls `name` from two shims at the same moment (skopeo, into OCI
/// layouts under `dir`); returns the two layouts.
fn pull_from_both(dir: &Path, a: &Shim, b: &Shim, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let pull = |shim: &Shim| {
        let out = dir.join(format!("oci-{}", shim.port));
        let src = format!("docker://{}/{name}", shim.host());
        let dest = format!("oci:{}:latest", out.display());
        std::thread::spawn(move || {
            run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(src).arg(dest));
            out
        })
    };
    let (pa, pb) = (pull(a), pull(b));
    (pa.join().unwrap(), pb.join().unwrap())
}

/// Whether `pid` is one of `ancestors` or below one of them.
fn descends_from(mut pid: u32, ancestors: &[u32]) -> bool {
    for _ in 0..64 {
        if ancestors.contains(&pid) {
            return true;
        }
        let Some(ppid) = parent(pid) else { return false };
        if ppid <= 1 {
            return false;
        }
        pid = ppid;
    }
    false
}

#[test]
fn clients_pull_with_credentials_over_tls_and_are_refused_without() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    // Clients find the CA in a folder of *.crt files; nothing is insecure.
    let certs = dir.path().join("certs.d");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(&ca, certs.join("ca.crt")).unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("# users\nci:{}\n", bcrypt::hash("s3cret pass", 6).unwrap())).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# one a line\ntoken-for-scripts\n").unwrap();
    let shim = Shim::start(
        &dir.path().join("store"),
        &[
            ("NIXERY_TLS_CERT", cert.to_str().unwrap()),
            ("NIXERY_TLS_KEY", key.to_str().unwrap()),
            ("NIXERY_AUTH_HTPASSWD", htpasswd.to_str().unwrap()),
            ("NIXERY_AUTH_TOKENS", tokens.to_str().unwrap()),
        ],
    );
    let image = format!("docker://{}/hello", shim.host());
    let inspect = |creds: Option<&str>| {
        let mut c = skopeo();
        c.args(["inspect", "--raw", "--cert-dir"]).arg(&certs);
        if let Some(creds) = creds {
            c.args(["--creds", creds]);
        }
        c.arg(&image).output().unwrap()
    };
    let refused = inspect(None);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("unauthorized") || err.contains("401"), "{err}");
    assert!(!inspect(Some("ci:wrong")).status.success(), "a wrong password is refused");
    let out = dir.path().join("oci");
    run(skopeo().args(["copy", "--src-cert-dir"]).arg(&certs).args(["--src-creds", "ci:s3cret pass"]).arg(&image).arg(format!("oci:{}:latest", out.display())));
    let (manifest, _) = layout_manifest(&out);
    assert!(!manifest["layers"].as_array().unwrap().is_empty());

    // podman logs in and pulls, trusting only the CA file.
    let root = dir.path().join("podman");
    let host = shim.host();
    run(podman(&root)
        .args(["login", "--cert-dir"])
        .arg(&certs)
        .args(["-u", "ci", "-p", "s3cret pass", "--authfile"])
        .arg(dir.path().join("auth.json"))
        .arg(&host));
    run(podman(&root).args(["pull", "-q", "--cert-dir"]).arg(&certs).arg("--authfile").arg(dir.path().join("auth.json")).arg(format!("{host}/hello")));

    // A static token, as a script sends it; the challenge names the scheme.
    let curl = |auth: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-i", "--cacert"]).arg(&ca).arg(format!("https://{host}/v2/"));
        if let Some(a) = auth {
            c.args(["-H", &format!("Authorization: {a}")]);
        }
        run_stdout(&mut c)
    };
    let challenge = curl(None);
    assert!(challenge.starts_with("HTTP/2 401") || challenge.starts_with("HTTP/1.1 401"), "{challenge}");
    assert!(challenge.contains("www-authenticate: Basic realm=\"nixery\""), "{challenge}");
    assert!(challenge.contains("\"code\":\"UNAUTHORIZED\""), "{challenge}");
    let ok = curl(Some("Bearer token-for-scripts"));
    assert!(ok.starts_with("HTTP/2 200") || ok.starts_with("HTTP/1.1 200"), "{ok}");
    let bad = curl(Some("Bearer not-a-token"));
    assert!(bad.contains(" 401"), "{bad}");
}

#[test]
fn docker_push_fails_at_once_and_errors_name_no_host_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let shim = Shim::start(&store, &[]);
    let docker = Dockerd::start(&dir.path().join("docker"), Dockerd::MINIMAL);
    let image = format!("{}/hello", shim.host());
    run(docker.docker().args(["pull", "-q"]).arg(&image));
    let pushed = format!("{}/pushed", shim.host());
    run(docker.docker().arg("tag").arg(&image).arg(&pushed));
    let started = Instant::now();
    let out = docker.docker().arg("push").arg(&pushed).output().unwrap();
    let took = started.elapsed();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("pull-only"), "Docker shows the registry's own message: {text}");
    assert!(!text.contains("Retrying"), "Docker does not retry it: {text}");
    eprintln!("docker push failed after {} ms", took.as_millis());

    // Error bodies and the start page say what failed, not where: no
    // store path, no storage path, no package-set path, no Nix log.
    let c = http();
    let resp = c.get(shim.url("/v2/broken/manifests/latest")).send().unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = resp.text().unwrap();
    let page = c.get(shim.url("/")).send().unwrap().text().unwrap();
    // The build's log lines carry the id of the request that started it.
    let log = shim.log_text();
    let failed = log.lines().find(|l| l.contains("nix-build failed")).expect("the failure is logged");
    assert!(failed.contains(&format!("request{{id={id}}}")), "{failed}");
    let sent = c.get(shim.url("/v2/")).header("x-request-id", "from-the-proxy").send().unwrap();
    assert_eq!(sent.headers()["x-request-id"], "from-the-proxy", "an id from a proxy is kept");
    for text in [&body, &page] {
        for secret in ["/nix/store", store.to_str().unwrap(), repo().to_str().unwrap(), "always fails to build"] {
            assert!(!text.contains(secret), "{secret:?} leaks: {text}");
        }
    }
    assert!(body.contains("its package broken-1.0 failed to build in Nix; the server's log has Nix's output"), "{body}");
    assert!(page.contains("<b>broken:latest</b>") && page.contains("broken-1.0 failed to build"), "{page}");
    assert!(shim.log_text().contains("this package always fails to build"), "the log has the details");
    drop(shim);
    // With NIXERY_DEBUG_ERRORS, the body carries them.
    let debug = Shim::start(&dir.path().join("debug-store"), &[("NIXERY_DEBUG_ERRORS", "true")]);
    let body = c.get(debug.url("/v2/broken/manifests/latest")).send().unwrap().text().unwrap();
    assert!(body.contains("this package always fails to build"), "{body}");
}

#[test]
fn two_shims_on_one_bucket_build_the_same_cold_image_at_once() {
    in_loopback_netns("shim_safety::two_shims_on_one_bucket_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by two_shims_on_one_bucket_build_the_same_cold_image_at_once"]
fn two_shims_on_one_bucket_in_netns() {
    require_loopback_netns();
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3::start();
    let env = s3.env();
    let env = env_refs(&env);
    // Each shim has its own local folders; they share the bucket only.
    let a = Shim::start(&dir.path().join("a"), &env);
    let b = Shim::start(&dir.path().join("b"), &env);
    let (la, lb) = pull_from_both(dir.path(), &a, &b, "shell/jq/hello");
    assert_eq!(layout_manifest(&la).1, layout_manifest(&lb).1, "the same image from both");
    // A third shim serves it warm from the bucket, with no build; every
    // blob it streams from there is whole (its bytes have its digest).
    let mut streaming = env.clone();
    streaming.push(("NIXERY_BLOB_REDIRECT", "false"));
    let c = Shim::start(&dir.path().join("c"), &streaming);
    let resp = http().get(c.url("/v2/shell/jq/hello/manifests/latest")).send().unwrap();
    assert_eq!(resp.status(), 200);
    let blobs: Vec<String> = s3.keys().into_iter().filter_map(|k| k.strip_prefix("blobs/sha256/").map(str::to_string)).filter(|k| k.len() == 64).collect();
    assert!(blobs.len() > 5, "{blobs:?}");
    for hex in blobs {
        let bytes = http().get(c.url(&format!("/v2/shell/jq/hello/blobs/sha256:{hex}"))).send().unwrap().bytes().unwrap();
        assert_eq!(nixery::digest::Digest::of(&bytes).hex(), hex);
    }
    assert_eq!(c.nix_builds(), 0, "{}", c.log_text());
}

#[test]
fn the_start_page_shows_builds_live_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIX_TIMEOUT", "8")]);
    // The event stream sends a snapshot at once and after every change.
    let mut events = http().get(shim.url("/events")).send().unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let url = shim.url("/v2/slow/manifests/latest");
    let pull = std::thread::spawn(move || http().get(url).send().map(|r| r.status().as_u16()));
    let mut buf = String::new();
    let mut chunk = [0u8; 4096];
    let snapshot_with = |buf: &str, key: &str| {
        buf.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .any(|s| s[key].as_array().unwrap().iter().any(|b| b["image"] == "slow:latest"))
    };
    while !snapshot_with(&buf, "running") {
        let n = events.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended: {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    // A real browser: the page lists the build in progress, and the
    // screenshot shows it.
    let dom = run_stdout(Command::new("chromium").args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]).arg(shim.url("/")));
    let running = dom.split("id=\"running\"").nth(1).and_then(|r| r.split("</ul>").next()).unwrap_or_default().to_string();
    assert!(running.contains("slow:latest: nix-build for"), "{dom}");
    assert!(dom.contains("new EventSource(\"/events\")"), "the page follows the event stream");
    let png = dir.path().join("start-page.png");
    run(Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,800", "--timeout=3000"])
        .arg(format!("--screenshot={}", png.display()))
        .arg(shim.url("/")));
    let image = std::fs::read(&png).unwrap();
    assert!(image.starts_with(b"\x89PNG") && image.len() > 10_000, "a screenshot of the page");
    // When it ends (past NIX_TIMEOUT), the stream says so at once.
    while !snapshot_with(&buf, "recent") {
        let n = events.read(&mut chunk).unwrap();
        assert!(n > 0, "the stream ended: {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert_eq!(pull.join().unwrap().unwrap(), 404);
    let dom = run_stdout(Command::new("chromium").args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]).arg(shim.url("/")));
    assert!(dom.contains("slow:latest: failed in"), "{dom}");
}
