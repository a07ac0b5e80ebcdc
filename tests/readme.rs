//! The README's walkthroughs, run as written: each block marked
//! `<!-- walkthrough: NAME -->` is given to bash as it stands, on this
//! machine as `scripts/setup` leaves it (its nix.conf and containers.conf),
//! in a network namespace of its own so that the fixed ports the README
//! uses (5000, 8080) are free. What the test adds is only where things go:
//! a root for `cargo install`, podman's storage, and a Docker engine.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// The code of the README block marked `<!-- walkthrough: NAME -->`.
fn walkthrough(name: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let marker = format!("<!-- walkthrough: {name} -->\n```sh\n");
    let start = readme.find(&marker).unwrap_or_else(|| panic!("README.md has no walkthrough {name:?}")) + marker.len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_string()
}

/// bash running a walkthrough block in `dir`, in a process group of its own
/// (so that what it starts in the background can be stopped with it).
/// Each may take `seconds`: the install compiles nixery from nothing, on
/// a machine busy with the other tests.
fn bash(block: &str, dir: &Path, env: &[(&str, String)], seconds: u32) -> Command {
    let mut c = Command::new("timeout");
    c.args([&seconds.to_string(), "bash", "-euo", "pipefail", "-c", block]).current_dir(dir).env_remove("NIX_CONFIG").envs(env.iter().map(|(k, v)| (k, v)));
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c
}

fn output_of(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the README's {what} walkthrough failed ({}):\n{text}", out.status);
    text
}

/// A walkthrough block's process group, stopped on drop (what it started
/// in the background with it).
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("--").arg(format!("-{}", self.0.id())).status();
        let _ = self.0.wait();
    }
}

#[test]
fn walkthroughs_run_as_written() {
    in_loopback_netns("readme::walkthroughs_inside");
}

#[test]
#[ignore = "run by walkthroughs_run_as_written, in a network namespace"]
fn walkthroughs_inside() {
    require_loopback_netns();
    let dir = tempfile::tempdir().unwrap();
    let home = std::env::var("HOME").unwrap();
    let path = format!("{}/bin:{home}/.cargo/bin:{}", dir.path().display(), std::env::var("PATH").unwrap());

    // Getting nixery: cargo install from the checkout, into a root of the
    // test's own. Its target directory is its own too (kept between runs):
    // in this build's, it would replace the helper other tests are running,
    // since a build without dev-dependencies resolves other features.
    let installed = output_of(
        bash(
            &walkthrough("install"),
            &repo(),
            &[
                ("PATH", path.clone()),
                ("CARGO_INSTALL_ROOT", dir.path().display().to_string()),
                ("CARGO_TARGET_DIR", repo().join("target/readme-install").display().to_string()),
                ("CARGO_NET_OFFLINE", "true".into()),
            ],
            1800,
        ),
        "install",
    );
    let nixery = dir.path().join("bin/nixery");
    assert!(nixery.is_file(), "cargo install put no nixery in {}: {installed}", dir.path().display());
    let kind = run_stdout(Command::new("file").arg("-L").arg(&nixery));
    assert!(kind.contains("statically linked") || kind.contains("static-pie linked"), "the installed nixery is statically linked: {kind}");

    // The walkthroughs run from a checkout's root: lib.nix and tests/pkgs.
    let work = dir.path().join("checkout");
    std::fs::create_dir(&work).unwrap();
    for entry in ["lib.nix", "tests"] {
        std::os::unix::fs::symlink(repo().join(entry), work.join(entry)).unwrap();
    }
    let storage_conf = dir.path().join("storage.conf");
    std::fs::write(
        &storage_conf,
        format!("[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/podman/storage\"\nrunroot = \"{0}/podman/run\"\n", dir.path().display()),
    )
    .unwrap();
    let docker = Dockerd::start(&dir.path().join("docker"), Dockerd::DEFAULTS);
    let env = [("PATH", path), ("CONTAINERS_STORAGE_CONF", storage_conf.display().to_string()), ("DOCKER_HOST", docker.host())];

    // Your own image: built, loaded into podman, run.
    let image = output_of(bash(&walkthrough("image"), &work, &env, 600), "image");
    assert!(image.contains("Hello from Nix"), "the image's Cmd greets:\n{image}");
    assert!(image.contains("uid=1000(app) gid=1000(app)"), "the image runs as its user:\n{image}");

    // Pushed to a registry, and run from there.
    let mut push = bash(&walkthrough("image-push"), &work, &env, 600);
    let pushed = {
        let child = push.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let group = child.id();
        let out = child.wait_with_output().unwrap();
        // The registry the block started in the background, in its group.
        let _ = Command::new("kill").arg("--").arg(format!("-{group}")).status();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the README's push walkthrough failed:\n{text}");
        text
    };
    assert!(pushed.contains("sha256:"), "nixery push prints the manifest's digest:\n{pushed}");
    assert!(pushed.contains("Hello from Nix"), "the pushed image runs:\n{pushed}");

    // Signed, and verified with the public key.
    let signed = {
        let child = bash(&walkthrough("image-sign"), &work, &env, 600).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let group = child.id();
        let out = child.wait_with_output().unwrap();
        let _ = Command::new("kill").arg("--").arg(format!("-{group}")).status();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "the README's signing walkthrough failed:\n{text}");
        text
    };
    for line in ["signature: verified with key.pub", "attestation spdxjson (https://spdx.dev/Document): verified", "referrer application/spdx+json"] {
        assert!(signed.contains(line), "nixery verify says {line:?}:\n{signed}");
    }

    // The shim: started in one terminal, pulled from in another.
    let log = dir.path().join("serve.log");
    let _server = Group(bash(&walkthrough("shim-serve"), &work, &env, 600).stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&log).unwrap().contains("nixery is serving addr=127.0.0.1:8080") {
        assert!(Instant::now() < deadline, "the shim did not start:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let pulled = output_of(bash(&walkthrough("shim-pull"), &work, &env, 600), "shim");
    assert!(pulled.contains("Hello, world!"), "docker runs the shim's shell/hello:\n{pulled}");
    assert!(pulled.contains("jq-1."), "podman runs the shim's hello/jq:\n{pulled}");
    assert!(pulled.contains("\"Name\": \"127.0.0.1:8080/shell/jq\""), "skopeo inspects shell/jq:\n{pulled}");
}
