//! The on-demand image service behind the registry shim: from an image
//! name and tag to stored manifests, with the same layering and packing as
//! `buildNixeryImage`, so the same store paths give the same layer digests.
//!
//! ```text
//! name, tag ─► packages, system ─► source revision ─► manifest cache ─┐ hit
//!                                                         │ miss       ▼
//!                         prepare-image (nix-build) ─► layer plan ─► layer cache
//!                                                         │ miss
//!                                 pack into storage (parallel) ─► manifests ─► cache
//! ```
//!
//! Caches: the layer cache maps a set of store paths to its packed layer,
//! so a layer is packed once and shared by every image that has it; the
//! manifest cache maps (exact source revision, packages, system, settings)
//! to the manifests. Both live in storage and survive restarts. Concurrent
//! requests for the same cold image share one build.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::builder::layer_comment;
use crate::graph::{ClosureGraph, Popularity};
use crate::image::{media_type, Image, ImageLayer, ManifestFlavour, Platform, RuntimeConfig};
use crate::image_name::{parse_image_name, ImageRequest, MetaPackages, NameError};
use crate::layering;
use crate::nix::{NixError, PackageSource, Prepare, Prepared, ResolvedSource};
use crate::packing::{pack_to_writer, Digest, LayerContent, PackOptions, PackedLayer};
use crate::root_layer;
use crate::storage::{put_bytes, Storage, StorageError};

/// Bumped whenever layer bytes or manifest structure change, so caches
/// written by an older version are not reused.
const CACHE_VERSION: &str = "nixery-cache-v1";
/// How many images' manifests are kept in memory.
const MEMORY_MANIFESTS: usize = 10_000;
/// How many recent build errors the start page shows.
const RECENT_ERRORS: usize = 20;

/// Errors serving an image.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("packages not found: {}", .0.join(", "))]
    NotFound(Vec<String>),
    #[error(transparent)]
    Nix(#[from] NixError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("building the image: {0}")]
    Build(String),
}

/// The shim's settings.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    pub source: PackageSource,
    pub meta: MetaPackages,
    /// Packages every image gets when the set has them.
    pub base_packages: Vec<String>,
    /// Most layers per image, root layer included.
    pub max_layers: usize,
    pub layering: layering::Algorithm,
    pub pack: PackOptions,
    pub popularity: Popularity,
    pub prepare: Prepare,
    /// How long a resolved source revision (a git ref's commit, a local
    /// set's hash) is reused before it is looked up again.
    pub revision_ttl: Duration,
}

/// A stored manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredManifest {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The manifest's bytes, kept in memory so warm pulls touch no storage.
    #[serde(skip)]
    pub bytes: Option<bytes::Bytes>,
}

/// An image that is built and stored: one manifest per flavour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuiltImage {
    pub oci: StoredManifest,
    pub docker: StoredManifest,
}

/// A build error, for the start page.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorRecord {
    pub at: SystemTime,
    pub image: String,
    pub message: String,
}

/// A resolved source revision and when it was looked up.
#[derive(Debug)]
struct Revision {
    at: std::time::Instant,
    source: Arc<ResolvedSource>,
    /// A request is looking it up again.
    refreshing: bool,
}

/// An image on the warm path, with the source revision it was built from.
#[derive(Debug)]
struct WarmImage {
    source: Arc<ResolvedSource>,
    image: Arc<BuiltImage>,
}

type BuildFuture = Shared<BoxFuture<'static, Result<Arc<BuiltImage>, Arc<ShimError>>>>;

/// The image service.
#[derive(Debug)]
pub struct Shim {
    config: ShimConfig,
    storage: Arc<dyn Storage>,
    manifests: Mutex<HashMap<String, Arc<BuiltImage>>>,
    /// The warm path: `name:tag` as requested → the image built for it and
    /// the source revision it was built from. A hit needs no name parsing
    /// and no cache key.
    warm: Mutex<HashMap<String, WarmImage>>,
    revisions: Mutex<HashMap<String, Revision>>,
    inflight: Mutex<HashMap<String, BuildFuture>>,
    errors: Mutex<VecDeque<ErrorRecord>>,
    popularity_digest: String,
    nix_builds: AtomicU64,
}

fn hex_sha256(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

impl Shim {
    pub fn new(config: ShimConfig, storage: Arc<dyn Storage>) -> Arc<Shim> {
        let pop = serde_json::to_string(&config.popularity.0).expect("json");
        Arc::new(Shim {
            popularity_digest: hex_sha256(&[&pop]),
            config,
            storage,
            manifests: Mutex::new(HashMap::new()),
            warm: Mutex::new(HashMap::new()),
            revisions: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            errors: Mutex::new(VecDeque::new()),
            nix_builds: AtomicU64::new(0),
        })
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn config(&self) -> &ShimConfig {
        &self.config
    }

    /// The tags of every image name.
    pub async fn tags(&self) -> Result<Vec<String>, NixError> {
        self.config.source.tags().await
    }

    /// How many nix-builds this process ran.
    pub fn nix_builds(&self) -> u64 {
        self.nix_builds.load(Ordering::Relaxed)
    }

    /// The most recent build errors, newest first.
    pub fn recent_errors(&self) -> Vec<ErrorRecord> {
        self.errors.lock().expect("errors lock").iter().rev().cloned().collect()
    }

    fn record_error(&self, image: &str, message: String) {
        let mut e = self.errors.lock().expect("errors lock");
        if e.len() == RECENT_ERRORS {
            e.pop_front();
        }
        e.push_back(ErrorRecord { at: SystemTime::now(), image: image.to_string(), message });
    }

    /// The built image for `name:tag`, building it if needed.
    pub async fn image(self: &Arc<Self>, name: &str, tag: &str) -> Result<Arc<BuiltImage>, Arc<ShimError>> {
        let source = self.resolve(tag).await.map_err(|e| {
            // A bad name is reported before a bad tag, as on the cold path.
            if let Err(name_error) = parse_image_name(name, &self.config.meta) {
                return Arc::new(ShimError::from(name_error));
            }
            let e = Arc::new(ShimError::from(e));
            self.record_error(&format!("{name}:{tag}"), e.to_string());
            e
        })?;
        let warm_key = format!("{name}:{tag}");
        if let Some(warm) = self.warm.lock().expect("warm lock").get(&warm_key) {
            if Arc::ptr_eq(&warm.source, &source) || warm.source.revision == source.revision {
                return Ok(warm.image.clone());
            }
        }
        let image = self.image_for(name, tag, source.clone()).await?;
        let mut warm = self.warm.lock().expect("warm lock");
        // Bounded: what is dropped is still in the other caches.
        if warm.len() >= MEMORY_MANIFESTS {
            warm.clear();
        }
        warm.insert(warm_key, WarmImage { source, image: image.clone() });
        Ok(image)
    }

    /// The image for `name` at the pinned `source`: from the manifest cache
    /// (memory, then storage) or built, one build per image at a time.
    async fn image_for(self: &Arc<Self>, name: &str, tag: &str, source: Arc<ResolvedSource>) -> Result<Arc<BuiltImage>, Arc<ShimError>> {
        let request = parse_image_name(name, &self.config.meta).map_err(|e| Arc::new(e.into()))?;
        let key = self.manifest_key(&source.revision, &request);
        if let Some(hit) = self.manifests.lock().expect("manifest lock").get(&key) {
            return Ok(hit.clone());
        }
        let fut = {
            let mut inflight = self.inflight.lock().expect("inflight lock");
            if let Some(f) = inflight.get(&key) {
                f.clone()
            } else {
                let this = self.clone();
                let key2 = key.clone();
                let label = format!("{name}:{tag}");
                let f: BuildFuture = async move {
                    // Spawned, so a client that disconnects does not cancel
                    // the build the others wait for.
                    let task = {
                        let this = this.clone();
                        let key = key2.clone();
                        tokio::spawn(async move { this.load_or_build(&key, &request, &source, &label).await })
                    };
                    let result = match task.await {
                        Ok(r) => r.map_err(Arc::new),
                        Err(e) => Err(Arc::new(ShimError::Build(format!("build task failed: {e}")))),
                    };
                    if let Ok(img) = &result {
                        let mut manifests = this.manifests.lock().expect("manifest lock");
                        // Bounded: what is dropped is still in storage.
                        if manifests.len() >= MEMORY_MANIFESTS {
                            manifests.clear();
                        }
                        manifests.insert(key2.clone(), img.clone());
                    }
                    this.inflight.lock().expect("inflight lock").remove(&key2);
                    result
                }
                .boxed()
                .shared();
                inflight.insert(key.clone(), f.clone());
                f
            }
        };
        fut.await
    }

    /// The source pinned for `tag`, remembered for
    /// [`ShimConfig::revision_ttl`] so that warm pulls do not ask git or
    /// hash the package set each time. When an entry expires, one request
    /// looks it up again while the others keep using the old one, so a
    /// busy instance never stampedes git or the package-set hashing.
    async fn resolve(&self, tag: &str) -> Result<Arc<ResolvedSource>, NixError> {
        // Other sources ignore the tag: one entry serves them all.
        let key = if matches!(self.config.source, PackageSource::Git(_)) { tag } else { "" };
        {
            let mut revisions = self.revisions.lock().expect("revisions lock");
            if let Some(entry) = revisions.get_mut(key) {
                if entry.at.elapsed() < self.config.revision_ttl || entry.refreshing {
                    return Ok(entry.source.clone());
                }
                entry.refreshing = true;
            }
        }
        let started = std::time::Instant::now();
        let result = self.config.source.resolve(tag).await.map(Arc::new);
        tracing::debug!(tag, ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "source revision looked up");
        let mut revisions = self.revisions.lock().expect("revisions lock");
        match result {
            Ok(r) => {
                if revisions.len() > 10_000 {
                    revisions.clear();
                }
                revisions.insert(key.to_string(), Revision { at: std::time::Instant::now(), source: r.clone(), refreshing: false });
                Ok(r)
            }
            Err(e) => {
                // Forget the stale entry: the next request tries again.
                revisions.remove(key);
                Err(e)
            }
        }
    }

    fn manifest_key(&self, revision: &str, request: &ImageRequest) -> String {
        let packages = serde_json::to_string(&request.packages).expect("json");
        let bases = serde_json::to_string(&self.config.base_packages).expect("json");
        hex_sha256(&[
            CACHE_VERSION,
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

    async fn load_or_build(
        self: &Arc<Self>,
        key: &str,
        request: &ImageRequest,
        source: &ResolvedSource,
        label: &str,
    ) -> Result<Arc<BuiltImage>, ShimError> {
        let meta_key = format!("manifests/{key}.json");
        if let Some(bytes) = self.storage.get_meta(&meta_key).await? {
            if let Ok(mut img) = serde_json::from_slice::<BuiltImage>(&bytes) {
                if self.load_bytes(&mut img.oci).await? && self.load_bytes(&mut img.docker).await? {
                    tracing::info!(image = label, "manifest cache hit");
                    return Ok(Arc::new(img));
                }
            }
        }
        let started = std::time::Instant::now();
        self.nix_builds.fetch_add(1, Ordering::Relaxed);
        tracing::info!(image = label, packages = ?request.packages, system = %request.system, revision = %source.revision, "running nix-build");
        let prepared = self.config.prepare.run(source, &request.packages, &self.config.base_packages, &request.system).await;
        let graph = match prepared {
            Ok(Prepared::Graph(g)) => g,
            Ok(Prepared::NotFound(names)) => {
                tracing::info!(image = label, not_found = ?names, "packages not found");
                return Err(ShimError::NotFound(names));
            }
            Err(e) => {
                tracing::error!(image = label, error = %e, "nix-build failed");
                self.record_error(label, e.to_string());
                return Err(e.into());
            }
        };
        let nix_time = started.elapsed();
        let img = self.assemble(&graph, &request.system).await.inspect_err(|e| {
            tracing::error!(image = label, error = %e, "building the image failed");
            self.record_error(label, e.to_string());
        })?;
        self.storage.put_meta(&meta_key, &serde_json::to_vec(&img).expect("json")).await?;
        tracing::info!(
            image = label,
            manifest = %img.oci.digest,
            nix_ms = nix_time.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "image built"
        );
        Ok(Arc::new(img))
    }

    /// Plans, packs (through the layer cache) and stores an image.
    async fn assemble(&self, graph: &ClosureGraph, system: &str) -> Result<BuiltImage, ShimError> {
        let platform = Platform::from_nix_system(system).map_err(|e| ShimError::Build(e.to_string()))?;
        let budget = self.config.max_layers.saturating_sub(1).max(1);
        let plan = layering::plan_with(graph, &self.config.popularity, budget, self.config.layering).map_err(|e| ShimError::Build(e.to_string()))?;
        let root = root_layer::join(&graph.roots).map_err(|e| ShimError::Build(format!("image root: {e}")))?;
        for w in &root.warnings {
            tracing::warn!("{w}");
        }
        let mut contents: Vec<(LayerContent, String, String)> = plan
            .layers
            .iter()
            .map(|l| (LayerContent::StorePaths(l.paths.clone()), layer_key(&l.paths, self.config.pack), layer_comment(&l.paths)))
            .collect();
        let root_desc: Vec<String> = root.entries.iter().map(|e| format!("{e:?}")).collect();
        contents.push((LayerContent::Tree(root.entries), layer_key(&root_desc, self.config.pack), crate::builder::ROOT_LAYER_COMMENT.into()));

        let planned = std::time::Instant::now();
        // Cached layers first; pack the rest in parallel.
        let mut packed: Vec<Option<PackedLayer>> = Vec::with_capacity(contents.len());
        for (_, key, _) in &contents {
            packed.push(self.cached_layer(key).await?);
        }
        let missing: Vec<usize> = (0..contents.len()).filter(|&i| packed[i].is_none()).collect();
        if !missing.is_empty() {
            let storage = self.storage.clone();
            let opts = self.config.pack;
            let jobs: Vec<(usize, LayerContent)> = missing.iter().map(|&i| (i, contents[i].0.clone())).collect();
            let results = tokio::task::spawn_blocking(move || {
                crate::packing::run_parallel(jobs, crate::packing::producers(opts), |(i, content)| pack_into(&*storage, &content, opts).map(|p| (i, p)))
                    .into_iter()
                    .collect::<Result<Vec<_>, ShimError>>()
            })
            .await
            .map_err(|e| ShimError::Build(format!("packing task failed: {e}")))??;
            for (i, p) in results {
                self.storage.put_meta(&format!("layers/{}.json", contents[i].1), &serde_json::to_vec(&p).expect("json")).await?;
                packed[i] = Some(p);
            }
        }
        tracing::info!(layers = contents.len(), packed = missing.len(), pack_ms = planned.elapsed().as_millis() as u64, "layers ready");

        let image = Image {
            platform,
            created: crate::image::DEFAULT_CREATED.to_string(),
            config: RuntimeConfig::default().with_default_path(),
            layers: packed.into_iter().zip(contents).map(|(p, (_, _, comment))| ImageLayer { packed: p.expect("every layer packed"), comment }).collect(),
        };
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || store_manifests(&*storage, &image)).await.map_err(|e| ShimError::Build(e.to_string()))?
    }

    /// Reads a stored manifest's bytes into memory; false when it is gone
    /// or not what the cache says.
    async fn load_bytes(&self, m: &mut StoredManifest) -> Result<bool, ShimError> {
        if self.storage.stat_blob(&m.digest).await?.is_none() {
            return Ok(false);
        }
        let bytes = crate::storage::collect(self.storage.read_blob(&m.digest, 0, m.size).await?)
            .await
            .map_err(|e| ShimError::Build(format!("reading manifest {}: {e}", m.digest)))?;
        if Digest::of(&bytes) != m.digest {
            return Ok(false);
        }
        m.bytes = Some(bytes.into());
        Ok(true)
    }

    async fn cached_layer(&self, key: &str) -> Result<Option<PackedLayer>, ShimError> {
        let Some(bytes) = self.storage.get_meta(&format!("layers/{key}.json")).await? else { return Ok(None) };
        let Ok(p) = serde_json::from_slice::<PackedLayer>(&bytes) else { return Ok(None) };
        Ok(self.storage.stat_blob(&p.digest).await?.map(|_| p))
    }
}

/// The layer cache key: the sorted store paths (or root entries) and the
/// settings that change a layer's bytes.
fn layer_key(items: &[String], opts: PackOptions) -> String {
    let mut sorted: Vec<&str> = items.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let level = format!("{}-{}", opts.compression.name(), opts.level);
    let mut parts = vec![CACHE_VERSION, level.as_str()];
    parts.extend(sorted);
    hex_sha256(&parts)
}

fn pack_into(storage: &dyn Storage, content: &LayerContent, opts: PackOptions) -> Result<PackedLayer, ShimError> {
    let writer = storage.blob_writer()?;
    let (writer, packed) = match pack_to_writer(content, writer, opts) {
        Ok(r) => r,
        Err(e) => return Err(ShimError::Build(e.to_string())),
    };
    let media = match packed.compression {
        crate::packing::Compression::Gzip => media_type::OCI_LAYER_GZIP,
        crate::packing::Compression::Zstd => media_type::OCI_LAYER_ZSTD,
    };
    writer.commit(&packed.digest, media)?;
    Ok(packed)
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

/// Loads popularity data from an `http(s)://` URL, a `file://` URL or a
/// file path (`NIX_POPULARITY_URL`).
pub fn load_popularity(location: &str) -> anyhow::Result<Popularity> {
    use anyhow::Context;
    let text = if location.starts_with("http://") || location.starts_with("https://") {
        let mut resp = ureq::get(location).call().with_context(|| format!("cannot fetch popularity data from {location}"))?;
        resp.body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .with_context(|| format!("cannot read popularity data from {location}"))?
    } else {
        let path = location.strip_prefix("file://").unwrap_or(location);
        std::fs::read_to_string(path).with_context(|| format!("cannot read popularity data {path}"))?
    };
    Popularity::from_json(&text).with_context(|| location.to_string())
}

/// Default nix-build timeout, as the original's NIX_TIMEOUT.
pub const DEFAULT_NIX_TIMEOUT: Duration = Duration::from_secs(60);
