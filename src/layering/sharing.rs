//! The `sharing` algorithm, chosen by measurement (`cargo bench --bench
//! sharing`, BENCHMARKS.md):
//!
//! 1. Within budget, every store path has a layer of its own: the ideal,
//!    since a layer is then shared by every image that holds the path and
//!    changes only when the path does.
//! 2. Over budget, paths are ranked by what sharing them saves: size ×
//!    log2(popularity + 2), with popularity taken across the package set
//!    (or, without popularity data, the number of paths of the image that
//!    depend on the path, plus one). The top `budget - 2` keep layers of
//!    their own. Size counts fully and popularity only logarithmically, so a
//!    large library used by a few hundred packages outranks a tiny one
//!    used by all.
//! 3. The rest are grouped by which content packages reach them (their
//!    root signature): the group with the most bytes gets a layer, all other
//!    rest shares the last one. Paths only one package needs thus stay
//!    together and apart from paths several need, so a group is more often
//!    the same across images and across updates.
//! 4. The order of the layers is chosen for clients that reuse a layer only
//!    when every layer below it is the same too (Docker's classic store,
//!    any client's unpacked snapshots): a layer's identity there is its
//!    chain. Single-path layers come first, ordered by the first content
//!    package (in the order given) whose closure holds the path, then by
//!    popularity (most popular first), then by package name; the grouped
//!    layers, each image's own rest, come last (by the first content they
//!    serve). The key of a path is the
//!    same in every image with the same first contents, so images built on
//!    the same base packages (`shell/…`, a team's base set) share a long
//!    prefix, and the most shared paths are at its start.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use super::{ancestor_counts, layer_of, Indexed, PlannedLayer};
use crate::graph::{package_name, ClosureGraph, Popularity};

pub(crate) fn plan(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Vec<PlannedLayer> {
    let mut layers = choose(graph, popularity, budget);
    chain_order(graph, popularity, &mut layers);
    layers
}

/// Orders the layers for chain reuse (see the module documentation):
/// single paths by the first content package whose closure holds them,
/// most popular first, then by name; then the groups. The key of a path is
/// the same in every image that holds it and has the same first content
/// packages, so such images share a prefix.
fn chain_order(graph: &ClosureGraph, popularity: &Popularity, layers: &mut [PlannedLayer]) {
    let mut first_root: HashMap<&str, usize> = HashMap::new();
    for (i, r) in graph.roots.iter().enumerate() {
        for p in graph.closure([r.as_str()]).expect("roots are in the graph") {
            first_root.entry(p).or_insert(i);
        }
    }
    let local = popularity.0.is_empty().then(|| ancestor_counts(graph));
    let popularity_of = |p: &str| match &local {
        Some(counts) => counts[p],
        None => popularity.of(p),
    };
    let root_of = |p: &str| first_root.get(p).copied().unwrap_or(usize::MAX);
    // Single paths first: their keys are the same in every image. Groups
    // differ from image to image, so they come last (measured: placing
    // them among the singles of their content breaks prefixes sooner),
    // by the first content they serve, stable otherwise.
    layers.sort_by_cached_key(|l| match l.paths.as_slice() {
        [p] => (false, root_of(p), Reverse(popularity_of(p)), package_name(p).to_string(), p.clone()),
        _ => (true, l.paths.iter().map(|p| root_of(p)).min().unwrap_or(usize::MAX), Reverse(0), String::new(), String::new()),
    });
}

/// Which paths share a layer (steps 1 to 3 of the module documentation).
fn choose(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Vec<PlannedLayer> {
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
    // Root signature → (bytes, members).
    type Group = (u64, Vec<usize>);
    let mut groups: BTreeMap<&[usize], Group> = BTreeMap::new();
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
    let mut groups: Vec<(&[usize], Group)> = groups.into_iter().collect();
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
