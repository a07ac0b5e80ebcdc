//! Deployment: the registry shim's own container image
//! (nix/nixery-image.nix, built by buildNixeryImage), run as the Kubernetes
//! manifests in deploy/ run it; and the settings the NixOS module offers
//! (nix/serve-settings.nix), checked against `nixery serve`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

/// The documents of deploy/kubernetes/nixery.yaml, as JSON.
fn kubernetes() -> Vec<serde_json::Value> {
    let out = run_stdout(
        Command::new(SYSTEM_PYTHON)
            .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
            .arg(repo().join("deploy/kubernetes/nixery.yaml")),
    );
    serde_json::from_str(&out).unwrap()
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// The variables `nixery serve --help` names.
fn serve_variables() -> Vec<String> {
    let help = run_stdout(Command::new(helper()).args(["serve", "--help"]));
    let re = regex::Regex::new(r"\[env: ([A-Z0-9_]+)=").unwrap();
    re.captures_iter(&help).map(|c| c[1].to_string()).collect()
}

/// A detached container, removed on drop.
struct Container<'a> {
    root: &'a Path,
    name: String,
}

impl Container<'_> {
    fn logs(&self) -> String {
        let out = podman(self.root).args(["logs", &self.name]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = podman(self.root).args(["rm", "-f", "-t", "0", &self.name]).output();
    }
}

#[test]
fn the_shim_image_serves_images_its_own_nix_builds() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nixery-image.nix");
    std::fs::write(
        &file,
        format!("{{ helper }}: import {}/nix/nixery-image.nix {{ pkgs = import {}/tests/pkgs {{ }}; inherit helper; }}\n", repo().display(), repo().display()),
    )
    .unwrap();
    let image = nix_build(&file, &[("helper", &format!("\"{}\"", helper().display()))]);

    let (manifest, _) = layout_manifest(&image);
    let config = layout_config(&image);
    let config = &config["config"];
    let entrypoint: Vec<&str> = config["Entrypoint"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(entrypoint[0].starts_with("/nix/store/") && entrypoint[1] == "serve", "{entrypoint:?}");
    assert_eq!(config["ExposedPorts"], serde_json::json!({ "8080/tcp": {} }));
    let env: Vec<&str> = config["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"NIXERY_BIND=0.0.0.0") && env.contains(&"STORAGE_PATH=/var/lib/nixery"), "{env:?}");
    assert!(manifest["layers"].as_array().unwrap().len() >= 2);

    // The container's package set is tests/pkgs reading the host's files
    // under /host, mounted read-only.
    let pkgs = dir.path().join("pkgs");
    std::fs::create_dir(&pkgs).unwrap();
    std::fs::write(pkgs.join("default.nix"), "{ system ? builtins.currentSystem }: import /pkgs { inherit system; hostRoot = /host; }\n").unwrap();
    let root = dir.path().join("podman");
    let id = run_stdout(podman(&root).args(["pull", "-q"]).arg(format!("oci:{}:latest", image.display())));
    // The Deployment's init container copies the image's store onto the
    // Nix volume, which the shim's container then has as /nix: run it as
    // the manifest says.
    let docs = kubernetes();
    let init = &kind(&docs, "Deployment")["spec"]["template"]["spec"]["initContainers"][0];
    let command: Vec<&str> = init["command"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(init["volumeMounts"][0]["mountPath"], "/mnt/nix");
    let volume: PathBuf = dir.path().join("nix-volume");
    std::fs::create_dir(&volume).unwrap();
    run(podman(&root)
        .args(["run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", "--network", "none"])
        .args(["--entrypoint", command[0], "-v", &format!("{}:/mnt/nix", volume.display())])
        .arg(id.trim())
        .args(&command[1..]));
    assert!(volume.join("var/nix/db/db.sqlite").exists());
    let container = Container { root: &root, name: format!("nixery-shim-{}", unique_in_run()) };
    let mount = |host: &Path, inside: &str| format!("{}:{inside}:ro", host.display());
    run(podman(&root)
        .args(["run", "-d", "--name", &container.name, "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
        // The host's network namespace, so that the test reaches the shim
        // on the loopback (it binds 127.0.0.1 here, 0.0.0.0 by default).
        .args(["--network", "host", "-e", "PORT=0", "-e", "NIXERY_BIND=127.0.0.1", "-e", "NIXERY_PKGS_PATH=/pkgswrap"])
        .args(["-v", &mount(Path::new("/usr"), "/host/usr"), "-v", &mount(Path::new("/etc"), "/host/etc")])
        .args(["-v", &mount(&repo().join("tests/pkgs"), "/pkgs"), "-v", &mount(&pkgs, "/pkgswrap")])
        .args(["-v", &format!("{}:/nix", volume.display())])
        .arg(id.trim()));
    // The shim picks a free port (PORT=0) and its log names it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let port: u16 = loop {
        let logs = container.logs();
        if let Some(port) = logs
            .lines()
            .find(|l| l.contains("nixery is serving"))
            .and_then(|l| l.split("addr=").nth(1))
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
        {
            break port;
        }
        assert!(Instant::now() < deadline, "the shim in the container does not listen:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // A client pulls an image the container's Nix builds, and runs it.
    // (podman names an oci: image by its path, which must be lower-case.)
    let lower = tempfile::Builder::new().prefix(&format!("nixery-shim-image-{port}")).rand_bytes(0).tempdir().unwrap();
    let pulled = lower.path().join("pulled");
    run(Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://127.0.0.1:{port}/shell/hello"))
        .arg(format!("oci:{}:hello", pulled.display())));
    let logs = container.logs();
    assert!(logs.contains("running nix-build") && logs.contains("image built"), "{logs}");
    assert!(
        std::fs::read_dir(volume.join("store")).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with("-hello-2.10")),
        "the build is on the volume"
    );
    let runner = dir.path().join("runner");
    assert_eq!(podman_run(&runner, &pulled, "hello", &["hello"]), "Hello, world!\n");

    // The same image, bit for bit, as a shim outside the container builds
    // from the same store paths.
    let outside = Shim::start(&dir.path().join("storage"), &[]);
    assert_eq!(manifest_digest(&format!("127.0.0.1:{port}"), "shell/hello"), manifest_digest(&outside.host(), "shell/hello"));
}

#[test]
fn the_kubernetes_manifests_run_the_image_as_the_shim_expects() {
    let docs = kubernetes();
    let variables = serve_variables();
    let deployment = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let container = &deployment["containers"][0];
    // Every variable set is one the shim (or Nix, or a cloud client) reads.
    let config = kind(&docs, "ConfigMap")["data"].as_object().unwrap();
    let env = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap());
    for name in config.keys().map(String::as_str).chain(env) {
        assert!(variables.iter().any(|v| v == name) || name == "NIX_CONFIG" || name.starts_with("AWS_"), "{name} is not read by nixery serve");
    }
    assert_eq!(container["envFrom"][0]["configMapRef"]["name"], kind(&docs, "ConfigMap")["metadata"]["name"]);
    // The credentials file is where the secret is mounted.
    let credentials = config["GOOGLE_APPLICATION_CREDENTIALS"].as_str().unwrap();
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "bucket-credentials").unwrap();
    let file = credentials.strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap())).expect("the credentials are on the secret's mount");
    assert!(kind(&docs, "Secret")["stringData"][file].is_string(), "{file}");
    // The Nix volume is the store in the shim's container and the copy's
    // target in the init container; probes ask the registry API.
    assert!(container["volumeMounts"].as_array().unwrap().iter().any(|m| m["name"] == "nix" && m["mountPath"] == "/nix"));
    assert_eq!(deployment["initContainers"][0]["volumeMounts"][0]["name"], "nix");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/v2/");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let service = &kind(&docs, "Service")["spec"];
    assert_eq!(service["ports"][0]["targetPort"], container["ports"][0]["name"]);
    assert_eq!(service["selector"], kind(&docs, "Deployment")["spec"]["selector"]["matchLabels"]);
}

#[test]
fn the_nixos_settings_are_the_variables_of_nixery_serve() {
    let dir = tempfile::tempdir().unwrap();
    let settings = repo().join("nix/serve-settings.nix");
    let eval = |expr: &str| -> Result<serde_json::Value, String> {
        let out = Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "--expr"])
            .arg(format!("let s = import {}; in {expr}", settings.display()))
            .current_dir(dir.path())
            .output()
            .unwrap();
        if out.status.success() {
            Ok(serde_json::from_slice(&out.stdout).unwrap())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let names: Vec<String> = serde_json::from_value(eval("map (v: v.name) s.variables").unwrap()).unwrap();
    assert_eq!(names, serve_variables(), "nix/serve-settings.nix lists every variable of nixery serve, in its order");
    let env = eval(r#"s.environment { PORT = 8080; NIXERY_PLATFORMS = [ "linux/amd64" "linux/arm64" ]; NIXERY_BLOB_REDIRECT = false; GCS_BUCKET = null; STORAGE_PATH = /var/lib/nixery; }"#).unwrap();
    assert_eq!(
        env,
        serde_json::json!({ "PORT": "8080", "NIXERY_PLATFORMS": "linux/amd64,linux/arm64", "NIXERY_BLOB_REDIRECT": "false", "STORAGE_PATH": "/var/lib/nixery" })
    );
    let err = eval(r#"s.environment { NIXERY_PORT = 1; }"#).unwrap_err();
    assert!(err.contains("NIXERY_PORT is not a setting of nixery serve"), "{err}");
    // The module and the flake parse (evaluating them needs nixpkgs' lib).
    for file in ["nix/module.nix", "nix/default.nix", "nix/nixery-image.nix", "flake.nix"] {
        run(Command::new("nix-instantiate").arg("--parse").arg(repo().join(file)));
    }
}
