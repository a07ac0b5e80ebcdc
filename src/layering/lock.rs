//! Layer locks: the plan an image was built with, fed back into the next
//! build so that its layers stay put across releases.
//!
//! A fresh plan after a package-set update regroups paths and reorders
//! layers, and clients download again what they had. A lock (written
//! beside every image as `layers.lock.json`, or kept by the shim per name)
//! lists each store layer's paths by name without hash (`glibc-2.37-8`),
//! in image order, with its digest. Planning with it ([`plan_locked`]):
//!
//! 1. every locked layer is kept, in its order, holding the paths of the
//!    closure with the names it lists; a layer whose paths are all the same
//!    store paths (the lock keeps a digest of them) is the same bytes, so
//!    the same digest;
//! 2. a path whose name is new but whose package (`glibc` of
//!    `glibc-2.38`) a locked layer held goes where its predecessor was;
//! 3. locked layers left empty are dropped; what is new is planned by the
//!    algorithm within the budget left, after the locked layers;
//! 4. the budget is kept: when the lock holds more layers than it allows,
//!    or leaves no room for what is new, the last locked layers are merged.
//!
//! The order stays the lock's. Moving the changed layers after the
//! unchanged ones was measured (bench/sharing) and made Docker's chain
//! store worse, not better: a chain is a whole prefix, so removing a
//! changed layer from the middle changes every chain after it anyway, and
//! images that shared a prefix no longer do.
//!
//! The lock is data (names and digests), read inside the build: no
//! import-from-derivation, pure evaluation works.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{layer_of, plan_with, Algorithm, LayerPlan, LayeringError, PlannedLayer, PLAN_VERSION};
use crate::digest::Digest;
use crate::graph::{package_name, parse_name, ClosureGraph, Popularity};

/// The lock's file name, beside an image's `index.json`.
pub const LOCK_FILE: &str = "layers.lock.json";
/// Version of the lock's JSON contract.
pub const LOCK_VERSION: u32 = 1;

/// A layer lock: an image's store layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerLock {
    /// [`LOCK_VERSION`].
    pub version: u32,
    /// The layers, in image order.
    pub layers: Vec<LockedLayer>,
}

/// One locked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedLayer {
    /// Its store paths' names, without their hashes, sorted.
    pub paths: Vec<String>,
    /// Its digest, when it was packed (not for `nixery layers --previous`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// A digest of its store paths, hashes included ([`paths_digest`]):
    /// whether the next plan's layer holds exactly the same ones.
    #[serde(rename = "pathsDigest", default, skip_serializing_if = "Option::is_none")]
    pub paths_digest: Option<Digest>,
}

/// A digest of a layer's store paths (sorted, a line each): equal for two
/// layers of the same store paths, which are the same bytes.
pub fn paths_digest(paths: &[String]) -> Digest {
    let mut sorted: Vec<&str> = paths.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    Digest::of(sorted.join("\n").as_bytes())
}

impl LayerLock {
    /// The lock of layers (store paths, digest), in image order.
    pub fn of<'a>(layers: impl IntoIterator<Item = (&'a [String], Option<Digest>)>) -> LayerLock {
        let layers = layers
            .into_iter()
            .map(|(paths, digest)| {
                let mut names: Vec<String> = paths.iter().map(|p| package_name(p).to_string()).collect();
                names.sort();
                LockedLayer { paths: names, digest, paths_digest: Some(paths_digest(paths)) }
            })
            .collect();
        LayerLock { version: LOCK_VERSION, layers }
    }

    /// The lock of a plan (`nixery layers` output): names, no digests.
    pub fn of_plan(plan: &LayerPlan) -> LayerLock {
        LayerLock::of(plan.layers.iter().map(|l| (l.paths.as_slice(), None)))
    }

    /// Reads a lock: a `layers.lock.json`, or an image (a folder) that has
    /// one; `nixery layers` output is taken too.
    pub fn read(path: &Path) -> Result<LayerLock, String> {
        let file = if path.is_dir() { path.join(LOCK_FILE) } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            if path.is_dir() {
                format!("{} has no {LOCK_FILE} ({e}): pass an image built with this version of nixery, or a lock file", path.display())
            } else {
                format!("{}: {e}", file.display())
            }
        })?;
        LayerLock::from_json(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// Parses a lock, or a plan as `nixery layers` prints it.
    pub fn from_json(text: &str) -> Result<LayerLock, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let is_plan = value["layers"].as_array().is_some_and(|l| l.iter().any(|x| x.get("size").is_some()));
        if is_plan {
            return LayerPlan::from_json(text).map(|p| LayerLock::of_plan(&p));
        }
        let lock: LayerLock = serde_json::from_value(value).map_err(|e| format!("not a layer lock: {e}"))?;
        if lock.version != LOCK_VERSION {
            return Err(format!("a layer lock of version {}; this helper reads version {LOCK_VERSION}", lock.version));
        }
        Ok(lock)
    }

    /// The lock as its file holds it: one layer a line, so that a diff of
    /// a committed lock shows which layers changed.
    pub fn to_json(&self) -> String {
        let mut out = format!("{{\"version\":{},\"layers\":[\n", self.version);
        for (i, l) in self.layers.iter().enumerate() {
            out.push_str(&serde_json::to_string(l).expect("json"));
            out.push_str(if i + 1 < self.layers.len() { ",\n" } else { "\n" });
        }
        out.push_str("]}\n");
        out
    }
}

/// What planning with a lock did, for the build log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockReport {
    /// Locked layers kept (with at least one of their paths).
    pub kept: usize,
    /// Of those, the ones with exactly the same store paths.
    pub unchanged: usize,
    /// Locked layers dropped: none of their paths is left.
    pub dropped: usize,
    /// Paths that went where their predecessor (another version) was.
    pub moved_versions: usize,
    /// Paths planned afresh: new to the image.
    pub new_paths: usize,
    /// Locked layers merged to keep the budget.
    pub merged: usize,
}

/// Plans `graph` within `budget` layers: from `lock` when there is one
/// ([`plan_locked`], with what it did), afresh otherwise.
pub fn plan(
    graph: &ClosureGraph,
    popularity: &Popularity,
    budget: usize,
    algorithm: Algorithm,
    lock: Option<&LayerLock>,
) -> Result<(LayerPlan, Option<LockReport>), LayeringError> {
    match lock {
        Some(lock) => plan_locked(graph, popularity, budget, algorithm, lock).map(|(plan, report)| (plan, Some(report))),
        None => plan_with(graph, popularity, budget, algorithm).map(|plan| (plan, None)),
    }
}

/// Plans `graph` within `budget` layers starting from `lock` (see the
/// module documentation).
pub fn plan_locked(
    graph: &ClosureGraph,
    popularity: &Popularity,
    budget: usize,
    algorithm: Algorithm,
    lock: &LayerLock,
) -> Result<(LayerPlan, LockReport), LayeringError> {
    if budget == 0 {
        return Err(LayeringError::ZeroBudget(budget));
    }
    // Where each name, and each package of a versioned name, was.
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_package: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, layer) in lock.layers.iter().enumerate() {
        for name in &layer.paths {
            by_name.entry(name.as_str()).or_insert(i);
            if let (package, Some(_)) = parse_name(name) {
                by_package.entry(package).or_insert(i);
            }
        }
    }
    let mut report = LockReport::default();
    let mut held: Vec<Vec<String>> = vec![Vec::new(); lock.layers.len()];
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    for path in graph.paths.keys() {
        let name = package_name(path);
        let slot = match by_name.get(name) {
            Some(&i) => Some(i),
            None => match parse_name(name) {
                (package, Some(_)) => by_package.get(package).copied().inspect(|_| report.moved_versions += 1),
                _ => None,
            },
        };
        if let Some(i) = slot {
            held[i].push(path.clone());
            placed.insert(path);
        }
    }
    let kept: Vec<(Vec<String>, &LockedLayer)> = held.into_iter().zip(&lock.layers).filter(|(h, _)| !h.is_empty()).collect();
    report.unchanged = kept.iter().filter(|(h, locked)| locked.paths_digest.as_ref().is_some_and(|d| *d == paths_digest(h))).count();
    let mut layers: Vec<PlannedLayer> = kept.into_iter().map(|(h, _)| layer_of(graph, h)).collect();
    report.kept = layers.len();
    report.dropped = lock.layers.len() - layers.len();
    let rest = graph.without(&placed);
    report.new_paths = rest.paths.len();
    // Room for what is new: at least one layer when there is any.
    let room_needed = usize::from(!rest.paths.is_empty());
    while layers.len() + room_needed > budget && layers.len() >= 2 {
        let last = layers.pop().expect("two layers");
        let before = layers.pop().expect("two layers");
        layers.push(layer_of(graph, before.paths.into_iter().chain(last.paths).collect()));
        report.merged += 1;
    }
    if !rest.paths.is_empty() {
        if layers.len() >= budget {
            // A budget of one: everything in one layer.
            let all = layers.pop().map(|l| l.paths).unwrap_or_default();
            layers.push(layer_of(graph, all.into_iter().chain(rest.paths.keys().cloned()).collect()));
        } else {
            layers.extend(plan_with(&rest, popularity, budget - layers.len(), algorithm)?.layers);
        }
    }
    Ok((LayerPlan { version: PLAN_VERSION, layers }, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::PathInfo;

    fn path(name: &str) -> String {
        let hash: String = format!("{:0<32}", name.bytes().map(|b| (b'a' + b % 26) as char).collect::<String>()).chars().take(32).collect();
        format!("/nix/store/{hash}-{name}")
    }

    /// A graph of `names`: each refers to the ones after it in `refs`.
    fn graph(names: &[&str], refs: &[(&str, &[&str])]) -> ClosureGraph {
        let infos = names
            .iter()
            .map(|n| PathInfo {
                path: path(n),
                nar_size: 1000 * (n.len() as u64),
                closure_size: 0,
                references: refs.iter().find(|(from, _)| from == n).map(|(_, to)| to.iter().map(|t| path(t)).collect()).unwrap_or_default(),
                nar_hash: None,
            })
            .collect();
        ClosureGraph::new(infos, None).unwrap()
    }

    fn names(plan: &LayerPlan) -> Vec<Vec<&str>> {
        plan.layers.iter().map(|l| l.paths.iter().map(|p| package_name(p)).collect()).collect()
    }

    #[test]
    fn an_unchanged_closure_gets_the_same_plan_back() {
        let g = graph(&["app-1.0", "glibc-2.37", "openssl-3.0", "zlib-1.3"], &[("app-1.0", &["glibc-2.37", "openssl-3.0", "zlib-1.3"])]);
        let fresh = plan_with(&g, &Popularity::default(), 2, Algorithm::Sharing).unwrap();
        let lock = LayerLock::of_plan(&fresh);
        let (again, report) = plan_locked(&g, &Popularity::default(), 2, Algorithm::Sharing, &lock).unwrap();
        assert_eq!(again, fresh);
        assert_eq!(report, LockReport { kept: 2, unchanged: 2, ..Default::default() });
    }

    #[test]
    fn new_versions_take_their_predecessors_place_and_new_paths_come_last() {
        let lock = LayerLock {
            version: LOCK_VERSION,
            layers: vec![
                LockedLayer { paths: vec!["glibc-2.37".into()], digest: None, paths_digest: None },
                LockedLayer {
                    paths: vec!["openssl-3.0".into(), "zlib-1.3".into()],
                    digest: None,
                    paths_digest: Some(paths_digest(&[path("openssl-3.0"), path("zlib-1.3")])),
                },
                LockedLayer { paths: vec!["app-1.0".into()], digest: None, paths_digest: None },
                LockedLayer { paths: vec!["gone-1".into()], digest: None, paths_digest: None },
            ],
        };
        // glibc and app moved on; curl is new; gone is gone.
        let g = graph(
            &["app-1.1", "curl-8.5", "glibc-2.38", "openssl-3.0", "zlib-1.3"],
            &[("app-1.1", &["curl-8.5", "glibc-2.38", "openssl-3.0", "zlib-1.3"]), ("curl-8.5", &["glibc-2.38"])],
        );
        let (plan, report) = plan_locked(&g, &Popularity::default(), 10, Algorithm::Sharing, &lock).unwrap();
        // The locked layers in their order (openssl and zlib the same store
        // paths, unchanged), then the new.
        assert_eq!(names(&plan), vec![vec!["glibc-2.38"], vec!["openssl-3.0", "zlib-1.3"], vec!["app-1.1"], vec!["curl-8.5"]]);
        assert_eq!(report, LockReport { kept: 3, unchanged: 1, dropped: 1, moved_versions: 2, new_paths: 1, merged: 0 });
    }

    #[test]
    fn the_budget_is_kept_by_merging_the_last_locked_layers() {
        let singles: Vec<Vec<String>> = ["a-1", "b-1", "c-1", "d-1"].iter().map(|n| vec![path(n)]).collect();
        let lock = LayerLock::of(singles.iter().map(|p| (p.as_slice(), None)));
        let g = graph(&["a-1", "b-1", "c-1", "d-1", "e-1"], &[]);
        let (plan, report) = plan_locked(&g, &Popularity::default(), 3, Algorithm::Sharing, &lock).unwrap();
        assert!(plan.layers.len() <= 3);
        assert_eq!(names(&plan), vec![vec!["a-1"], vec!["b-1", "c-1", "d-1"], vec!["e-1"]]);
        assert_eq!(report.merged, 2);
        // Every path is in exactly one layer, whatever the budget.
        for budget in 1..6 {
            let (plan, _) = plan_locked(&g, &Popularity::default(), budget, Algorithm::Sharing, &lock).unwrap();
            assert!(plan.layers.len() <= budget);
            let mut all: Vec<String> = plan.layers.iter().flat_map(|l| l.paths.clone()).collect();
            all.sort();
            assert_eq!(all, g.paths.keys().cloned().collect::<Vec<_>>());
        }
    }

    #[test]
    fn locks_read_back_and_plans_read_as_locks() {
        let g = graph(&["a-1", "b-1"], &[]);
        let plan = plan_with(&g, &Popularity::default(), 5, Algorithm::Sharing).unwrap();
        let lock = LayerLock::of(plan.layers.iter().map(|l| (l.paths.as_slice(), Some(Digest::of(l.paths[0].as_bytes())))));
        let text = lock.to_json();
        assert_eq!(text.lines().count(), 2 + lock.layers.len(), "one layer a line:\n{text}");
        assert_eq!(LayerLock::from_json(&text).unwrap(), lock);
        let from_plan = LayerLock::from_json(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(from_plan, LayerLock::of_plan(&plan));
        assert!(LayerLock::from_json(r#"{"version":9,"layers":[]}"#).unwrap_err().contains("version 9"));
        assert!(LayerLock::from_json("[").unwrap_err().contains("not JSON"));
    }
}
