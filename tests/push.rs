//! `nixery push` against the reference registry with htpasswd
//! authentication, and `streamNixeryImage`: the same digests, no layer
//! tarballs in the store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::*;

/// The reference registry with htpasswd basic authentication and request
/// logs (to count uploads), stopped on drop.
struct AuthRegistry {
    port: u16,
    log: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start() -> AuthRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("ci:{}\n", bcrypt::hash("s3cret", 6).unwrap())).unwrap();
        let log = dir.path().join("registry.log");
        let (port, child) = serve_on_free_port(|port| {
            let config = dir.path().join(format!("config-{port}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nauth:\n  htpasswd:\n    realm: test\n    path: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("data").display(),
                    htpasswd.display()
                ),
            )
            .unwrap();
            Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("docker-registry (scripts/setup installs it)")
        });
        AuthRegistry { port, log, child, _dir: dir }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many blob uploads the registry has completed (`PUT` of an
    /// upload with its digest, answered 201).
    fn uploads(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("http.request.method=PUT") && l.contains("/blobs/uploads/") && l.contains("http.response.status=201"))
            .count()
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image of hello, jq and a one-file package whose content is
/// `marker`; `function` is buildNixeryImage or streamNixeryImage.
/// Without SBOMs: these tests count the image's own blobs (referrers are
/// sboms_and_provenance_are_referrers_that_oras_discovers's).
fn image_expr(function: &str, marker: &str) -> String {
    image_expr_with(function, marker, "sbom = false;")
}

/// [`image_expr`] with more arguments (`extra`: Nix attributes).
fn image_expr_with(function: &str, marker: &str, extra: &str) -> String {
    format!(
        r#"let
  {binding}
in
nixery.{function} {{
  name = "app";
  tag = "v1";
  contents = [ pkgs.hello pkgs.jq marker ];
  maxLayers = 10;
  {extra}
}}"#,
        binding = marker_binding(marker)
    )
}

fn push_cmd(source: &Path, dest: &str) -> Command {
    let mut c = Command::new(helper());
    c.arg("push")
        .arg(source)
        .arg(dest)
        .env("HOME", source.parent().unwrap_or(Path::new("/nonexistent")))
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG");
    c.stdin(Stdio::null());
    c
}

fn blob_digests(layout: &Path) -> Vec<String> {
    let (m, _) = layout_manifest(layout);
    let mut d: Vec<String> = m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    d.push(m["config"]["digest"].as_str().unwrap().to_string());
    d
}

in_both_worlds! {
    fn push_uploads_only_what_the_registry_lacks_and_streams_give_the_same_digest() {
        let dir = tempfile::tempdir().unwrap();
        let registry = AuthRegistry::start();
        let first = nix_build_expr(dir.path(), &image_expr("buildNixeryImage", "one"));
        let second = nix_build_expr(dir.path(), &image_expr("buildNixeryImage", "two"));
        let dest = format!("{}/acme/app:v1", registry.host());

        // Without credentials: a clear error, nothing pushed.
        let out = push_cmd(&first, &dest).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not authorized") && err.contains("--creds"), "{err}");
        assert_eq!(registry.uploads(), 0);

        // With them: every blob, then the manifest; the digest printed is the
        // one skopeo reads back.
        let digest = run_stdout(push_cmd(&first, &dest).args(["--creds", "ci:s3cret"])).trim().to_string();
        assert_eq!(registry.uploads(), blob_digests(&first).len());
        let raw = run(skopeo().args(["inspect", "--raw", "--tls-verify=false", "--creds", "ci:s3cret"]).arg(format!("docker://{dest}"))).stdout;
        assert_eq!(nixery::digest::Digest::of(&raw).to_string(), digest);
        assert_eq!(raw, layout_manifest(&first).1, "the registry has the layout's manifest bytes");

        // One package changed: only its layer, the root layer and the config
        // are uploaded; credentials from a Docker config file this time.
        let docker_config = dir.path().join("docker");
        std::fs::create_dir_all(&docker_config).unwrap();
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret");
        std::fs::write(docker_config.join("config.json"), format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.host())).unwrap();
        let before = registry.uploads();
        let changed: Vec<String> = {
            let old = blob_digests(&first);
            blob_digests(&second).into_iter().filter(|d| !old.contains(d)).collect()
        };
        assert!(changed.len() < blob_digests(&second).len() / 2, "most layers are shared: {changed:?}");
        let dest2 = format!("{}/acme/app:v2", registry.host());
        let digest2 = run_stdout(push_cmd(&second, &dest2).env("DOCKER_CONFIG", &docker_config)).trim().to_string();
        assert_eq!(registry.uploads() - before, changed.len(), "only the changed blobs are uploaded");

        // The stream image of the same arguments: the same manifest digest,
        // its changed layer packed on the fly, nothing uploaded that the
        // registry has.
        let stream = nix_build_expr(dir.path(), &image_expr("streamNixeryImage", "two"));
        assert!(stream.join(nixery::push::STREAM_FILE).exists());
        let before = registry.uploads();
        let dest3 = format!("{}/acme/streamed:v2", registry.host());
        let digest3 = run_stdout(push_cmd(&stream, &dest3).args(["--creds", "ci:s3cret", "--mount-from", "acme/app"])).trim().to_string();
        assert_eq!(digest3, digest2, "stream and build give the same image");
        assert_eq!(registry.uploads() - before, 0, "every blob was mounted from acme/app");
        // Into an empty repository with no mount: every layer is packed on
        // the fly, and the registry checks each digest.
        let registry2 = AuthRegistry::start();
        let dest4 = format!("{}/fresh/streamed:v2", registry2.host());
        let digest4 = run_stdout(push_cmd(&stream, &dest4).args(["--creds", "ci:s3cret"])).trim().to_string();
        assert_eq!(digest4, digest2);
        assert_eq!(registry2.uploads(), blob_digests(&second).len());
        let copy = dir.path().join("copy");
        run(skopeo().args(["copy", "--src-tls-verify=false", "--src-creds", "ci:s3cret"]).arg(format!("docker://{dest4}")).arg(format!("oci:{}:v2", copy.display())));
        assert_eq!(layout_manifest(&copy).1, layout_manifest(&second).1);

        // The copyToRegistry passthru: a program the helper interprets.
        let program = nix_build_expr(dir.path(), &format!("({}).copyToRegistry", image_expr("streamNixeryImage", "two")));
        let dest5 = format!("{}/acme/program:v2", registry.host());
        let digest5 = run_stdout(Command::new(program.join("bin/copy-to-registry")).arg(&dest5).args(["--creds", "ci:s3cret"])).trim().to_string();
        assert_eq!(digest5, digest2);
    }
}

in_both_worlds! {
    fn a_stream_image_adds_under_one_percent_of_its_closure_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let body = |f: &str| format!("nixery.{f} {{ name = \"big\"; tag = \"v1\"; contents = [ pkgs.bigdata pkgs.hello pkgs.jq ]; maxLayers = 10; }}");
        let stream = nix_build_expr(dir.path(), &body("streamNixeryImage"));
        let built = nix_build_expr(dir.path(), &body("buildNixeryImage"));
        // A store path's own size (its NAR).
        let size = |path: &Path| -> u64 { run_stdout(Command::new("nix-store").args(["-q", "--size"]).arg(path)).trim().parse().unwrap() };
        let own = size(&stream);
        // The closure of the contents: the stream output refers to them.
        let closure: u64 = run_stdout(Command::new("nix-store").args(["-q", "--requisites"]).arg(&stream))
            .lines()
            .filter(|p| Path::new(p) != stream)
            .map(|p| size(Path::new(p)))
            .sum();
        let built_own = size(&built);
        eprintln!("stream output {own} bytes, build output {built_own} bytes, closure {closure} bytes");
        assert!(own * 100 < closure, "the stream image holds {own} bytes of a {closure}-byte closure");
        assert!(built_own > 10 * own, "a built image holds its layers ({built_own} bytes)");
        assert_eq!(layout_manifest(&stream).1, layout_manifest(&built).1, "the same image");
    }
}

in_both_worlds! {
    fn stream_images_load_into_oci_layouts_and_podman() {
        let dir = tempfile::tempdir().unwrap();
        let body = |f: &str| format!("nixery.{f} {{ name = \"hello\"; tag = \"v1\"; contents = [ pkgs.hello ]; config.Cmd = [ \"hello\" ]; }}");
        let stream = nix_build_expr(dir.path(), &body("streamNixeryImage"));
        let built = nix_build_expr(dir.path(), &body("buildNixeryImage"));
        // Into an OCI layout: the same manifest as the built image, every
        // blob there.
        let layout = dir.path().join("layout");
        run(Command::new(helper()).arg("load").arg(&stream).arg(format!("oci:{}:v1", layout.display())));
        assert_eq!(layout_manifest(&layout).1, layout_manifest(&built).1);
        for d in blob_digests(&layout) {
            let bytes = std::fs::read(layout.join("blobs/sha256").join(d.strip_prefix("sha256:").unwrap())).unwrap();
            assert_eq!(nixery::digest::Digest::of(&bytes).to_string(), d);
        }
        // Into a docker-archive, as podman and docker load it: it runs.
        let archive = dir.path().join("hello.tar");
        run(Command::new(helper()).arg("load").arg(&stream).arg(format!("docker-archive:{}", archive.display())));
        let root = dir.path().join("podman");
        run(podman(&root).args(["load", "-q", "-i"]).arg(&archive));
        let out = run_stdout(podman(&root).args(PODMAN_RUN).arg("localhost/hello:v1"));
        assert_eq!(out.trim(), "Hello, world!");
        // A bad target is a clear error.
        let out = Command::new(helper()).arg("load").arg(&stream).arg("nowhere").output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains(r#""nowhere" is not where an image loads: expected podman, docker, docker-archive:FILE or oci:DIR[:TAG]"#));
    }
}

in_both_worlds! {
    fn incremental_stream_images_hash_only_the_layers_that_changed() {
        let dir = tempfile::tempdir().unwrap();
        // Markers of this run only: nothing of them is built yet.
        let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let (three, four) = (format!("three-{run_id}"), format!("four-{run_id}"));
        let built = nix_build_expr(dir.path(), &image_expr("buildNixeryImage", &three));
        let incremental = "incremental = true;";
        // The first build hashes every layer in a derivation of its own.
        let first = nix_build_expr(dir.path(), &image_expr_with("streamNixeryImage", &three, incremental));
        assert_eq!(layout_manifest(&first).1, layout_manifest(&built).1, "the same image as buildNixeryImage");
        // After one package changed, only its layer is hashed again.
        let file = expr_file(dir.path(), &image_expr_with("streamNixeryImage", &four, incremental));
        let out = run(&mut nix_build_cmd(&file));
        let log = String::from_utf8_lossy(&out.stderr);
        let hashed = log.lines().filter(|l| l.starts_with("building '") && l.contains("nixery-layer-digest.drv")).count();
        assert_eq!(hashed, 1, "one layer hashed again:\n{log}");
        let second = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(second.join(nixery::push::STREAM_FILE).exists());
        assert_ne!(layout_manifest(&second).1, layout_manifest(&first).1);
    }
}

/// A P-256 key pair as openssl writes it: (private PKCS#8 PEM, public PEM).
fn p256_key(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    run(Command::new("openssl").args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(&key));
    run(Command::new("openssl").args(["pkey", "-pubout", "-in"]).arg(&key).arg("-out").arg(&public));
    (key, public)
}

#[test]
fn signed_pushes_and_their_attestations_verify_with_cosign_and_not_with_another_key() {
    let dir = tempfile::tempdir().unwrap();
    let image = nix_build(&repo().join("examples/hello.nix"), &[]);
    let registry = Registry::start();
    let (key, public) = p256_key(dir.path(), "signer");
    let (_, other) = p256_key(dir.path(), "other");
    let dest = format!("{}/signed:v1", registry.host());
    let out = run(Command::new(helper()).arg("push").arg("--sign-key").arg(&key).arg(&image).arg(&dest));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains(&format!("signed it: {}/signed:sha256-{}.sig", registry.host(), &digest[7..])), "{log}");

    // cosign 2.5 (the current world's) verifies it with the public key,
    // without a transparency log, and refuses another key.
    let cosign = |public: &Path| {
        world::debian13_command("cosign", &[dir.path()])
            .args(["verify", "--insecure-ignore-tlog=true", "--allow-http-registry=true", "--key"])
            .arg(public)
            .arg(&dest)
            .output()
            .unwrap()
    };
    let ok = cosign(&public);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(text.contains(&format!("\"docker-manifest-digest\":\"{digest}\"")), "{text}");
    let refused = cosign(&other);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no matching signatures"), "{}", String::from_utf8_lossy(&refused.stderr));

    // The SBOMs and the provenance the build wrote are attestations cosign
    // verifies by type; each statement's subject is the pushed manifest.
    assert!(log.contains(&format!("attested its SBOMs and provenance: {}/signed:sha256-{}.att", registry.host(), &digest[7..])), "{log}");
    let attest = |public: &Path, kind: &str| {
        world::debian13_command("cosign", &[dir.path()])
            .args(["verify-attestation", "--insecure-ignore-tlog=true", "--allow-http-registry=true", "--type", kind, "--key"])
            .arg(public)
            .arg(&dest)
            .output()
            .unwrap()
    };
    use base64::Engine;
    for (kind, predicate_type, file) in [
        ("spdxjson", "https://spdx.dev/Document", "sbom.spdx.json"),
        ("cyclonedx", "https://cyclonedx.org/bom", "sbom.cdx.json"),
        ("slsaprovenance1", "https://slsa.dev/provenance/v1", "provenance.intoto.json"),
    ] {
        let out = attest(&public, kind);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{kind}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        let envelopes: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(envelopes.len(), 1, "{kind}: one attestation of its type");
        let statement: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(envelopes[0]["payload"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(statement["predicateType"], predicate_type);
        assert_eq!(statement["subject"][0]["digest"]["sha256"], digest[7..]);
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(image.join(file)).unwrap()).unwrap();
        let predicate = if file.starts_with("provenance") { &written["predicate"] } else { &written };
        assert_eq!(&statement["predicate"], predicate, "{kind}: the document the build wrote");
        assert!(!attest(&other, kind).status.success(), "{kind}: another key is refused");
    }

    // nixery verify checks the same with the public key, and names every
    // attestation and referrer; another key fails it, with why.
    let verify = |public: &Path| {
        Command::new(helper())
            .args(["verify", "--key"])
            .arg(public)
            .args(["--attestation", "spdxjson", "--attestation", "slsaprovenance1"])
            .arg(&dest)
            .output()
            .unwrap()
    };
    let out = verify(&public);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with(&format!("{}/signed@{digest}\n", registry.host())), "{text}");
    for line in [
        "attestation spdxjson (https://spdx.dev/Document): verified",
        "attestation cyclonedx (https://cyclonedx.org/bom): verified",
        "attestation slsaprovenance1 (https://slsa.dev/provenance/v1): verified",
        "signature: verified",
        "referrer application/spdx+json sha256:",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let out = verify(&other);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("signed@{digest} has no signature that {} verifies", other.display())), "{err}");

    // A key that is not one fails before anything is pushed.
    std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
    let out = Command::new(helper())
        .arg("push")
        .arg("--sign-key")
        .arg(dir.path().join("bad.pem"))
        .arg(&image)
        .arg(format!("{}/never:v1", registry.host()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a private key"), "{}", String::from_utf8_lossy(&out.stderr));
    let tags = http().get(format!("http://{}/v2/never/tags/list", registry.host())).send().unwrap();
    assert_eq!(tags.status(), 404, "nothing pushed");
}

/// A key `cosign generate-key-pair` made (encrypted, its password in
/// COSIGN_PASSWORD, as cosign reads it) signs pushes both cosign and
/// `nixery verify` accept; a wrong password pushes nothing.
#[test]
fn cosigns_own_encrypted_keys_sign_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let image = nix_build(&repo().join("examples/hello.nix"), &[]);
    let registry = Registry::start();
    run(world::debian13_command("cosign", &[dir.path()]).current_dir(dir.path()).env("COSIGN_PASSWORD", "tr0ub4dor").arg("generate-key-pair"));
    let (key, public) = (dir.path().join("cosign.key"), dir.path().join("cosign.pub"));
    assert!(std::fs::read_to_string(&key).unwrap().contains("ENCRYPTED SIGSTORE PRIVATE KEY"));
    let dest = format!("{}/cosign-keyed:v1", registry.host());
    let push = |password: &str, dest: &str| {
        Command::new(helper()).env("COSIGN_PASSWORD", password).arg("push").arg("--sign-key").arg(&key).arg(&image).arg(dest).output().unwrap()
    };
    let out = push("tr0ub4dor", &dest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let verified = world::debian13_command("cosign", &[dir.path()])
        .args(["verify", "--insecure-ignore-tlog=true", "--allow-http-registry=true", "--key"])
        .arg(&public)
        .arg(&dest)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    let ours = Command::new(helper()).args(["verify", "--attestation", "cyclonedx", "--key"]).arg(&public).arg(&dest).output().unwrap();
    assert!(ours.status.success(), "{}{}", String::from_utf8_lossy(&ours.stdout), String::from_utf8_lossy(&ours.stderr));

    let wrong = push("swordfish", &format!("{}/never:v1", registry.host()));
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("cannot be opened with the password in COSIGN_PASSWORD"), "{err}");
    let tags = http().get(format!("http://{}/v2/never/tags/list", registry.host())).send().unwrap();
    assert_eq!(tags.status(), 404, "nothing pushed");
}

#[test]
fn sboms_and_provenance_are_referrers_that_oras_discovers() {
    let dir = tempfile::tempdir().unwrap();
    let image = nix_build(&repo().join("examples/hello.nix"), &[]);
    let registry = Registry::start();
    let dest = format!("{}/referred:v1", registry.host());
    let push = || {
        let out = run(Command::new(helper()).arg("push").arg(&image).arg(&dest));
        assert!(String::from_utf8_lossy(&out.stderr).contains("pushed its SBOMs and provenance as 3 referrers of the image"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let digest = push();
    // oras 1.2 (the current world's) lists them: the reference registry
    // has no referrers API, so through the tag schema's index.
    let discover = || -> Vec<serde_json::Value> {
        let out = run(world::debian13_command("oras", &[dir.path()]).args(["discover", "--plain-http", "--format", "json"]).arg(&dest));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["manifests"].as_array().unwrap().clone()
    };
    let types = |found: &[serde_json::Value]| -> Vec<String> {
        let mut t: Vec<String> = found.iter().map(|m| m["artifactType"].as_str().unwrap().to_string()).collect();
        t.sort();
        t
    };
    assert_eq!(types(&discover()), ["application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]);
    // Each is an artifact manifest whose subject is the image and whose one
    // blob is the document the build wrote.
    let c = http();
    for m in discover() {
        let manifest: serde_json::Value = c
            .get(format!("http://{}/v2/referred/manifests/{}", registry.host(), m["digest"].as_str().unwrap()))
            .header("Accept", nixery::image::media_type::OCI_MANIFEST)
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(manifest["subject"]["digest"], digest);
        let file = match m["artifactType"].as_str().unwrap() {
            "application/spdx+json" => "sbom.spdx.json",
            "application/vnd.cyclonedx+json" => "sbom.cdx.json",
            _ => "provenance.intoto.json",
        };
        let blob = c
            .get(format!("http://{}/v2/referred/blobs/{}", registry.host(), manifest["layers"][0]["digest"].as_str().unwrap()))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        assert_eq!(blob.to_vec(), std::fs::read(image.join(file)).unwrap(), "{file}");
    }
    // What others attached stays listed when the image is pushed again,
    // and nothing is listed twice.
    std::fs::write(dir.path().join("notes.txt"), "reviewed").unwrap();
    run(world::debian13_command("oras", &[dir.path()])
        .current_dir(dir.path())
        .args(["attach", "--plain-http", "--artifact-type", "application/vnd.example.review"])
        .arg(&dest)
        .arg("notes.txt"));
    assert_eq!(push(), digest);
    assert_eq!(
        types(&discover()),
        ["application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.example.review", "application/vnd.in-toto+json"]
    );
}
