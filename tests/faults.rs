//! Safe under attack and faults: each finding of the hostile probe
//! (issue 21), made again. Stored data that lies (sizes, bytes, scratch of
//! another PID namespace), registries that lie or stall (`nixery push`),
//! files that are not what they claim (`nixery load`), and clients that
//! flood or stall the shim: nothing panics, nothing corrupt is served or
//! kept, no credential goes where it does not belong, every resource is
//! bounded.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::hostile::{tiny_layout, Answer, Hostile, Seen};
use crate::support::*;

// ---------------------------------------------------------------------
// Stored data that lies.

/// The one file under `dir` (recursively) whose name ends with `suffix`.
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name().to_string_lossy().ends_with(suffix))
        .map(|e| e.into_path())
        .collect()
}

#[test]
fn a_manifest_cache_entry_with_a_wrong_size_is_corrected_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let digest = {
        let shim = Shim::start(&store, &[]);
        manifest_digest(&shim.host(), "hello")
    };
    // The cache entry says one byte more than the manifest has.
    for entry in files_under(&store.join("meta/manifests"), ".json") {
        let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        for flavour in ["oci", "docker"] {
            let size = doc[flavour]["size"].as_u64().unwrap();
            doc[flavour]["size"] = (size + 1).into();
        }
        std::fs::write(&entry, serde_json::to_vec(&doc).unwrap()).unwrap();
    }
    let shim = Shim::start(&store, &[]);
    for _ in 0..2 {
        let resp = http().get(shim.url("/v2/hello/manifests/latest")).header("Accept", "application/vnd.oci.image.manifest.v1+json").send().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["docker-content-digest"].to_str().unwrap(), digest);
        let bytes = resp.bytes().unwrap();
        assert_eq!(nixery::digest::Digest::of(&bytes).to_string(), digest, "the whole manifest, at its real size");
    }
    assert!(!shim.log_text().contains("panicked"), "{}", shim.log_text());
    assert_eq!(shim.nix_builds(), 0, "the image itself was fine: nothing rebuilt");
}

/// The layer blobs of `name:latest` from `shim`: (digest, size).
fn layers_of(shim: &Shim, name: &str) -> Vec<(String, u64)> {
    let m: serde_json::Value = http()
        .get(shim.url(&format!("/v2/{name}/manifests/latest")))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .unwrap()
        .json()
        .unwrap();
    m["layers"].as_array().unwrap().iter().map(|l| (l["digest"].as_str().unwrap().to_string(), l["size"].as_u64().unwrap())).collect()
}

#[test]
fn a_corrupt_layer_blob_is_never_served_whole_and_a_pull_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (digest, size) = {
        let shim = Shim::start(&store, &[]);
        layers_of(&shim, "hello").into_iter().max_by_key(|(_, s)| *s).unwrap()
    };
    // One byte flipped on disk.
    let blob = store.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[size as usize / 2] ^= 0x40;
    std::fs::write(&blob, &bytes).unwrap();

    let shim = Shim::start(&store, &[]);
    // The GET does not complete: the connection ends before the last
    // chunk, whose bytes would make the corrupt blob whole.
    let got = http().get(shim.url(&format!("/v2/hello/blobs/{digest}"))).send().and_then(|r| r.bytes());
    assert!(got.as_ref().map_or(true, |b| b.as_ref() != bytes.as_slice()), "the corrupt bytes were served whole");
    assert!(!blob.exists(), "the corrupt blob is removed");
    assert_eq!(shim.metric("nixery_blobs_corrupt_total "), 1.0);

    // A client pulls again: the image is loaded anew, found to lack the
    // layer, built again, and the layer packed anew, whole.
    let layout = dir.path().join("pulled");
    run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/hello", shim.host())).arg(format!("oci:{}:latest", layout.display())));
    let repaired = std::fs::read(&blob).expect("the layer is stored again");
    assert_eq!(nixery::digest::Digest::of(&repaired).to_string(), digest);
    assert!(!shim.log_text().contains("panicked"));
}

#[test]
fn a_layer_cache_entry_with_a_wrong_size_never_reaches_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    {
        let shim = Shim::start(&store, &[]);
        layers_of(&shim, "hello");
    }
    for entry in files_under(&store.join("meta/layers"), ".json") {
        let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&entry).unwrap()).unwrap();
        doc["size"] = (doc["size"].as_u64().unwrap() + 7).into();
        std::fs::write(&entry, serde_json::to_vec(&doc).unwrap()).unwrap();
    }
    // Another image with the same layers (and more): every size in its
    // manifest is its blob's.
    let shim = Shim::start(&store, &[]);
    for (digest, size) in layers_of(&shim, "hello/jq") {
        let on_disk = std::fs::metadata(store.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())).unwrap().len();
        assert_eq!(size, on_disk, "{digest}");
    }
}

/// Prepare folders (not owner files) in `tmp`.
fn prepare_folders(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with("nixery-prepare.") && !n.ends_with(".owner"))
        .collect()
}

#[test]
fn shims_in_their_own_pid_namespaces_keep_each_others_scratch_and_clean_up_a_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let env = [("TMPDIR", tmp.to_str().unwrap())];
    // Each is PID 1 of a PID namespace of its own, on the same host, with
    // the same temporary directory and storage.
    let pid_namespace = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];
    let mut a = Shim::start_under(&pid_namespace, &store, &env);
    assert_eq!(prepare_folders(&tmp).len(), 1);
    let owner_of_a = std::fs::read_dir(&tmp).unwrap().flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(".owner")).unwrap();
    let b = Shim::start_under(&pid_namespace, &store, &env);
    assert_eq!(prepare_folders(&tmp).len(), 2, "the second shim leaves the first one's folder alone");
    // The first still builds cold images.
    assert_eq!(http().get(a.url("/v2/jq/manifests/latest")).send().unwrap().status(), 200);
    assert_eq!(http().get(b.url("/v2/hello/manifests/latest")).send().unwrap().status(), 200);
    // Killed, a PID 1's leftovers are removed by the next shim.
    a.kill_hard();
    // The shim itself (PID 1 of its namespace) dies with unshare: its lock
    // is released then.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::File::open(&owner_of_a).unwrap().try_lock().is_err() {
        assert!(Instant::now() < deadline, "the killed shim still holds its lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _c = Shim::start(&store, &env);
    assert_eq!(prepare_folders(&tmp).len(), 2, "b's and c's; a's is gone");
    assert_eq!(http().get(b.url("/v2/jq/hello/manifests/latest")).send().unwrap().status(), 200, "b still builds");
}

// ---------------------------------------------------------------------
// Registries that lie or stall: `nixery push`.

/// A registry handler that accepts a push, with uploads sent to
/// `upload_base` (its own address when `None`), asking for basic
/// credentials when `auth` is set.
fn accepting(upload_base: Option<String>, auth: bool) -> impl Fn(&Seen) -> Answer + Send + Sync + 'static {
    move |r: &Seen| {
        let h = |n: &str, v: &str| (n.to_string(), v.to_string());
        if auth && r.header("authorization").is_none() && !r.target.starts_with("/upload/") {
            return Some((401, vec![h("WWW-Authenticate", "Basic realm=\"hostile\"")], Vec::new()));
        }
        Some(match (r.method.as_str(), r.target.as_str()) {
            ("GET", "/v2/") => (200, vec![], b"{}".to_vec()),
            ("HEAD", t) if t.contains("/blobs/") => (404, vec![], Vec::new()),
            ("POST", t) if t.contains("/blobs/uploads/") => {
                let location = match &upload_base {
                    Some(base) => format!("{base}/upload/1"),
                    None => "/upload/1".to_string(),
                };
                (202, vec![h("Location", &location)], Vec::new())
            }
            ("PUT", t) if t.starts_with("/upload/") => (201, vec![], Vec::new()),
            ("PUT", t) if t.contains("/manifests/") => (201, vec![], Vec::new()),
            _ => (404, vec![], Vec::new()),
        })
    }
}

fn push(source: &Path, dest: &str, extra: &[&str]) -> std::process::Output {
    Command::new(helper())
        .arg("push")
        .arg(source)
        .arg(dest)
        .args(extra)
        .env("HOME", source.parent().unwrap())
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn push_sends_credentials_only_to_the_registrys_own_origin() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    tiny_layout(&layout, b"a layer");
    // Uploads go to another host (127.0.0.2), which records what it gets.
    let elsewhere = Hostile::start("127.0.0.2", None, accepting(None, false));
    let registry = Hostile::start("127.0.0.1", None, accepting(Some(format!("http://{}", elsewhere.addr)), true));
    let out = push(&layout, &format!("{}/acme/app:v1", registry.addr), &["--creds", "ci:s3cret"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let uploads = elsewhere.seen();
    assert!(uploads.iter().any(|r| r.method == "PUT" && r.body_len > 0), "the blobs went to the upload location: {uploads:?}");
    assert!(uploads.iter().all(|r| r.header("authorization").is_none()), "no credentials to another host: {uploads:?}");
    assert!(registry.seen().iter().any(|r| r.header("authorization").is_some_and(|a| a.starts_with("Basic "))), "the registry got them");
}

#[test]
fn layout_blobs_that_are_not_what_they_claim_are_neither_pushed_nor_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Hostile::start("127.0.0.1", None, accepting(None, false));
    let dest = format!("{}/acme/app:v1", registry.addr);

    // A layer blob that is a link out of the layout, to a secret of the
    // same size, under the digest of other bytes.
    let layout = dir.path().join("linked");
    let digest = tiny_layout(&layout, b"innocent layer!!");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, b"ssh private key!").unwrap();
    let blob = layout.join("blobs/sha256").join(digest.hex());
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&secret, &blob).unwrap();
    let out = push(&layout, &dest, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("the blob {digest} does not hold the bytes it is named by")), "{err}");
    assert!(!registry.seen().iter().any(|r| r.method == "PUT" && r.target.contains(&digest.to_string())), "no byte of it was uploaded: {:?}", registry.seen());
    for target in ["oci", "docker-archive"] {
        let out_path = dir.path().join(format!("out-{target}"));
        let out = Command::new(helper()).arg("load").arg(&layout).arg(format!("{target}:{}", out_path.display())).output().unwrap();
        assert!(!out.status.success(), "{target}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("does not hold the bytes"), "{target}");
        let left: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).filter(|n| n.contains("nixery-tmp")).collect();
        assert!(left.is_empty(), "no temporary file is left: {left:?}");
    }

    // A blob that is a device, or a FIFO: refused before it is opened (a
    // FIFO would hang a reader), in bounded time.
    for (name, make) in [("zero", "ln -s /dev/zero"), ("fifo", "mkfifo")] {
        let layout = dir.path().join(name);
        let digest = tiny_layout(&layout, b"some layer bytes");
        let blob = layout.join("blobs/sha256").join(digest.hex());
        std::fs::remove_file(&blob).unwrap();
        let (program, args): (&str, Vec<&str>) = match make {
            "mkfifo" => ("mkfifo", vec![]),
            _ => ("ln", vec!["-s", "/dev/zero"]),
        };
        run(Command::new(program).args(&args).arg(&blob));
        for args in [
            vec!["push".to_string(), layout.display().to_string(), dest.clone()],
            vec!["load".to_string(), layout.display().to_string(), format!("oci:{}/loaded-{name}", dir.path().display())],
        ] {
            let mut child = Command::new(helper()).args(&args).stderr(Stdio::piped()).spawn().unwrap();
            let status = wait_bounded(&mut child, Duration::from_secs(60));
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            assert!(!status.success() && err.contains("is not a regular file"), "{name} {args:?}: {err}");
        }
    }

    // A descriptor that claims more bytes than its file has: refused at
    // once, not an upload that waits for bytes that never come.
    let layout = dir.path().join("short");
    let digest = tiny_layout(&layout, b"twelve bytes");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = nixery::digest::Digest::parse(index["manifests"][0]["digest"].as_str().unwrap()).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(manifest_digest.hex())).unwrap()).unwrap();
    manifest["layers"][0]["size"] = 1_000_000.into();
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let new_digest = nixery::digest::Digest::of(&bytes);
    std::fs::write(layout.join("blobs/sha256").join(new_digest.hex()), &bytes).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": new_digest, "size": bytes.len()}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let out = push(&layout, &dest, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("the blob {digest} has 12 bytes, its descriptor says 1000000")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for `child`, killing it (and failing) past `limit`, a bound for
/// the test far above what it waits for.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{child:?} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn registry_text_reaches_the_terminal_without_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    tiny_layout(&layout, b"a layer");
    // The body tries to clear the screen and fake a success line.
    let registry = Hostile::start("127.0.0.1", None, |_| Some((400, vec![], b"\x1b[2J\x1b[H\rnixery: pushed everything\x07\x1b]0;owned\x07".to_vec())));
    let out = push(&layout, &format!("{}/acme/app:v1", registry.addr), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "no control character reaches the terminal: {err:?}");
    assert!(err.contains("\\u{1b}[2J"), "what was sent is shown, escaped: {err}");
}

#[test]
fn push_gives_up_on_a_registry_that_never_answers_and_retries_one_that_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("image");
    tiny_layout(&layout, b"a layer");
    // Accepts, reads the request, says nothing.
    let silent = Hostile::start("127.0.0.1", None, |_| None);
    let mut child = Command::new(helper())
        .arg("push")
        .arg(&layout)
        .arg(format!("{}/acme/app:v1", silent.addr))
        .args(["--timeout", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(90));
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("timeout") || err.contains("timed out"), "{err}");
    assert_eq!(silent.seen().len(), 3, "tried three times: {err}");

    // Busy twice (503), then fine: the push succeeds.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accept = accepting(None, false);
    let counted = calls.clone();
    let busy = Hostile::start("127.0.0.1", None, move |r| {
        if r.target == "/v2/" && counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            return Some((503, vec![("Retry-After".into(), "1".into())], b"busy".to_vec()));
        }
        accept(r)
    });
    let out = push(&layout, &format!("{}/acme/app:v1", busy.addr), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// Runs the test `inner` of this binary in a network namespace with
/// loopback and a second address, 10.77.0.1 (not loopback: clients speak
/// TLS to it, as to any registry on a network).
fn in_netns_with_an_address(inner: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = run(Command::new("unshare")
        .args(["--net", "sh", "-c", "ip link set lo up && ip addr add 10.77.0.1/32 dev lo && exec \"$0\" --exact \"$1\" --ignored --test-threads=1"])
        .arg(&exe)
        .arg(inner)
        .env("NIXERY_TEST_NETNS_ADDRESS", "10.77.0.1"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("test result: ok. 1 passed"), "{inner} did not run");
}

#[test]
fn a_plain_http_token_realm_on_an_https_registry_gets_no_credentials() {
    in_netns_with_an_address("faults::plain_http_realm_in_netns");
}

#[test]
#[ignore = "run in a network namespace by a_plain_http_token_realm_on_an_https_registry_gets_no_credentials"]
fn plain_http_realm_in_netns() {
    assert!(std::env::var_os("NIXERY_TEST_NETNS_ADDRESS").is_some());
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates_for(dir.path(), "10.77.0.1");
    let realm = Hostile::start("10.77.0.1", None, |_| Some((200, vec![], br#"{"token":"t"}"#.to_vec())));
    let challenge = format!("Bearer realm=\"http://{}/token\",service=\"hostile\"", realm.addr);
    let registry = Hostile::start("10.77.0.1", Some((&cert, &key)), move |_| Some((401, vec![("WWW-Authenticate".into(), challenge.clone())], Vec::new())));
    let layout = dir.path().join("image");
    tiny_layout(&layout, b"a layer");
    let out = push(&layout, &format!("{}/acme/app:v1", registry.addr), &["--creds", "ci:s3cret", "--ca-file", ca.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("which is not https") && err.contains("not sent"), "{err}");
    assert!(registry.seen().len() == 1, "the registry was asked over TLS");
    assert!(realm.seen().is_empty(), "the plain-http realm got nothing: {:?}", realm.seen());
}

// ---------------------------------------------------------------------
// Files that are not what they claim: base images.

#[test]
fn a_base_image_that_unpacks_past_its_bound_fails_and_leaves_no_scratch() {
    let dir = tempfile::tempdir().unwrap();
    // 300 MiB of zeros in a gzip tarball of about 300 KB.
    let bomb = dir.path().join("bomb.tar.gz");
    let file = std::fs::File::create(&bomb).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    {
        let mut ar = tar::Builder::new(&mut gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(300 << 20);
        header.set_mode(0o644);
        header.set_cksum();
        ar.append_data(&mut header, "blobs/sha256/zeros", std::io::repeat(0).take(300 << 20)).unwrap();
        ar.finish().unwrap();
    }
    gz.finish().unwrap();
    let err = nix_build_expr_fails(
        dir.path(),
        &format!(r#"nixery.buildNixeryImage {{ name = "on-a-bomb"; fromImage = {}; contents = [ pkgs.hello ]; }}"#, bomb.display()),
    );
    assert!(err.contains("unpacks to more than"), "{err}");
}

// ---------------------------------------------------------------------
// Clients that flood or stall the shim.

#[test]
fn a_full_build_queue_answers_429_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_MAX_BUILDS", "1"), ("NIXERY_MAX_QUEUED_BUILDS", "1"), ("NIX_TIMEOUT", "5")]);
    // Four cold names that each hold the one build slot until the timeout.
    let names = ["slow/hello", "slow/jq", "slow/nano", "slow/busybox"];
    let pulls: Vec<_> = names
        .iter()
        .map(|n| {
            let url = shim.url(&format!("/v2/{n}/manifests/latest"));
            std::thread::spawn(move || {
                let r = http().get(url).send().unwrap();
                (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()), r.text().unwrap())
            })
        })
        .collect();
    let answers: Vec<_> = pulls.into_iter().map(|p| p.join().unwrap()).collect();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert!(refused.len() >= 2, "one builds, one waits, the rest are refused: {answers:?}");
    for (_, retry, body) in &refused {
        assert!(retry.is_some(), "Retry-After");
        assert!(body.contains("TOOMANYREQUESTS") && body.contains("try again in a few seconds"), "{body}");
    }
    assert_eq!(shim.metric("nixery_builds_refused_total "), refused.len() as f64);
}

/// A `Basic` header for `user:password`.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[test]
fn failed_logins_are_bounded_per_client_and_unknown_users_cost_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("ci:{}\n", bcrypt::hash("s3cret", 8).unwrap())).unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_AUTH_HTPASSWD", htpasswd.to_str().unwrap())]);
    let url = shim.url("/v2/");
    // 300 wrong logins at once from one client (127.0.0.2).
    let attacker = std::sync::Arc::new(reqwest::blocking::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap());
    let attempts: Vec<_> = (0..300)
        .map(|i| {
            let (c, url) = (attacker.clone(), url.clone());
            std::thread::spawn(move || c.get(url).header("Authorization", basic("ci", &format!("guess{i}"))).send().unwrap().status().as_u16())
        })
        .collect();
    let statuses: Vec<u16> = attempts.into_iter().map(|a| a.join().unwrap()).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(limited >= 200, "most are refused without a check: {limited} of 300");
    let checks_now = || -> f64 {
        let text = http().get(shim.url("/metrics")).header("Authorization", basic("ci", "s3cret")).send().unwrap().text().unwrap();
        text.lines().find(|l| l.starts_with("nixery_auth_password_checks_total ")).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap()
    };
    let checks = checks_now();
    assert!(checks <= 80.0, "bcrypt ran {checks} times for 300 attempts");
    // Another client is served at once, with the right password.
    assert_eq!(http().get(&url).header("Authorization", basic("ci", "s3cret")).send().unwrap().status(), 200);
    // An unknown user costs a bcrypt check like a known one.
    let before = checks_now();
    assert_eq!(http().get(&url).header("Authorization", basic("nobody", "x")).send().unwrap().status(), 401);
    assert_eq!(checks_now(), before + 1.0);
}

#[test]
fn tag_lookups_are_shared_and_failed_refs_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let pkgs = crate::shim::package_repo(dir.path());
    // git on PATH logs each ls-remote, then runs the real one.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.path().join("git-calls");
    let real_git = run_stdout(Command::new("sh").args(["-c", "command -v git"])).trim().to_string();
    std::fs::write(bin.join("git"), format!("#!/bin/sh\necho \"$*\" >> {}\nexec {real_git} \"$@\"\n", calls.display())).unwrap();
    run(Command::new("chmod").arg("+x").arg(bin.join("git")));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_PKGS_REPO", pkgs.to_str().unwrap()), ("NIXERY_REVISION_TTL", "60"), ("PATH", &path)]);
    let ls_remotes = || std::fs::read_to_string(&calls).unwrap_or_default().lines().filter(|l| l.contains("ls-remote")).count();
    // The shim pinned its package set once at start.
    let at_start = ls_remotes();
    assert_eq!(at_start, 1, "the package set is pinned at start");

    let lists: Vec<_> = (0..150)
        .map(|_| {
            let url = shim.url("/v2/hello/tags/list");
            std::thread::spawn(move || http().get(url).send().unwrap().status().as_u16())
        })
        .collect();
    assert!(lists.into_iter().all(|l| l.join().unwrap() == 200));
    assert_eq!(ls_remotes() - at_start, 1, "150 listings at once ran git ls-remote once");
    assert_eq!(shim.metric("nixery_tag_lookups_total "), 1.0);

    let before = ls_remotes();
    for _ in 0..20 {
        let resp = http().get(shim.url("/v2/hello/manifests/no-such-ref")).send().unwrap();
        assert_eq!(resp.status(), 404);
    }
    assert!(ls_remotes() - before <= 1, "an unknown ref is looked up once: {}", ls_remotes() - before);
}

#[test]
fn a_client_that_stops_reading_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_WRITE_TIMEOUT", "2")]);
    // A blob of 32 MiB of bytes that do not compress, more than every
    // buffer between the two holds.
    let random: Vec<u8> = (0..(32u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let digest = nixery::digest::Digest::of(&random);
    std::fs::write(dir.path().join("store/blobs/sha256").join(digest.hex()), &random).unwrap();
    let size = random.len() as u64;
    let mut tcp = TcpStream::connect(shim.host()).unwrap();
    write!(tcp, "GET /v2/x/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // Reads nothing; the shim closes the connection once writes stall.
    shim.wait_for_metric("nixery_connections_closed_total{reason=\"write_stalled\"}", Duration::from_secs(120), |v| v >= 1.0);
    // Only the connection that asks for the metrics is open.
    shim.wait_for_metric("nixery_connections_open ", Duration::from_secs(30), |v| v <= 1.0);
    let mut got = Vec::new();
    let _ = tcp.read_to_end(&mut got);
    assert!((got.len() as u64) < size, "the response was cut off ({} of {size} bytes)", got.len());
}

#[test]
fn idle_http2_connections_are_closed_though_they_answer_pings() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_IDLE_TIMEOUT", "2"), ("NIXERY_HEADER_TIMEOUT", "1")]);
    let host = shim.host();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ended = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(host).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        // The connection task answers the server's pings for as long as
        // the connection is open.
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get("http://x/v2/").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
        tokio::time::timeout(Duration::from_secs(60), conn).await.is_ok()
    });
    assert!(ended, "the shim closed the idle HTTP/2 connection");
    assert!(shim.metric("nixery_connections_closed_total{reason=\"idle\"}") >= 1.0);
}

#[test]
fn event_streams_are_bounded_and_leave_room_for_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_MAX_CONNECTIONS", "40")]);
    let open = |host: &str| -> (TcpStream, String) {
        let mut tcp = TcpStream::connect(host).unwrap();
        write!(tcp, "GET /events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        tcp.read_exact(&mut head).unwrap();
        (tcp, String::from_utf8_lossy(&head).into_owned())
    };
    let streams: Vec<_> = (0..nixery::shim::activity::MAX_WATCHERS).map(|_| open(&shim.host())).collect();
    assert!(streams.iter().all(|(_, h)| h.ends_with("200")), "{:?}", streams.iter().map(|(_, h)| h).collect::<Vec<_>>());
    let (_extra, head) = open(&shim.host());
    assert!(head.ends_with("503"), "one stream more than the bound is refused: {head}");
    assert_eq!(http().get(shim.url("/v2/")).send().unwrap().status(), 200, "pulls still get a connection");
    assert_eq!(shim.metric("nixery_event_streams_open "), nixery::shim::activity::MAX_WATCHERS as f64);
}

#[test]
fn a_build_that_failed_for_want_of_space_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    // The storage on a tmpfs of 8 MB, nearly full, in the shim's own mount
    // namespace; the test reaches it through the shim's /proc root.
    let mount = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs -o size=8m tmpfs \"$STORAGE_PATH\" && head -c 7900000 /dev/zero > \"$STORAGE_PATH/filler\" && exec \"$@\"",
        "sh",
    ];
    let shim = Shim::start_under(&mount, &store, &[]);
    let status = http().get(shim.url("/v2/hello/manifests/latest")).send().unwrap().status();
    assert_eq!(status, 500, "the disk is full:\n{}", shim.log_text());
    let filler = PathBuf::from(format!("/proc/{}/root{}/filler", shim.pid(), store.display()));
    std::fs::remove_file(&filler).unwrap_or_else(|e| panic!("{}: {e}", filler.display()));
    // At once, well within NIXERY_FAILURE_TTL (30 s): built, not the
    // remembered failure.
    assert_eq!(http().get(shim.url("/v2/hello/manifests/latest")).send().unwrap().status(), 200, "{}", shim.log_text());
}

/// A self-signed certificate for 127.0.0.1 valid from `from` to `until`
/// (Unix seconds), and its key, made with Python's cryptography.
fn dated_certificate(dir: &Path, from: i64, until: i64) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join(format!("cert-{from}.pem")), dir.join(format!("key-{from}.pem")));
    let script = r#"
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
t = lambda s: datetime.datetime.fromtimestamp(int(s), datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(t(sys.argv[3])).not_valid_after(t(sys.argv[4]))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256()))
open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(sys.argv[2], "wb").write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;
    run(Command::new(SYSTEM_PYTHON).arg("-c").arg(script).arg(&cert).arg(&key).arg(from.to_string()).arg(until.to_string()));
    (cert, key)
}

#[test]
fn a_certificate_out_of_its_dates_is_reported_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let year = 365 * 24 * 3600;
    for (from, until, says) in
        [(now - 2 * year, now - year, "the TLS certificate expired on"), (now + year, now + 2 * year, "the TLS certificate is not valid until")]
    {
        let (cert, key) = dated_certificate(dir.path(), from, until);
        let shim =
            Shim::start(&dir.path().join(format!("store-{from}")), &[("NIXERY_TLS_CERT", cert.to_str().unwrap()), ("NIXERY_TLS_KEY", key.to_str().unwrap())]);
        assert!(shim.log_text().contains(says), "{says}: {}", shim.log_text());
    }
}

#[test]
fn a_missing_bucket_fails_at_start() {
    in_loopback_netns("faults::missing_bucket_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by a_missing_bucket_fails_at_start"]
fn missing_bucket_in_netns() {
    require_loopback_netns();
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(helper())
        .arg("serve")
        .env("NIXERY_PKGS_PATH", repo().join("tests/pkgs"))
        .env("PORT", "0")
        .envs(s3_env(s3.port, "no-such-bucket"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot use the S3 bucket no-such-bucket") && err.contains("NoSuchBucket"), "{err}");
}
