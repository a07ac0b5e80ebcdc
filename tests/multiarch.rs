//! arm64 for real: images of aarch64-linux programs (built here in Nix's
//! sandbox, run through qemu, which scripts/setup registers with
//! binfmt_misc) through the shim's `arm64` meta-package, and one name for
//! two platforms with buildNixeryIndex.

use std::path::Path;
use std::process::Command;

use crate::support::*;

/// Runs `program` with `args` in a chroot of the unpacked image at
/// `rootfs` (an arm64 program runs through qemu's binfmt handler, which
/// the kernel opened at registration, so the chroot needs no qemu).
fn chroot(rootfs: &Path, program: &str, args: &[&str]) -> String {
    assert!(Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists(), "qemu-aarch64 is not registered with binfmt_misc: run scripts/setup (it says when the kernel refuses)");
    run_stdout(Command::new("chroot").arg(rootfs).arg(program).args(args))
}

#[test]
fn arm64_names_build_arm64_images_that_run_through_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let shim = Shim::start(&dir.path().join("store"), &[]);
    let layout = dir.path().join("oci");
    run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/arm64/jq", shim.host())).arg(format!("oci:{}:latest", layout.display())));
    let config = layout_config(&layout);
    assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("arm64"), Some("linux")), "{config}");
    std::fs::create_dir_all(dir.path().join("unpacked")).unwrap();
    let rootfs = unpack(&layout, "latest", &dir.path().join("unpacked"));
    assert_eq!(chroot(&rootfs, "/bin/jq", &["--version"]).trim(), "jq-1.6");
    let file = run_stdout(Command::new("file").arg("-L").arg(rootfs.join("bin/jq")));
    assert!(file.contains("aarch64"), "{file}");
    // The same name without arm64 is the machine's own.
    let amd64 = dir.path().join("amd64");
    run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/jq", shim.host())).arg(format!("oci:{}:latest", amd64.display())));
    assert_eq!(layout_config(&amd64)["architecture"], "amd64");
}

#[test]
fn an_index_of_two_systems_pushes_as_one_name_and_pulls_per_platform() {
    let dir = tempfile::tempdir().unwrap();
    let expr = format!(
        r#"let
  arm = import {}/tests/pkgs {{ system = "aarch64-linux"; }};
  image = p: nixery.buildNixeryImage {{ name = "hello"; tag = "v1"; contents = [ p.hello p.busybox ]; config.Cmd = [ "/bin/hello" ]; }};
in
nixery.buildNixeryIndex {{ name = "hello"; tag = "v1"; images = [ (image pkgs) (image arm) ]; }}"#,
        repo().display()
    );
    let index = nix_build_expr(dir.path(), &expr);
    let registry = Registry::start();
    let dest = format!("docker://{}/hello:v1", registry.host());
    run(skopeo().args(["copy", "--all", "--dest-tls-verify=false"]).arg(format!("oci:{}:v1", index.display())).arg(&dest));
    let raw: serde_json::Value = serde_json::from_str(&run_stdout(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(&dest))).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
    let mut archs: Vec<&str> = raw["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"]);
    // Each platform pulls its own image, and it runs.
    for (arch, file_says) in [("arm64", "aarch64"), ("amd64", "x86-64")] {
        let layout = dir.path().join(format!("pulled-{arch}"));
        run(skopeo().args(["copy", "--src-tls-verify=false", "--override-arch", arch]).arg(&dest).arg(format!("oci:{}:v1", layout.display())));
        assert_eq!(layout_config(&layout)["architecture"], arch);
        std::fs::create_dir_all(dir.path().join(format!("rootfs-{arch}"))).unwrap();
        let rootfs = unpack(&layout, "v1", &dir.path().join(format!("rootfs-{arch}")));
        assert_eq!(chroot(&rootfs, "/bin/hello", &[]).trim(), "Hello, world!");
        let file = run_stdout(Command::new("file").arg("-L").arg(rootfs.join("bin/hello")));
        assert!(file.contains(file_says), "{file}");
    }
    // nixery push gives the registry the same index.
    let out = run_stdout(Command::new(helper()).arg("push").arg(&index).arg(format!("{}/pushed:v1", registry.host())));
    let pushed = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/pushed:v1", registry.host()))).stdout;
    assert_eq!(nixery::digest::Digest::of(&pushed).to_string(), out.trim());
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&pushed).unwrap(), raw);
}
