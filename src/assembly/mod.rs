//! Image assembly: the one place where an image is put together, for both
//! entry points: `buildNixeryImage`'s builder ([`crate::builder`]) and the
//! registry shim ([`crate::shim`]).
//!
//! ```text
//!  closure graph, popularity ──► layer plan ─────────┐   one rule: every layer
//!  contents (the graph's roots) ─► root layer ───────┤   counts against maxLayers
//!                                                    ▼
//!                                            layer jobs (content, key, comment)
//!                                                    │
//!                                  LayerStore::find ─┤ reuse what is stored
//!                                  LayerStore::pack ─┤ pack the rest, in parallel
//!                                                    ▼
//!  platform, created, config ───────────────────► Image (config, manifests)
//! ```
//!
//! [`plan`] is pure: it decides which layers the image has and what each
//! holds. [`assemble`] gets every layer from a [`LayerStore`], packing
//! through it what it does not have, and returns the [`Image`], whose
//! documents the caller writes where it keeps images (an OCI layout, a
//! registry's storage). What differs between the entry points is only the
//! store: a directory of blobs ([`DirStore`]), a storage backend with its
//! layer cache (the shim's), or digests alone ([`DigestOnlyStore`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::graph::{package_name, ClosureGraph, GraphError, Popularity};
use crate::image::base::{BaseImage, BaseLayer};
use crate::image::{Image, ImageLayer, Platform, RuntimeConfig};
use crate::layering::lock::{LayerLock, LockReport};
use crate::layering::{self, Algorithm, LayeringError};
use crate::packing::{self, run_parallel, LayerContent, LayerKey, Owner, PackError, PackOptions, PackedLayer, PermRule};

pub mod nixdb;
pub mod root;
pub mod users;

/// An error from a [`LayerStore`]: whatever its backend reports.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Errors assembling an image.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    /// The layer budget leaves no layer for the store paths.
    #[error("maxLayers must be at least {min} ({fixed} for {what}, and one for the store paths), got {max_layers}")]
    Budget {
        /// The budget asked for.
        max_layers: usize,
        /// The least budget that works.
        min: usize,
        /// How many layers are fixed.
        fixed: usize,
        /// What the fixed layers are.
        what: String,
    },
    /// Layering failed.
    #[error(transparent)]
    Layering(#[from] LayeringError),
    /// A package named for explicit layers or the root is not in the
    /// closure graph.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The declared users and groups cannot be.
    #[error(transparent)]
    Users(#[from] users::UsersError),
    /// The Nix database cannot be written.
    #[error(transparent)]
    NixDb(#[from] nixdb::NixDbError),
    /// A permission rule is not valid.
    #[error("perms: {0}")]
    Perms(String),
    /// Reading a content package for the root layer failed.
    #[error("joining the contents into the image root: {0}")]
    RootLayer(std::io::Error),
    /// The layer store failed to find or pack a layer.
    #[error("layer {layer}: {source}")]
    Store {
        /// The layer's history comment.
        layer: String,
        /// What failed.
        source: StoreError,
    },
}

impl AssemblyError {
    /// Whether storing or reading a layer failed (a full disk, an
    /// unreachable bucket), not the image itself: building again later may
    /// well succeed.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            AssemblyError::Store { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(e) = cause {
                    if e.is::<std::io::Error>() || e.is::<crate::storage::StorageError>() {
                        return true;
                    }
                    cause = e.source();
                }
                false
            }
            AssemblyError::RootLayer(_) => true,
            _ => false,
        }
    }
}

/// The history comment of the root layer.
pub const ROOT_LAYER_COMMENT: &str = "image root: links to the contents, /tmp";

/// What an image is made of, apart from its closure graph.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The most layers the image may have, every layer counted (the root
    /// layer too).
    pub max_layers: usize,
    /// How store paths are grouped into layers.
    pub layering: Algorithm,
    /// Popularity data for layering.
    pub popularity: std::sync::Arc<Popularity>,
    /// How layers are compressed.
    pub pack: PackOptions,
    /// The platform recorded in the config.
    pub platform: Platform,
    /// The creation time recorded in the config.
    pub created: String,
    /// The runtime config.
    pub config: RuntimeConfig,
    /// Where store paths are read from: `/`, or a chroot store's root.
    pub store_root: PathBuf,
    /// A base image: its layers come first, unchanged, and its config is
    /// the default for this one's.
    pub base: Option<BaseImage>,
    /// Groups of store paths whose closures get layers of their own, after
    /// the base image's and before the rest (each group less what earlier
    /// groups hold), so that they stay the same across rebuilds.
    pub layer_groups: Vec<Vec<String>>,
    /// What the image root holds besides links to the contents.
    pub root: RootSpec,
    /// Mode and ownership rules, over every layer.
    pub perms: Vec<PermRule>,
    /// The plan of an earlier build, kept where it can be
    /// ([`crate::layering::lock`]).
    pub layer_lock: Option<LayerLock>,
}

/// What the image root holds besides links to the contents (the graph's
/// roots).
#[derive(Debug, Clone, Default)]
pub struct RootSpec {
    /// Packages whose files are copied into the root (their closures are
    /// in the image too).
    pub copy_to_root: Vec<String>,
    /// Users of the image.
    pub users: Vec<users::User>,
    /// Groups of the image.
    pub groups: Vec<users::Group>,
    /// A Nix database registering the image's store paths, owned by this
    /// user (`initializeNixDatabase`).
    pub nix_db: Option<Owner>,
}

/// What a layer of the plan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// An explicit group's closure (`layers`).
    Explicit,
    /// Store paths grouped by the layering algorithm.
    Store,
    /// The image root.
    Root,
}

/// One layer to get: its content, its key and its history comment.
#[derive(Debug, Clone)]
pub struct LayerJob {
    /// What kind of layer it is.
    pub kind: JobKind,
    /// What the layer holds.
    pub content: LayerContent,
    /// Its key under the plan's pack options.
    pub key: LayerKey,
    /// Its history comment (`store paths: …`).
    pub comment: String,
}

/// An image's layers, decided but not yet packed.
#[derive(Debug, Clone)]
pub struct ImagePlan {
    /// A base image's layers, first and unchanged.
    pub base_layers: Vec<BaseLayer>,
    /// A base image's history entries.
    pub base_history: Vec<serde_json::Value>,
    /// The layers to find or pack, in image order (bottom first), after
    /// the base image's.
    pub jobs: Vec<LayerJob>,
    /// How layers are compressed.
    pub pack: PackOptions,
    /// The platform, creation time and runtime config of the image.
    pub platform: Platform,
    /// The creation time.
    pub created: String,
    /// The runtime config.
    pub config: RuntimeConfig,
    /// Reports for the build log (conflicts in the root layer).
    pub warnings: Vec<String>,
    /// What the layer lock did, when there was one.
    pub lock_report: Option<LockReport>,
}

impl ImagePlan {
    /// The store layers' paths, by their index among the jobs: what the
    /// image's layer lock records ([`layer_lock`]).
    pub fn store_layer_paths(&self) -> Vec<(usize, Vec<String>)> {
        self.jobs.iter().enumerate().filter(|(_, j)| j.kind == JobKind::Store).map(|(i, j)| (i, j.content.store_paths.clone())).collect()
    }
}

/// The layer lock of `image`, assembled from a plan whose store layers
/// were `store_layers` ([`ImagePlan::store_layer_paths`]): each with its
/// digest.
pub fn layer_lock(image: &Image, store_layers: &[(usize, Vec<String>)]) -> LayerLock {
    let base = image.layers.iter().filter(|l| l.from_base).count();
    LayerLock::of(store_layers.iter().map(|(i, paths)| (paths.as_slice(), image.layers.get(base + i).map(|l| l.packed.digest.clone()))))
}

/// A short description of a layer's store paths for its history entry.
pub fn layer_comment(paths: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut names: Vec<&str> = paths.iter().map(|p| package_name(p)).collect();
    names.sort_unstable();
    let more = names.len().saturating_sub(SHOWN);
    names.truncate(SHOWN);
    let mut s = format!("store paths: {}", names.join(", "));
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

/// The store paths of an explicit layer: the closure of `group` less what
/// `assigned` (the earlier groups) holds, which it then holds too.
pub fn explicit_layer_paths<'a>(graph: &'a ClosureGraph, group: &[String], assigned: &mut BTreeSet<&'a str>) -> Result<Vec<String>, GraphError> {
    let closure = graph.closure(group.iter().map(String::as_str))?;
    Ok(closure.into_iter().filter(|p| assigned.insert(p)).map(str::to_string).collect())
}

/// Whether `rule` can concern a layer of these store paths: its path is
/// `/`, one of them or below one, or above them (`/nix/store`).
pub fn concerns(rule: &PermRule, store_paths: &[String]) -> bool {
    let under = |a: &str, b: &str| a == b || a.strip_prefix(b).is_some_and(|r| r.starts_with('/'));
    rule.path == "/" || store_paths.iter().any(|p| under(&rule.path, p) || under(p, &rule.path))
}

/// Decides the layers of the image of `graph` (its roots are the contents,
/// in the user's order): a base image's layers, the explicit groups, the
/// rest of the store paths grouped within the budget, and the root layer.
pub fn plan(spec: &ImageSpec, graph: &ClosureGraph) -> Result<ImagePlan, AssemblyError> {
    if let Some(bad) = spec.perms.iter().find(|r| !r.path.starts_with('/')) {
        return Err(AssemblyError::Perms(format!("{:?} is not an absolute path", bad.path)));
    }
    let job = |kind: JobKind, content: LayerContent, comment: String| LayerJob { kind, key: content.key(spec.pack), content, comment };
    let store_layer = |paths: Vec<String>| {
        let perms = spec.perms.iter().filter(|r| concerns(r, &paths)).cloned().collect();
        LayerContent { store_root: spec.store_root.clone(), perms, ..LayerContent::store_paths(paths) }
    };

    // Explicit groups: each one's closure, less what earlier groups hold.
    let mut assigned: BTreeSet<&str> = BTreeSet::new();
    let mut jobs = Vec::new();
    for group in &spec.layer_groups {
        let paths = explicit_layer_paths(graph, group, &mut assigned)?;
        if !paths.is_empty() {
            let comment = format!("explicit layer: {}", layer_comment(&paths).trim_start_matches("store paths: "));
            jobs.push(job(JobKind::Explicit, store_layer(paths), comment));
        }
    }
    let rest = graph.without(&assigned);

    // The budget: every layer counts.
    let base_layers = spec.base.as_ref().map_or(0, |b| b.layers.len());
    let fixed = base_layers + jobs.len() + 1;
    let min = fixed + usize::from(!rest.paths.is_empty());
    if spec.max_layers < min {
        let mut what = Vec::new();
        if base_layers > 0 {
            what.push(format!("{base_layers} of the base image"));
        }
        if !jobs.is_empty() {
            what.push(format!("{} explicit", jobs.len()));
        }
        what.push("the image root".to_string());
        return Err(AssemblyError::Budget { max_layers: spec.max_layers, min, fixed, what: what.join(", ") });
    }
    let mut lock_report = None;
    if !rest.paths.is_empty() {
        let (layer_plan, report) = layering::lock::plan(&rest, &spec.popularity, spec.max_layers - fixed, spec.layering, spec.layer_lock.as_ref())?;
        lock_report = report;
        jobs.extend(layer_plan.layers.into_iter().map(|l| job(JobKind::Store, store_layer(l.paths.clone()), layer_comment(&l.paths))));
    }

    // The root: generated entries, copies, links.
    let mut root = root::RootBuilder::new(&spec.store_root);
    if !spec.root.users.is_empty() || !spec.root.groups.is_empty() {
        for e in users::entries(&spec.root.users, &spec.root.groups)? {
            root.generated(e, "users");
        }
    }
    if let Some(owner) = &spec.root.nix_db {
        for e in nixdb::entries(graph, owner, &std::env::temp_dir())? {
            root.generated(e, "the Nix database");
        }
    }
    root.copy(&spec.root.copy_to_root).map_err(AssemblyError::RootLayer)?;
    root.link(&graph.roots).map_err(AssemblyError::RootLayer)?;
    let root = root.finish();
    let root_layer = LayerContent { perms: spec.perms.clone(), ..LayerContent::tree(root.entries) };
    jobs.push(job(JobKind::Root, root_layer, ROOT_LAYER_COMMENT.to_string()));

    let (config, base_layers, base_history) = match &spec.base {
        Some(b) => (spec.config.clone().over(&b.config), b.layers.clone(), b.history.clone()),
        None => (spec.config.clone(), Vec::new(), Vec::new()),
    };
    Ok(ImagePlan {
        base_layers,
        base_history,
        jobs,
        pack: spec.pack,
        platform: spec.platform.clone(),
        created: spec.created.clone(),
        config: config.with_default_path(),
        warnings: root.warnings,
        lock_report,
    })
}

/// Where layers come from and go: finds a layer packed before, or packs
/// it and keeps it. Both methods are called from several threads at once.
pub trait LayerStore: Sync {
    /// The layer packed before from a job with this key, if the store
    /// still has it.
    fn find(&self, job: &LayerJob) -> Result<Option<PackedLayer>, StoreError>;

    /// Packs the job's content with `opts` and keeps the blob.
    fn pack(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError>;

    /// Keeps a base image's layer as it is.
    fn adopt(&self, layer: &BaseLayer) -> Result<(), StoreError> {
        Err(format!("this layer store takes no base image layers ({})", layer.packed.digest).into())
    }
}

/// What [`assemble`] did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssemblyStats {
    /// Layers the store had.
    pub reused: usize,
    /// Layers packed now.
    pub packed: usize,
}

/// Gets every layer of `plan` from `store`, packing those it does not have
/// side by side, and returns the image.
pub fn assemble(plan: ImagePlan, store: &dyn LayerStore) -> Result<(Image, AssemblyStats), AssemblyError> {
    let store_error = |job: &LayerJob| {
        let layer = job.comment.clone();
        move |source| AssemblyError::Store { layer, source }
    };
    let mut layers: Vec<ImageLayer> = Vec::with_capacity(plan.base_layers.len() + plan.jobs.len());
    for b in &plan.base_layers {
        store.adopt(b).map_err(|source| AssemblyError::Store { layer: format!("base image layer {}", b.packed.digest), source })?;
        layers.push(ImageLayer { packed: b.packed.clone(), comment: String::new(), from_base: true });
    }
    let mut packed: Vec<Option<PackedLayer>> = Vec::with_capacity(plan.jobs.len());
    for job in &plan.jobs {
        packed.push(store.find(job).map_err(store_error(job))?);
    }
    let missing: Vec<usize> = (0..plan.jobs.len()).filter(|&i| packed[i].is_none()).collect();
    let stats = AssemblyStats { reused: plan.jobs.len() - missing.len(), packed: missing.len() };
    let opts = plan.pack;
    let results = run_parallel(missing, packing::producers(opts), |i| (i, store.pack(&plan.jobs[i], opts)));
    for (i, result) in results {
        packed[i] = Some(result.map_err(store_error(&plan.jobs[i]))?);
    }
    layers.extend(plan.jobs.into_iter().zip(packed).map(|(job, p)| ImageLayer {
        packed: p.expect("every layer was found or packed"),
        comment: job.comment,
        from_base: false,
    }));
    let image = Image { platform: plan.platform, created: plan.created, config: plan.config, layers, base_history: plan.base_history };
    Ok((image, stats))
}

/// Layers as files in a directory (`blobs/sha256/` of an OCI layout),
/// named by their digest. Layers packed elsewhere beforehand (by
/// `incremental` builds' layer derivations) are linked in by key.
#[derive(Debug, Default)]
pub struct DirStore {
    dir: PathBuf,
    prepacked: HashMap<LayerKey, (PackedLayer, PathBuf)>,
}

impl DirStore {
    /// Packs layers into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore { dir: dir.into(), prepacked: HashMap::new() }
    }

    /// Offers a layer packed before: `blob` holds the bytes of `packed`,
    /// the layer of a job with key `key`.
    pub fn add_prepacked(&mut self, key: LayerKey, packed: PackedLayer, blob: PathBuf) {
        self.prepacked.insert(key, (packed, blob));
    }

    /// The directory the blobs are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl LayerStore for DirStore {
    fn find(&self, job: &LayerJob) -> Result<Option<PackedLayer>, StoreError> {
        let Some((packed, blob)) = self.prepacked.get(&job.key) else { return Ok(None) };
        std::fs::create_dir_all(&self.dir).map_err(PackError::io(&self.dir))?;
        let link = self.dir.join(packed.digest.hex());
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(blob, &link).map_err(PackError::io(&link))?;
        }
        Ok(Some(packed.clone()))
    }

    fn pack(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError> {
        Ok(packing::pack_to_dir(&job.content, &self.dir, opts)?)
    }

    /// Links the blob in when it is in the Nix store (the output then
    /// refers to it), and copies it otherwise (a base image unpacked in
    /// the build directory).
    fn adopt(&self, layer: &BaseLayer) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(PackError::io(&self.dir))?;
        let dest = self.dir.join(layer.packed.digest.hex());
        if std::fs::symlink_metadata(&dest).is_ok() {
            return Ok(());
        }
        if layer.blob.starts_with(crate::graph::STORE_DIR) {
            std::os::unix::fs::symlink(&layer.blob, &dest).map_err(PackError::io(&dest))?;
        } else {
            std::fs::copy(&layer.blob, &dest).map_err(PackError::io(&dest))?;
        }
        Ok(())
    }
}

/// A stream image's layers (`streamNixeryImage`): layers of store paths
/// alone are packed to compute their digests and kept as recipes (packed
/// again, to the same bytes, when the image is pushed); the rest (the
/// root layer, a base image's layers: small, or not in the store) are
/// kept in the directory like [`DirStore`] keeps them.
#[derive(Debug)]
pub struct StreamStore {
    dir: DirStore,
    recipes: std::sync::Mutex<Vec<crate::image::stream::LayerRecipe>>,
    known: HashMap<LayerKey, (PackedLayer, crate::image::stream::LayerRecipe)>,
}

impl StreamStore {
    /// Keeps the blobs that are not recipes in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StreamStore {
        StreamStore { dir: DirStore::new(dir), recipes: Default::default(), known: HashMap::new() }
    }

    /// Offers the digests of a layer a derivation of its own computed
    /// (the layer of a job with key `key`): it is not packed again.
    pub fn add_known(&mut self, key: LayerKey, packed: PackedLayer, store_paths: Vec<String>, perms: Vec<crate::packing::PermRule>) {
        let recipe = crate::image::stream::LayerRecipe { digest: packed.digest.clone(), size: packed.size, store_paths, perms };
        self.known.insert(key, (packed, recipe));
    }

    /// The recipes of the layers packed so far, sorted by digest.
    pub fn recipes(&self) -> Vec<crate::image::stream::LayerRecipe> {
        let mut r = self.recipes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        r.sort_by(|a, b| a.digest.cmp(&b.digest));
        r.dedup_by(|a, b| a.digest == b.digest);
        r
    }
}

impl LayerStore for StreamStore {
    fn find(&self, job: &LayerJob) -> Result<Option<PackedLayer>, StoreError> {
        let Some((packed, recipe)) = self.known.get(&job.key) else { return Ok(None) };
        self.recipes.lock().unwrap_or_else(|e| e.into_inner()).push(recipe.clone());
        Ok(Some(packed.clone()))
    }

    fn pack(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError> {
        let c = &job.content;
        if !c.entries.is_empty() || c.store_paths.is_empty() || c.store_root != Path::new("/") {
            return self.dir.pack(job, opts);
        }
        let packed = packing::pack_to_sink(c, opts)?;
        let recipe =
            crate::image::stream::LayerRecipe { digest: packed.digest.clone(), size: packed.size, store_paths: c.store_paths.clone(), perms: c.perms.clone() };
        self.recipes.lock().unwrap_or_else(|e| e.into_inner()).push(recipe);
        Ok(packed)
    }

    fn adopt(&self, layer: &BaseLayer) -> Result<(), StoreError> {
        self.dir.adopt(layer)
    }
}

/// Keeps no bytes: packs each layer to compute its digests only (for
/// images whose layers are packed again when they are pushed or loaded).
#[derive(Debug, Default, Clone, Copy)]
pub struct DigestOnlyStore;

impl LayerStore for DigestOnlyStore {
    fn find(&self, _: &LayerJob) -> Result<Option<PackedLayer>, StoreError> {
        Ok(None)
    }

    fn pack(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError> {
        Ok(packing::pack_to_sink(&job.content, opts)?)
    }
}

#[cfg(test)]
mod tests;
