//! The on-demand image service behind the registry shim: from an image
//! name and tag to stored manifests. Images are put together by
//! [`crate::assembly`], exactly as `buildNixeryImage` does, so the same
//! store paths give the same layers.
//!
//! ```text
//! name:tag ─► warm cache ─────────────────────────────────────────────► hit
//!   │ miss
//!   ▼
//! packages, system ─► source revision ─► manifest cache (memory, storage) ─► hit
//!                                          │ miss: one build per image
//!                                          ▼
//!                       prepare-image (nix-build) ─► closure graph
//!                                          ▼
//!                       assembly: plan ─► layers (layer cache, or packed
//!                       into storage once) ─► config and manifests stored
//! ```
//!
//! With several platforms (`NIXERY_PLATFORMS`), a name that names none is
//! an image index of one image per platform, each loaded as above (so
//! `arm64/…` and the index's arm64 entry are the same image).
//!
//! Builds are bounded: at most [`ShimConfig::max_builds`] nix-builds run
//! at once, and a failed image is remembered for
//! [`ShimConfig::failure_ttl`], so retries do not build it again.
//!
//! Caches, all bounded: the warm cache maps the `name:tag` a client asked
//! for to its image while the source revision holds; the manifest cache
//! maps (format version, exact revision, packages, system, settings) to
//! the manifests, in memory and in storage (so a restart builds nothing);
//! the layer cache maps a layer's key to its packed blob ([`layers`]).
//! Concurrent requests for the same cold image share one build, and
//! concurrent builds that share a layer pack it once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::assembly::{self, AssemblyError, ImageSpec};
use crate::digest::Digest;
use crate::graph::{MissingPackage, Popularity};
use crate::image::{media_type, Image, ImageError, ManifestFlavour, Platform, RuntimeConfig};
use crate::image_name::{parse_image_name, ImageRequest, MetaPackages, NameError};
use crate::layering;
use crate::nix::{NixError, PackageSource, Prepare, Prepared, ResolvedSource};
use crate::packing::PackOptions;
use crate::storage::{put_bytes, Storage, StorageError};

pub mod activity;
pub mod explain;
pub mod layers;
pub mod metrics;
pub mod referrers;

/// How many images are kept in memory (warm path and manifest cache).
const MEMORY_IMAGES: u64 = 10_000;
/// How many resolved source revisions are kept.
const MEMORY_REVISIONS: u64 = 10_000;
/// The version of what the shim puts in an image's config beyond its
/// layers ([`default_config`]): part of the manifest key, so a change
/// builds images anew.
const IMAGE_CONFIG_VERSION: &str = "config-2";
/// How many recent build errors the start page shows.
const RECENT_ERRORS: usize = 20;
/// How many lookups of the package source (git ls-remote, hashing a local
/// set) run at once.
const SOURCE_LOOKUPS: usize = 4;

/// Errors serving an image.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The name is not a valid image name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The package set does not have these packages.
    #[error("packages not found: {}", .0.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "))]
    NotFound(Vec<MissingPackage>),
    /// The image asks for more packages than an image may have.
    #[error("{asked} packages asked for, more than the {max} an image may have")]
    TooManyPackages {
        /// How many the name asks for.
        asked: usize,
        /// [`ShimConfig::max_packages`].
        max: usize,
    },
    /// Running Nix or git failed.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// Pinning the package source failed (an error shared by every request
    /// that waited for the same lookup).
    #[error(transparent)]
    Source(Arc<NixError>),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Assembling the image failed.
    #[error("assembling the image: {0}")]
    Assembly(#[from] AssemblyError),
    /// The image's system is not one images can be made for.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A build task panicked or was cancelled.
    #[error("the build task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An image's documents cannot be attested.
    #[error("attesting the image's documents: {0}")]
    Attach(String),
    /// The build queue is full: the image is not built now.
    #[error("{queued} builds are waiting already (NIXERY_MAX_QUEUED_BUILDS)")]
    Busy {
        /// How many wait.
        queued: usize,
    },
}

impl ShimError {
    /// Whether building again within moments would fail the same way:
    /// missing packages and failed builds, not storage, task or queue
    /// failures, nor a build that failed for want of space or memory on
    /// this machine (gone once an operator frees some).
    fn is_lasting(&self) -> bool {
        match self {
            ShimError::NotFound(_) | ShimError::Image(_) => true,
            ShimError::Nix(e) => !e.is_resource_exhaustion(),
            ShimError::Assembly(e) => !e.is_storage_failure(),
            _ => false,
        }
    }

    /// The Nix or git error behind this one, if that is what it is.
    pub fn nix(&self) -> Option<&NixError> {
        match self {
            ShimError::Nix(e) => Some(e),
            ShimError::Source(e) => Some(e),
            _ => None,
        }
    }
}

/// The shim's settings.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// Where packages come from.
    pub source: PackageSource,
    /// Meta-package expansions.
    pub meta: MetaPackages,
    /// Packages every image gets when the set has them.
    pub base_packages: Vec<String>,
    /// Most layers per image, root layer included.
    pub max_layers: usize,
    /// The layering algorithm.
    pub layering: layering::Algorithm,
    /// Layer compression.
    pub pack: PackOptions,
    /// Popularity data for layering.
    pub popularity: Arc<Popularity>,
    /// How to run prepare-image.
    pub prepare: Prepare,
    /// How long a resolved source revision (a git ref's commit, a local
    /// set's hash) is reused before it is looked up again.
    pub revision_ttl: Duration,
    /// The most Nix builds that run at once; the rest wait their turn.
    pub max_builds: usize,
    /// How long a failed image (per source revision and name) is answered
    /// from memory before it is built again.
    pub failure_ttl: Duration,
    /// The most packages one image may ask for (after meta-packages are
    /// expanded, base packages not counted).
    pub max_packages: usize,
    /// With two or more Nix systems (`NIXERY_PLATFORMS`), a name that
    /// names no platform (no `arm64`) answers with an image index of one
    /// image per system.
    pub platforms: Vec<String>,
    /// The most builds that wait for a slot; past it, a cold image is
    /// answered 429 at once.
    pub max_queued_builds: usize,
    /// Signs images for cosign ([`referrers::signed`]).
    pub signing_key: Option<Arc<crate::supply_chain::key::SigningKey>>,
    /// Named as every package's supplier in the SBOMs.
    pub sbom_supplier: Option<String>,
}

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type.
    pub media_type: String,
    /// The manifest's bytes, kept in memory so warm pulls touch no storage.
    #[serde(skip)]
    pub bytes: Option<bytes::Bytes>,
}

/// An image that is built and stored: one manifest per flavour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    /// The OCI manifest.
    pub oci: StoredManifest,
    /// The Docker schema 2 manifest.
    pub docker: StoredManifest,
}

/// A build error, for the start page.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRecord {
    /// When it happened.
    pub at: SystemTime,
    /// `name:tag`.
    pub image: String,
    /// What went wrong, in a line without host paths
    /// ([`ShimError::explain`]).
    pub summary: String,
    /// What went wrong, in full (Nix's log, store paths).
    pub message: String,
}

/// The name and tag an image was first asked for by (what its documents
/// call it).
#[derive(Debug, Clone)]
struct ImageName {
    name: String,
    tag: String,
}

/// A resolved source revision and when it was looked up.
#[derive(Debug)]
struct Revision {
    at: Instant,
    source: Arc<ResolvedSource>,
    /// A request is looking it up again.
    refreshing: AtomicBool,
}

/// An image on the warm path, with the source revision it was built from.
#[derive(Debug)]
struct WarmImage {
    source: Arc<ResolvedSource>,
    image: Arc<BuiltImage>,
}

/// The image service.
pub struct Shim {
    config: ShimConfig,
    storage: Arc<dyn Storage>,
    /// `name:tag` as requested → the image built for it and the revision
    /// it was built from. A hit needs no name parsing and no cache key.
    warm: moka::sync::Cache<String, Arc<WarmImage>>,
    /// Manifest key → image; loading (from storage, or by building) is
    /// single-flight.
    images: moka::future::Cache<String, Arc<BuiltImage>>,
    /// Tag (git) or "" (other sources) → resolved revision.
    revisions: moka::future::Cache<String, Arc<Revision>>,
    /// Layer key → packed layer.
    layers: layers::LayerCache,
    /// Manifest key → the error its last build ended with, for
    /// [`ShimConfig::failure_ttl`].
    failures: moka::sync::Cache<String, Arc<ShimError>>,
    /// Permits for Nix builds ([`ShimConfig::max_builds`]).
    builds: tokio::sync::Semaphore,
    /// Builds waiting for a permit ([`ShimConfig::max_queued_builds`]).
    queued: std::sync::atomic::AtomicUsize,
    /// The source's tags, listed at most once per revision TTL.
    tags: moka::future::Cache<(), Arc<Vec<String>>>,
    /// Tags whose lookup failed (an unknown git ref), answered from
    /// memory for the revision TTL.
    failed_refs: moka::sync::Cache<String, Arc<NixError>>,
    /// Permits for looking up the source (git ls-remote, hashing a set):
    /// many distinct tags at once run at most this many.
    lookups: tokio::sync::Semaphore,
    metrics: Arc<metrics::Metrics>,
    activity: activity::Activity,
    errors: Mutex<VecDeque<ErrorRecord>>,
    popularity_digest: String,
}

impl std::fmt::Debug for Shim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shim").field("config", &self.config).field("storage", &self.storage.name()).field("images", &self.images.entry_count()).finish()
    }
}

fn hex_sha256(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    format!("{:x}", h.finalize())
}

impl Shim {
    /// A service on `storage` with `config`.
    pub fn new(config: ShimConfig, storage: Arc<dyn Storage>) -> Arc<Shim> {
        let pop = serde_json::to_string(&config.popularity.0).expect("popularity serialises");
        Arc::new(Shim {
            popularity_digest: hex_sha256(&[&pop]),
            layers: layers::layer_cache(),
            failures: moka::sync::Cache::builder().max_capacity(MEMORY_IMAGES).time_to_live(config.failure_ttl.max(Duration::from_millis(1))).build(),
            builds: tokio::sync::Semaphore::new(config.max_builds.max(1)),
            queued: Default::default(),
            tags: moka::future::Cache::builder().max_capacity(1).time_to_live(config.revision_ttl.max(Duration::from_millis(1))).build(),
            failed_refs: moka::sync::Cache::builder().max_capacity(MEMORY_REVISIONS).time_to_live(config.revision_ttl.max(Duration::from_millis(1))).build(),
            lookups: tokio::sync::Semaphore::new(SOURCE_LOOKUPS),
            metrics: Default::default(),
            activity: Default::default(),
            config,
            storage,
            warm: moka::sync::Cache::new(MEMORY_IMAGES),
            images: moka::future::Cache::new(MEMORY_IMAGES),
            revisions: moka::future::Cache::new(MEMORY_REVISIONS),
            errors: Mutex::new(VecDeque::new()),
        })
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Builds in progress and finished, for the start page.
    pub fn activity(&self) -> &activity::Activity {
        &self.activity
    }

    /// What operators count ([`metrics`]).
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// The metrics, to keep (the server and the authentication gate count
    /// in them).
    pub fn metrics_handle(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// The settings.
    pub fn config(&self) -> &ShimConfig {
        &self.config
    }

    /// The tags of every image name: listed once for everyone who asks at
    /// the same moment, and remembered for the revision TTL.
    pub async fn tags(&self) -> Result<Arc<Vec<String>>, Arc<NixError>> {
        self.tags
            .try_get_with((), async {
                let _permit = self.lookups.acquire().await.expect("never closed");
                self.metrics.tag_lookups.inc();
                self.config.source.tags().await.map(Arc::new)
            })
            .await
    }

    /// The most recent build errors, newest first.
    pub fn recent_errors(&self) -> Vec<ErrorRecord> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).iter().rev().cloned().collect()
    }

    fn record_error(&self, image: &str, error: &ShimError) {
        let summary = error.explain(image, self.config.failure_ttl);
        let record = ErrorRecord { at: SystemTime::now(), image: image.to_string(), summary, message: error.to_string() };
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.len() == RECENT_ERRORS {
            e.pop_front();
        }
        e.push_back(record);
    }

    /// The built image for `name:tag`, building it if needed.
    /// `request_id` names the request in the logs of a build it starts.
    pub async fn image(self: &Arc<Self>, name: &str, tag: &str, request_id: &str) -> Result<Arc<BuiltImage>, Arc<ShimError>> {
        let source = self.resolve(tag).await.map_err(|e| {
            // A bad name is reported before a bad tag, as on the cold path.
            if let Err(name_error) = parse_image_name(name, &self.config.meta) {
                return Arc::new(ShimError::from(name_error));
            }
            let e = Arc::new(ShimError::Source(e));
            self.record_error(&format!("{name}:{tag}"), &e);
            e
        })?;
        let warm_key = format!("{name}:{tag}");
        if let Some(warm) = self.warm.get(&warm_key) {
            if Arc::ptr_eq(&warm.source, &source) || warm.source.revision == source.revision {
                self.metrics.lookup("warm");
                return Ok(warm.image.clone());
            }
        }
        let multi = self.config.platforms.len() > 1 && parse_image_name(name, &self.config.meta).is_ok_and(|r| r.system == self.config.meta.default_system);
        let image = if multi {
            self.index_for(name, tag, source.clone(), request_id).await?
        } else {
            self.image_for(name, tag, source.clone(), None, request_id).await?
        };
        self.warm.insert(warm_key, Arc::new(WarmImage { source, image: image.clone() }));
        Ok(image)
    }

    /// The image index of `name` over [`ShimConfig::platforms`]: each
    /// platform's image from the same caches as single images (built at
    /// once, side by side); a platform whose image fails is left out, with
    /// a log line, unless every one fails.
    async fn index_for(self: &Arc<Self>, name: &str, tag: &str, source: Arc<ResolvedSource>, request_id: &str) -> Result<Arc<BuiltImage>, Arc<ShimError>> {
        let builds = self.config.platforms.iter().map(|system| {
            let source = source.clone();
            async move { (system, self.image_for(name, tag, source, Some(system), request_id).await) }
        });
        let mut entries = Vec::new();
        let mut first_error = None;
        for (system, result) in futures::future::join_all(builds).await {
            match result {
                Ok(image) => entries.push((Platform::from_nix_system(system).map_err(|e| Arc::new(ShimError::from(e)))?, image)),
                Err(e) => {
                    tracing::warn!(image = %format!("{name}:{tag}"), %system, error = %e, "left out of the index: its image cannot be built");
                    first_error.get_or_insert(e);
                }
            }
        }
        if entries.is_empty() {
            return Err(first_error.expect("at least two platforms"));
        }
        let storage = self.storage.clone();
        let index = tokio::task::spawn_blocking(move || store_index(&*storage, &entries)).await.map_err(|e| Arc::new(ShimError::Task(e)))?.map_err(Arc::new)?;
        // An index has no documents of its own (its images have), but is
        // the shim's to sign.
        let unlisted = [(index.oci.digest.clone(), vec![]), (index.docker.digest.clone(), vec![])];
        referrers::record(&*self.storage, &unlisted).await.map_err(|e| Arc::new(e.into()))?;
        Ok(Arc::new(index))
    }

    /// The image for `name` at the pinned `source`: from the manifest cache
    /// (memory, then storage) or built; one load per image at a time.
    async fn image_for(
        self: &Arc<Self>,
        name: &str,
        tag: &str,
        source: Arc<ResolvedSource>,
        system: Option<&str>,
        request_id: &str,
    ) -> Result<Arc<BuiltImage>, Arc<ShimError>> {
        let mut request = parse_image_name(name, &self.config.meta).map_err(|e| Arc::new(e.into()))?;
        if let Some(s) = system {
            request.system = s.to_string();
        }
        if request.packages.len() > self.config.max_packages {
            return Err(Arc::new(ShimError::TooManyPackages { asked: request.packages.len(), max: self.config.max_packages }));
        }
        let key = self.manifest_key(&source.revision, &request);
        if let Some(hit) = self.images.get(&key).await {
            self.metrics.lookup("warm");
            return Ok(hit);
        }
        if self.config.failure_ttl > Duration::ZERO {
            if let Some(failed) = self.failures.get(&key) {
                self.metrics.lookup("failed_cached");
                return Err(failed);
            }
        }
        // The load runs in a task of its own, so that a client that
        // disconnects does not cancel the build the others wait for.
        let this = self.clone();
        let label = match system {
            Some(s) => format!("{name}:{tag} ({s})"),
            None => format!("{name}:{tag}"),
        };
        // The build runs in a span of the request that started it, so its
        // log lines carry that request's id (made here, on the cold path
        // only: warm requests pay for no span).
        use tracing::Instrument;
        let span = tracing::info_span!("request", id = %request_id);
        let image_name = ImageName { name: name.to_string(), tag: tag.to_string() };
        let task = tokio::spawn(
            async move {
                let loader = this.clone();
                let loading_key = key.clone();
                let result = this
                    .images
                    .try_get_with(key.clone(), async move { loader.load_or_build(&loading_key, &request, &source, &image_name, &label).await.map(Arc::new) })
                    .await;
                if let Err(e) = &result {
                    if e.is_lasting() {
                        this.failures.insert(key, e.clone());
                    }
                }
                result
            }
            .instrument(span),
        );
        match task.await {
            Ok(result) => result,
            Err(e) => Err(Arc::new(ShimError::Task(e))),
        }
    }

    /// The source pinned for `tag`, remembered for
    /// [`ShimConfig::revision_ttl`] so that warm pulls do not ask git or
    /// hash the package set each time. When an entry expires, one request
    /// looks it up again while the others keep using the old one, so a
    /// busy instance never stampedes git or the package-set hashing; the
    /// first lookup of a tag is shared by everyone who asks at once.
    async fn resolve(&self, tag: &str) -> Result<Arc<ResolvedSource>, Arc<NixError>> {
        // Other sources ignore the tag: one entry serves them all.
        let key = if matches!(self.config.source, PackageSource::Git(_)) { tag } else { "" };
        // A tag whose lookup failed (an unknown ref) is answered from
        // memory for a while, as a known one is.
        if let Some(failed) = self.failed_refs.get(key) {
            return Err(failed);
        }
        let lookup = || async {
            let _permit = self.lookups.acquire().await.expect("never closed");
            let started = Instant::now();
            let result = self.config.source.resolve(tag).await;
            match &result {
                Ok(r) => tracing::debug!(tag, revision = %r.revision, ms = started.elapsed().as_millis() as u64, "source revision looked up"),
                Err(e) => tracing::warn!(tag, ms = started.elapsed().as_millis() as u64, error = %e, "looking up the package source failed"),
            }
            result.map(|r| Arc::new(Revision { at: Instant::now(), source: Arc::new(r), refreshing: AtomicBool::new(false) }))
        };
        let entry = self.revisions.try_get_with(key.to_string(), lookup()).await.inspect_err(|e| {
            self.failed_refs.insert(key.to_string(), e.clone());
        })?;
        if entry.at.elapsed() < self.config.revision_ttl || entry.refreshing.swap(true, Ordering::AcqRel) {
            return Ok(entry.source.clone());
        }
        match lookup().await {
            Ok(fresh) => {
                let source = fresh.source.clone();
                self.revisions.insert(key.to_string(), fresh).await;
                Ok(source)
            }
            Err(e) => {
                // Forget the stale entry: the next request tries again.
                self.revisions.invalidate(key).await;
                Err(Arc::new(e))
            }
        }
    }

    fn manifest_key(&self, revision: &str, request: &ImageRequest) -> String {
        let packages = serde_json::to_string(&request.packages).expect("json");
        let bases = serde_json::to_string(&self.config.base_packages).expect("json");
        hex_sha256(&[
            &crate::FORMAT_VERSION.to_string(),
            IMAGE_CONFIG_VERSION,
            revision,
            &packages,
            &bases,
            &request.system,
            &self.config.max_layers.to_string(),
            self.config.layering.name(),
            self.config.pack.compression.name(),
            &self.config.pack.level.to_string(),
            &self.popularity_digest,
        ])
    }

    /// The meta key of the layer lock of `request`'s images: the plan its
    /// last build used, whatever the package set's revision, so that a
    /// rebuild after an update keeps the layers clients have.
    fn lock_key(&self, request: &ImageRequest) -> String {
        let packages = serde_json::to_string(&request.packages).expect("json");
        let bases = serde_json::to_string(&self.config.base_packages).expect("json");
        format!("locks/{}.json", hex_sha256(&["layer lock", &packages, &bases, &request.system]))
    }

    /// The last layer lock of `request`'s images, if any (one that cannot
    /// be read is ignored: the plan is then made afresh).
    async fn last_lock(&self, request: &ImageRequest) -> Option<crate::layering::lock::LayerLock> {
        let bytes = match self.storage.get_meta(&self.lock_key(request)).await {
            Ok(b) => b?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the layer lock: planning afresh");
                return None;
            }
        };
        crate::layering::lock::LayerLock::from_json(&String::from_utf8_lossy(&bytes))
            .inspect_err(|e| tracing::warn!(error = %e, "a stored layer lock is not one: planning afresh"))
            .ok()
    }

    async fn load_or_build(
        self: &Arc<Self>,
        key: &str,
        request: &ImageRequest,
        source: &ResolvedSource,
        name: &ImageName,
        label: &str,
    ) -> Result<BuiltImage, ShimError> {
        let meta_key = format!("manifests/{key}.json");
        if let Some(bytes) = self.storage.get_meta(&meta_key).await? {
            if let Ok(mut img) = serde_json::from_slice::<BuiltImage>(&bytes) {
                if self.load_bytes(&mut img.oci).await? && self.load_bytes(&mut img.docker).await? {
                    self.metrics.lookup("stored");
                    tracing::info!(image = label, "manifest cache hit");
                    return Ok(img);
                }
            }
        }
        let result = self.build(key, request, source, name, label).await;
        self.metrics.lookup(if result.is_ok() { "built" } else { "failed" });
        if result.is_err() {
            self.metrics.builds_failed.inc();
        }
        result
    }

    /// Builds the image (nix-build, then assembly) and stores it.
    async fn build(
        self: &Arc<Self>,
        key: &str,
        request: &ImageRequest,
        source: &ResolvedSource,
        name: &ImageName,
        label: &str,
    ) -> Result<BuiltImage, ShimError> {
        let meta_key = format!("manifests/{key}.json");
        let queued = Instant::now();
        let free = self.builds.try_acquire().ok();
        if free.is_none() {
            // Wait for a slot, unless too many wait already: a flood of
            // cold names is answered at once, not queued without end.
            let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
            if waiting >= self.config.max_queued_builds {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.metrics.builds_refused.inc();
                tracing::warn!(image = label, queued = waiting, "the build queue is full: answering 429");
                return Err(ShimError::Busy { queued: waiting });
            }
        }
        let entry = self.activity.start(label);
        let permit = match free {
            Some(p) => p,
            None => {
                self.metrics.builds_queued.inc();
                let p = self.builds.acquire().await.expect("the build semaphore is never closed");
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.metrics.builds_queued.dec();
                p
            }
        };
        entry.stage("nix-build");
        self.metrics.builds_started.inc();
        self.metrics.build_running();
        let started = Instant::now();
        tracing::info!(image = label, packages = ?request.packages, system = %request.system, revision = %source.revision, queued_ms = queued.elapsed().as_millis() as u64, "running nix-build");
        let prepared = self.config.prepare.run(source, &request.packages, &self.config.base_packages, &request.system).await;
        self.metrics.builds_running.dec();
        drop(permit);
        entry.stage("assembling");
        let (graph, package_meta) = match prepared {
            Ok(Prepared::Graph(g, meta)) => (g, meta),
            Ok(Prepared::NotFound(missing)) => {
                let names: Vec<&str> = missing.iter().map(|m| m.name.as_str()).collect();
                tracing::info!(image = label, not_found = ?names, "packages not found");
                return Err(ShimError::NotFound(missing));
            }
            Err(e) => {
                tracing::error!(image = label, error = %e, "nix-build failed");
                let e = ShimError::from(e);
                self.record_error(label, &e);
                return Err(e);
            }
        };
        let nix_time = started.elapsed();
        let spec = ImageSpec {
            max_layers: self.config.max_layers,
            layering: self.config.layering,
            popularity: self.config.popularity.clone(),
            pack: self.config.pack,
            platform: Platform::from_nix_system(&request.system)?,
            created: crate::image::DEFAULT_CREATED.to_string(),
            config: default_config(&graph),
            store_root: "/".into(),
            base: None,
            layer_groups: Vec::new(),
            root: Default::default(),
            perms: Vec::new(),
            layer_lock: self.last_lock(request).await,
        };
        let this = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let assembling = Instant::now();
        let (name, source_type, revision) = (name.clone(), source.src_type, source.revision.clone());
        let built = tokio::task::spawn_blocking(move || -> Result<(BuiltImage, assembly::AssemblyStats, Vec<_>, _), ShimError> {
            let plan = assembly::plan(&spec, &graph)?;
            for w in &plan.warnings {
                tracing::warn!("{w}");
            }
            if let Some(r) = plan.lock_report {
                tracing::info!(image = %name.name, kept = r.kept, unchanged = r.unchanged, dropped = r.dropped, merged = r.merged, moved_versions = r.moved_versions, new_paths = r.new_paths, "planned from the name's last layer lock");
            }
            let store_layers = plan.store_layer_paths();
            let store = layers::StorageLayers { storage: &this.storage, cache: &this.layers, runtime };
            let (image, stats) = assembly::assemble(plan, &store)?;
            let lock = assembly::layer_lock(&image, &store_layers);
            let img = store_manifests(&*this.storage, &image)?;
            // Its SBOMs and provenance, as referrers of both manifests.
            let facts = crate::sbom::ImageFacts {
                name: &name.name,
                tag: &name.tag,
                created: &spec.created,
                manifest: &img.oci.digest,
                graph: &graph,
                meta: &package_meta,
                base_layers: Vec::new(),
                supplier: this.config.sbom_supplier.as_deref(),
            };
            let documents = crate::supply_chain::documents(&facts, &crate::provenance::Invocation::Shim { source_type, revision: &revision });
            let referrers = referrers::store_documents(&*this.storage, &img, &documents)?;
            Ok((img, stats, referrers, lock))
        })
        .await?
        .inspect_err(|e| {
            tracing::error!(image = label, error = %e, "building the image failed");
            self.record_error(label, e);
        })?;
        let (img, stats, listed, lock) = built;
        referrers::record(&*self.storage, &listed).await?;
        self.storage.put_meta(&self.lock_key(request), lock.to_json().as_bytes()).await?;
        self.storage.put_meta(&meta_key, &serde_json::to_vec(&img).expect("json")).await?;
        self.metrics.build_duration.observe(started.elapsed().as_secs_f64());
        self.metrics.layers.get_or_create(&metrics::ResultLabel { result: "reused" }).inc_by(stats.reused as u64);
        self.metrics.layers.get_or_create(&metrics::ResultLabel { result: "packed" }).inc_by(stats.packed as u64);
        entry.finish(stats.reused, stats.packed);
        tracing::info!(
            image = label,
            manifest = %img.oci.digest,
            layers_reused = stats.reused,
            layers_packed = stats.packed,
            nix_ms = nix_time.as_millis() as u64,
            assemble_ms = assembling.elapsed().as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "image built"
        );
        Ok(img)
    }

    /// Reads a stored manifest's bytes into memory; false when it is gone,
    /// is not what its digest names, or names a blob that is gone (the
    /// image is then built again). Its size is what was read, whatever the
    /// cache entry said.
    async fn load_bytes(&self, m: &mut StoredManifest) -> Result<bool, ShimError> {
        let Some(bytes) = read_document(&*self.storage, &m.digest).await? else { return Ok(false) };
        if m.size != bytes.len() as u64 {
            tracing::warn!(manifest = %m.digest, recorded = m.size, actual = bytes.len(), "a manifest cache entry has a wrong size: corrected");
            m.size = bytes.len() as u64;
        }
        // Every blob it names (a config and layers, or an index's
        // manifests) must be there, at its size.
        let Some(named) = named_blobs(&bytes) else { return Ok(false) };
        for (digest, size) in named {
            if self.storage.stat_blob(&digest).await?.is_none_or(|i| i.size != size) {
                tracing::warn!(manifest = %m.digest, blob = %digest, "a stored image lacks a blob: it is built again");
                return Ok(false);
            }
        }
        m.bytes = Some(bytes.into());
        Ok(true)
    }

    /// Forgets every image and layer known in memory, after a blob was
    /// found corrupt and removed: the images that need it are loaded
    /// again, found to lack it, and built again, packing it anew.
    pub fn forget_blob(&self, digest: &Digest) {
        self.metrics.blobs_corrupt.inc();
        tracing::warn!(blob = %digest, "forgetting the images in memory: those that need the blob are built again");
        self.warm.invalidate_all();
        self.images.invalidate_all();
        self.layers.invalidate_all();
    }
}

/// A stored document (a manifest, a config, an SBOM) read whole: None when
/// it is gone, larger than a document may be, or not the bytes its digest
/// names (said in the log: the caller makes it again).
pub(crate) async fn read_document(storage: &dyn Storage, digest: &Digest) -> Result<Option<Vec<u8>>, ShimError> {
    let Some(info) = storage.stat_blob(digest).await? else { return Ok(None) };
    if info.size > crate::image::layout::MAX_DOCUMENT {
        return Ok(None);
    }
    let stream = storage.read_blob(digest, 0, info.size).await?;
    let bytes = crate::storage::collect(stream).await.map_err(|source| StorageError::Io { path: format!("blob {digest}"), source })?;
    if Digest::of(&bytes) != *digest {
        tracing::warn!(blob = %digest, "a stored document does not hold the bytes it is named by: it is made again");
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// The blobs a manifest or index names (config and layers, or
/// manifests), with their sizes; `None` when it is not one.
fn named_blobs(manifest: &[u8]) -> Option<Vec<(Digest, u64)>> {
    let doc: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    let mut descriptors: Vec<&serde_json::Value> = doc.get("config").into_iter().collect();
    for list in ["layers", "manifests"] {
        descriptors.extend(doc.get(list).and_then(|v| v.as_array()).into_iter().flatten());
    }
    descriptors.into_iter().map(|d| Some((Digest::parse(d["digest"].as_str()?).ok()?, d["size"].as_u64()?))).collect()
}

/// What the shim puts in the config of an image built by name, as the
/// original Nixery does: a shell as the default command when the image
/// has one (so `docker run IMAGE` opens it), and `SSL_CERT_FILE` when a
/// package provides the CA bundle where cacert puts it (so TLS clients
/// find it). Both are found in the contents, as the root layer links them.
pub fn default_config(graph: &crate::graph::ClosureGraph) -> RuntimeConfig {
    let provides = |file: &str| graph.roots.iter().any(|root| std::path::Path::new(root).join(file).exists());
    let mut config = RuntimeConfig::default();
    if let Some(shell) = ["bin/bash", "bin/sh"].into_iter().find(|f| provides(f)) {
        config.cmd = Some(vec![format!("/{shell}")]);
    }
    if provides(CA_BUNDLE) {
        config.env.push(format!("SSL_CERT_FILE=/{CA_BUNDLE}"));
    }
    config
}

/// Where nixpkgs' cacert puts the CA bundle, relative to its output.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-bundle.crt";

/// Stores the index of `entries` (a platform and its image each) in both
/// flavours: an OCI image index of the OCI manifests, a Docker manifest
/// list of the Docker ones.
fn store_index(storage: &dyn Storage, entries: &[(Platform, Arc<BuiltImage>)]) -> Result<BuiltImage, ShimError> {
    let flavour = |index_type: &str, pick: &dyn Fn(&BuiltImage) -> &StoredManifest| -> Result<StoredManifest, ShimError> {
        let manifests = entries
            .iter()
            .map(|(platform, image)| {
                let m = pick(image);
                let mut d = crate::image::Descriptor::new(&m.media_type, m.digest.clone(), m.size);
                d.platform = Some(platform.clone());
                d
            })
            .collect();
        let bytes = crate::image::oci::ImageIndex::new(index_type, manifests).to_bytes();
        put_bytes(storage, &bytes, index_type)?;
        Ok(StoredManifest { digest: Digest::of(&bytes), size: bytes.len() as u64, media_type: index_type.to_string(), bytes: Some(bytes.into()) })
    };
    Ok(BuiltImage { oci: flavour(media_type::OCI_INDEX, &|i| &i.oci)?, docker: flavour(media_type::DOCKER_MANIFEST_LIST, &|i| &i.docker)? })
}

fn store_manifests(storage: &dyn Storage, image: &Image) -> Result<BuiltImage, ShimError> {
    let oci = image.docs(ManifestFlavour::Oci);
    let docker = image.docs(ManifestFlavour::Docker);
    put_bytes(storage, &oci.config, media_type::OCI_CONFIG)?;
    let stored = |docs: &crate::image::ImageDocs| -> Result<StoredManifest, ShimError> {
        put_bytes(storage, &docs.manifest, docs.manifest_media_type)?;
        Ok(StoredManifest {
            digest: docs.manifest_digest.clone(),
            size: docs.manifest.len() as u64,
            media_type: docs.manifest_media_type.to_string(),
            bytes: Some(docs.manifest.clone().into()),
        })
    };
    Ok(BuiltImage { oci: stored(&oci)?, docker: stored(&docker)? })
}

/// Errors loading popularity data.
#[derive(Debug, thiserror::Error)]
pub enum PopularityError {
    /// Fetching it over HTTP failed.
    #[error("cannot fetch popularity data from {url}: {source}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        source: Box<ureq::Error>,
    },
    /// Reading the file failed.
    #[error("cannot read popularity data {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not popularity data.
    #[error("{location}: {source}")]
    Parse {
        /// Where it came from.
        location: String,
        /// What is wrong.
        source: crate::graph::GraphError,
    },
}

/// Loads popularity data from an `http(s)://` URL, a `file://` URL or a
/// file path (`NIX_POPULARITY_URL`).
pub fn load_popularity(location: &str) -> Result<Popularity, PopularityError> {
    let text = if location.starts_with("http://") || location.starts_with("https://") {
        let fetch = |source| PopularityError::Fetch { url: location.to_string(), source: Box::new(source) };
        let mut resp = ureq::get(location).call().map_err(fetch)?;
        resp.body_mut().with_config().limit(256 * 1024 * 1024).read_to_string().map_err(fetch)?
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        std::fs::read_to_string(path).map_err(|source| PopularityError::Read { path: path.to_string(), source })?
    };
    Popularity::from_json(&text).map_err(|source| PopularityError::Parse { location: location.to_string(), source })
}
