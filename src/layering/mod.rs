//! Layering: grouping the store paths of a closure into at most `budget`
//! layers, so that popular and large dependencies get layers of their own
//! and images that share them share those layers.
//!
//! This module owns the layer *plan* (which paths go together), not the
//! bytes of a layer (see [`crate::packing`]).
//!
//! Three algorithms, chosen by name ([`Algorithm`]), one module each:
//!
//! - [`sharing`] (the default): a layer per store path while the budget
//!   allows; over budget, the paths whose sharing saves most keep their own
//!   layers and the rest are grouped by which content packages need them.
//!   BENCHMARKS.md has the measurements that chose it.
//! - [`nixery`]: the original Nixery's dominator-tree algorithm.
//! - [`popularity_contest`]: nixpkgs' `buildLayeredImage`.
//!
//! A layer lock ([`lock`]), the plan of an earlier build, makes the next
//! plan keep that one's layers where it can.
//!
//! Every algorithm is a pure function of the graph, the popularity data and
//! the budget; paths inside a layer are sorted, so a layer's bytes depend
//! only on its set of paths.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::graph::{ClosureGraph, Popularity};

pub mod lock;
pub mod nixery;
pub mod popularity_contest;
pub mod sharing;

pub use nixery::{POPULARITY_THRESHOLD, SIZE_THRESHOLD};

/// Version of the plan's JSON contract (`nixery layers` output).
pub const PLAN_VERSION: u32 = 1;

/// Errors from layering.
#[derive(Debug, thiserror::Error)]
pub enum LayeringError {
    /// A budget of no layers.
    #[error("the layer budget must be at least 1, got {0}")]
    ZeroBudget(usize),
}

/// One planned layer: a sorted set of store paths.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLayer {
    /// Store paths in this layer, sorted.
    pub paths: Vec<String>,
    /// Sum of the paths' NAR sizes, in bytes.
    pub size: u64,
}

/// A layer plan: every closure path in exactly one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerPlan {
    /// Contract version, [`PLAN_VERSION`].
    pub version: u32,
    /// The layers, in image order (lowest merge rating first).
    pub layers: Vec<PlannedLayer>,
}

impl LayerPlan {
    /// Reads a plan as `nixery layers` prints it, refusing another version.
    pub fn from_json(text: &str) -> Result<LayerPlan, String> {
        let plan: LayerPlan = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if plan.version != PLAN_VERSION {
            return Err(format!("a layer plan of version {}; this helper reads version {PLAN_VERSION}", plan.version));
        }
        Ok(plan)
    }
}

/// A layering algorithm, chosen by name (`nixery layers --algorithm`,
/// `buildNixeryImage { layering = …; }`, `NIXERY_LAYERING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Algorithm {
    /// The original Nixery's: popular or large paths hang off the image
    /// root, dominator-tree groups, the least valuable groups merged to fit.
    Nixery,
    /// nixpkgs' `buildLayeredImage`: the `budget - 1` paths most referenced
    /// within the image get a layer each, the rest share one.
    PopularityContest,
    /// The default: a layer per store path while the budget allows, then
    /// the paths whose sharing saves most; measured in BENCHMARKS.md.
    #[default]
    Sharing,
}

impl Algorithm {
    /// Every algorithm, for benchmarks and help texts.
    pub const ALL: [Algorithm; 3] = [Algorithm::Sharing, Algorithm::Nixery, Algorithm::PopularityContest];

    /// The algorithm's name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Nixery => "nixery",
            Algorithm::PopularityContest => "popularity-contest",
            Algorithm::Sharing => "sharing",
        }
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            format!("unknown layering algorithm {s:?} (expected one of {})", names.join(", "))
        })
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Plans the layers of `graph` with at most `budget` layers.
pub fn plan_with(graph: &ClosureGraph, popularity: &Popularity, budget: usize, algorithm: Algorithm) -> Result<LayerPlan, LayeringError> {
    if budget == 0 {
        return Err(LayeringError::ZeroBudget(budget));
    }
    let layers = match algorithm {
        Algorithm::Nixery => nixery::plan(graph, popularity, budget),
        Algorithm::PopularityContest => popularity_contest::plan(graph, budget),
        Algorithm::Sharing => sharing::plan(graph, popularity, budget),
    };
    Ok(LayerPlan { version: PLAN_VERSION, layers })
}

pub(crate) fn layer_of(graph: &ClosureGraph, mut paths: Vec<String>) -> PlannedLayer {
    paths.sort();
    let size = paths.iter().map(|p| graph.paths[p].nar_size).sum();
    PlannedLayer { paths, size }
}

/// For each path, how many paths of the image have it in their closure
/// (itself excluded): nixpkgs' "popularity contest" measure.
///
/// Ancestor sets are bitsets filled parents first (a topological order),
/// so thousands of paths take milliseconds. Graphs with cycles (which Nix
/// cannot make, but a hand-written graph may hold) fall back to one search
/// per path.
pub fn ancestor_counts(graph: &ClosureGraph) -> BTreeMap<&str, u64> {
    let paths: Vec<&str> = graph.paths.keys().map(String::as_str).collect();
    let n = paths.len();
    let index = |p: &str| paths.binary_search(&p).expect("graph is checked");
    let mut parents: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, info) in graph.paths.values().enumerate() {
        for r in info.references.iter().filter(|r| **r != info.path) {
            parents[index(r)].push(i);
            children[i].push(index(r));
        }
    }
    // Kahn's algorithm: parents before children.
    let mut pending: Vec<usize> = parents.iter().map(Vec::len).collect();
    let mut order: Vec<usize> = (0..n).filter(|&v| pending[v] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        let v = order[next];
        next += 1;
        for &c in &children[v] {
            pending[c] -= 1;
            if pending[c] == 0 {
                order.push(c);
            }
        }
    }
    let counts: Vec<u64> = if order.len() == n {
        let words = n.div_ceil(64);
        let mut ancestors: Vec<Vec<u64>> = vec![Vec::new(); n];
        for &v in &order {
            let mut set = vec![0u64; words];
            for &p in &parents[v] {
                for (w, a) in set.iter_mut().zip(&ancestors[p]) {
                    *w |= a;
                }
                set[p / 64] |= 1 << (p % 64);
            }
            ancestors[v] = set;
        }
        ancestors.iter().map(|set| set.iter().map(|w| u64::from(w.count_ones())).sum()).collect()
    } else {
        (0..n)
            .map(|v| {
                let mut seen = vec![false; n];
                let mut stack = vec![v];
                let mut count = 0;
                while let Some(x) = stack.pop() {
                    for &p in &parents[x] {
                        if !std::mem::replace(&mut seen[p], true) {
                            count += u64::from(p != v);
                            stack.push(p);
                        }
                    }
                }
                count
            })
            .collect()
    };
    paths.into_iter().zip(counts).collect()
}

/// Node-indexed view of a closure: node 0 is the image root, node i+1 the
/// i-th path in sorted order.
pub(crate) struct Indexed<'a> {
    pub(crate) paths: Vec<&'a str>,
    pub(crate) sizes: Vec<u64>,
    pub(crate) succ: Vec<Vec<usize>>,
}

impl<'a> Indexed<'a> {
    pub(crate) fn new(graph: &'a ClosureGraph) -> Indexed<'a> {
        let paths: Vec<&str> = graph.paths.keys().map(String::as_str).collect();
        let index = |p: &str| paths.binary_search(&p).map(|i| i + 1).expect("graph is checked");
        let n = paths.len() + 1;
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut sizes = vec![0; n];
        for (i, info) in graph.paths.values().enumerate() {
            succ[i + 1] = info.references.iter().filter(|r| **r != info.path).map(|r| index(r)).collect();
            sizes[i + 1] = info.nar_size;
        }
        let mut roots: Vec<usize> = graph.roots.iter().map(|r| index(r)).collect();
        roots.sort_unstable();
        roots.dedup();
        succ[0] = roots;
        let reached = reachable(&succ);
        for (v, r) in reached.iter().enumerate().skip(1) {
            if !r {
                succ[0].push(v);
            }
        }
        Indexed { paths, sizes, succ }
    }
}

pub(crate) fn reachable(succ: &[Vec<usize>]) -> Vec<bool> {
    let mut seen = vec![false; succ.len()];
    let mut stack = vec![0];
    seen[0] = true;
    while let Some(v) = stack.pop() {
        for &w in &succ[v] {
            if !seen[w] {
                seen[w] = true;
                stack.push(w);
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests;
