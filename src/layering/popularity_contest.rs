//! The `popularity-contest` algorithm, nixpkgs' `buildLayeredImage`:
//! the `budget - 1` paths most referenced within the image (by
//! [`super::ancestor_counts`]) get a layer each, the rest share one.

use super::{ancestor_counts, layer_of, PlannedLayer};
use crate::graph::ClosureGraph;

pub(crate) fn plan(graph: &ClosureGraph, budget: usize) -> Vec<PlannedLayer> {
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
