//! What the shim tells the people pulling: one line for each way an image
//! can fail, naming what failed and what to do about it. The registry
//! puts it in its error body (which docker, podman and skopeo print for
//! `4xx` answers) and in the status line's reason phrase (which they print
//! for `5xx` ones over HTTP/1.1); the start page lists it beside the name.
//!
//! Lines never carry host paths, store paths, URLs or Nix's log: those
//! stay in the server's log (and in the error's `detail` with
//! `NIXERY_DEBUG_ERRORS`).

use std::time::Duration;

use super::ShimError;
use crate::graph::{MissingKind, MissingPackage};
use crate::nix::NixError;

/// The derivation whose builder Nix says failed, by name (`broken-1.0`):
/// the first such line of a nix-build log, in the wording of Nix 2.8 to
/// 2.26 (`builder for '/nix/store/<hash>-<name>.drv' failed`) and of later
/// versions (`Cannot build '/nix/store/<hash>-<name>.drv'`).
pub fn failed_derivation(log: &str) -> Option<&str> {
    const MARKERS: [&str; 2] = ["builder for '", "Cannot build '"];
    log.lines().find_map(|line| {
        let start = MARKERS.iter().find_map(|m| line.find(m).map(|i| i + m.len()))?;
        let path = &line[start..];
        let path = &path[..path.find('\'')?];
        let base = path.strip_prefix(crate::graph::STORE_DIR)?.strip_prefix('/')?.strip_suffix(".drv")?;
        let (hash, name) = base.split_once('-')?;
        (hash.len() == 32 && !name.is_empty()).then_some(name)
    })
}

/// The name of prepare-image's own derivation: its failure is the
/// server's, not a package's.
const GRAPH_DERIVATION: &str = "nixery-image-graph";

/// The package that failed to build, if a package did (rather than the
/// graph derivation, or nothing Nix named).
pub fn failed_package(e: &NixError) -> Option<&str> {
    match e {
        NixError::BuildFailed { log, .. } => failed_derivation(log).filter(|n| *n != GRAPH_DERIVATION),
        _ => None,
    }
}

/// The name of the set a missing name was closest to: `candidates`
/// compared with `component` without regard to case, the closest within
/// a third of its length (one edit for short names), ties to the first in
/// sort order.
pub fn suggestion(m: &MissingPackage) -> Option<String> {
    let allowed = (m.component.chars().count() / 3).max(1);
    let c = crate::closest_name::closest(&m.component, m.candidates.iter().map(String::as_str), allowed)?;
    Some(if m.within.is_empty() { c.to_string() } else { format!("{}.{c}", m.within) })
}

/// Why one name is not a package, in a clause.
fn missing_clause(m: &MissingPackage) -> String {
    match m.kind {
        MissingKind::Absent => match suggestion(m) {
            Some(s) => format!("the package set has no {} (did you mean {s}?)", m.name),
            None => format!("the package set has no {}", m.name),
        },
        MissingKind::NotPackage => format!("{0} is a set of packages, not a package: name one in it, as {0}.NAME", m.name),
        MissingKind::Refused => format!("{} cannot be evaluated: the package set refuses it (broken, unfree or insecure) or its expression fails", m.name),
    }
}

/// What kind of failure an image's is, for the registry's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The name is not one the shim can build (`NAME_INVALID`).
    BadName,
    /// The build queue is full: try again soon (`TOOMANYREQUESTS`).
    Busy,
    /// The image does not exist: an unknown package or ref, a package that
    /// failed to build, a build stopped at its time limit
    /// (`MANIFEST_UNKNOWN`).
    NotFound,
    /// The package set cannot be reached or pinned (`UNAVAILABLE`).
    Unavailable,
    /// The server failed (`UNKNOWN`).
    Internal,
}

impl ShimError {
    /// What failed for `image` (`name:tag`), in one line for the people
    /// pulling it. `retry` is how long a failure is remembered
    /// (`NIXERY_FAILURE_TTL`): when pulling again builds again.
    pub fn explain(&self, image: &str, retry: Duration) -> String {
        self.explanation(image, retry).1
    }

    /// The kind of failure and [`ShimError::explain`]'s line, decided
    /// together so that the status and the words never disagree.
    pub fn explanation(&self, image: &str, retry: Duration) -> (FailureKind, String) {
        use FailureKind::*;
        let log = "the server's log has the details";
        if let Some(NixError::UnknownRef(r)) = self.nix() {
            return (NotFound, format!("the package set has no git ref {r:?}: the tag names a branch, tag or commit of the server's package repository"));
        }
        match self {
            ShimError::Name(e) => (BadName, format!("{e}: an image name is a list of package attribute names, as shell/hello")),
            ShimError::TooManyPackages { .. } => (BadName, format!("{self}: split it into smaller images")),
            ShimError::NotFound(missing) => (NotFound, missing.iter().map(missing_clause).collect::<Vec<_>>().join("; ")),
            ShimError::Busy { queued } => (Busy, format!("{image} is not built yet and {queued} images wait to be built already; try again in a few seconds")),
            ShimError::Nix(NixError::Timeout { timeout, .. }) => (
                NotFound,
                format!(
                    "building {image} took longer than NIX_TIMEOUT ({} s) and was stopped; what Nix built so far is kept: pull again in {} s to go on, or have the server's NIX_TIMEOUT raised",
                    timeout.as_secs(),
                    retry.as_secs().max(1)
                ),
            ),
            ShimError::Source(_) => (Unavailable, format!("the server cannot pin its package set (NIXERY_PKGS_REPO, NIXERY_PKGS_PATH or NIXERY_CHANNEL); {log}")),
            ShimError::Nix(e) => match failed_package(e) {
                Some(p) => (NotFound, format!("cannot build {image}: its package {p} failed to build in Nix; the server's log has Nix's output")),
                None => (Internal, format!("the nix build of {image} failed; {log}")),
            },
            ShimError::Storage(_) => (Internal, format!("the server's storage failed while making {image}; {log}")),
            ShimError::Assembly(_) | ShimError::Task(_) | ShimError::Attach(_) => (Internal, format!("assembling {image} failed; {log}")),
            ShimError::Image(e) => (Internal, format!("{e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn absent(name: &str, component: &str, within: &str, candidates: &[&str]) -> MissingPackage {
        MissingPackage {
            name: name.into(),
            kind: MissingKind::Absent,
            component: component.into(),
            within: within.into(),
            candidates: candidates.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn suggests_the_closest_name_within_a_third_of_its_length() {
        assert_eq!(suggestion(&absent("hellp", "hellp", "", &["help", "hello", "jq"])).as_deref(), Some("hello"));
        // Ties go to the first in sort order; case does not count.
        assert_eq!(suggestion(&absent("HELO", "HELO", "", &["hello", "help"])).as_deref(), Some("hello"));
        // A transposition is one edit.
        assert_eq!(suggestion(&absent("hlelo", "hlelo", "", &["hello"])).as_deref(), Some("hello"));
        // Too far: nothing.
        assert_eq!(suggestion(&absent("curl", "curl", "", &["coreutils", "jq"])), None);
        assert_eq!(suggestion(&absent("jx", "jx", "", &["jq", "j"])).as_deref(), Some("j"));
        // Nested names keep the set they were looked up in.
        assert_eq!(suggestion(&absent("xorg.xeev", "xeev", "xorg", &["xev"])).as_deref(), Some("xorg.xev"));
        // The name itself (a case-insensitive duplicate) is no suggestion.
        assert_eq!(suggestion(&absent("a", "a", "", &["A"])), None);
    }

    #[test]
    fn finds_the_derivation_that_failed() {
        let nix28 = "building '/nix/store/7zkx7kbp6xp887zhamrwf34mdacwb2ym-broken-1.0.drv'...\n\
                     broken-1.0: this package always fails to build\n\
                     error: builder for '/nix/store/7zkx7kbp6xp887zhamrwf34mdacwb2ym-broken-1.0.drv' failed with exit code 1\n\
                     error: 1 dependencies of derivation '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixery-image-graph.drv' failed to build";
        assert_eq!(failed_derivation(nix28), Some("broken-1.0"));
        let later = "error: Cannot build '/nix/store/7zkx7kbp6xp887zhamrwf34mdacwb2ym-broken-1.0.drv'.\n       Reason: builder failed with exit code 1.";
        assert_eq!(failed_derivation(later), Some("broken-1.0"));
        assert_eq!(failed_derivation("error: builder for '/tmp/x.drv' failed"), None);
        assert_eq!(failed_derivation("error: builder for '/nix/store/short-x.drv' failed"), None);
        let graph = NixError::BuildFailed {
            status: "exit status: 1".into(),
            log: "error: builder for '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixery-image-graph.drv' failed with exit code 1".into(),
        };
        assert_eq!(failed_package(&graph), None);
    }

    #[test]
    fn explains_in_one_line() {
        let ttl = Duration::from_secs(30);
        let e = ShimError::NotFound(vec![
            absent("hellp", "hellp", "", &["hello"]),
            MissingPackage { name: "xorg".into(), kind: MissingKind::NotPackage, component: String::new(), within: String::new(), candidates: vec![] },
        ]);
        assert_eq!(
            e.explain("hellp/xorg:latest", ttl),
            "the package set has no hellp (did you mean hello?); xorg is a set of packages, not a package: name one in it, as xorg.NAME"
        );
        let e = ShimError::Nix(NixError::Timeout { timeout: Duration::from_secs(3), log: "slow-1.0: building\n/nix/store/x".into() });
        let line = e.explain("slow:latest", ttl);
        assert!(line.contains("NIX_TIMEOUT (3 s)") && line.contains("pull again in 30 s") && !line.contains("/nix/store"), "{line}");
        let e = ShimError::Nix(NixError::BuildFailed {
            status: "exit status: 1".into(),
            log: "error: builder for '/nix/store/7zkx7kbp6xp887zhamrwf34mdacwb2ym-broken-1.0.drv' failed with exit code 1".into(),
        });
        assert_eq!(
            e.explain("broken:latest", ttl),
            "cannot build broken:latest: its package broken-1.0 failed to build in Nix; the server's log has Nix's output"
        );
        for e in [e, ShimError::Nix(NixError::UnknownRef("v9".into())), ShimError::Busy { queued: 3 }] {
            assert!(!e.explain("x:latest", ttl).contains('\n'));
        }
    }
}
