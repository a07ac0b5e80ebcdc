//! Layering: grouping the store paths of a closure into at most `budget`
//! layers, so that popular and large dependencies get layers of their own
//! and images that share them share those layers.
//!
//! This module owns the layer *plan* (which paths go together), not the
//! bytes of a layer (see [`crate::packing`]).
//!
//! Three algorithms, chosen by name ([`Algorithm`]):
//!
//! - `sharing` (the default): a layer per store path while the budget
//!   allows; over budget, the paths whose sharing saves most keep their own
//!   layers and the rest are grouped by which content packages need them.
//!   See [`sharing`] for the details and BENCHMARKS.md for the measurements
//!   that chose it.
//! - `nixery`: the original Nixery's dominator-tree algorithm, below.
//! - `popularity-contest`: nixpkgs' `buildLayeredImage`.
//!
//! Every algorithm is a pure function of the graph, the popularity data and
//! the budget; paths inside a layer are sorted, so a layer's bytes depend
//! only on its set of paths.
//!
//! # The `nixery` algorithm, after the original Nixery's
//!
//! ```text
//!            image root (synthetic)
//!          /      |        \  \
//!       hello    jq     glibc*  bigdata*     * popular or large: an extra
//!         |     /  \      ^                    edge from the image root
//!         |  libjq  |     |
//!         |     \   |     |
//!         |    oniguruma -+
//!         +---------------+
//! ```
//!
//! 1. Every store path is a node; references are edges; a synthetic image
//!    root points at the content packages (the roots).
//! 2. A path that is *popular* (popularity ≥ [`POPULARITY_THRESHOLD`]) or
//!    *large* (own NAR size ≥ [`SIZE_THRESHOLD`]) also gets an edge from
//!    the image root, so nothing else dominates it.
//! 3. The dominator tree of that graph is computed from the image root.
//!    Each direct child of the root in that tree is a layer, together with
//!    every path it dominates: a path that only one group needs travels with
//!    that group.
//! 4. Each layer gets a merge rating, the popularity of its top path times
//!    the layer's size. While there are more layers than the budget, the
//!    layers are sorted by (rating, size, top path), and the lowest ones are
//!    merged into one, exactly as many as needed.
//!
//! Ties are broken by store path.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::graph::{ClosureGraph, Popularity};

/// A path referenced by at least this many packages gets its own layer.
pub const POPULARITY_THRESHOLD: u64 = 100;
/// A path whose own NAR size is at least this many bytes gets its own layer.
pub const SIZE_THRESHOLD: u64 = 100 * 1000 * 1000;

/// Version of the plan's JSON contract (`nixery layers` output).
pub const PLAN_VERSION: u32 = 1;

/// Errors from layering.
#[derive(Debug, thiserror::Error)]
pub enum LayeringError {
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

/// A layering algorithm, chosen by name (`nixery layers --algorithm`,
/// `buildNixeryImage { layering = …; }`, `NIXERY_LAYERING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// The original Nixery's dominator-tree algorithm (described above).
    Nixery,
    /// nixpkgs' `buildLayeredImage`: the `budget - 1` paths most referenced
    /// within the image get a layer each, the rest share one.
    PopularityContest,
    /// The default, measured to share the most: see [`sharing`].
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

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Plans the layers of `graph` with at most `budget` layers, with the
/// default algorithm.
pub fn plan(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Result<LayerPlan, LayeringError> {
    plan_with(graph, popularity, budget, Algorithm::default())
}

/// Plans the layers of `graph` with at most `budget` layers.
pub fn plan_with(graph: &ClosureGraph, popularity: &Popularity, budget: usize, algorithm: Algorithm) -> Result<LayerPlan, LayeringError> {
    if budget == 0 {
        return Err(LayeringError::ZeroBudget(budget));
    }
    let layers = match algorithm {
        Algorithm::Nixery => nixery(graph, popularity, budget),
        Algorithm::PopularityContest => popularity_contest(graph, budget),
        Algorithm::Sharing => sharing(graph, popularity, budget),
    };
    Ok(LayerPlan { version: PLAN_VERSION, layers })
}

fn layer_of(graph: &ClosureGraph, mut paths: Vec<String>) -> PlannedLayer {
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

fn popularity_contest(graph: &ClosureGraph, budget: usize) -> Vec<PlannedLayer> {
    let counts = ancestor_counts(graph);
    let mut ranked: Vec<&str> = graph.paths.keys().map(String::as_str).collect();
    ranked.sort_by(|a, b| counts[b].cmp(&counts[a]).then(a.cmp(b)));
    if ranked.len() <= budget {
        return ranked.into_iter().map(|p| layer_of(graph, vec![p.to_string()])).collect();
    }
    let rest = ranked.split_off(budget - 1);
    let mut layers: Vec<PlannedLayer> = ranked.into_iter().map(|p| layer_of(graph, vec![p.to_string()])).collect();
    layers.push(layer_of(graph, rest.into_iter().map(str::to_string).collect()));
    layers
}

/// Node-indexed view of a closure: node 0 is the image root, node i+1 the
/// i-th path in sorted order.
struct Indexed<'a> {
    paths: Vec<&'a str>,
    sizes: Vec<u64>,
    succ: Vec<Vec<usize>>,
}

impl<'a> Indexed<'a> {
    fn new(graph: &'a ClosureGraph) -> Indexed<'a> {
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

/// The `sharing` algorithm, chosen by measurement (`cargo bench --bench
/// sharing`, BENCHMARKS.md):
///
/// 1. Within budget, every store path has a layer of its own: the ideal,
///    since a layer is then shared by every image that holds the path and
///    changes only when the path does.
/// 2. Over budget, paths are ranked by what sharing them saves: size ×
///    log2(popularity + 2), with popularity taken across the package set
///    (or, without popularity data, the number of paths of the image that
///    depend on the path, plus one). The top `budget - 2` keep layers of
///    their own. Size counts fully and popularity only logarithmically, so a
///    large library used by a few hundred packages outranks a tiny one
///    used by all.
/// 3. The rest are grouped by which content packages reach them (their
///    root signature): the group with the most bytes gets a layer, all other
///    rest shares the last one. Paths only one package needs thus stay
///    together and apart from paths several need, so a group is more often
///    the same across images and across updates.
fn sharing(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Vec<PlannedLayer> {
    let ix = Indexed::new(graph);
    let n = ix.succ.len();
    let single = |v: usize| layer_of(graph, vec![ix.paths[v - 1].to_string()]);
    if n - 1 <= budget {
        return (1..n).map(single).collect();
    }
    let local = if popularity.0.is_empty() { Some(ancestor_counts(graph)) } else { None };
    let value = |v: usize| {
        let p = match &local {
            Some(counts) => counts[ix.paths[v - 1]] + 1,
            None => popularity.of(ix.paths[v - 1]),
        };
        ix.sizes[v] as f64 * ((p as f64) + 2.0).log2()
    };
    let mut ranked: Vec<(f64, usize)> = (1..n).map(|v| (value(v), v)).collect();
    // Ties (and so the plan) are broken by store path, i.e. node index.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let shared_slots = budget.min(2);
    let rest: Vec<usize> = ranked.drain(budget - shared_slots..).map(|(_, v)| v).collect();
    let mut layers: Vec<PlannedLayer> = ranked.iter().map(|&(_, v)| single(v)).collect();
    if shared_slots == 1 {
        layers.push(layer_of(graph, rest.iter().map(|&v| ix.paths[v - 1].to_string()).collect()));
        return layers;
    }
    // Root signatures: which content packages reach each node.
    let mut signature: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, &r) in ix.succ[0].iter().enumerate() {
        let mut seen = vec![false; n];
        let mut stack = vec![r];
        while let Some(x) = stack.pop() {
            if !std::mem::replace(&mut seen[x], true) {
                signature[x].push(i);
                stack.extend(&ix.succ[x]);
            }
        }
    }
    let mut groups: BTreeMap<&[usize], (u64, Vec<usize>)> = BTreeMap::new();
    let mut rest = rest;
    if rest.iter().all(|&v| signature[v] == signature[rest[0]]) {
        // One group only: its layer would be the last, so the best-ranked
        // of the rest gets the spare layer instead.
        layers.push(single(rest.remove(0)));
    }
    for &v in &rest {
        let g = groups.entry(signature[v].as_slice()).or_default();
        g.0 += ix.sizes[v];
        g.1.push(v);
    }
    let mut groups: Vec<(&[usize], (u64, Vec<usize>))> = groups.into_iter().collect();
    // The group with the most bytes (ties: the first signature) stays apart.
    let biggest = (0..groups.len()).max_by(|&a, &b| groups[a].1 .0.cmp(&groups[b].1 .0).then(b.cmp(&a))).expect("rest is not empty");
    let (_, (_, kept)) = groups.remove(biggest);
    let others: Vec<usize> = groups.into_iter().flat_map(|(_, (_, m))| m).collect();
    for m in [kept, others] {
        if !m.is_empty() {
            layers.push(layer_of(graph, m.into_iter().map(|v| ix.paths[v - 1].to_string()).collect()));
        }
    }
    layers
}

/// The original Nixery's algorithm.
fn nixery(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Vec<PlannedLayer> {
    let Indexed { paths, mut succ, .. } = Indexed::new(graph);
    let n = succ.len();
    // Popular and large paths hang off the image root too.
    let mut root_edges: BTreeSet<usize> = succ[0].iter().copied().collect();
    for (i, info) in graph.paths.values().enumerate() {
        if popularity.of(&info.path) >= POPULARITY_THRESHOLD || info.nar_size >= SIZE_THRESHOLD {
            root_edges.insert(i + 1);
        }
    }
    succ[0] = root_edges.into_iter().collect();

    let idom = dominators(&succ);
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for v in 1..n {
        children[idom[v]].push(v);
    }

    struct Group {
        top: usize,
        members: Vec<usize>,
        size: u64,
        rating: u128,
    }
    let infos: Vec<_> = graph.paths.values().collect();
    let mut groups: Vec<Group> = children[0]
        .iter()
        .map(|&top| {
            let mut members = Vec::new();
            let mut stack = vec![top];
            while let Some(v) = stack.pop() {
                members.push(v);
                stack.extend(&children[v]);
            }
            members.sort_unstable();
            let size = members.iter().map(|&v| infos[v - 1].nar_size).sum::<u64>();
            let rating = u128::from(popularity.of(paths[top - 1])) * u128::from(size);
            Group { top, members, size, rating }
        })
        .collect();
    groups.sort_by(|a, b| (a.rating, a.size, paths[a.top - 1]).cmp(&(b.rating, b.size, paths[b.top - 1])));

    if groups.len() > budget {
        let excess = groups.len() - budget + 1;
        let mut merged: Vec<usize> = groups.drain(..excess).flat_map(|g| g.members).collect();
        merged.sort_unstable();
        let size = merged.iter().map(|&v| infos[v - 1].nar_size).sum();
        groups.insert(0, Group { top: 0, members: merged, size, rating: 0 });
    }

    groups
        .into_iter()
        .map(|g| PlannedLayer {
            // Node indices follow sorted path order, so this is sorted.
            paths: g.members.iter().map(|&v| paths[v - 1].to_string()).collect(),
            size: g.size,
        })
        .collect()
}

fn reachable(succ: &[Vec<usize>]) -> Vec<bool> {
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

/// Immediate dominators of every node reachable from node 0, by the
/// iterative algorithm of Cooper, Harvey and Kennedy ("A Simple, Fast
/// Dominance Algorithm"). `idom[0] == 0`.
fn dominators(succ: &[Vec<usize>]) -> Vec<usize> {
    let n = succ.len();
    // Reverse postorder by an iterative depth-first search.
    let mut postorder = Vec::with_capacity(n);
    let mut visited = vec![false; n];
    let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
    visited[0] = true;
    while let Some(&mut (v, ref mut next)) = stack.last_mut() {
        if let Some(&w) = succ[v].get(*next) {
            *next += 1;
            if !visited[w] {
                visited[w] = true;
                stack.push((w, 0));
            }
        } else {
            postorder.push(v);
            stack.pop();
        }
    }
    let mut order = vec![usize::MAX; n]; // postorder number
    for (i, &v) in postorder.iter().enumerate() {
        order[v] = i;
    }
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (v, ws) in succ.iter().enumerate() {
        for &w in ws {
            preds[w].push(v);
        }
    }
    const UNDEF: usize = usize::MAX;
    let mut idom = vec![UNDEF; n];
    idom[0] = 0;
    let intersect = |idom: &[usize], mut a: usize, mut b: usize| {
        while a != b {
            while order[a] < order[b] {
                a = idom[a];
            }
            while order[b] < order[a] {
                b = idom[b];
            }
        }
        a
    };
    let mut changed = true;
    while changed {
        changed = false;
        for &v in postorder.iter().rev().skip(1) {
            let mut new = UNDEF;
            for &p in &preds[v] {
                if idom[p] == UNDEF {
                    continue;
                }
                new = if new == UNDEF { p } else { intersect(&idom, p, new) };
            }
            if new != idom[v] {
                idom[v] = new;
                changed = true;
            }
        }
    }
    idom
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::sp;
    use crate::graph::PathInfo;
    use std::collections::BTreeMap;

    fn graph(nodes: &[(&str, u64, &[&str])], roots: &[&str]) -> ClosureGraph {
        let infos = nodes
            .iter()
            .map(|(name, size, refs)| PathInfo {
                path: sp(name),
                nar_size: *size,
                closure_size: 0,
                references: refs.iter().map(|r| sp(r)).collect(),
            })
            .collect();
        ClosureGraph::new(infos, Some(roots.iter().map(|r| sp(r)).collect())).unwrap()
    }

    fn names(plan: &LayerPlan) -> Vec<Vec<String>> {
        let back: BTreeMap<String, String> =
            ["hello", "jq", "libjq", "onig", "glibc", "big", "a", "b", "c", "d", "e"].iter().map(|n| (sp(n), n.to_string())).collect();
        plan.layers.iter().map(|l| {
            let mut v: Vec<String> = l.paths.iter().map(|p| back[p].clone()).collect();
            v.sort();
            v
        }).collect()
    }

    fn sample() -> ClosureGraph {
        graph(
            &[
                ("hello", 10, &["glibc"]),
                ("jq", 20, &["libjq", "onig", "glibc", "jq"]),
                ("libjq", 30, &["onig", "glibc"]),
                ("onig", 40, &["glibc"]),
                ("glibc", 1000, &[]),
            ],
            &["hello", "jq"],
        )
    }

    fn check_invariants(g: &ClosureGraph, plan: &LayerPlan, budget: usize) {
        assert!(plan.layers.len() <= budget);
        let mut all: Vec<&String> = plan.layers.iter().flat_map(|l| &l.paths).collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a path is in two layers");
        assert_eq!(all, g.paths.keys().collect::<Vec<_>>());
        for l in &plan.layers {
            assert!(l.paths.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(l.size, l.paths.iter().map(|p| g.paths[p].nar_size).sum::<u64>());
        }
    }

    #[test]
    fn shared_dependencies_form_their_own_group() {
        let g = sample();
        let plan = plan_with(&g, &Popularity::default(), 100, Algorithm::Nixery).unwrap();
        check_invariants(&g, &plan, 100);
        // glibc is needed by both hello and jq, so it is dominated only by
        // the root; libjq and onig only by jq, so they travel with jq.
        assert_eq!(names(&plan), vec![vec!["hello"], vec!["jq", "libjq", "onig"], vec!["glibc"]]);
    }

    #[test]
    fn popular_paths_are_split_out_of_their_dominator() {
        let g = sample();
        let pop = Popularity([(crate::graph::package_name(&sp("onig")).to_string(), 500)].into_iter().collect());
        let plan = plan_with(&g, &pop, 100, Algorithm::Nixery).unwrap();
        check_invariants(&g, &plan, 100);
        assert_eq!(names(&plan), vec![vec!["hello"], vec!["jq", "libjq"], vec!["glibc"], vec!["onig"]]);
    }

    #[test]
    fn large_paths_get_their_own_layer() {
        let g = graph(&[("a", 1, &["big"]), ("big", SIZE_THRESHOLD, &[])], &["a"]);
        let plan = plan_with(&g, &Popularity::default(), 10, Algorithm::Nixery).unwrap();
        assert_eq!(names(&plan), vec![vec!["a"], vec!["big"]]);
    }

    #[test]
    fn lowest_rated_groups_merge_to_fit_the_budget() {
        let g = sample();
        for budget in 1..=3 {
            let p = plan_with(&g, &Popularity::default(), budget, Algorithm::Nixery).unwrap();
            check_invariants(&g, &p, budget);
            assert_eq!(p.layers.len(), budget);
        }
        // With a budget of 2 the two smallest groups (hello, jq's) merge.
        let p = plan_with(&g, &Popularity::default(), 2, Algorithm::Nixery).unwrap();
        assert_eq!(names(&p), vec![vec!["hello", "jq", "libjq", "onig"], vec!["glibc"]]);
    }

    #[test]
    fn plans_are_deterministic_and_independent_of_input_order() {
        let g1 = sample();
        let mut infos: Vec<PathInfo> = g1.paths.values().cloned().collect();
        infos.reverse();
        let g2 = ClosureGraph::new(infos, Some(g1.roots.clone())).unwrap();
        assert_eq!(plan_with(&g1, &Popularity::default(), 2, Algorithm::Nixery).unwrap(), plan_with(&g2, &Popularity::default(), 2, Algorithm::Nixery).unwrap());
    }

    #[test]
    fn a_larger_budget_than_needed_changes_nothing() {
        let g = sample();
        let p3 = plan_with(&g, &Popularity::default(), 3, Algorithm::Nixery).unwrap();
        assert_eq!(p3, plan_with(&g, &Popularity::default(), 50, Algorithm::Nixery).unwrap());
    }

    #[test]
    fn ancestor_counts_with_and_without_cycles() {
        let g = sample();
        let c = ancestor_counts(&g);
        let count = |n: &str| c[sp(n).as_str()];
        assert_eq!((count("hello"), count("jq"), count("libjq"), count("onig"), count("glibc")), (0, 0, 1, 2, 4));
        // A cycle a <-> b (not a real store, but a graph the CLI accepts).
        let cyclic = graph(&[("a", 1, &["b"]), ("b", 1, &["a", "c"]), ("c", 1, &[])], &["a"]);
        let c = ancestor_counts(&cyclic);
        assert_eq!((c[sp("a").as_str()], c[sp("b").as_str()], c[sp("c").as_str()]), (1, 1, 2));
    }

    #[test]
    fn zero_budget_is_an_error_and_empty_graph_gives_no_layers() {
        for alg in Algorithm::ALL {
            assert!(plan_with(&sample(), &Popularity::default(), 0, alg).is_err());
        }
        let empty = ClosureGraph::new(vec![], Some(vec![])).unwrap();
        assert!(plan_with(&empty, &Popularity::default(), 5, Algorithm::Nixery).unwrap().layers.is_empty());
    }

    #[test]
    fn diamond_dominators() {
        // a -> b, a -> c, b -> d, c -> d, d -> e: d and e are dominated by a.
        let g = graph(&[("a", 1, &["b", "c"]), ("b", 1, &["d"]), ("c", 1, &["d"]), ("d", 1, &["e"]), ("e", 1, &[])], &["a"]);
        let p = plan_with(&g, &Popularity::default(), 10, Algorithm::Nixery).unwrap();
        assert_eq!(names(&p), vec![vec!["a", "b", "c", "d", "e"]]);
        // With a second root that also reaches d, d and e become shared.
        let g = graph(&[("a", 1, &["b", "c"]), ("b", 1, &["d"]), ("c", 1, &["d"]), ("d", 1, &["e"]), ("e", 1, &[]), ("hello", 5, &["d"])], &["a", "hello"]);
        let p = plan_with(&g, &Popularity::default(), 10, Algorithm::Nixery).unwrap();
        assert_eq!(names(&p), vec![vec!["d", "e"], vec!["a", "b", "c"], vec!["hello"]]);
    }

    fn names_sorted(plan: &LayerPlan) -> Vec<Vec<String>> {
        let mut v = names(plan);
        v.sort();
        v
    }

    #[test]
    fn every_algorithm_keeps_the_invariants() {
        let g = sample();
        let pop = Popularity([(crate::graph::package_name(&sp("glibc")).to_string(), 5000)].into_iter().collect());
        for alg in Algorithm::ALL {
            for budget in 1..=7 {
                for p in [&Popularity::default(), &pop] {
                    let a = plan_with(&g, p, budget, alg).unwrap();
                    check_invariants(&g, &a, budget);
                    assert_eq!(a, plan_with(&g, p, budget, alg).unwrap(), "{alg} is deterministic");
                }
            }
        }
        assert_eq!("sharing".parse::<Algorithm>().unwrap(), Algorithm::default());
        assert!("bogus".parse::<Algorithm>().unwrap_err().contains("popularity-contest"));
    }

    #[test]
    fn sharing_gives_every_path_a_layer_within_budget() {
        let g = sample();
        let p = plan_with(&g, &Popularity::default(), 5, Algorithm::Sharing).unwrap();
        assert_eq!(names_sorted(&p), vec![vec!["glibc"], vec!["hello"], vec!["jq"], vec!["libjq"], vec!["onig"]]);
    }

    #[test]
    fn sharing_over_budget_keeps_the_valuable_paths_apart() {
        // Roots a and b; big is large and shared, c and d are small and
        // needed by a alone, e by b alone.
        let g = graph(
            &[("a", 10, &["big", "c"]), ("b", 10, &["big", "e"]), ("big", 10_000, &[]), ("c", 5, &["d"]), ("d", 5, &[]), ("e", 5, &[])],
            &["a", "b"],
        );
        let p = plan_with(&g, &Popularity::default(), 4, Algorithm::Sharing).unwrap();
        check_invariants(&g, &p, 4);
        // big and one more keep their own layers; what a alone needs stays
        // together, apart from what b alone needs.
        let layers = names_sorted(&p);
        assert!(layers.contains(&vec!["big".to_string()]), "{layers:?}");
        assert!(layers.iter().any(|l| l.contains(&"c".to_string()) && l.contains(&"d".to_string())), "{layers:?}");
        assert!(!layers.iter().any(|l| l.contains(&"c".to_string()) && l.contains(&"e".to_string())), "{layers:?}");
    }

    #[test]
    fn sharing_gives_shared_paths_the_same_layer_in_every_image() {
        let one = graph(&[("hello", 10, &["glibc"]), ("glibc", 1000, &[])], &["hello"]);
        let two = sample();
        for budget in [3, 100] {
            let a = plan_with(&one, &Popularity::default(), budget, Algorithm::Sharing).unwrap();
            let b = plan_with(&two, &Popularity::default(), budget, Algorithm::Sharing).unwrap();
            let glibc = vec![sp("glibc")];
            assert!(a.layers.iter().any(|l| l.paths == glibc), "budget {budget}");
            assert!(b.layers.iter().any(|l| l.paths == glibc), "budget {budget}");
        }
    }
}
