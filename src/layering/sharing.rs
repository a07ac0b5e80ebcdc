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

use std::collections::BTreeMap;

use super::{ancestor_counts, layer_of, Indexed, PlannedLayer};
use crate::graph::{ClosureGraph, Popularity};

pub(crate) fn plan(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Vec<PlannedLayer> {
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

