//! The closure graph: which store paths an image holds and how they refer to
//! each other, plus the popularity data that layering weighs them by.
//!
//! The graph comes from Nix's `exportReferencesGraph` under
//! `__structuredAttrs`: Nix writes, into the builder's `.attrs.json`,
//!
//! ```json
//! { "exportReferencesGraph": { "graph": ["/nix/store/…-hello"] },
//!   "graph": [ { "path": "/nix/store/…-hello", "narSize": 123,
//!                "closureSize": 456, "references": ["/nix/store/…-glibc"] } ] }
//! ```
//!
//! The roots are the content packages (in the order the user gave them); the
//! `graph` list is their whole runtime closure. This module parses and checks
//! that input and owns nothing else: it does not decide layers.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Where Nix keeps store paths. Images always place paths at this prefix.
pub const STORE_DIR: &str = "/nix/store";

/// Errors in a closure graph or in popularity data.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The graph is not the JSON Nix writes.
    #[error("the closure graph is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0:?} is not a store path (expected {STORE_DIR}/<hash>-<name>)")]
    /// A path outside the store (or one that could escape it).
    NotAStorePath(String),
    #[error("store path {path} refers to {reference}, which is not in the graph")]
    /// A reference to a path the graph does not hold.
    DanglingReference {
        /// The path that refers.
        path: String,
        /// The path it refers to.
        reference: String,
    },
    #[error("root {0} is not in the graph")]
    /// A root the graph does not hold.
    UnknownRoot(String),
    #[error("store path {0} appears twice in the graph")]
    /// A path listed twice.
    Duplicate(String),
    /// A versioned document of another version than this helper reads.
    #[error("a {what} of version {found}; this helper reads version {expected}: use the helper that matches lib.nix")]
    Version {
        /// Which document.
        what: &'static str,
        /// Its version.
        found: u32,
        /// The version this helper reads.
        expected: u32,
    },
    #[error("popularity data is not a JSON object of name to count: {0}")]
    /// Popularity data that is not a JSON object of name to count.
    Popularity(serde_json::Error),
}

/// What an image's SBOMs say of a package it names, from its `meta`
/// (prepare-image/package-meta.nix, for lib.nix and prepare-image alike).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageMeta {
    /// The package's output path.
    pub path: String,
    /// `pname`, when it has one.
    #[serde(default)]
    pub pname: Option<String>,
    /// `version`, when it has one.
    #[serde(default)]
    pub version: Option<String>,
    /// SPDX identifiers of `meta.license` (nixpkgs' `spdxId`s).
    #[serde(default)]
    pub licenses: Vec<String>,
    /// `meta.homepage`.
    #[serde(default)]
    pub homepage: Option<String>,
    /// `meta.description`.
    #[serde(default)]
    pub description: Option<String>,
    /// The derivation that built it (`drvPath`), for the provenance.
    #[serde(default)]
    pub drv_path: Option<String>,
}

/// Version of the graph document `internal write-graph` writes.
pub const GRAPH_VERSION: u32 = 1;

/// The closure graph of the packages prepare-image found, as its
/// derivation (`nixery internal write-graph`) writes it for the registry
/// shim to read: the names the package set lacks, the packages found (in
/// the order asked) and their closure.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphDoc {
    /// [`GRAPH_VERSION`].
    pub version: u32,
    /// The names the package set does not have.
    pub not_found: Vec<String>,
    /// Why each of them is missing (absent from older documents).
    #[serde(default)]
    pub missing: Vec<MissingPackage>,
    /// The packages found, in the order asked (the image's contents).
    pub roots: Vec<String>,
    /// Their closure.
    pub graph: Vec<PathInfo>,
    /// What the SBOMs say of the packages found (absent from older
    /// documents).
    #[serde(default)]
    pub package_meta: Vec<PackageMeta>,
}

impl GraphDoc {
    /// Reads one, refusing another version than this program writes.
    pub fn from_json(text: &str) -> Result<GraphDoc, GraphError> {
        let doc: GraphDoc = serde_json::from_str(text)?;
        if doc.version != GRAPH_VERSION {
            return Err(GraphError::Version { what: "closure graph document", found: doc.version, expected: GRAPH_VERSION });
        }
        Ok(doc)
    }
}

/// A name prepare-image did not find, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MissingPackage {
    /// The (dotted) name asked for.
    pub name: String,
    /// Why it is missing.
    pub kind: MissingKind,
    /// For [`MissingKind::Absent`]: the component that was not found.
    #[serde(default)]
    pub component: String,
    /// The dotted name of the set it was looked up in (empty: the top).
    #[serde(default)]
    pub within: String,
    /// Names of that set of about the component's length.
    #[serde(default)]
    pub candidates: Vec<String>,
}

/// Why a name is not a package of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MissingKind {
    /// The set has no such attribute.
    Absent,
    /// The attribute is a set of packages, not a package.
    NotPackage,
    /// Its evaluation throws (broken, unfree, insecure or failing).
    Refused,
}

/// One store path of the closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathInfo {
    /// Absolute store path, `/nix/store/<hash>-<name>`.
    pub path: String,
    /// Size of the path's own NAR serialisation, in bytes.
    #[serde(default)]
    pub nar_size: u64,
    /// Size of the path's whole closure, in bytes.
    #[serde(default)]
    pub closure_size: u64,
    /// Store paths this path refers to (may include itself).
    #[serde(default)]
    pub references: Vec<String>,
    /// The hash of the path's NAR serialisation (`sha256:<base32>`), as Nix
    /// registers it; what a Nix database in the image records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nar_hash: Option<String>,
}

/// A checked closure graph: every reference resolves, every root is present.
#[derive(Debug, Clone, Default)]
pub struct ClosureGraph {
    /// All paths, keyed (and so iterated) in sorted order.
    pub paths: BTreeMap<String, PathInfo>,
    /// The content packages the image was asked for, in the user's order,
    /// without duplicates.
    pub roots: Vec<String>,
}

#[derive(Deserialize)]
struct RawGraphFile {
    graph: Vec<PathInfo>,
    #[serde(default, rename = "exportReferencesGraph")]
    export: Option<RawExport>,
}

#[derive(Deserialize)]
struct RawExport {
    #[serde(default)]
    graph: Vec<String>,
}

impl ClosureGraph {
    /// Parses the JSON Nix writes for `exportReferencesGraph.graph` under
    /// structured attributes. Roots come from `exportReferencesGraph.graph`;
    /// when that key is absent, every path no other path refers to is a root.
    pub fn from_json(text: &str) -> Result<ClosureGraph, GraphError> {
        let raw: RawGraphFile = serde_json::from_str(text)?;
        let roots = raw.export.map(|e| e.graph);
        ClosureGraph::new(raw.graph, roots)
    }

    /// Builds and checks a graph from path infos and (optionally) its roots.
    pub fn new(infos: Vec<PathInfo>, roots: Option<Vec<String>>) -> Result<ClosureGraph, GraphError> {
        let mut paths = BTreeMap::new();
        for mut info in infos {
            check_store_path(&info.path)?;
            info.references.sort();
            info.references.dedup();
            if paths.contains_key(&info.path) {
                return Err(GraphError::Duplicate(info.path));
            }
            paths.insert(info.path.clone(), info);
        }
        for info in paths.values() {
            for r in &info.references {
                if !paths.contains_key(r) {
                    return Err(GraphError::DanglingReference { path: info.path.clone(), reference: r.clone() });
                }
            }
        }
        let roots = match roots {
            Some(roots) => {
                let mut seen = BTreeSet::new();
                let mut ordered = Vec::new();
                for r in roots {
                    if !paths.contains_key(&r) {
                        return Err(GraphError::UnknownRoot(r));
                    }
                    if seen.insert(r.clone()) {
                        ordered.push(r);
                    }
                }
                ordered
            }
            None => {
                let referenced: BTreeSet<&String> = paths.values().flat_map(|i| i.references.iter().filter(move |r| **r != i.path)).collect();
                paths.keys().filter(|p| !referenced.contains(p)).cloned().collect()
            }
        };
        Ok(ClosureGraph { paths, roots })
    }

    /// Total NAR size of all paths.
    pub fn total_size(&self) -> u64 {
        self.paths.values().map(|p| p.nar_size).sum()
    }

    /// The closure of `roots` (every path they reach, themselves included).
    /// Roots not in the graph are an error.
    pub fn closure<'a, 'r>(&'a self, roots: impl IntoIterator<Item = &'r str>) -> Result<BTreeSet<&'a str>, GraphError> {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = Vec::new();
        for r in roots {
            let (key, _) = self.paths.get_key_value(r).ok_or_else(|| GraphError::UnknownRoot(r.to_string()))?;
            stack.push(key);
        }
        while let Some(p) = stack.pop() {
            if seen.insert(p) {
                stack.extend(self.paths[p].references.iter().map(String::as_str).filter(|r| !seen.contains(r)));
            }
        }
        Ok(seen)
    }

    /// The graph without `removed`: references to removed paths are
    /// dropped, and removed roots are no longer roots.
    pub fn without(&self, removed: &BTreeSet<&str>) -> ClosureGraph {
        let paths = self
            .paths
            .iter()
            .filter(|(p, _)| !removed.contains(p.as_str()))
            .map(|(p, info)| {
                let mut info = info.clone();
                info.references.retain(|r| !removed.contains(r.as_str()));
                (p.clone(), info)
            })
            .collect();
        let roots = self.roots.iter().filter(|r| !removed.contains(r.as_str())).cloned().collect();
        ClosureGraph { paths, roots }
    }
}

fn check_store_path(path: &str) -> Result<(), GraphError> {
    let bad = || GraphError::NotAStorePath(path.to_string());
    let rest = path.strip_prefix(STORE_DIR).and_then(|r| r.strip_prefix('/')).ok_or_else(bad)?;
    // <32 base-32 hash chars>-<name>, one component, nothing that escapes.
    if rest.len() < 34 || rest.contains('/') || rest.as_bytes()[32] != b'-' || rest == ".." {
        return Err(bad());
    }
    if !rest[..32].bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad());
    }
    Ok(())
}

/// The package name of a store path: the part after `<hash>-`, as the
/// original Nixery's popularity data keys it (`glibc-2.37-8`).
pub fn package_name(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    match base.get(33..) {
        Some(name) if base.as_bytes().get(32) == Some(&b'-') => name,
        _ => base,
    }
}

/// A store path's name (without its hash) split as `builtins.parseDrvName`
/// does: `("glibc", Some("2.37-8"))`, `("source", None)`.
pub fn parse_name(name: &str) -> (&str, Option<&str>) {
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(|c| !c.is_ascii_alphabetic()) {
            return (&name[..i], Some(&name[i + 1..]));
        }
    }
    (name, None)
}

/// Popularity data: how many packages of a package set refer to each
/// package name. Names are store path names without the hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Popularity(pub BTreeMap<String, u64>);

impl Popularity {
    /// Parses `{"glibc-2.37-8": 12345, …}`.
    pub fn from_json(text: &str) -> Result<Popularity, GraphError> {
        serde_json::from_str(text).map(Popularity).map_err(GraphError::Popularity)
    }

    /// The popularity of a store path (0 when unknown).
    pub fn of(&self, path: &str) -> u64 {
        self.0.get(package_name(path)).copied().unwrap_or(0)
    }
}

/// Counts popularity the way the original Nixery's popcount does: for each
/// path name, how many packages have it in their runtime closure.
///
/// `references` maps every store path to the paths it refers to (self
/// references allowed, no other cycles: Nix cannot make them); `packages`
/// are the packages to count over (`None`: every path counts as one).
/// Paths referred to but missing from `references` count as leaves.
pub fn popcount(references: &BTreeMap<String, Vec<String>>, packages: Option<&[String]>) -> Popularity {
    // Index every path, referred-to ones too.
    let mut names: BTreeSet<&str> = references.keys().map(String::as_str).collect();
    names.extend(references.values().flatten().map(String::as_str));
    let names: Vec<&str> = names.into_iter().collect();
    let index = |p: &str| names.binary_search(&p).expect("indexed");
    let refs: Vec<Vec<usize>> =
        names.iter().map(|p| references.get(*p).map(|r| r.iter().map(|x| index(x)).filter(|&x| names[x] != *p).collect()).unwrap_or_default()).collect();
    // Closures bottom-up, in depth-first postorder.
    let n = names.len();
    let mut closure: Vec<Option<Vec<u32>>> = vec![None; n];
    for start in 0..n {
        let mut stack = vec![(start, false)];
        while let Some((v, expanded)) = stack.pop() {
            if closure[v].is_some() {
                continue;
            }
            if expanded {
                let mut c = vec![v as u32];
                for &r in &refs[v] {
                    // A cycle (impossible in a real store) just truncates.
                    if let Some(rc) = &closure[r] {
                        c.extend_from_slice(rc);
                    }
                }
                c.sort_unstable();
                c.dedup();
                closure[v] = Some(c);
            } else {
                stack.push((v, true));
                stack.extend(refs[v].iter().filter(|&&r| closure[r].is_none()).map(|&r| (r, false)));
            }
        }
    }
    let counted: Vec<usize> = match packages {
        Some(pkgs) => pkgs.iter().filter_map(|p| names.binary_search(&p.as_str()).ok()).collect(),
        None => (0..n).collect(),
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for p in counted {
        for &q in closure[p].as_deref().unwrap_or(&[]) {
            *counts.entry(package_name(names[q as usize]).to_string()).or_default() += 1;
        }
    }
    Popularity(counts)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake store path with a valid-looking hash derived from the name.
    pub fn sp(name: &str) -> String {
        let mut hash: String = name.bytes().map(|b| (b'a' + b % 26) as char).collect();
        while hash.len() < 32 {
            hash.push('0');
        }
        hash.truncate(32);
        format!("/nix/store/{hash}-{name}")
    }

    #[test]
    fn parses_structured_attrs_graph() {
        let (a, b) = (sp("a-1"), sp("b-2"));
        let json = format!(
            r#"{{"exportReferencesGraph":{{"graph":["{a}"]}},
                "graph":[{{"path":"{a}","narSize":10,"closureSize":30,"references":["{b}","{a}"]}},
                         {{"path":"{b}","narSize":20,"closureSize":20,"references":[]}}]}}"#
        );
        let g = ClosureGraph::from_json(&json).unwrap();
        assert_eq!(g.roots, vec![a.clone()]);
        assert_eq!(g.paths.len(), 2);
        assert_eq!(g.total_size(), 30);
        let mut want = vec![a.clone(), b];
        want.sort();
        assert_eq!(g.paths[&a].references, want);
    }

    #[test]
    fn roots_default_to_unreferenced_paths() {
        let (a, b) = (sp("a"), sp("b"));
        let json = format!(r#"{{"graph":[{{"path":"{a}","narSize":1,"references":["{a}","{b}"]}},{{"path":"{b}","narSize":1,"references":[]}}]}}"#);
        assert_eq!(ClosureGraph::from_json(&json).unwrap().roots, vec![a]);
    }

    #[test]
    fn rejects_dangling_references_and_unknown_roots() {
        let (a, b) = (sp("a"), sp("b"));
        let json = format!(r#"{{"graph":[{{"path":"{a}","narSize":1,"references":["{b}"]}}]}}"#);
        let err = ClosureGraph::from_json(&json).unwrap_err().to_string();
        assert!(err.contains("not in the graph"), "{err}");
        let json = format!(r#"{{"exportReferencesGraph":{{"graph":["{b}"]}},"graph":[{{"path":"{a}"}}]}}"#);
        assert!(matches!(ClosureGraph::from_json(&json), Err(GraphError::UnknownRoot(_))));
    }

    #[test]
    fn rejects_paths_outside_the_store() {
        for bad in ["/etc/passwd", "/nix/store/short-x", "/nix/store/../../etc", "relative"] {
            let json = format!(r#"{{"graph":[{{"path":"{bad}"}}]}}"#);
            assert!(matches!(ClosureGraph::from_json(&json), Err(GraphError::NotAStorePath(_))), "{bad}");
        }
    }

    #[test]
    fn closures_and_subgraphs() {
        let (app, lib, libc, other) = (sp("app"), sp("lib"), sp("libc"), sp("other"));
        let info = |p: &str, refs: &[&String]| PathInfo {
            path: p.to_string(),
            nar_size: 1,
            closure_size: 0,
            references: refs.iter().map(|r| r.to_string()).collect(),
            nar_hash: None,
        };
        let g = ClosureGraph::new(
            vec![info(&app, &[&lib, &app]), info(&lib, &[&libc]), info(&libc, &[]), info(&other, &[&libc])],
            Some(vec![app.clone(), other.clone()]),
        )
        .unwrap();
        let c = g.closure([lib.as_str()]).unwrap();
        assert_eq!(c.into_iter().collect::<Vec<_>>(), {
            let mut v = vec![lib.as_str(), libc.as_str()];
            v.sort();
            v
        });
        assert!(g.closure([sp("ghost").as_str()]).is_err());
        let removed: BTreeSet<&str> = [lib.as_str(), libc.as_str()].into();
        let rest = g.without(&removed);
        assert_eq!(rest.paths.len(), 2);
        assert_eq!(rest.paths[&app].references, vec![app.clone()]);
        assert_eq!(rest.roots, vec![app.clone(), other.clone()]);
        // What remains is a valid graph.
        ClosureGraph::new(rest.paths.into_values().collect(), Some(rest.roots)).unwrap();
    }

    #[test]
    fn package_names_drop_the_hash() {
        assert_eq!(package_name("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-glibc-2.37-8"), "glibc-2.37-8");
        assert_eq!(package_name("not-a-store-path"), "not-a-store-path");
        let pop = Popularity::from_json(r#"{"glibc-2.37-8": 7}"#).unwrap();
        assert_eq!(pop.of("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-glibc-2.37-8"), 7);
        assert_eq!(pop.of(&sp("other")), 0);
        assert!(Popularity::from_json("[1]").is_err());
    }

    #[test]
    fn popcount_counts_closures() {
        let (app, lib, libc, other) = (sp("app-1"), sp("lib-2"), sp("libc-3"), sp("other-4"));
        let refs: BTreeMap<String, Vec<String>> = [
            (app.clone(), vec![lib.clone(), libc.clone(), app.clone()]),
            (lib.clone(), vec![libc.clone()]),
            (libc.clone(), vec![]),
            (other.clone(), vec![libc.clone()]),
        ]
        .into_iter()
        .collect();
        let all = popcount(&refs, None);
        assert_eq!(all.0.get("libc-3"), Some(&4));
        assert_eq!(all.0.get("lib-2"), Some(&2));
        assert_eq!(all.0.get("app-1"), Some(&1));
        let pkgs = popcount(&refs, Some(&[app.clone(), other.clone()]));
        assert_eq!(pkgs.0.get("libc-3"), Some(&2));
        assert_eq!(pkgs.0.get("lib-2"), Some(&1));
        assert_eq!(pkgs.0.get("other-4"), Some(&1));
    }
}
