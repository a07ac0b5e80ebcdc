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
    assert!(
        Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists(),
        "qemu-aarch64 is not registered with binfmt_misc: run scripts/setup (it says when the kernel refuses)"
    );
    run_stdout(Command::new("chroot").arg(rootfs).arg(program).args(args))
}

/// Pulls the arm64 and the amd64 image of the index `image` (a
/// `docker://` reference) with skopeo, and runs each one's hello: arm64
/// through qemu, amd64 natively.
fn each_platform_pulls_and_runs_hello(dir: &Path, image: &str, tag: &str) {
    for (arch, file_says) in [("arm64", "aarch64"), ("amd64", "x86-64")] {
        let layout = dir.join(format!("pulled-{arch}"));
        run(skopeo().args(["copy", "--src-tls-verify=false", "--override-arch", arch]).arg(image).arg(format!("oci:{}:{tag}", layout.display())));
        assert_eq!(layout_config(&layout)["architecture"], arch);
        std::fs::create_dir_all(dir.join(format!("rootfs-{arch}"))).unwrap();
        let rootfs = unpack(&layout, tag, &dir.join(format!("rootfs-{arch}")));
        assert_eq!(chroot(&rootfs, "/bin/hello", &[]).trim(), "Hello, world!");
        let file = run_stdout(Command::new("file").arg("-L").arg(rootfs.join("bin/hello")));
        assert!(file.contains(file_says), "{file}");
    }
}

in_both_worlds! {
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
}

/// `hello:v1` as an index of an amd64 and an arm64 image of hello and
/// busybox (the same derivations in every test that builds it).
fn two_platform_index() -> String {
    format!(
        r#"let
      arm = import {}/tests/pkgs {{ system = "aarch64-linux"; }};
      image = p: nixery.buildNixeryImage {{ name = "hello"; tag = "v1"; contents = [ p.hello p.busybox ]; config.Cmd = [ "/bin/hello" ]; }};
    in
    nixery.buildNixeryIndex {{ name = "hello"; tag = "v1"; images = [ (image pkgs) (image arm) ]; }}"#,
        repo().display()
    )
}

in_both_worlds! {
    fn an_index_of_two_systems_pushes_as_one_name_and_pulls_per_platform() {
        let dir = tempfile::tempdir().unwrap();
        let index = nix_build_expr(dir.path(), &two_platform_index());
        let registry = Registry::start();
        let dest = format!("docker://{}/hello:v1", registry.host());
        run(skopeo().args(["copy", "--all", "--dest-tls-verify=false"]).arg(format!("oci:{}:v1", index.display())).arg(&dest));
        let raw: serde_json::Value = serde_json::from_str(&run_stdout(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(&dest))).unwrap();
        assert_eq!(raw["mediaType"], "application/vnd.oci.image.index.v1+json");
        let mut archs: Vec<&str> = raw["manifests"].as_array().unwrap().iter().map(|m| m["platform"]["architecture"].as_str().unwrap()).collect();
        archs.sort();
        assert_eq!(archs, ["amd64", "arm64"]);
        // Each platform pulls its own image, and it runs.
        each_platform_pulls_and_runs_hello(dir.path(), &dest, "v1");
        // nixery push gives the registry the same index.
        let out = run_stdout(Command::new(helper()).arg("push").arg(&index).arg(format!("{}/pushed:v1", registry.host())));
        let pushed = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/pushed:v1", registry.host()))).stdout;
        assert_eq!(nixery::digest::Digest::of(&pushed).to_string(), out.trim());
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&pushed).unwrap(), raw);
    }
}

in_both_worlds! {
    fn with_platforms_a_name_is_an_index_each_client_pulls_its_own() {
        let dir = tempfile::tempdir().unwrap();
        // riscv64 cannot be built here (no such Nix platform): it is left out.
        let shim = Shim::start(&dir.path().join("store"), &[("NIXERY_PLATFORMS", "linux/amd64,linux/arm64,linux/riscv64")]);
        let image = format!("docker://{}/hello/busybox", shim.host());
        let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(&image)).stdout;
        let index: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(index["mediaType"], "application/vnd.oci.image.index.v1+json");
        let platforms: Vec<(String, Option<String>)> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["platform"]["architecture"].as_str().unwrap().to_string(), m["platform"]["variant"].as_str().map(str::to_string)))
            .collect();
        assert_eq!(platforms, [("amd64".to_string(), None), ("arm64".to_string(), Some("v8".to_string()))]);
        assert!(shim.log_text().contains("left out of the index"), "the unbuildable platform is logged");

        // Each platform's image runs: arm64 through qemu, amd64 natively.
        each_platform_pulls_and_runs_hello(dir.path(), &image, "latest");
        // podman picks the platform it is asked for.
        let root = dir.path().join("podman");
        run(podman(&root).args(["pull", "-q", "--tls-verify=false", "--platform", "linux/arm64"]).arg(format!("{}/hello/busybox", shim.host())));
        let arch = run_stdout(podman(&root).args(["image", "inspect", "--format", "{{.Architecture}}"]).arg(format!("{}/hello/busybox", shim.host())));
        assert_eq!(arch.trim(), "arm64");

        // Docker's flavour, to a client that accepts only it; HEAD and GET agree.
        let c = http();
        let list = "application/vnd.docker.distribution.manifest.list.v2+json";
        let url = shim.url("/v2/hello/busybox/manifests/latest");
        let get = c.get(&url).header("Accept", list).send().unwrap();
        assert_eq!(get.headers()["content-type"], list);
        let digest = get.headers()["docker-content-digest"].to_str().unwrap().to_string();
        let body: serde_json::Value = get.json().unwrap();
        assert!(body["manifests"].as_array().unwrap().iter().all(|m| m["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"), "{body}");
        let head = c.head(&url).header("Accept", list).send().unwrap();
        assert_eq!(head.headers()["docker-content-digest"].to_str().unwrap(), digest);
        // The `arm64` meta-package keeps its meaning: one arm64 image.
        // It is the index's arm64 entry: the same caches, the same image.
        let single = run(skopeo().args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{}/arm64/hello/busybox", shim.host()))).stdout;
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&single).unwrap()["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(nixery::digest::Digest::of(&single).to_string(), index["manifests"][1]["digest"].as_str().unwrap());
    }
}

/// An index's layout keeps each image's SBOMs and provenance as referrers
/// of that image; `nixery push --sign-key` signs the index and each image,
/// attests each image's documents, and pushes its referrers, so cosign
/// and oras find them by the image's digest (what a client of one platform
/// pulls).
#[test]
fn an_index_pushes_each_images_referrers_and_signs_each_image() {
    let dir = tempfile::tempdir().unwrap();
    let index = nix_build_expr(dir.path(), &two_platform_index());
    let listed: serde_json::Value = serde_json::from_slice(&std::fs::read(index.join("index.json")).unwrap()).unwrap();
    let entries = listed["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 7, "the index, then three documents of each of its two images");
    let children: Vec<String> = layout_blob(&index, entries[0]["digest"].as_str().unwrap())["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    for e in &entries[1..] {
        let subject = layout_blob(&index, e["digest"].as_str().unwrap())["subject"]["digest"].as_str().unwrap().to_string();
        assert!(children.contains(&subject), "{subject} is one of the images");
    }

    let key = dir.path().join("key.pem");
    let public = dir.path().join("key.pub");
    run(Command::new("openssl").args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(&key));
    run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public));
    let registry = Registry::start();
    let name = format!("{}/signed-index", registry.host());
    let out = run(Command::new(helper()).arg("push").arg("--sign-key").arg(&key).arg(&index).arg(format!("{name}:v1")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("as 6 referrers"), "{}", String::from_utf8_lossy(&out.stderr));
    let cosign = |args: &[&str], reference: &str| {
        crate::support::world::debian13_command("cosign", &[dir.path()])
            .args(args)
            .args(["--insecure-ignore-tlog=true", "--allow-http-registry=true", "--key"])
            .arg(&public)
            .arg(reference)
            .output()
            .unwrap()
    };
    let ok = cosign(&["verify"], &format!("{name}:v1"));
    assert!(ok.status.success(), "the index is signed: {}", String::from_utf8_lossy(&ok.stderr));
    for child in &children {
        let reference = format!("{name}@{child}");
        let ok = cosign(&["verify-attestation", "--type", "spdxjson"], &reference);
        assert!(ok.status.success(), "{child}: {}", String::from_utf8_lossy(&ok.stderr));
        let ours = run_stdout(
            Command::new(helper()).args(["verify", "--attestation", "cyclonedx", "--attestation", "slsaprovenance1", "--key"]).arg(&public).arg(&reference),
        );
        assert_eq!(ours.matches("  referrer ").count(), 3, "{ours}");
        assert!(ours.contains("signature: verified"), "{ours}");
    }
}
