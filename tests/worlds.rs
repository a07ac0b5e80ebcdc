//! Across worlds: Nix 2.8 (this machine) and Nix 2.26 (the Debian 13
//! world) build the same images to the byte, and Nix 2.26 builds them as
//! NixOS and the official installer run Nix: a daemon with build users,
//! an unprivileged user asking, the sandbox on.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::world::{debian13_command, DEBIAN13_ROOT};
use crate::support::*;

/// Images of every kind the library makes, as one attribute set: gzip and
/// zstd, incremental, a stream image, a docker-archive, users and perms,
/// an explicit layer, an index of two platforms. `marker` goes into a
/// package of each, so a new marker means nothing is built yet.
fn every_kind_of_image(marker: &str) -> String {
    format!(
        r#"let
  {binding}
  arm = import {repo}/tests/pkgs {{ system = "aarch64-linux"; }};
  common = {{ name = "ghcr.io/acme/app"; tag = "v1"; contents = [ pkgs.hello pkgs.jq marker ]; config.Cmd = [ "hello" ]; }};
in {{
  gzip = nixery.buildNixeryImage common;
  zstd = nixery.buildNixeryImage (common // {{ compression = "zstd"; }});
  incremental = nixery.buildNixeryImage (common // {{ incremental = true; maxLayers = 4; }});
  stream = nixery.streamNixeryImage common;
  archive = nixery.buildNixeryImage (common // {{ format = "docker-archive"; }});
  users = nixery.buildNixeryImage (common // {{
    users = [ {{ name = "app"; uid = 1000; }} ];
    perms = [ {{ path = pkgs.jq; mode = "0750"; uid = 1000; gid = 1000; }} ];
    layers = [ [ pkgs.jq ] ];
    initializeNixDatabase = true;
  }});
  index = nixery.buildNixeryIndex {{
    name = "hello";
    images = [ (nixery.buildNixeryImage {{ name = "hello"; contents = [ pkgs.hello marker ]; }})
               (nixery.buildNixeryImage {{ name = "hello"; contents = [ arm.hello ]; }}) ];
  }};
}}"#,
        repo = repo().display(),
        binding = marker_binding(marker)
    )
}

/// What a path holds, compared across stores: every file's bytes and
/// mode, every symlink's target, by path below `root`.
fn tree(root: &Path) -> Vec<(PathBuf, String)> {
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(root).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let meta = entry.path().symlink_metadata().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(entry.path()).unwrap().display())
        } else if meta.is_file() {
            format!("{:o} {}", meta.permissions().mode() & 0o777, nixery::digest::Digest::of(&std::fs::read(entry.path()).unwrap()))
        } else {
            "dir".to_string()
        };
        entries.push((rel, what));
    }
    entries
}

/// The output paths `nix-build` printed.
fn out_paths(stdout: &[u8]) -> Vec<PathBuf> {
    String::from_utf8_lossy(stdout).lines().map(PathBuf::from).collect()
}

/// Every path in `paths` holds the same in this machine's store and in
/// the Debian 13 world's.
fn assert_same_in_both_stores(paths: &[PathBuf]) {
    assert_eq!(paths.len(), 7, "every kind of image was built: {paths:?}");
    for p in paths {
        let there = Path::new(DEBIAN13_ROOT).join(p.strip_prefix("/").unwrap());
        assert!(p.exists() && there.exists(), "{} is in both stores", p.display());
        assert_eq!(tree(p), tree(&there), "{} differs between Nix 2.8 and Nix 2.26", p.display());
    }
}

#[test]
fn nix_2_8_and_nix_2_26_build_every_kind_of_image_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("worlds-{}", std::process::id());
    let file = expr_file(dir.path(), &every_kind_of_image(&marker));
    let here = out_paths(&run(&mut nix_build_cmd(&file)).stdout);
    let mut there = debian13_command("nix-build", &[dir.path()]);
    there.env("NIX_CONFIG", NIX_CONFIG).arg(&file).arg("--no-out-link").arg("--arg").arg("helper").arg(helper());
    let there = out_paths(&run(&mut there).stdout);
    assert_eq!(here, there, "the same store paths (the same inputs) in both worlds");
    assert_same_in_both_stores(&here);
}

/// Nix as NixOS runs it: nix-daemon as root with the nixbld build users
/// (scripts/setup makes them in the world), the sandbox on, and the build
/// asked for by `nixery-user`, who cannot write the store. The images are
/// new to the world's store (a new marker), and the same bytes as Nix 2.8
/// builds here single-user.
#[test]
fn nix_2_26_builds_images_for_an_unprivileged_user_through_its_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("daemon-{}-{}", std::process::id(), unique());
    let file = expr_file(dir.path(), &every_kind_of_image(&marker));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = r#"
set -eu
conf=$(cat /etc/nix/nix.conf)
case $conf in *"build-users-group = nixbld"*) ;; *) echo "the world's nix.conf has no build users: $conf" >&2; exit 1 ;; esac
socket=/nix/var/nix/daemon-socket/socket
rm -f $socket
nix-daemon &
daemon=$!
trap 'kill $daemon; wait $daemon 2>/dev/null || true' EXIT
until [ -S $socket ]; do kill -0 $daemon; sleep 0.05; done
if runuser -u nixery-user -- touch /nix/store/nixery-user-was-here 2>/dev/null; then
  echo "nixery-user can write the store" >&2; exit 1
fi
runuser -u nixery-user -- env NIX_REMOTE=daemon HOME=/home/nixery-user NIXERY_TESTS_HOST_ROOT=/run/host \
  nix-build "$0" --no-out-link --arg helper "$1"
"#;
    let out = run(debian13_command("bash", &[dir.path()]).env_remove("NIX_CONFIG").args(["-c", script]).arg(&file).arg(helper()));
    let there = out_paths(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("building '"), "the daemon built them:\n{log}");
    let here = out_paths(&run(&mut nix_build_cmd(&file)).stdout);
    assert_eq!(here, there);
    assert_same_in_both_stores(&here);
}

in_both_worlds! {
    /// What scripts/setup leaves in /etc/nix/nix.conf builds in the
    /// sandbox, as NixOS and the official installers do, and needs no
    /// NIX_CONFIG: README commands work as written.
    fn the_machines_own_nix_config_builds_in_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let nonce = format!("{}-{}", std::process::id(), unique());
        let file = expr_file(
            dir.path(),
            &format!(
                r#"derivation {{
  name = "sandboxed";
  system = builtins.currentSystem;
  builder = "${{pkgs.busybox}}/bin/sh";
  args = [ "-c" "if [ -e /usr/bin ]; then echo outside > $out; else echo sandboxed > $out; fi" ];
  nonce = "{nonce}";
}}"#
            ),
        );
        let out = run_stdout(Command::new("nix-build").env_remove("NIX_CONFIG").arg(&file).arg("--no-out-link").arg("--arg").arg("helper").arg(helper()));
        assert_eq!(std::fs::read_to_string(out.trim()).unwrap(), "sandboxed\n");
    }
}
