//! Real clients consume the images: skopeo pushes to and pulls from the
//! reference registry, podman pulls and runs, umoci unpacks, and the
//! docker-archive loads.

use std::process::Command;

use crate::support::*;

fn example() -> std::path::PathBuf {
    nix_build(&repo().join("examples/hello.nix"), &[])
}

in_both_worlds! {
    fn push_to_the_reference_registry_pull_back_and_run_with_podman() {
        let image = example();
        let registry = Registry::start();
        let host = registry.host();
        let (_, manifest) = layout_manifest(&image);
        let manifest_digest = nixery::digest::Digest::of(&manifest).to_string();

        run(skopeo().args(["copy", "--dest-tls-verify=false"]).arg(format!("oci:{}:v1", image.display())).arg(format!("docker://{host}/hello:v1")));
        let inspect: serde_json::Value = serde_json::from_str(&run_stdout(
            skopeo().args(["inspect", "--tls-verify=false"]).arg(format!("docker://{host}/hello:v1")),
        ))
        .unwrap();
        assert_eq!(inspect["Digest"], manifest_digest, "the registry keeps our manifest byte for byte");
        assert_eq!(inspect["Architecture"], "amd64");

        // Pull back with skopeo: the same layers.
        let back = tempfile::tempdir().unwrap();
        run(skopeo().args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{host}/hello:v1")).arg(format!("oci:{}:v1", back.path().display())));
        let (m1, _) = layout_manifest(&image);
        let (m2, _) = layout_manifest(back.path());
        assert_eq!(m1["layers"], m2["layers"]);

        // Pull with podman and run the programs.
        let root = tempfile::tempdir().unwrap();
        run(podman(root.path()).args(["pull", "-q", "--tls-verify=false"]).arg(format!("{host}/hello:v1")));
        let hello = run_stdout(podman(root.path()).args(PODMAN_RUN).arg(format!("{host}/hello:v1")));
        assert_eq!(hello, "Hello, world!\n");
        let jq = run_stdout(podman(root.path()).args(PODMAN_RUN).arg(format!("{host}/hello:v1")).args(["sh", "-c", "echo '{\"a\":[1,2]}' | jq -c .a; echo $FOO"]));
        assert_eq!(jq, "[1,2]\nbar\n");
    }
}

in_both_worlds! {
    fn umoci_unpacks_a_complete_root_filesystem() {
        let image = example();
        let dir = tempfile::tempdir().unwrap();
        // umoci wants a writable layout.
        let layout = dir.path().join("layout");
        run(Command::new("cp").arg("-r").arg(&image).arg(&layout));
        run(Command::new("chmod").arg("-R").arg("u+w").arg(&layout));
        let bundle = dir.path().join("bundle");
        run(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:v1", layout.display())).arg(&bundle));
        let rootfs = bundle.join("rootfs");
        // The dynamically linked programs find their interpreter and libraries
        // inside the image alone.
        let out = run_stdout(Command::new("chroot").arg(&rootfs).arg("/bin/hello"));
        assert_eq!(out, "Hello, world!\n");
        let out = run_stdout(Command::new("chroot").arg(&rootfs).args(["/bin/sh", "-c", "echo '[3]' | /usr/bin/env jq -c '.[0]'"]));
        assert_eq!(out, "3\n");
        let tmp = std::fs::metadata(rootfs.join("tmp")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
    }
}

in_both_worlds! {
    fn docker_archive_loads_with_skopeo() {
        let dir = tempfile::tempdir().unwrap();
        let archive = nix_build_expr(dir.path(), &format!("(import {}/examples/hello.nix {{ inherit helper; }}).dockerArchive", repo().display()));
        let inspect: serde_json::Value =
            serde_json::from_str(&run_stdout(skopeo().arg("inspect").arg(format!("docker-archive:{}", archive.display())))).unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        let manifest_entry = ar.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_str() == Some("manifest.json")).unwrap();
        let docker_manifest: serde_json::Value = serde_json::from_reader(manifest_entry).unwrap();
        assert_eq!(docker_manifest[0]["RepoTags"], serde_json::json!(["hello:v1"]));
        let layers = inspect["Layers"].as_array().unwrap().len();
        let (manifest, _) = layout_manifest(&example());
        assert_eq!(layers, manifest["layers"].as_array().unwrap().len());
        // And the format argument builds the archive directly.
        let direct = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "direct"; tag = "v2"; contents = [ pkgs.hello ]; format = "docker-archive"; }"#);
        let out = dir.path().join("from-archive");
        run(skopeo().args(["copy"]).arg(format!("docker-archive:{}", direct.display())).arg(format!("oci:{}:v2", out.display())));
        assert!(out.join("index.json").exists());
    }
}

in_both_worlds! {
    fn zstd_images_run_with_podman() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(
            dir.path(),
            r#"nixery.buildNixeryImage { name = "zhello"; tag = "v1"; contents = [ pkgs.hello ]; compression = "zstd"; config.Cmd = [ "hello" ]; }"#,
        );
        let (manifest, _) = layout_manifest(&image);
        for l in manifest["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
        }
        let root = tempfile::tempdir().unwrap();
        let id = run_stdout(podman(root.path()).args(["pull", "-q"]).arg(format!("oci:{}:v1", image.display())));
        let out = run_stdout(podman(root.path()).args(PODMAN_RUN).arg(id.trim()));
        assert_eq!(out, "Hello, world!\n");
    }
}
