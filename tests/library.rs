//! `buildNixeryImage` as a Nix user adopts it: built in the sandbox (every
//! test here is: the suite's Nix config has `sandbox = true`), evaluated
//! in pure mode, and each image feature checked by running the image with
//! podman or in a chroot of its unpacked root.

use std::process::Command;

use crate::support::*;

fn config_of(layout: &std::path::Path) -> serde_json::Value {
    layout_config(layout)
}

in_both_worlds! {
    fn images_built_in_the_sandbox_are_identical_outside_it() {
        let image = nix_build(&repo().join("examples/hello.nix"), &[]);
        // Rebuild with the sandbox off and compare byte for byte.
        let mut c = nix_build_cmd(&repo().join("examples/hello.nix"));
        c.args(["--check", "--option", "sandbox", "false"]);
        run(&mut c);
        assert!(image.join("index.json").exists());
    }
}

in_both_worlds! {
    fn store_paths_named_only_in_config_are_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        // jq is not in contents: only the entrypoint names it.
        let image = nix_build_expr(
            dir.path(),
            r#"nixery.buildNixeryImage {
                 name = "entry"; tag = "v1"; contents = [ ];
                 config = { Entrypoint = [ "${pkgs.jq}/bin/jq" "-n" ]; Env = [ "GREETER=${pkgs.hello}/bin/hello" ]; };
               }"#,
        );
        let root = tempfile::tempdir().unwrap();
        assert_eq!(podman_run(root.path(), &image, "v1", &["1 + 1"]), "2\n");
        let rootfs = unpack(&image, "v1", dir.path());
        let greeter = config_of(&image)["config"]["Env"].as_array().unwrap().iter().find_map(|e| e.as_str()?.strip_prefix("GREETER=").map(str::to_string)).unwrap();
        assert_eq!(run_stdout(Command::new("chroot").arg(&rootfs).arg(&greeter)), "Hello, world!\n", "hello's closure came along");
    }
}

in_both_worlds! {
    fn registry_qualified_names_build_and_bad_names_fail_at_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "ghcr.io/acme/app"; tag = "v1.0"; contents = [ pkgs.hello ]; }"#);
        assert!(image.file_name().unwrap().to_str().unwrap().ends_with("-ghcr.io-acme-app"), "{}", image.display());
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(image.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "ghcr.io/acme/app:v1.0");
        let port = nix_build_expr(dir.path(), r#"(nixery.buildNixeryImage { name = "localhost:5000/x"; tag = "t"; contents = [ pkgs.hello ]; format = "docker-archive"; })"#);
        let mut ar = tar::Archive::new(std::fs::File::open(&port).unwrap());
        let entry = ar.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_str() == Some("manifest.json")).unwrap();
        let archive_manifest: serde_json::Value = serde_json::from_reader(entry).unwrap();
        assert_eq!(archive_manifest[0]["RepoTags"], serde_json::json!(["localhost:5000/x:t"]));
        run(skopeo().arg("inspect").arg(format!("docker-archive:{}", port.display())));
        for (name, tag, needle) in [
            ("Acme/App", "\"v1\"", "`name` must be a registry name"),
            ("app/", "\"v1\"", "`name` must be a registry name"),
            ("app", "\"-v1\"", "`tag` must be null or a registry tag"),
            ("app", "\"v1/x\"", "`tag` must be null or a registry tag"),
        ] {
            let err = nix_build_expr_fails(dir.path(), &format!(r#"nixery.buildNixeryImage {{ name = "{name}"; tag = {tag}; }}"#));
            assert!(err.contains(&format!("in nixery image {name}: {needle}")), "{name}:{tag}: {err}");
        }
        // Derivation names: a name whose every derivation Nix takes
        // (the longest is NAME-docker-archive.tar) builds them all; one
        // character more fails at evaluation, saying the limit.
        let longest = format!("ghcr.io/{}", "a".repeat(188 - 8));
        let archive = nix_build_expr(dir.path(), &format!(r#"(nixery.buildNixeryImage {{ name = "{longest}"; tag = "v1"; contents = [ pkgs.hello ]; }}).dockerArchive"#));
        assert!(archive.to_str().unwrap().ends_with("-docker-archive.tar"), "{}", archive.display());
        let program = nix_build_expr(dir.path(), &format!(r#"(nixery.buildNixeryImage {{ name = "{longest}"; tag = "v1"; contents = [ pkgs.hello ]; }}).copyToRegistry"#));
        assert!(program.join("bin/copy-to-registry").exists());
        let too_long = format!("ghcr.io/{}", "a".repeat(189 - 8));
        for function in ["buildNixeryImage", "streamNixeryImage"] {
            let err = nix_build_expr_fails(dir.path(), &format!(r#"nixery.{function} {{ name = "{too_long}"; tag = "v1"; }}"#));
            assert!(err.contains(&format!("in nixery image {too_long}: `name` is too long (189 characters): Nix limits derivation names to 207 characters")) && err.contains("at most 188 characters"), "{err}");
        }
        // Names Nix would cut at a digit after a dash keep their whole
        // name in derivation names (nix run, nix-env, the build log's prefix).
        let v = nix_eval_expr(
            dir.path(),
            r#"map (n: (nixery.buildNixeryImage { name = n; tag = "v1"; }).name) [ "127.0.0.1:5000/app" "ghcr.io/acme/app" "acme/2fa" "app-2" ]"#,
        );
        assert_eq!(v, serde_json::json!(["127.0.0.1_5000-app", "ghcr.io-acme-app", "acme_2fa", "app_2"]));
        for name in v.as_array().unwrap() {
            let parsed = nix_eval_expr(dir.path(), &format!("(builtins.parseDrvName {name}).name"));
            assert_eq!(&parsed, name, "Nix reads the whole name as the name");
        }
    }
}

in_both_worlds! {
    fn users_own_their_home_and_the_image_runs_as_them() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(
            dir.path(),
            r#"nixery.buildNixeryImage {
                 name = "users"; tag = "v1"; contents = [ pkgs.bashInteractive pkgs.coreutils ];
                 users = [ { name = "app"; uid = 1000; groups = [ "staff" ]; } ];
                 groups = [ { name = "staff"; gid = 50; } ];
                 config = { User = "app"; WorkingDir = "/home/app"; };
               }"#,
        );
        let root = tempfile::tempdir().unwrap();
        let out = podman_run(root.path(), &image, "v1", &["sh", "-c", "id -u; id -g; whoami; echo written > notes && cat /home/app/notes; id -G"]);
        assert_eq!(out, "1000\n1000\napp\nwritten\n1000 50\n");
        let passwd = run_stdout(Command::new("cat").arg(unpack(&image, "v1", dir.path()).join("etc/passwd")));
        assert!(passwd.contains("app:x:1000:1000::/home/app:/bin/sh\n"), "{passwd}");
    }
}

in_both_worlds! {
    fn perms_set_mode_and_owner_in_the_layers() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(
            dir.path(),
            r#"nixery.buildNixeryImage {
                 name = "perms"; tag = "v1"; contents = [ pkgs.hello pkgs.bashInteractive pkgs.coreutils ];
                 perms = [ { path = pkgs.hello; regex = "/bin/hello$"; mode = "0750"; uid = 1000; gid = 100; uname = "app"; gname = "users"; } ];
               }"#,
        );
        // In the layer: the file has its mode and owner in the tar header.
        let (manifest, _) = layout_manifest(&image);
        let headers: Vec<_> = manifest["layers"].as_array().unwrap().iter().flat_map(|l| layer_headers(&image, l["digest"].as_str().unwrap())).collect();
        let hello = headers.iter().find(|h| h.0.ends_with("-hello-2.10/bin/hello")).expect("hello in a layer");
        assert_eq!((hello.1, hello.2, hello.3, hello.4.as_str()), (0o750, 1000, 100, "app"));
        let bin = headers.iter().find(|h| h.0.ends_with("-hello-2.10/bin")).unwrap();
        assert_eq!((bin.2, bin.4.as_str()), (0, ""), "what the regex does not match keeps root");
        // And in a running container.
        let root = tempfile::tempdir().unwrap();
        let out = podman_run(root.path(), &image, "v1", &["sh", "-c", "stat -L -c '%a %u %g' /bin/hello"]);
        assert_eq!(out, "750 1000 100\n");
        let err = nix_build_expr_fails(dir.path(), r#"nixery.buildNixeryImage { name = "perms"; contents = [ pkgs.hello ]; perms = [ { path = pkgs.hello; mode = 750; } ]; }"#);
        assert!(err.contains("`mode` must be an octal string"), "{err}");
    }
}

in_both_worlds! {
    fn copy_to_root_copies_files_instead_of_linking_them() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(
            dir.path(),
            r#"nixery.buildNixeryImage { name = "copies"; tag = "v1"; contents = [ pkgs.bashInteractive pkgs.coreutils ]; copyToRoot = [ pkgs.hello pkgs.cacert ]; }"#,
        );
        let root = tempfile::tempdir().unwrap();
        let out = podman_run(root.path(), &image, "v1", &["sh", "-c", "stat -c %F /bin/hello /etc/ssl/certs/ca-bundle.crt /bin/ls; hello"]);
        assert_eq!(out, "regular file\nregular file\nsymbolic link\nHello, world!\n");
    }
}

in_both_worlds! {
    fn explicit_layers_come_first_and_stay_the_same_when_the_rest_changes() {
        let dir = tempfile::tempdir().unwrap();
        let build = |contents: &str| {
            nix_build_expr(dir.path(), &format!(r#"nixery.buildNixeryImage {{ name = "explicit"; tag = "v1"; contents = [ {contents} ]; layers = [ [ pkgs.jq ] ]; }}"#))
        };
        let a = build("pkgs.jq pkgs.hello");
        let b = build("pkgs.jq pkgs.coreutils");
        // A third image with the same group: its explicit layer is the
        // derivation already built, nothing is packed again for it (and no
        // import-from-derivation took part). Its tag is this run's, so the
        // image itself is not in the store yet, even on a machine that ran
        // the suite before.
        let tag = format!("t{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        let file = expr_file(
            dir.path(),
            &format!(r#"nixery.buildNixeryImage {{ name = "explicit"; tag = "{tag}"; contents = [ pkgs.jq pkgs.bashInteractive ]; layers = [ [ pkgs.jq ] ]; }}"#),
        );
        let out = run(&mut nix_build_cmd(&file));
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!log.contains("nixery-explicit-layer.drv"), "the explicit layer is not packed again:\n{log}");
        assert!(log.contains("building"), "the image itself is built:\n{log}");
        let first = |image: &std::path::Path| {
            let (m, _) = layout_manifest(image);
            m["layers"][0]["digest"].as_str().unwrap().to_string()
        };
        assert_eq!(first(&a), first(&b));
        let names: Vec<String> = layer_entries(&a, &first(&a)).into_iter().filter(|e| e.matches('/').count() == 2).collect();
        for want in ["-jq-1.6", "-libjq-1.6", "-oniguruma-6.9.8", "-glibc-2.36"] {
            assert!(names.iter().any(|n| n.ends_with(want)), "{want} in {names:?}");
        }
        assert_eq!(names.len(), 4, "jq's closure and nothing else: {names:?}");
        let config = config_of(&a);
        assert!(config["history"][0]["comment"].as_str().unwrap().starts_with("explicit layer: "));
    }
}

in_both_worlds! {
    fn from_image_layers_come_first_and_the_base_programs_run_beside_the_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let base_expr = r#"nixery.buildNixeryImage { name = "base"; tag = "v1"; contents = [ pkgs.bashInteractive pkgs.coreutils ]; config = { Env = [ "FROM_BASE=1" ]; Cmd = [ "sh" ]; }; }"#;
        let base = nix_build_expr(dir.path(), base_expr);
        let (base_manifest, _) = layout_manifest(&base);
        let base_layers = base_manifest["layers"].as_array().unwrap().clone();
        let base_diff_ids = config_of(&base)["rootfs"]["diff_ids"].as_array().unwrap().clone();

        // A docker-archive of the base, fetched as a fixed-output path, as
        // a `docker save` tarball from elsewhere would be.
        let archive = dir.path().join("base.tar");
        run(skopeo().arg("copy").arg(format!("oci:{}:v1", base.display())).arg(format!("docker-archive:{}:base:v1", archive.display())));
        let hash = run_stdout(Command::new("nix-hash").args(["--type", "sha256", "--flat", "--base32"]).arg(&archive));
        // An OCI layout written by another tool.
        let oci = dir.path().join("base-oci");
        run(skopeo().arg("copy").arg(format!("oci:{}:v1", base.display())).arg(format!("oci:{}:v1", oci.display())));

        // skopeo's docker-archive holds the layers uncompressed: the same
        // tars (diff_ids), other blobs.
        for (what, from, same_blobs) in [
            ("an image built by buildNixeryImage", format!("({base_expr})"), true),
            ("a fetched docker-archive", format!(r#"(builtins.fetchurl {{ url = "file://{}"; sha256 = "{}"; }})"#, archive.display(), hash.trim()), false),
            ("an OCI layout from elsewhere", format!("{}", oci.display()), true),
        ] {
            let image = nix_build_expr(
                dir.path(),
                &format!(r#"nixery.buildNixeryImage {{ name = "child"; tag = "v1"; fromImage = {from}; contents = [ pkgs.hello ]; config.Env = [ "FROM_CHILD=1" ]; maxLayers = 10; }}"#),
            );
            let (m, _) = layout_manifest(&image);
            let layers = m["layers"].as_array().unwrap();
            let config = config_of(&image);
            assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap()[..base_diff_ids.len()], base_diff_ids[..], "{what}: the base layers first");
            if same_blobs {
                assert_eq!(layers[..base_layers.len()], base_layers[..], "{what}: the base layers unchanged");
            }
            assert!(layers.len() <= 10, "{what}: the base layers count against maxLayers");
            assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]), "{what}: the base's config is the default");
            let root = tempfile::tempdir().unwrap();
            let out = podman_run(root.path(), &image, "v1", &["sh", "-c", "hello && ls /bin/ls >/dev/null && echo $FROM_BASE$FROM_CHILD"]);
            assert_eq!(out, "Hello, world!\n11\n", "{what}");
        }
        // Over budget with the base's layers: a clear error.
        let err = nix_build_expr_fails(dir.path(), &format!(r#"nixery.buildNixeryImage {{ name = "child"; fromImage = ({base_expr}); contents = [ pkgs.hello ]; maxLayers = {}; }}"#, base_layers.len() + 1));
        assert!(err.contains("maxLayers must be at least"), "{err}");
    }
}

in_both_worlds! {
    fn a_nix_database_registers_the_closure() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "nixdb"; tag = "v1"; contents = [ pkgs.jq ]; initializeNixDatabase = true; }"#);
        let rootfs = unpack(&image, "v1", dir.path());
        assert_eq!(std::fs::read_to_string(rootfs.join("nix/var/nix/db/schema")).unwrap(), "10");
        // The host's Nix reads the image's store and database as a chroot store.
        let store = format!("local?root={}", rootfs.display());
        let paths = run_stdout(Command::new("nix-store").env("NIX_CONFIG", NIX_CONFIG).args(["--store", &store, "--query", "--requisites"]).arg(
            std::fs::read_dir(rootfs.join("nix/store")).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_str().unwrap().ends_with("-jq-1.6")).map(|p| format!("/nix/store/{}", p.file_name().unwrap().to_str().unwrap())).unwrap(),
        ));
        assert_eq!(paths.lines().count(), 4, "jq, libjq, oniguruma, glibc: {paths}");
        let verify = Command::new("nix-store").env("NIX_CONFIG", NIX_CONFIG).args(["--store", &store, "--verify", "--check-contents"]).output().unwrap();
        let err = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && !err.contains("modified") && !err.contains("invalid"), "{err}");
    }
}

in_both_worlds! {
    fn architecture_created_meta_and_passthru() {
        let dir = tempfile::tempdir().unwrap();
        let image = nix_build_expr(
            dir.path(),
            r#"nixery.buildNixeryImage { name = "arch"; tag = "v1"; contents = [ pkgs.hello ]; architecture = "arm64"; variant = "v8"; created = "now"; }"#,
        );
        let config = config_of(&image);
        assert_eq!((config["architecture"].as_str(), config["variant"].as_str(), config["os"].as_str()), (Some("arm64"), Some("v8"), Some("linux")));
        let created = humantime::parse_rfc3339(config["created"].as_str().unwrap()).unwrap();
        let age = std::time::SystemTime::now().duration_since(created).unwrap();
        assert!(age.as_secs() < 3600, "created is the build's time: {:?}", config["created"]);
        let v = nix_eval_expr(
            dir.path(),
            r#"let i = nixery.buildNixeryImage { name = "x"; tag = "v1"; contents = [ pkgs.hello ]; meta.description = "an image"; passthru.extra = 7; };
               in { tag = i.out.imageTag; extra = i.out.extra; description = i.meta.description; same = i.out.outPath == i.outPath; name = i.imageName; }"#,
        );
        assert_eq!(v, serde_json::json!({"tag": "v1", "extra": 7, "description": "an image", "same": true, "name": "x"}));
    }
}

/// A directory holding copies of the host files tests/pkgs reads, to be a
/// flake input (pure evaluation reads nothing outside the store).
fn host_files(dir: &std::path::Path) -> std::path::PathBuf {
    let host = dir.join("host");
    let lib = "usr/lib/x86_64-linux-gnu";
    for d in ["usr/bin", lib, "etc/ssl/certs"] {
        std::fs::create_dir_all(host.join(d)).unwrap();
    }
    // This machine's files, seen from the world the test runs in.
    let machine = World::this().host_root();
    for f in ["usr/bin/busybox", "usr/bin/hello", "usr/bin/jq", "usr/bin/patchelf", "etc/ssl/certs/ca-certificates.crt", "etc/services", "etc/protocols"] {
        std::fs::copy(machine.join(f), host.join(f)).unwrap();
    }
    for entry in std::fs::read_dir(machine.join(lib)).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if ["ld-linux", "libc.so", "libm.so", "libpthread", "libdl.so", "librt.so", "libresolv.so", "libstdc++", "libgcc_s", "libonig", "libjq"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            run(Command::new("cp").arg("-P").arg(machine.join(lib).join(&name)).arg(host.join(lib)));
        }
    }
    host
}

in_both_worlds! {
    fn flakes_evaluate_everything_in_pure_mode_incremental_included() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_files(dir.path());
        // nixery's own nixpkgs input is not needed for its library: a stand-in.
        let fake = dir.path().join("fake-nixpkgs");
        std::fs::create_dir_all(&fake).unwrap();
        std::fs::write(fake.join("flake.nix"), "{ outputs = _: { }; }").unwrap();
        let flake = dir.path().join("flake");
        std::fs::create_dir_all(&flake).unwrap();
        std::fs::copy(helper(), flake.join("nixery")).unwrap();
        std::fs::write(
            flake.join("flake.nix"),
            format!(
                r#"{{
      inputs.nixery.url = "git+file://{repo}";
      inputs.nixery.inputs.nixpkgs.url = "path:{fake}";
      inputs.host = {{ url = "path:{host}"; flake = false; }};
      outputs = {{ self, nixery, host }}:
        let
          system = "x86_64-linux";
          pkgs = import "${{nixery}}/tests/pkgs" {{ inherit system; hostRoot = "${{host}}"; }};
          lib = nixery.lib.withHelper {{ helper = ./nixery; inherit system; }};
          image = incremental: lib.buildNixeryImage {{ name = "pure"; tag = "v1"; contents = [ pkgs.hello pkgs.jq ]; inherit incremental; config.Cmd = [ "hello" ]; }};
        in {{
          packages.${{system}} = {{ default = image false; incremental = image true; }};
          noSystem = (nixery.lib.withHelper {{ helper = ./nixery; }}).buildNixeryImage {{ name = "x"; contents = [ pkgs.hello ]; }};
        }};
    }}"#,
                repo = repo().display(),
                fake = fake.display(),
                host = host.display()
            ),
        )
        .unwrap();
        let build = |attr: &str| -> std::path::PathBuf {
            let out = run_stdout(&mut nix_cmd(&flake, &["build", "--no-link", "--json", attr]));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v[0]["outputs"]["out"].as_str().unwrap().into()
        };
        let nix = |args: &[&str]| nix_cmd(&flake, args);
        let plain = build(".#default");
        let incremental = build(".#incremental");
        let (_, a) = layout_manifest(&plain);
        let (_, b) = layout_manifest(&incremental);
        assert_eq!(a, b, "the same image either way, both evaluated in pure mode");
        let out = nix(&["eval", ".#noSystem.drvPath"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("pure evaluation does not know the build machine"), "{err}");
    }
}

/// A `nix` command (flakes on) in `dir`.
fn nix_cmd(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new("nix");
    c.env("NIX_CONFIG", format!("{NIX_CONFIG}experimental-features = nix-command flakes\n")).current_dir(dir).args(args);
    c
}

in_both_worlds! {
    fn the_app_example_runs_as_its_user_with_an_entrypoint_named_only_in_config() {
        let image = nix_build(&repo().join("examples/app.nix"), &[]);
        let root = tempfile::tempdir().unwrap();
        let out = podman_run(root.path(), &image, "v1", &[]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"user": "app", "home": "/home/app", "certificates": true}));
        // The explicit layer (jq's closure) is the first.
        let config = layout_config(&image);
        assert!(config["history"][0]["comment"].as_str().unwrap().contains("jq-1.6"), "{}", config["history"][0]);
    }
}

/// The library's mistakes of the first hour, each named at evaluation
/// (before anything is built), once, with what to write instead.
const EVALUATION_MISTAKES: &[(&str, &str)] = &[
    (
        r#"nixery.buildNixeryImage { name = "app"; contnets = [ pkgs.hello ]; }"#,
        "in nixery image app: buildNixeryImage has no argument `contnets`: did you mean `contents`?",
    ),
    (r#"nixery.streamNixeryImage { contents = [ pkgs.hello ]; }"#, "nixery: streamNixeryImage needs `name`, the image's name"),
    (
        r#"nixery.buildNixeryIndex { name = "app"; image = [ ]; }"#,
        "in nixery index app: buildNixeryIndex has no argument `image`: did you mean `images`? (it takes images, name, tag)",
    ),
    (
        r#"nixery.buildNixeryImage { name = "app"; contents = [ pkgs.hello ]; config.Cmd = "hello"; }"#,
        r#"in nixery image app: config.Cmd must be a list of strings, as [ "hello" "--greeting" "hi" ], got the string "hello""#,
    ),
    (r#"nixery.buildNixeryImage { name = "app"; config.WorkDir = "/srv"; }"#, "in nixery image app: config has no `WorkDir`: did you mean `WorkingDir`?"),
    (r#"nixery.buildNixeryImage { name = "app"; config.Env = [ "DEBUG" ]; }"#, r#"config.Env must be a list of "NAME=value" strings, got the list ["DEBUG"]"#),
    (r#"nixery.buildNixeryImage { name = "app"; config.Labels.version = 2; }"#, "config.Labels must be an attribute set of strings, got an attribute set"),
    (
        r#"nixery.buildNixeryImage { name = "app"; users = [ { name = "app"; } ]; }"#,
        r#"user "app" has no `uid`, which is required, as in { name = "app"; uid = 1000; }"#,
    ),
    (r#"nixery.buildNixeryImage { name = "app"; users = [ { name = "app"; uid = 1; hom = "/srv"; } ]; }"#, r#"user "app" has no `hom`: did you mean `home`?"#),
    (
        r#"nixery.buildNixeryImage { name = "app"; groups = [ { name = "app"; gid = "10"; } ]; }"#,
        r#"group "app": `gid` must be an integer, got the string "10""#,
    ),
    (
        r#"nixery.buildNixeryImage { name = "app"; users = [ { name = "app"; uid = 1000; groups = [ "staff" ]; } ]; }"#,
        r#"in nixery image app: user "app" is in group "staff", which is not declared: add { name = "staff"; gid = …; } to `groups`"#,
    ),
    (
        r#"nixery.buildNixeryImage { name = "app"; fromImage = { name = "base"; }; }"#,
        "`fromImage` must be an image: a buildNixeryImage result, an OCI layout directory or an image tarball (a path or a derivation), got an attribute set",
    ),
    (
        r#"(import ./lib.nix { helper = "/nonexistent/nixery"; }).buildNixeryImage { name = "app"; }"#,
        "nixery: the helper /nonexistent/nixery does not exist: build one with `cargo install --locked --path .`",
    ),
];

in_both_worlds! {
    fn library_mistakes_are_named_at_evaluation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(repo().join("lib.nix"), dir.path().join("lib.nix")).unwrap();
        for (expr, message) in EVALUATION_MISTAKES {
            let err = nix_build_expr_fails(dir.path(), expr);
            assert!(err.contains(message), "{expr}\nsays {message:?}:\n{err}");
            assert_eq!(err.matches(message).count(), 1, "once: {err}");
            // (Nix 2.26 quotes lib.nix's lines above the error itself.)
            let said = &err[err.rfind("error: ").unwrap()..];
            assert!(!said.contains("prepare") && !err.contains("building '"), "nothing built, no internal name: {err}");
        }
        // A file that is not an image, past evaluation: the helper says so
        // of fromImage, once.
        let not_an_image = dir.path().join("base.nix");
        std::fs::write(&not_an_image, "let x = 1; in x\n").unwrap();
        let err = nix_build_expr_fails(dir.path(), &format!(r#"nixery.buildNixeryImage {{ name = "app"; fromImage = {}; }}"#, not_an_image.display()));
        let line = "is not an image: neither an OCI image layout directory nor a tarball of one or of a docker-archive";
        assert!(err.contains("the base image (fromImage) /nix/store/") && err.contains(line), "{err}");
        assert_eq!(err.matches(line).count(), 1, "once: {err}");
        assert!(!err.contains("cksum"), "{err}");
    }
}

#[test]
fn sboms_and_provenance_list_exactly_the_store_paths_in_the_layers_and_validate() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"nixery.buildNixeryImage { name = "sbom"; tag = "v1"; contents = [ pkgs.hello pkgs.jq pkgs.busybox ]; sbomSupplier = "NixOS"; }"#;
    let image = nix_build_expr(dir.path(), body);
    let spdx_file = image.join("sbom.spdx.json");
    let cdx_file = image.join("sbom.cdx.json");

    // spdx-tools and CycloneDX's schema accept them.
    let out = Command::new(SBOM_TOOLS_PYTHON).arg(repo().join("tests/support/validate_sbom.py")).arg(&spdx_file).arg(&cdx_file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("spdx-tools: 0 problems") && text.contains("cyclonedx schema 1.6: valid"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // NTIA's minimum elements: every package has a supplier (the one the
    // expression names) and a version (busybox-static's name has none:
    // its store hash), and the checker of PyPI says so.
    let out = Command::new(SBOM_TOOLS_NTIA).arg(&spdx_file).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Conformant: True"), "{text}{}", String::from_utf8_lossy(&out.stderr));

    // Each store path in the image's layers is listed once, and nothing else.
    let (manifest, _) = layout_manifest(&image);
    let mut in_layers = std::collections::BTreeSet::new();
    for l in manifest["layers"].as_array().unwrap() {
        for e in layer_entries(&image, l["digest"].as_str().unwrap()) {
            let parts: Vec<&str> = e.trim_start_matches("./").trim_start_matches('/').splitn(4, '/').collect();
            if parts.len() >= 3 && parts[0] == "nix" && parts[1] == "store" && !parts[2].is_empty() {
                in_layers.insert(format!("/nix/store/{}", parts[2]));
            }
        }
    }
    let spdx: serde_json::Value = serde_json::from_slice(&std::fs::read(&spdx_file).unwrap()).unwrap();
    let packages = spdx["packages"].as_array().unwrap();
    let listed: Vec<String> = packages.iter().filter_map(|p| p["packageFileName"].as_str().map(String::from)).collect();
    let unique: std::collections::BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(listed.len(), unique.len(), "each once");
    assert_eq!(unique, in_layers, "the SPDX document lists the layers' store paths");
    let cdx: serde_json::Value = serde_json::from_slice(&std::fs::read(&cdx_file).unwrap()).unwrap();
    let refs: std::collections::BTreeSet<String> = cdx["components"].as_array().unwrap().iter().map(|c| c["bom-ref"].as_str().unwrap().to_string()).collect();
    assert_eq!(refs, in_layers, "the CycloneDX document lists the layers' store paths");

    // What the expression knew of hello (nixpkgs' meta) is in both; the
    // image is the root, its checksum its manifest's digest.
    let hello = packages.iter().find(|p| p["name"] == "hello").unwrap();
    assert_eq!((hello["versionInfo"].as_str(), hello["licenseDeclared"].as_str()), (Some("2.10"), Some("GPL-3.0-or-later")));
    assert_eq!(hello["homepage"], "https://www.gnu.org/software/hello/manual/");
    assert_eq!(hello["checksums"][0]["checksumValue"].as_str().unwrap().len(), 64, "the NAR hash");
    let digest = manifest_digest_of(&image);
    assert_eq!(spdx["packages"][0]["checksums"][0]["checksumValue"], digest[7..]);
    assert_eq!(spdx["documentNamespace"], format!("https://nixery.dev/spdx/{}", &digest[7..]));
    let cdx_hello = cdx["components"].as_array().unwrap().iter().find(|c| c["name"] == "hello").unwrap();
    assert_eq!(cdx_hello["licenses"][0]["expression"], "GPL-3.0-or-later");
    assert!(
        spdx["relationships"].as_array().unwrap().iter().any(|r| r["relationshipType"] == "DEPENDS_ON" && r["spdxElementId"] == hello["SPDXID"]),
        "hello depends on glibc"
    );

    // The provenance: an in-toto statement about the manifest, every store
    // path a resolved dependency with its NAR hash.
    let provenance: serde_json::Value = serde_json::from_slice(&std::fs::read(image.join("provenance.intoto.json")).unwrap()).unwrap();
    assert_eq!(provenance["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(provenance["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(provenance["subject"][0]["digest"]["sha256"], digest[7..]);
    let deps = provenance["predicate"]["buildDefinition"]["resolvedDependencies"].as_array().unwrap();
    let (drvs, dep_paths): (Vec<String>, Vec<String>) =
        deps.iter().map(|d| d["uri"].as_str().unwrap().trim_start_matches("nix-store:").to_string()).partition(|p| p.ends_with(".drv"));
    assert_eq!(dep_paths.into_iter().collect::<std::collections::BTreeSet<_>>(), in_layers);
    // And the derivations of the three packages the expression named.
    assert_eq!(drvs.len(), 3, "{drvs:?}");
    assert!(drvs.iter().any(|d| d.ends_with("-hello-2.10.drv")) && drvs.iter().all(|d| std::path::Path::new(d).exists()), "{drvs:?}");
    assert!(
        deps.iter().filter(|d| !d["uri"].as_str().unwrap().ends_with(".drv")).all(|d| d["digest"]["sha256"].as_str().is_some_and(|h| h.len() == 64)),
        "each path with its NAR hash"
    );
    assert_eq!(provenance["predicate"]["buildDefinition"]["externalParameters"]["function"], "buildNixeryImage");

    // The layout lists the three as referrers of the image, after it:
    // oras 1.2 finds them, and readers that take the image by tag
    // (skopeo's oci:DIR:TAG, nixery load) still see one image.
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(image.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert!(entries[0].get("artifactType").is_none() && entries[0]["digest"] == digest);
    for e in &entries[1..] {
        let m = layout_blob(&image, e["digest"].as_str().unwrap());
        assert_eq!(m["subject"]["digest"], digest);
        assert_eq!(m["artifactType"], e["artifactType"]);
    }
    let out = run(crate::support::world::debian13_command("oras", &[&image])
        .args(["discover", "--format", "json", "--oci-layout"])
        .arg(format!("{}:v1", image.display())));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut types: Vec<&str> = found["manifests"].as_array().unwrap().iter().map(|m| m["artifactType"].as_str().unwrap()).collect();
    types.sort();
    assert_eq!(types, ["application/spdx+json", "application/vnd.cyclonedx+json", "application/vnd.in-toto+json"]);
    let inspect: serde_json::Value = serde_json::from_str(&run_stdout(skopeo().arg("inspect").arg(format!("oci:{}:v1", image.display())))).unwrap();
    assert_eq!(inspect["Digest"], digest);

    // Two builds give the same bytes (nix-build --check builds again and compares).
    let file = expr_file(dir.path(), body);
    run(nix_build_cmd(&file).arg("--check"));

    // sbom = false writes none.
    let without = nix_build_expr(dir.path(), r#"nixery.buildNixeryImage { name = "sbom"; tag = "v1"; contents = [ pkgs.hello ]; sbom = false; }"#);
    assert!(!without.join("sbom.spdx.json").exists() && without.join("index.json").exists());
}

fn manifest_digest_of(layout: &std::path::Path) -> String {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_string()
}

/// A release's layer lock keeps the next release's layers where they were:
/// the same groups in the same order, a new version of a path in its
/// predecessor's layer; unchanged layers keep their digests. `nixery lock-layers` prints the lock an image carries;
/// an image built before works as the lock too, and neither needs
/// import-from-derivation.
#[test]
fn a_layer_lock_keeps_the_next_releases_layers_in_place() {
    let dir = tempfile::tempdir().unwrap();
    // libfoo 1.0 → 1.1 changes app's hash too (it refers to libfoo), as a
    // nixpkgs update does; hello, jq and their libraries stay.
    let release = |version: &str, lock: &str| {
        format!(
            r#"let
  step = name: refs: derivation {{
    inherit name;
    system = builtins.currentSystem;
    builder = "${{pkgs.busybox}}/bin/sh";
    args = [ "-c" "mkdir $out && echo ${{toString refs}} > $out/refs" ];
  }};
  libfoo = step "libfoo-{version}" [ ];
  app = step "app-1.0" [ libfoo ];
in
nixery.buildNixeryImage {{ name = "locked"; tag = "v1"; contents = [ app pkgs.hello pkgs.jq ]; maxLayers = 4; {lock} }}"#
        )
    };
    let first = nix_build_expr(dir.path(), &release("1.0", ""));
    let lock_text = std::fs::read_to_string(first.join("layers.lock.json")).unwrap();
    let lock: serde_json::Value = serde_json::from_str(&lock_text).unwrap();
    let layers = |lock: &serde_json::Value| -> Vec<(Vec<String>, String)> {
        lock["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["paths"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect(), l["digest"].as_str().unwrap().to_string()))
            .collect()
    };
    let before = layers(&lock);
    assert_eq!(before.len(), 3, "maxLayers 4: the root layer and three store layers for seven paths: {lock_text}");
    // The lock's digests are the image's store layers, in order.
    let (manifest, _) = layout_manifest(&first);
    let digests: Vec<&str> = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(before.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>(), &digests[..before.len()]);
    // nixery lock-layers prints it, one layer a line.
    let printed = run_stdout(Command::new(helper()).arg("lock-layers").arg(&first));
    assert_eq!(printed, lock_text);
    let lock_file = dir.path().join("layers.lock.json");
    std::fs::write(&lock_file, &printed).unwrap();

    // The next release, from the committed lock, without import-from-derivation.
    let file = expr_file(dir.path(), &release("1.1", &format!("layerLock = {};", lock_file.display())));
    let out = run(nix_build_cmd(&file).args(["--option", "allow-import-from-derivation", "false"]));
    let second = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Its build log (kept by Nix: the build may have run in an earlier
    // test run, with the same helper and lock).
    let log = run_stdout(Command::new("nix-store").env("NIX_CONFIG", NIX_CONFIG).arg("--read-log").arg(&second));
    assert!(log.contains("the layer lock kept 3 of its 3 layers"), "{log}");
    let after = layers(&serde_json::from_str(&std::fs::read_to_string(second.join("layers.lock.json")).unwrap()).unwrap());
    assert_eq!(after.len(), 3);
    for ((names_before, digest_before), (names_after, digest_after)) in before.iter().zip(&after) {
        // The same names, libfoo's new version where the old one was.
        let renamed: Vec<String> = names_before.iter().map(|n| n.replace("libfoo-1.0", "libfoo-1.1")).collect();
        assert_eq!(names_after, &renamed, "{names_before:?} → {names_after:?}");
        // A layer none of whose paths changed is the same bytes.
        let changed = names_before.iter().any(|n| n.starts_with("libfoo") || n.starts_with("app"));
        assert_eq!(digest_before == digest_after, !changed, "{names_before:?}");
    }

    // An image built before serves as the lock too.
    let from_image = expr_file(dir.path(), &release("1.1", &format!("layerLock = {};", first.display())));
    let third = std::path::PathBuf::from(run_stdout(&mut nix_build_cmd(&from_image)).trim());
    assert_eq!(std::fs::read(third.join("layers.lock.json")).unwrap(), std::fs::read(second.join("layers.lock.json")).unwrap());

    // A lock that is not one is named at build time.
    std::fs::write(&lock_file, "{\"version\":7,\"layers\":[]}").unwrap();
    let bad = expr_file(dir.path(), &release("1.2", &format!("layerLock = {};", lock_file.display())));
    let out = nix_build_cmd(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("layerLock") && err.contains("version 7"), "{err}");
}
