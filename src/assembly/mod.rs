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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::graph::{package_name, ClosureGraph, Popularity};
use crate::image::{Image, ImageLayer, Platform, RuntimeConfig};
use crate::layering::{self, Algorithm, LayeringError};
use crate::packing::{self, run_parallel, LayerContent, LayerKey, PackError, PackOptions, PackedLayer};

pub mod root;

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
}

/// One layer to get: its content, its key and its history comment.
#[derive(Debug, Clone)]
pub struct LayerJob {
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
    /// The layers, in image order (bottom first).
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

/// Decides the layers of the image of `graph` (its roots are the contents,
/// in the user's order): the store paths grouped within the budget, then
/// the root layer.
pub fn plan(spec: &ImageSpec, graph: &ClosureGraph) -> Result<ImagePlan, AssemblyError> {
    // The root layer is the one fixed layer today; base images and
    // explicit layers will count here too.
    let fixed = 1;
    if spec.max_layers < fixed + 1 {
        return Err(AssemblyError::Budget { max_layers: spec.max_layers, min: fixed + 1, fixed, what: "the image root".into() });
    }
    let store_budget = spec.max_layers - fixed;
    let layer_plan = layering::plan_with(graph, &spec.popularity, store_budget, spec.layering)?;
    let root = root::join(&graph.roots, &spec.store_root).map_err(AssemblyError::RootLayer)?;
    let job = |content: LayerContent, comment: String| LayerJob { key: content.key(spec.pack), content, comment };
    let store_layer = |paths: Vec<String>| LayerContent { store_root: spec.store_root.clone(), ..LayerContent::store_paths(paths) };
    let mut jobs: Vec<LayerJob> = layer_plan.layers.into_iter().map(|l| job(store_layer(l.paths.clone()), layer_comment(&l.paths))).collect();
    jobs.push(job(LayerContent::tree(root.entries), ROOT_LAYER_COMMENT.to_string()));
    Ok(ImagePlan {
        jobs,
        pack: spec.pack,
        platform: spec.platform.clone(),
        created: spec.created.clone(),
        config: spec.config.clone(),
        warnings: root.warnings,
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
    let layers = plan
        .jobs
        .into_iter()
        .zip(packed)
        .map(|(job, p)| ImageLayer { packed: p.expect("every layer was found or packed"), comment: job.comment })
        .collect();
    Ok((Image { platform: plan.platform, created: plan.created, config: plan.config, layers }, stats))
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
