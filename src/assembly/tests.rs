use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::graph::PathInfo;
use crate::image::base::{BaseImage, BaseLayer};
use crate::image::{ManifestFlavour, DEFAULT_CREATED};
use crate::packing::tests::{check_golden, golden, golden_store, GOLDEN_STORE_PATH};
use crate::packing::Compression;

fn spec(store_root: &Path, max_layers: usize) -> ImageSpec {
    ImageSpec {
        max_layers,
        layering: Algorithm::default(),
        popularity: Default::default(),
        pack: PackOptions::default(),
        platform: Platform::from_nix_system("x86_64-linux").unwrap(),
        created: DEFAULT_CREATED.to_string(),
        config: RuntimeConfig::from_json_value(serde_json::json!({ "Cmd": ["hello"] })).unwrap(),
        store_root: store_root.to_path_buf(),
        base: None,
        layer_groups: Vec::new(),
        root: RootSpec::default(),
        perms: Vec::new(),
        layer_lock: None,
    }
}

/// A chroot store with one small package per name, `a` referring to `b`
/// and so on down the list; the first `roots` names are the contents.
fn chain(root: &Path, names: &[&str], roots: usize) -> ClosureGraph {
    let path = |n: &str| format!("/nix/store/{:a<32}-{n}", n.replace('-', ""));
    let infos = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let dir = root.join(path(n).trim_start_matches('/'));
            fs::create_dir_all(dir.join("bin")).unwrap();
            fs::write(dir.join("bin").join(n), format!("#!/bin/sh\necho {n}\n")).unwrap();
            PathInfo {
                path: path(n),
                nar_size: 100 * (i as u64 + 1),
                closure_size: 0,
                references: names.get(i + 1).map(|m| vec![path(m)]).unwrap_or_default(),
                nar_hash: None,
            }
        })
        .collect();
    ClosureGraph::new(infos, Some(names[..roots].iter().map(|n| path(n)).collect())).unwrap()
}

#[test]
fn golden_image_documents_have_their_pinned_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let root = golden_store(tmp.path());
    let graph = ClosureGraph::new(
        vec![PathInfo { path: GOLDEN_STORE_PATH.into(), nar_size: 1, closure_size: 1, references: vec![], nar_hash: None }],
        Some(vec![GOLDEN_STORE_PATH.into()]),
    )
    .unwrap();
    let plan = plan(&spec(&root, 100), &graph).unwrap();
    assert_eq!(plan.jobs.len(), 2);
    let (image, stats) = assemble(plan, &DigestOnlyStore).unwrap();
    assert_eq!(stats, AssemblyStats { reused: 0, packed: 2 });
    let g = golden();
    check_golden("gzip layer (assembled)", &image.layers[0].packed.digest, g.gzip_layer);
    let oci = image.docs(ManifestFlavour::Oci);
    let docker = image.docs(ManifestFlavour::Docker);
    check_golden("image config", &oci.config_digest, g.config);
    check_golden("OCI manifest", &oci.manifest_digest, g.oci_manifest);
    check_golden("Docker manifest", &docker.manifest_digest, g.docker_manifest);
}

#[test]
fn every_layer_counts_against_the_budget_the_root_layer_too() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["app", "liba", "libb", "libc", "libd", "libe"];
    let graph = chain(tmp.path(), &names, 1);
    for max_layers in 2..=8 {
        let p = plan(&spec(tmp.path(), max_layers), &graph).unwrap();
        assert!(p.jobs.len() <= max_layers, "{} layers for maxLayers {max_layers}", p.jobs.len());
        assert_eq!(p.jobs.last().unwrap().comment, ROOT_LAYER_COMMENT);
        let mut paths: Vec<&String> = p.jobs.iter().flat_map(|j| &j.content.store_paths).collect();
        paths.sort();
        assert_eq!(paths, graph.paths.keys().collect::<Vec<_>>(), "every path in exactly one layer");
    }
    assert_eq!(plan(&spec(tmp.path(), 7), &graph).unwrap().jobs.len(), 7, "six paths and the root");
    for bad in [0, 1] {
        let e = plan(&spec(tmp.path(), bad), &graph).unwrap_err();
        assert!(matches!(e, AssemblyError::Budget { min: 2, .. }), "{e}");
        assert!(e.to_string().contains("maxLayers must be at least 2"), "{e}");
    }
}

#[test]
fn the_root_layer_joins_the_contents_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app", "lib"], 2);
    let p = plan(&spec(tmp.path(), 10), &graph).unwrap();
    let root = &p.jobs.last().unwrap().content;
    let links: Vec<&str> = root.entries.iter().map(|e| e.path()).collect();
    assert!(links.contains(&"bin/app") && links.contains(&"bin/lib") && links.contains(&"tmp"), "{links:?}");
    assert!(root.store_paths.is_empty());
}

/// A store that remembers what it packed and offers some layers as found.
struct Recording {
    known: Vec<LayerKey>,
    packed: Mutex<Vec<String>>,
    finds: AtomicUsize,
}

impl LayerStore for Recording {
    fn find(&self, job: &LayerJob) -> Result<Option<PackedLayer>, StoreError> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        if self.known.contains(&job.key) {
            return Ok(Some(packing::pack_to_sink(&job.content, PackOptions::default())?));
        }
        Ok(None)
    }
    fn pack(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError> {
        self.packed.lock().unwrap().push(job.comment.clone());
        Ok(packing::pack_to_sink(&job.content, opts)?)
    }
}

#[test]
fn assembly_reuses_what_the_store_has_and_packs_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app", "lib", "base"], 1);
    let p = plan(&spec(tmp.path(), 10), &graph).unwrap();
    let known: Vec<LayerKey> = p.jobs.iter().filter(|j| j.comment.contains("base") || j.comment.contains("lib")).map(|j| j.key.clone()).collect();
    assert_eq!(known.len(), 2);
    let store = Recording { known, packed: Mutex::new(Vec::new()), finds: AtomicUsize::new(0) };
    let (image, stats) = assemble(p.clone(), &store).unwrap();
    assert_eq!(stats, AssemblyStats { reused: 2, packed: 2 });
    assert_eq!(store.finds.load(Ordering::SeqCst), 4);
    let mut packed = store.packed.lock().unwrap().clone();
    packed.sort();
    assert_eq!(packed, vec![ROOT_LAYER_COMMENT.to_string(), "store paths: app".to_string()]);
    // The same image as packing everything.
    let (all, _) = assemble(p, &DigestOnlyStore).unwrap();
    assert_eq!(image.docs(ManifestFlavour::Oci).manifest_digest, all.docs(ManifestFlavour::Oci).manifest_digest);
}

#[test]
fn store_errors_name_the_layer() {
    struct Failing;
    impl LayerStore for Failing {
        fn find(&self, _: &LayerJob) -> Result<Option<PackedLayer>, StoreError> {
            Ok(None)
        }
        fn pack(&self, _: &LayerJob, _: PackOptions) -> Result<PackedLayer, StoreError> {
            Err("the disk is full".into())
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app"], 1);
    let e = assemble(plan(&spec(tmp.path(), 10), &graph).unwrap(), &Failing).unwrap_err().to_string();
    assert!(e.contains("the disk is full") && e.contains("layer "), "{e}");
}

#[test]
fn dir_store_packs_by_digest_and_links_prepacked_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app", "lib"], 1);
    let mut s = spec(tmp.path(), 10);
    s.pack = PackOptions::new(Compression::Zstd, None).unwrap();
    let p = plan(&s, &graph).unwrap();
    // A layer packed by someone else beforehand (an incremental layer
    // derivation), offered by key.
    let elsewhere = tmp.path().join("elsewhere");
    let lib_job = p.jobs.iter().find(|j| j.comment == "store paths: lib").unwrap();
    let prepacked = packing::pack_to_dir(&lib_job.content, &elsewhere, s.pack).unwrap();
    let blobs = tmp.path().join("out/blobs/sha256");
    let mut store = DirStore::new(&blobs);
    store.add_prepacked(lib_job.key.clone(), prepacked.clone(), elsewhere.join(prepacked.digest.hex()));
    let (image, stats) = assemble(p, &store).unwrap();
    assert_eq!(stats, AssemblyStats { reused: 1, packed: 2 });
    for l in &image.layers {
        let path = blobs.join(l.packed.digest.hex());
        assert_eq!(crate::digest::Digest::of(&fs::read(&path).unwrap()), l.packed.digest);
    }
    assert!(fs::symlink_metadata(blobs.join(prepacked.digest.hex())).unwrap().file_type().is_symlink());
}

#[test]
fn explicit_groups_get_layers_first_and_the_rest_is_layered_after() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app", "runtime", "libx", "libc"], 1);
    let mut s = spec(tmp.path(), 4);
    let runtime = graph.paths.keys().find(|p| p.ends_with("-runtime")).unwrap().clone();
    s.layer_groups = vec![vec![runtime]];
    let p = plan(&s, &graph).unwrap();
    // runtime's closure (runtime, libx, libc) in one explicit layer, first;
    // app in the budget left; the root last.
    assert_eq!(p.jobs.len(), 3);
    assert_eq!(p.jobs[0].content.store_paths.len(), 3);
    assert!(p.jobs[0].comment.starts_with("explicit layer: "), "{}", p.jobs[0].comment);
    assert_eq!(p.jobs[1].comment, "store paths: app");
    // A group's key does not depend on what else the image holds.
    let other = chain(tmp.path(), &["tool", "runtime", "libx", "libc"], 1);
    let mut s2 = spec(tmp.path(), 4);
    s2.layer_groups = s.layer_groups.clone();
    assert_eq!(plan(&s2, &other).unwrap().jobs[0].key, p.jobs[0].key);
    // Every layer counts: three explicit layers and the root leave none.
    s.max_layers = 2;
    let e = plan(&s, &graph).unwrap_err();
    assert!(matches!(e, AssemblyError::Budget { min: 3, .. }), "{e}");
    assert!(e.to_string().contains("1 explicit, the image root"), "{e}");
    s.layer_groups = vec![vec!["/nix/store/ghostghostghostghostghostghostgh-ghost".into()]];
    assert!(matches!(plan(&s, &graph), Err(AssemblyError::Graph(_))));
}

#[test]
fn base_layers_come_first_and_count_against_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app", "lib"], 1);
    let base_dir = tmp.path().join("base");
    let blob = |n: &str| {
        let content = LayerContent::tree(vec![crate::packing::TreeEntry::File {
            path: n.into(),
            mode: 0o644,
            owner: Owner::default(),
            data: crate::packing::FileData::bytes(n),
        }]);
        let packed = packing::pack_to_dir(&content, &base_dir, PackOptions::default()).unwrap();
        BaseLayer { blob: base_dir.join(packed.digest.hex()), packed }
    };
    let base = BaseImage {
        layers: vec![blob("etc/one"), blob("etc/two")],
        config: RuntimeConfig::from_image_json(serde_json::json!({"Env": ["PATH=/base/bin"], "Cmd": ["sh"]})).unwrap(),
        history: vec![serde_json::json!({"created_by": "base 1"}), serde_json::json!({"created_by": "base 2"})],
        platform: Platform::from_nix_system("x86_64-linux").unwrap(),
    };
    let mut s = spec(tmp.path(), 4);
    s.base = Some(base);
    let p = plan(&s, &graph).unwrap();
    assert_eq!((p.base_layers.len(), p.jobs.len()), (2, 2), "two base layers, one store layer, the root");
    assert_eq!(p.config.env, vec!["PATH=/base/bin"], "the base's PATH, no default added");
    assert_eq!(p.config.cmd, Some(vec!["hello".to_string()]), "ours wins");
    let store = DirStore::new(tmp.path().join("out"));
    let (image, _) = assemble(p, &store).unwrap();
    assert_eq!(image.layers.len(), 4);
    assert!(image.layers[0].from_base && image.layers[1].from_base && !image.layers[2].from_base);
    let config: serde_json::Value = serde_json::from_slice(&image.config_json()).unwrap();
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[0]["created_by"], "base 1");
    assert_eq!(history[3]["comment"], ROOT_LAYER_COMMENT);
    for l in &image.layers {
        assert!(tmp.path().join("out").join(l.packed.digest.hex()).exists(), "every blob is in the output");
    }
    s.max_layers = 3;
    assert!(matches!(plan(&s, &graph), Err(AssemblyError::Budget { min: 4, .. })));
    // Stores that cannot keep base layers say so.
    s.max_layers = 10;
    let e = assemble(plan(&s, &graph).unwrap(), &DigestOnlyStore).unwrap_err().to_string();
    assert!(e.contains("base image layer"), "{e}");
}

#[test]
fn rules_go_to_the_layers_they_concern_and_users_into_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = chain(tmp.path(), &["app", "lib"], 1);
    let app = graph.paths.keys().find(|p| p.ends_with("-app")).unwrap().clone();
    let mut s = spec(tmp.path(), 10);
    s.perms = vec![PermRule { path: app.clone(), regex: "/bin/".into(), mode: Some(0o700), ..Default::default() }];
    s.root.users = vec![users::User { name: "app".into(), uid: 1000, gid: None, home: None, shell: None, description: None, groups: vec![] }];
    let p = plan(&s, &graph).unwrap();
    let job = |suffix: &str| p.jobs.iter().find(|j| j.content.store_paths.iter().any(|x| x.ends_with(suffix))).unwrap();
    assert_eq!(job("-app").content.perms.len(), 1);
    assert!(job("-lib").content.perms.is_empty(), "lib's layer key does not change with app's rules");
    let root = &p.jobs.last().unwrap().content;
    assert!(root.entries.iter().any(|e| e.path() == "etc/passwd"));
    assert!(root.entries.iter().any(|e| matches!(e, crate::packing::TreeEntry::Dir { path, owner, .. } if path == "home/app" && owner.uid == 1000)));
    s.perms[0].path = "relative".into();
    assert!(matches!(plan(&s, &graph), Err(AssemblyError::Perms(_))));
}
