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
            nar_hash: None,
        })
        .collect();
    ClosureGraph::new(infos, Some(roots.iter().map(|r| sp(r)).collect())).unwrap()
}

fn names(plan: &LayerPlan) -> Vec<Vec<String>> {
    let back: BTreeMap<String, String> =
        ["hello", "jq", "libjq", "onig", "glibc", "big", "a", "b", "c", "d", "e"].iter().map(|n| (sp(n), n.to_string())).collect();
    plan.layers
        .iter()
        .map(|l| {
            let mut v: Vec<String> = l.paths.iter().map(|p| back[p].clone()).collect();
            v.sort();
            v
        })
        .collect()
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
    let g = graph(&[("a", 10, &["big", "c"]), ("b", 10, &["big", "e"]), ("big", 10_000, &[]), ("c", 5, &["d"]), ("d", 5, &[]), ("e", 5, &[])], &["a", "b"]);
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

#[test]
fn images_on_the_same_base_share_a_prefix_of_layers() {
    // Both images start with bash (and its closure); then a tool each.
    let base: &[(&str, u64, &[&str])] = &[("bash", 50, &["libc", "tinfo"]), ("tinfo", 20, &["libc"]), ("libc", 300, &[])];
    let with = |tool: &[(&'static str, u64, &'static [&'static str])], root: &str| {
        let nodes: Vec<(&str, u64, &[&str])> = base.iter().chain(tool).copied().collect();
        graph(&nodes, &["bash", root])
    };
    let a = with(&[("curl", 10, &["ssl", "libc"]), ("ssl", 400, &["libc"])], "curl");
    let b = with(&[("xev", 10, &["x11", "libc"]), ("x11", 500, &["libc"])], "xev");
    // Where every path has a layer of its own, the base's three come first.
    for budget in [5, 10] {
        let pa = plan_with(&a, &Popularity::default(), budget, Algorithm::Sharing).unwrap();
        let pb = plan_with(&b, &Popularity::default(), budget, Algorithm::Sharing).unwrap();
        assert_eq!(pa.layers[..3], pb.layers[..3], "budget {budget}: the base's layers first, in the same order");
    }
    // Over budget the single layers still lead with the base's (libc);
    // groups, which differ from image to image, come last.
    let pa = plan_with(&a, &Popularity::default(), 4, Algorithm::Sharing).unwrap();
    let pb = plan_with(&b, &Popularity::default(), 4, Algorithm::Sharing).unwrap();
    assert_eq!(pa.layers[0], pb.layers[0]);
    assert!(pa.layers.iter().skip_while(|l| l.paths.len() == 1).all(|l| l.paths.len() > 1 || l.paths[0] == sp("curl")), "{:?}", pa.layers);
    // Within budget: the base's closure, most popular first, then the tool's.
    let p = plan_with(&a, &Popularity::default(), 10, Algorithm::Sharing).unwrap();
    let order: Vec<String> = p.layers.iter().map(|l| crate::graph::package_name(&l.paths[0]).to_string()).collect();
    assert_eq!(order, ["libc", "tinfo", "bash", "ssl", "curl"]);
}
