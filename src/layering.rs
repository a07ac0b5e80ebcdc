//! Layering: grouping the store paths of a closure into at most `budget`
//! layers, so that popular and large dependencies get layers of their own
//! and images that share them share those layers.
//!
//! This module owns the layer *plan* (which paths go together), not the
//! bytes of a layer (see [`crate::packing`]).
//!
//! # Algorithm (`nixery`, after the original Nixery's)
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
//! Ties are broken by store path, so the plan is a pure function of the
//! graph, the popularity data and the budget. Paths inside a layer are
//! sorted, so a layer's bytes depend only on its set of paths.

use std::collections::BTreeSet;

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

/// Plans the layers of `graph` with at most `budget` layers.
pub fn plan(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Result<LayerPlan, LayeringError> {
    if budget == 0 {
        return Err(LayeringError::ZeroBudget(budget));
    }
    // Node 0 is the image root; node i+1 is the i-th path in sorted order.
    let paths: Vec<&str> = graph.paths.keys().map(String::as_str).collect();
    let index = |p: &str| paths.binary_search(&p).map(|i| i + 1).expect("graph is checked");
    let n = paths.len() + 1;
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, info) in graph.paths.values().enumerate() {
        succ[i + 1] = info.references.iter().filter(|r| **r != info.path).map(|r| index(r)).collect();
    }
    let mut root_edges: BTreeSet<usize> = graph.roots.iter().map(|r| index(r)).collect();
    for (i, info) in graph.paths.values().enumerate() {
        if popularity.of(&info.path) >= POPULARITY_THRESHOLD || info.nar_size >= SIZE_THRESHOLD {
            root_edges.insert(i + 1);
        }
    }
    succ[0] = root_edges.into_iter().collect();
    // Paths the roots do not reach (only in hand-written graphs) hang off
    // the image root too, so that every path lands in a layer.
    let reached = reachable(&succ);
    for (v, r) in reached.iter().enumerate().skip(1) {
        if !r {
            succ[0].push(v);
        }
    }

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

    let layers = groups
        .into_iter()
        .map(|g| PlannedLayer {
            // Node indices follow sorted path order, so this is sorted.
            paths: g.members.iter().map(|&v| paths[v - 1].to_string()).collect(),
            size: g.size,
        })
        .collect();
    Ok(LayerPlan { version: PLAN_VERSION, layers })
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
        let plan = plan(&g, &Popularity::default(), 100).unwrap();
        check_invariants(&g, &plan, 100);
        // glibc is needed by both hello and jq, so it is dominated only by
        // the root; libjq and onig only by jq, so they travel with jq.
        assert_eq!(names(&plan), vec![vec!["hello"], vec!["jq", "libjq", "onig"], vec!["glibc"]]);
    }

    #[test]
    fn popular_paths_are_split_out_of_their_dominator() {
        let g = sample();
        let pop = Popularity([(crate::graph::package_name(&sp("onig")).to_string(), 500)].into_iter().collect());
        let plan = plan(&g, &pop, 100).unwrap();
        check_invariants(&g, &plan, 100);
        assert_eq!(names(&plan), vec![vec!["hello"], vec!["jq", "libjq"], vec!["glibc"], vec!["onig"]]);
    }

    #[test]
    fn large_paths_get_their_own_layer() {
        let g = graph(&[("a", 1, &["big"]), ("big", SIZE_THRESHOLD, &[])], &["a"]);
        let plan = plan(&g, &Popularity::default(), 10).unwrap();
        assert_eq!(names(&plan), vec![vec!["a"], vec!["big"]]);
    }

    #[test]
    fn lowest_rated_groups_merge_to_fit_the_budget() {
        let g = sample();
        for budget in 1..=3 {
            let p = plan(&g, &Popularity::default(), budget).unwrap();
            check_invariants(&g, &p, budget);
            assert_eq!(p.layers.len(), budget);
        }
        // With a budget of 2 the two smallest groups (hello, jq's) merge.
        let p = plan(&g, &Popularity::default(), 2).unwrap();
        assert_eq!(names(&p), vec![vec!["hello", "jq", "libjq", "onig"], vec!["glibc"]]);
    }

    #[test]
    fn plans_are_deterministic_and_independent_of_input_order() {
        let g1 = sample();
        let mut infos: Vec<PathInfo> = g1.paths.values().cloned().collect();
        infos.reverse();
        let g2 = ClosureGraph::new(infos, Some(g1.roots.clone())).unwrap();
        assert_eq!(plan(&g1, &Popularity::default(), 2).unwrap(), plan(&g2, &Popularity::default(), 2).unwrap());
    }

    #[test]
    fn a_larger_budget_than_needed_changes_nothing() {
        let g = sample();
        let p3 = plan(&g, &Popularity::default(), 3).unwrap();
        assert_eq!(p3, plan(&g, &Popularity::default(), 50).unwrap());
    }

    #[test]
    fn zero_budget_is_an_error_and_empty_graph_gives_no_layers() {
        assert!(plan(&sample(), &Popularity::default(), 0).is_err());
        let empty = ClosureGraph::new(vec![], Some(vec![])).unwrap();
        assert!(plan(&empty, &Popularity::default(), 5).unwrap().layers.is_empty());
    }

    #[test]
    fn diamond_dominators() {
        // a -> b, a -> c, b -> d, c -> d, d -> e: d and e are dominated by a.
        let g = graph(&[("a", 1, &["b", "c"]), ("b", 1, &["d"]), ("c", 1, &["d"]), ("d", 1, &["e"]), ("e", 1, &[])], &["a"]);
        let p = plan(&g, &Popularity::default(), 10).unwrap();
        assert_eq!(names(&p), vec![vec!["a", "b", "c", "d", "e"]]);
        // With a second root that also reaches d, d and e become shared.
        let g = graph(&[("a", 1, &["b", "c"]), ("b", 1, &["d"]), ("c", 1, &["d"]), ("d", 1, &["e"]), ("e", 1, &[]), ("hello", 5, &["d"])], &["a", "hello"]);
        let p = plan(&g, &Popularity::default(), 10).unwrap();
        assert_eq!(names(&p), vec![vec!["d", "e"], vec!["a", "b", "c"], vec!["hello"]]);
    }
}
