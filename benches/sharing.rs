//! The layer-sharing benchmark: how many bytes a client downloads over a
//! sequence of image pulls, for each layering algorithm, against the ideal
//! of one layer per store path (which no budget allows).
//!
//! The package set is Debian's own package index (what apt keeps after
//! `apt-get update`), modelled as a Nix store: each package (or cycle of
//! packages, which Nix could not build) is a store path whose size is the
//! installed size and whose references are its resolved dependencies.
//! Store path hashes are Merkle hashes of the name, version and the
//! references' hashes, as Nix's are. Popularity is counted the way the
//! original Nixery's popcount counts it: for each path name, how many
//! packages have it in their closure.
//!
//! The workload: one image per common tool (several dozen), pulled in
//! turn by one client that keeps every layer it downloaded; then a
//! package-set update that changes a few libraries (each a quarter larger),
//! and with them, as in Nix, every path that depends on them; then the same
//! images again: planned afresh, and (`+lock`) from each image's first plan
//! as its layer lock, as `layerLock` and the shim plan them.
//!
//! Run: `cargo bench --bench sharing` (or `bench/sharing`). Optional
//! argument: a Packages file (default: the largest in /var/lib/apt/lists).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::process::Command;
use std::time::Instant;

use nixery::graph::{ClosureGraph, PathInfo, Popularity};
use nixery::layering::lock::{self, LayerLock};
use nixery::layering::Algorithm;
use sha2::{Digest, Sha256};

/// The images: common tools, one image each.
const TOOLS: &[&str] = &[
    "curl",
    "wget",
    "git",
    "openssh-client",
    "rsync",
    "jq",
    "vim",
    "nano",
    "emacs-nox",
    "tmux",
    "htop",
    "zsh",
    "fish",
    "python3",
    "perl",
    "ruby",
    "nodejs",
    "golang-go",
    "openjdk-17-jre-headless",
    "php-cli",
    "lua5.4",
    "gcc",
    "make",
    "cmake",
    "clang",
    "gdb",
    "valgrind",
    "nginx",
    "apache2",
    "postgresql-15",
    "mariadb-server",
    "redis-server",
    "sqlite3",
    "haproxy",
    "bind9",
    "postfix",
    "gnupg",
    "imagemagick",
    "ffmpeg",
    "graphviz",
    "pandoc",
    "ghostscript",
    "texinfo",
    "zstd",
    "xz-utils",
    "p7zip-full",
    "awscli",
    "ansible",
    "podman",
    "skopeo",
    "strace",
    "tcpdump",
    "nmap",
    "iperf3",
    "socat",
    "unzip",
];

/// The libraries a package-set update changes.
const UPDATED: &[&str] = &["libssl3", "zlib1g", "libxml2", "libsqlite3-0", "libcurl4", "libpython3.11-minimal"];

const BUDGETS: &[usize] = &[94, 48, 24];

struct Pkg {
    version: String,
    size: u64,
    depends: Vec<Vec<String>>,
}

fn packages_file() -> String {
    if let Some(f) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        return f;
    }
    let dir = "/var/lib/apt/lists";
    let mut best: Option<(u64, String)> = None;
    for e in std::fs::read_dir(dir).expect("apt lists (run apt-get update)").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("_Packages") && !name.contains("security") && !name.contains("updates") {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, format!("{dir}/{name}")));
            }
        }
    }
    best.expect("no Packages file in /var/lib/apt/lists (run apt-get update)").1
}

fn read_index(path: &str) -> String {
    let out = Command::new("/usr/lib/apt/apt-helper").args(["cat-file", path]).output().expect("apt-helper");
    assert!(out.status.success(), "apt-helper cat-file {path} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_index(text: &str) -> (BTreeMap<String, Pkg>, HashMap<String, Vec<String>>) {
    let mut pkgs = BTreeMap::new();
    let mut provides: HashMap<String, Vec<String>> = HashMap::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<&str, String> = HashMap::new();
        let mut last: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') {
                if let Some(k) = last {
                    fields.get_mut(k).unwrap().push_str(line);
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim().to_string());
                last = Some(k);
            }
        }
        let Some(name) = fields.get("Package").cloned() else { continue };
        if pkgs.contains_key(&name) {
            continue;
        }
        let parse_deps = |v: Option<&String>| -> Vec<Vec<String>> {
            v.map(|v| {
                v.split(',')
                    .map(|alts| alts.split('|').map(|a| a.trim().split([' ', '(', ':']).next().unwrap().to_string()).filter(|a| !a.is_empty()).collect())
                    .collect()
            })
            .unwrap_or_default()
        };
        let mut depends = parse_deps(fields.get("Depends"));
        depends.extend(parse_deps(fields.get("Pre-Depends")));
        for p in parse_deps(fields.get("Provides")).into_iter().flatten() {
            provides.entry(p).or_default().push(name.clone());
        }
        let size = fields.get("Installed-Size").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) * 1024;
        pkgs.insert(name, Pkg { version: fields.get("Version").cloned().unwrap_or_default(), size, depends });
    }
    for v in provides.values_mut() {
        v.sort();
    }
    (pkgs, provides)
}

/// The package set as a store: strongly connected components of the
/// dependency graph become single store paths.
struct Store {
    /// Store path of each package.
    path_of: HashMap<String, usize>,
    paths: Vec<StorePath>,
}

struct StorePath {
    name: String,
    size: u64,
    refs: Vec<usize>,
    hash: String,
}

fn build_store(pkgs: &BTreeMap<String, Pkg>, provides: &HashMap<String, Vec<String>>, bumped: &HashSet<&str>) -> Store {
    let names: Vec<&String> = pkgs.keys().collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let resolve = |alts: &Vec<String>| -> Option<usize> {
        for a in alts {
            if let Some(&i) = index.get(a.as_str()) {
                return Some(i);
            }
            if let Some(p) = provides.get(a).and_then(|ps| ps.iter().find_map(|p| index.get(p.as_str()))) {
                return Some(*p);
            }
        }
        None
    };
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            let mut e: Vec<usize> = pkgs[*n].depends.iter().filter_map(resolve).collect();
            e.sort_unstable();
            e.dedup();
            e
        })
        .collect();
    // Tarjan's SCC, iteratively.
    let n = names.len();
    let (mut idx, mut low, mut on) = (vec![usize::MAX; n], vec![0; n], vec![false; n]);
    let (mut stack, mut comp, mut comps) = (Vec::new(), vec![usize::MAX; n], Vec::<Vec<usize>>::new());
    let mut counter = 0;
    for s in 0..n {
        if idx[s] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(s, 0)];
        idx[s] = counter;
        low[s] = counter;
        counter += 1;
        stack.push(s);
        on[s] = true;
        while let Some(&mut (v, ref mut i)) = call.last_mut() {
            if let Some(&w) = edges[v].get(*i) {
                *i += 1;
                if idx[w] == usize::MAX {
                    idx[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on[w] = true;
                    call.push((w, 0));
                } else if on[w] {
                    low[v] = low[v].min(idx[w]);
                }
            } else {
                call.pop();
                if let Some(&(u, _)) = call.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == idx[v] {
                    let mut c = Vec::new();
                    loop {
                        let w = stack.pop().unwrap();
                        on[w] = false;
                        comp[w] = comps.len();
                        c.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comps.push(c);
                }
            }
        }
    }
    // Tarjan emits components in reverse topological order: dependencies
    // first, so hashes can be computed in order.
    let mut paths: Vec<StorePath> = Vec::with_capacity(comps.len());
    for c in &comps {
        let mut members: Vec<&str> = c.iter().map(|&i| names[i].as_str()).collect();
        members.sort();
        let name = members[0].to_string();
        // An updated package's new version is a quarter larger, as new
        // versions often are: the plan's ranking by size may shift.
        let size = c.iter().map(|&i| if bumped.contains(names[i].as_str()) { pkgs[names[i]].size * 5 / 4 } else { pkgs[names[i]].size }).sum::<u64>().max(1);
        let mut refs: Vec<usize> = c.iter().flat_map(|&i| edges[i].iter().map(|&w| comp[w])).filter(|&k| k != comp[c[0]]).collect();
        refs.sort_unstable();
        refs.dedup();
        let mut h = Sha256::new();
        for m in &members {
            let p = &pkgs[*m];
            h.update(m.as_bytes());
            h.update(p.version.as_bytes());
            if bumped.contains(m) {
                h.update(b"+update");
            }
        }
        for &r in &refs {
            h.update(paths[r].hash.as_bytes());
        }
        let hash: String = h.finalize().iter().take(32).map(|b| (b'a' + b % 26) as char).collect();
        let version = if members.iter().any(|m| bumped.contains(m)) { format!("{}+1", pkgs[members[0]].version) } else { pkgs[members[0]].version.clone() };
        let version: String = version.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '+' { c } else { '_' }).collect();
        paths.push(StorePath { name: format!("{name}-{version}"), size, refs, hash });
    }
    let path_of = names.iter().enumerate().map(|(i, n)| (n.to_string(), comp[i])).collect();
    Store { path_of, paths }
}

impl Store {
    fn store_path(&self, i: usize) -> String {
        format!("/nix/store/{}-{}", self.paths[i].hash, self.paths[i].name)
    }

    fn closure(&self, roots: &[usize]) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = roots.to_vec();
        while let Some(v) = stack.pop() {
            if seen.insert(v) {
                stack.extend(&self.paths[v].refs);
            }
        }
        seen
    }

    /// Popularity as the original's popcount computes it, over every
    /// package of the set.
    fn popularity(&self) -> Popularity {
        let refs: BTreeMap<String, Vec<String>> =
            (0..self.paths.len()).map(|i| (self.store_path(i), self.paths[i].refs.iter().map(|&r| self.store_path(r)).collect())).collect();
        nixery::graph::popcount(&refs, None)
    }

    fn image_graph(&self, tools: &[&str]) -> Option<ClosureGraph> {
        let roots: Vec<usize> = tools.iter().map(|t| self.path_of.get(*t).copied()).collect::<Option<_>>()?;
        let closure = self.closure(&roots);
        let infos = closure
            .iter()
            .map(|&i| PathInfo {
                path: self.store_path(i),
                nar_size: self.paths[i].size,
                closure_size: 0,
                references: self.paths[i].refs.iter().map(|&r| self.store_path(r)).collect(),
                nar_hash: None,
            })
            .collect();
        Some(ClosureGraph::new(infos, Some(roots.iter().map(|&r| self.store_path(r)).collect())).expect("consistent graph"))
    }
}

/// A client's cache: what it has downloaded. A content-store client
/// (podman, containerd's content store, a registry) keeps layers by their
/// identity (the layer digest is a function of its set of store paths)
/// and reuses any it has. A chain-store client (Docker's classic image
/// store, any client's unpacked snapshots) keeps layers by their chain,
/// the layer with every layer below it in the image: a layer is reused
/// only when its whole prefix was fetched before.
#[derive(Default)]
struct Client {
    chains: bool,
    layers: HashSet<Vec<String>>,
    seen_chains: HashSet<[u8; 32]>,
}

impl Client {
    fn chain_store() -> Client {
        Client { chains: true, ..Client::default() }
    }

    fn pull(&mut self, layers: Vec<(Vec<String>, u64)>) -> u64 {
        if !self.chains {
            return layers.into_iter().filter_map(|(paths, size)| self.layers.insert(paths).then_some(size)).sum();
        }
        let mut chain = [0u8; 32];
        let mut fetched = 0;
        for (paths, size) in layers {
            let mut h = Sha256::new();
            h.update(chain);
            for p in &paths {
                h.update(p.as_bytes());
                h.update(b"\n");
            }
            chain = h.finalize().into();
            if self.seen_chains.insert(chain) {
                fetched += size;
            }
        }
        fetched
    }
}

/// What `shell` adds to an image, as the original Nixery's meta-package.
const SHELL: &[&str] = &["bash", "coreutils", "moreutils", "nano"];

fn main() {
    let file = packages_file();
    let text = read_index(&file);
    let (pkgs, provides) = parse_index(&text);
    let before = build_store(&pkgs, &provides, &HashSet::new());
    let after = build_store(&pkgs, &provides, &UPDATED.iter().copied().collect());
    let tools: Vec<&str> = TOOLS.iter().copied().filter(|t| before.path_of.contains_key(*t)).collect();
    println!("package set: {file}");
    println!("{} packages as {} store paths; the update changes {}", pkgs.len(), before.paths.len(), UPDATED.join(", "));
    let pop_before = before.popularity();
    let pop_after = after.popularity();
    let one: Vec<Vec<&str>> = tools.iter().map(|t| vec![*t]).collect();
    let with_shell: Vec<Vec<&str>> = tools.iter().map(|t| SHELL.iter().copied().chain([*t]).collect()).collect();
    for (label, workload) in [("one tool per image", &one), ("shell/<tool> images", &with_shell)] {
        let images_before: Vec<ClosureGraph> = workload.iter().filter_map(|t| before.image_graph(t)).collect();
        let images_after: Vec<ClosureGraph> = workload.iter().filter_map(|t| after.image_graph(t)).collect();
        report(label, &images_before, &images_after, &pop_before, &pop_after);
    }
}

fn report(label: &str, images_before: &[ClosureGraph], images_after: &[ClosureGraph], pop_before: &Popularity, pop_after: &Popularity) {
    let changed = images_after
        .iter()
        .flat_map(|g| g.paths.keys())
        .collect::<BTreeSet<_>>()
        .difference(&images_before.iter().flat_map(|g| g.paths.keys()).collect())
        .count();
    let sizes: Vec<usize> = images_before.iter().map(|g| g.paths.len()).collect();
    println!(
        "\n## {label}: {} images of {} to {} paths ({:.0} on average); the update changes {} of their paths",
        images_before.len(),
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap(),
        sizes.iter().sum::<usize>() as f64 / sizes.len() as f64,
        changed
    );

    // The ideal: one layer per store path.
    let ideal = |images: &[ClosureGraph], client: &mut Client| -> u64 {
        images.iter().map(|g| client.pull(g.paths.values().map(|p| (vec![p.path.clone()], p.nar_size)).collect())).sum()
    };
    let mut c = Client::default();
    let ideal_first = ideal(images_before, &mut c);
    let ideal_update = ideal(images_after, &mut c);
    println!("ideal: first pass {:.1} MB, after the update {:.1} MB\n", ideal_first as f64 / 1e6, ideal_update as f64 / 1e6);
    println!(
        "{:<20} {:>6} {:>12} {:>14} {:>14} {:>14} {:>8} {:>10}",
        "algorithm", "budget", "content: 1st", "content: after", "chain: 1st", "chain: after", "layers", "plan time"
    );
    for &budget in BUDGETS {
        // Each algorithm plans afresh after the update, then (`+lock`) from
        // the lock of each image's first plan, as `layerLock` and the shim do.
        for (alg, locked) in Algorithm::ALL.into_iter().flat_map(|a| [(a, false), (a, true)]) {
            let mut client = Client::default();
            let mut chain_client = Client::chain_store();
            let mut layer_count = 0;
            let mut plan_time = std::time::Duration::ZERO;
            let mut locks: Vec<LayerLock> = Vec::new();
            let mut run = |images: &[ClosureGraph], pop: &Popularity, client: &mut Client, chain_client: &mut Client, after: bool| -> (u64, u64) {
                images
                    .iter()
                    .enumerate()
                    .map(|(i, g)| {
                        let t = Instant::now();
                        let lock = (after && locked).then(|| &locks[i]);
                        let (plan, _) = lock::plan(g, pop, budget, alg, lock).expect("plan");
                        plan_time = plan_time.max(t.elapsed());
                        assert!(plan.layers.len() <= budget);
                        if !after {
                            locks.push(LayerLock::of_plan(&plan));
                        }
                        layer_count = layer_count.max(plan.layers.len());
                        let layers: Vec<(Vec<String>, u64)> = plan.layers.into_iter().map(|l| (l.paths, l.size)).collect();
                        (client.pull(layers.clone()), chain_client.pull(layers))
                    })
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            };
            let (first, chain_first) = run(images_before, pop_before, &mut client, &mut chain_client, false);
            let (update, chain_update) = run(images_after, pop_after, &mut client, &mut chain_client, true);
            let name = if locked { format!("{}+lock", alg.name()) } else { alg.name().to_string() };
            println!(
                "{:<20} {:>6} {:>11.3}x {:>13.3}x {:>13.3}x {:>13.3}x {:>8} {:>8.1}ms",
                name,
                budget,
                first as f64 / ideal_first as f64,
                update as f64 / ideal_update as f64,
                chain_first as f64 / ideal_first as f64,
                chain_update as f64 / ideal_update as f64,
                layer_count,
                plan_time.as_secs_f64() * 1000.0
            );
        }
    }
}
