//! The two worlds the suite runs in, as a matrix.
//!
//! - `debian12`: this machine, Debian 12: Nix 2.8, podman 4.3, skopeo 1.9,
//!   containerd 1.6 (what the tests always ran).
//! - `debian13`: the current world, Debian 13 beside it (scripts/setup
//!   installs it, `scripts/world` enters it): Nix 2.26, podman 5.4,
//!   skopeo 1.18, containerd 1.7, cosign and oras, with a Nix store of its
//!   own.
//!
//! A test written with [`in_both_worlds!`] becomes a module with a test
//! per world (`library::users_own_their_home…::debian13`), so a failure
//! names the world. The `debian13` test runs this test binary again
//! inside the world, where every program the test starts is that world's,
//! and checks that its inner half ran and passed (as
//! [`super::in_loopback_netns`] does for network namespaces).
//! `scripts/test` prints the versions of both worlds before the tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::repo;

/// The variable the `debian13` half sets for its inner half.
const WORLD_VAR: &str = "NIXERY_TEST_WORLD";

/// Where the world's tree is (scripts/setup puts it there).
pub const DEBIAN13_ROOT: &str = "/opt/nixery-tools/worlds/trixie";

/// The worlds a test can run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    /// This machine: Debian 12.
    Debian12,
    /// The current world: Debian 13, entered by `scripts/world`.
    Debian13,
}

impl World {
    /// The world this test process runs in.
    pub fn this() -> World {
        match std::env::var(WORLD_VAR).as_deref() {
            Ok("debian13") => World::Debian13,
            _ => World::Debian12,
        }
    }

    /// Where this machine's root is seen from this world: `/`, or
    /// `/run/host` in the Debian 13 world.
    pub fn host_root(self) -> PathBuf {
        match self {
            World::Debian12 => PathBuf::from("/"),
            World::Debian13 => PathBuf::from("/run/host"),
        }
    }
}

/// A command that runs `program` in the Debian 13 world (`scripts/world`),
/// with `dirs` shared besides /tmp and the repository.
pub fn debian13_command(program: impl AsRef<std::ffi::OsStr>, dirs: &[&Path]) -> Command {
    let mut c = Command::new(repo().join("scripts/world"));
    for d in dirs {
        c.arg("--share").arg(d);
    }
    c.arg("--").arg(program);
    c
}

/// Runs the inner half of `test` (its module path, as `module_path!()`
/// gives it) in the Debian 13 world and panics with its output unless it
/// ran and passed.
pub fn run_in_debian13(module: &str) {
    let test = module.split_once("::").map(|(_, rest)| rest).unwrap_or(module);
    let inner = format!("{test}::debian13_inside");
    let exe = std::env::current_exe().unwrap();
    // The test binary and the helper live in the target directory, which
    // is shared (it may be outside the repository).
    let target = exe.ancestors().nth(3).unwrap_or(Path::new("/")).to_path_buf();
    let out = debian13_command(&exe, &[&target])
        .args(["--exact", &inner, "--ignored", "--test-threads=1"])
        .env(WORLD_VAR, "debian13")
        .output()
        .unwrap_or_else(|e| panic!("cannot start scripts/world: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{inner} failed in the Debian 13 world (Nix 2.26, podman 5.4, skopeo 1.18, containerd 1.7), {}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// Panics unless this process runs in the Debian 13 world.
pub fn require_debian13() {
    assert_eq!(World::this(), World::Debian13, "this is the inner half of a debian13 test: run that test, which enters the world");
    assert!(Path::new("/run/host").is_dir(), "the world has this machine's root at /run/host");
    let version = std::fs::read_to_string("/etc/debian_version").unwrap_or_default();
    assert!(version.starts_with("13"), "the world is Debian 13, not {version:?}");
}

/// Declares a test that runs in both worlds: a module named after it with
/// a `debian12` test (here) and a `debian13` test (in the current world).
macro_rules! in_both_worlds {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body() $body

            #[test]
            fn debian12() {
                body()
            }

            #[test]
            fn debian13() {
                $crate::support::world::run_in_debian13(module_path!())
            }

            #[test]
            #[ignore = "the inner half of the debian13 test, which runs it in the Debian 13 world"]
            fn debian13_inside() {
                $crate::support::world::require_debian13();
                body()
            }
        }
    };
}
pub(crate) use in_both_worlds;
