//! The `nixery` algorithm, after the original Nixery's.
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

use std::collections::BTreeSet;

use super::{Indexed, PlannedLayer};
use crate::graph::{ClosureGraph, Popularity};

/// A path referenced by at least this many packages gets its own layer.
pub const POPULARITY_THRESHOLD: u64 = 100;
/// A path whose own NAR size is at least this many bytes gets its own layer.
pub const SIZE_THRESHOLD: u64 = 100 * 1000 * 1000;

/// The original Nixery's algorithm.
pub(crate) fn plan(graph: &ClosureGraph, popularity: &Popularity, budget: usize) -> Vec<PlannedLayer> {
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
