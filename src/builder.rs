//! The image builder: `buildNixeryImage` as it runs inside `nix-build`,
//! with this program as the derivation's builder.
//!
//! Nix writes the derivation's attributes to `.attrs.json`, with the
//! closure graph of the contents from `exportReferencesGraph` and the
//! image arguments under `nixery` (see [`BuildSpec`]). This module reads
//! them, hands the image to [`crate::assembly`] with the output's
//! `blobs/sha256/` as the layer store, and writes the OCI layout (or a
//! docker-archive) to the `out` output.
//!
//! With `incremental = true`, `lib.nix` runs three kinds of derivation:
//! `internal plan-layers` writes the store layers of the plan, one `internal pack-layer`
//! derivation per layer packs it, and `internal build-image` links those layers in
//! by key and packs only the rest (the root layer).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::assembly::{self, AssemblyError, DirStore, ImageSpec, RootSpec};
use crate::graph::{ClosureGraph, GraphDoc, GraphError, MissingPackage, PathInfo, Popularity, GRAPH_VERSION};
use crate::image::{self, ImageError, Platform, RuntimeConfig};
use crate::layering::lock::{LayerLock, LockReport, LOCK_FILE};
use crate::layering::Algorithm;
use crate::packing::{self, Compression, LayerContent, Owner, OwnerRule, PackError, PackOptions, PackedLayer, PermRule};

/// Version of the JSON contract between `lib.nix` and the helper.
pub const SPEC_VERSION: u32 = 2;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The attributes file (or a file it names) cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The attributes are not what `lib.nix` writes.
    #[error("{path} is not a valid nixery build description: {source}")]
    Attrs {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// `lib.nix` and the helper disagree on the contract.
    #[error("the build description has version {0}, this helper understands version {SPEC_VERSION}; use the helper that matches lib.nix")]
    Version(u32),
    /// The derivation is not what lib.nix makes; the message says how.
    #[error("in image {name}: {message}")]
    Invalid {
        /// The image.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An argument of the image is not valid: which one, and why.
    #[error("in image {name}: `{argument}`: {source}")]
    Argument {
        /// The image.
        name: String,
        /// The argument of buildNixeryImage.
        argument: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The closure graph Nix exported is not valid.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// Assembling the image failed.
    #[error("in image {name}: {source}")]
    Assembly {
        /// The image.
        name: String,
        /// What failed.
        source: AssemblyError,
    },
    /// Packing a layer failed.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// Writing the image's documents failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Format {
    /// An OCI image layout directory.
    #[serde(rename = "oci-dir")]
    OciDir,
    /// A docker-archive tarball (`docker load`).
    #[serde(rename = "docker-archive")]
    DockerArchive,
    /// An OCI layout without the bytes of its store-path layers, and the
    /// recipes to pack them again (`streamNixeryImage`; `nixery push`
    /// packs them on the fly).
    #[serde(rename = "stream")]
    Stream,
}

/// Popularity given either inline or as a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PopularitySource {
    /// A path to a JSON file.
    File(PathBuf),
    /// The data itself.
    Inline(BTreeMap<String, u64>),
}

/// The image arguments `lib.nix` passes under the `nixery` attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildSpec {
    /// [`SPEC_VERSION`].
    pub version: u32,
    /// The image name.
    pub name: String,
    /// The tag; the output path's hash when absent.
    #[serde(default)]
    pub tag: Option<String>,
    /// The runtime config, as the user wrote it.
    #[serde(default)]
    pub config: serde_json::Value,
    /// The most layers the image may have, every layer counted.
    pub max_layers: usize,
    /// The creation time.
    #[serde(default)]
    pub created: Option<String>,
    /// Popularity data.
    #[serde(default)]
    pub popularity: Option<PopularitySource>,
    /// The output format.
    pub format: Format,
    /// The layer compression.
    #[serde(default)]
    pub compression: Compression,
    /// The compression level; the compression's default when absent.
    #[serde(default)]
    pub compression_level: Option<u32>,
    /// The layering algorithm.
    #[serde(default)]
    pub layering: Algorithm,
    /// Incremental builds: the outputs of `pack-layer` derivations.
    #[serde(default)]
    pub prepacked: Option<Vec<PathBuf>>,
    /// The content packages, in the user's order (linked into the root).
    /// When absent, the roots of the exported graph.
    #[serde(default)]
    pub contents: Option<Vec<String>>,
    /// Packages copied into the root.
    #[serde(default)]
    pub copy_to_root: Vec<String>,
    /// Explicit layers: groups of packages whose closures get layers of
    /// their own.
    #[serde(default)]
    pub layers: Vec<Vec<String>>,
    /// Users of the image.
    #[serde(default)]
    pub users: Vec<crate::assembly::users::User>,
    /// Groups of the image.
    #[serde(default)]
    pub groups: Vec<crate::assembly::users::Group>,
    /// Mode and ownership rules.
    #[serde(default)]
    pub perms: Vec<PermSpec>,
    /// Register the image's store paths in a Nix database in the image.
    #[serde(default)]
    pub initialize_nix_database: bool,
    /// Write SBOMs of the image beside it ([`crate::sbom`]).
    #[serde(default)]
    pub sbom: bool,
    /// The meta of the packages the expression named, for the SBOMs.
    #[serde(default)]
    pub package_meta: Vec<crate::sbom::PackageMeta>,
    /// Who supplies the packages, for the SBOMs (`sbomSupplier`).
    #[serde(default)]
    pub sbom_supplier: Option<String>,
    /// Who owns the Nix database (and the store, when not root).
    #[serde(default)]
    pub nix_uid: u32,
    /// The Nix database's group.
    #[serde(default)]
    pub nix_gid: u32,
    /// A base image: an OCI layout or a tarball.
    #[serde(default)]
    pub from_image: Option<PathBuf>,
    /// Which image of the base's layout, by tag.
    #[serde(default)]
    pub from_image_tag: Option<String>,
    /// A layer lock (`layerLock`): a `layers.lock.json`, or an image
    /// built before that has one.
    #[serde(default)]
    pub layer_lock: Option<PathBuf>,
    /// The Nix system the image's contents are for; the build machine's
    /// when absent.
    #[serde(default)]
    pub image_system: Option<String>,
    /// The architecture recorded in the config (`arm64`), overriding the
    /// one of `imageSystem`.
    #[serde(default)]
    pub architecture: Option<String>,
    /// The CPU variant recorded with `architecture` (`v8`).
    #[serde(default)]
    pub variant: Option<String>,
}

/// A permission rule as `lib.nix` passes it (nix2container's shape).
/// lib.nix writes every key itself, so none is unknown (`flatten` does
/// not allow denying them).
#[derive(Debug, Clone, Deserialize)]
pub struct PermSpec {
    /// A store path or a path in the image.
    pub path: String,
    /// The regular expression the image path must match; everything by
    /// default.
    #[serde(default)]
    pub regex: Option<String>,
    /// Octal permission bits, as a string (`"0750"`).
    #[serde(default)]
    pub mode: Option<String>,
    /// The owner it sets (`uid`, `gid`, `uname`, `gname`).
    #[serde(flatten)]
    pub owner: OwnerRule,
}

impl PermSpec {
    fn rule(&self) -> Result<PermRule, String> {
        let mode = match &self.mode {
            None => None,
            Some(m) => Some(
                u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .ok_or_else(|| format!("perms: mode {m:?} is not octal permission bits such as \"0750\""))?,
            ),
        };
        for n in [&self.owner.uname, &self.owner.gname].into_iter().flatten() {
            if n.len() > 31 {
                return Err(format!("perms: the name {n:?} is longer than a tar header holds (31 bytes)"));
            }
        }
        Ok(PermRule { path: self.path.clone(), regex: self.regex.clone().unwrap_or_else(|| ".*".into()), mode, owner: self.owner.clone() })
    }
}

impl BuildSpec {
    fn invalid(&self, message: impl std::fmt::Display) -> BuildError {
        BuildError::Invalid { name: self.name.clone(), message: message.to_string() }
    }

    /// `argument` is not valid, for the reason `source` gives.
    fn argument(&self, argument: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> BuildError + '_ {
        move |source| BuildError::Argument { name: self.name.clone(), argument, source }
    }

    fn check_version(&self) -> Result<(), BuildError> {
        if self.version != SPEC_VERSION {
            return Err(BuildError::Version(self.version));
        }
        Ok(())
    }

    fn pack_options(&self) -> Result<PackOptions, BuildError> {
        PackOptions::new(self.compression, self.compression_level).map_err(|e| self.argument("compressionLevel")(e.into()))
    }

    /// The platform recorded in the image: the contents' system (the
    /// build machine's when not given), with `architecture` and `variant`
    /// overriding.
    fn platform(&self, build_system: &str) -> Result<Platform, BuildError> {
        let mut p = Platform::from_nix_system(self.image_system.as_deref().unwrap_or(build_system)).map_err(|e| self.argument("contents")(e.into()))?;
        if let Some(a) = &self.architecture {
            p.architecture = a.clone();
            p.variant = self.variant.clone();
        }
        Ok(p)
    }

    /// The assembly inputs of this image, built on `build_system`, reading
    /// the local store. `scratch` is where a base image tarball is unpacked.
    pub fn image_spec(&self, build_system: &str, scratch: &Path) -> Result<ImageSpec, BuildError> {
        let config = RuntimeConfig::from_json_value(self.config.clone()).map_err(|e| self.argument("config")(e.into()))?;
        let platform = self.platform(build_system)?;
        let base = match &self.from_image {
            Some(path) => {
                Some(crate::image::base::open(path, self.from_image_tag.as_deref(), &platform, scratch).map_err(|e| self.argument("fromImage")(e.into()))?)
            }
            None => None,
        };
        let created = match self.created.as_deref() {
            None => image::DEFAULT_CREATED.to_string(),
            // Not reproducible, by request (as dockerTools' created = "now").
            Some("now") => humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            Some(c) => c.to_string(),
        };
        Ok(ImageSpec {
            max_layers: self.max_layers,
            layering: self.layering,
            popularity: std::sync::Arc::new(load_popularity(&self.popularity)?),
            pack: self.pack_options()?,
            platform,
            created,
            config,
            store_root: PathBuf::from("/"),
            base,
            layer_groups: self.layers.clone(),
            root: RootSpec {
                copy_to_root: self.copy_to_root.clone(),
                users: self.users.clone(),
                groups: self.groups.clone(),
                nix_db: self.initialize_nix_database.then_some(Owner { uid: self.nix_uid, gid: self.nix_gid, uname: None, gname: None }),
            },
            perms: self.perms.iter().map(PermSpec::rule).collect::<Result<_, _>>().map_err(|e| self.argument("perms")(e.into()))?,
            layer_lock: self.layer_lock.as_deref().map(LayerLock::read).transpose().map_err(|e| self.argument("layerLock")(e.into()))?,
        })
    }
}

/// What a `pack-layer` derivation writes beside its `blob`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepackedLayer {
    /// The layer's store paths.
    pub paths: Vec<String>,
    /// The rules it was packed with.
    #[serde(default)]
    pub perms: Vec<PermRule>,
    /// The packed blob.
    pub packed: PackedLayer,
}

/// What `plan-layers` writes: the store-path layers of an image, each to
/// be packed by a `pack-layer` derivation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncrementalPlan {
    /// [`SPEC_VERSION`].
    pub version: u32,
    /// The layers, in image order.
    pub layers: Vec<IncrementalLayer>,
}

/// One layer of an [`IncrementalPlan`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncrementalLayer {
    /// Its store paths.
    pub paths: Vec<String>,
    /// The rules that concern it.
    pub perms: Vec<PermRule>,
}

#[derive(Deserialize)]
struct PackLayerAttrs {
    outputs: BTreeMap<String, PathBuf>,
    #[serde(rename = "nixeryLayer")]
    layer: PackLayerSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PackLayerSpec {
    version: u32,
    paths: Vec<String>,
    #[serde(default)]
    perms: Vec<PermRule>,
    #[serde(default)]
    compression: Compression,
    #[serde(default)]
    compression_level: Option<u32>,
    /// Keep the digests alone (streamNixeryImage), not the blob.
    #[serde(default)]
    digest_only: bool,
}

#[derive(Deserialize)]
struct Attrs {
    outputs: BTreeMap<String, PathBuf>,
    system: String,
    nixery: BuildSpec,
    #[serde(default)]
    graph: Vec<PathInfo>,
    #[serde(default, rename = "exportReferencesGraph")]
    export: Option<ExportRoots>,
}

#[derive(Deserialize)]
struct ExportRoots {
    #[serde(default)]
    graph: Vec<String>,
}

/// Where the attributes file is. `$NIX_ATTRS_JSON_FILE` when it exists;
/// else `.attrs.json` in `$NIX_BUILD_TOP`: Nix before 2.17 sets the
/// variable to the path outside the sandbox, and older Nix not at all.
pub fn default_attrs_path() -> PathBuf {
    attrs_path_from(std::env::var_os("NIX_ATTRS_JSON_FILE").map(PathBuf::from), std::env::var_os("NIX_BUILD_TOP").map(PathBuf::from))
}

fn attrs_path_from(attrs_file: Option<PathBuf>, build_top: Option<PathBuf>) -> PathBuf {
    match attrs_file {
        Some(p) if p.exists() => p,
        _ => build_top.unwrap_or_else(|| PathBuf::from(".")).join(".attrs.json"),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BuildError> {
    let text = fs::read_to_string(path).map_err(|source| BuildError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| BuildError::Attrs { path: path.to_path_buf(), source })
}

fn write_out(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    fs::write(path, bytes).map_err(|source| BuildError::Write { path: path.to_path_buf(), source })
}

fn load_popularity(source: &Option<PopularitySource>) -> Result<Popularity, BuildError> {
    match source {
        None => Ok(Popularity::default()),
        Some(PopularitySource::Inline(m)) => Ok(Popularity(m.clone())),
        Some(PopularitySource::File(p)) => {
            let text = fs::read_to_string(p).map_err(|source| BuildError::Read { path: p.clone(), source })?;
            Ok(Popularity::from_json(&text)?)
        }
    }
}

/// The image attributes, checked, with the closure graph.
struct Build {
    spec: BuildSpec,
    system: String,
    out: PathBuf,
    graph: ClosureGraph,
}

fn read_build(attrs_path: &Path) -> Result<Build, BuildError> {
    let attrs: Attrs = read_json(attrs_path)?;
    attrs.nixery.check_version()?;
    let out = attrs.outputs.get("out").cloned().ok_or_else(|| attrs.nixery.invalid("the derivation has no `out` output"))?;
    let roots = match &attrs.nixery.contents {
        Some(c) => c.clone(),
        None => attrs.export.map(|e| e.graph).unwrap_or_default(),
    };
    let graph = ClosureGraph::new(attrs.graph, Some(roots))?;
    Ok(Build { spec: attrs.nixery, system: attrs.system, out, graph })
}

/// The first stage of an incremental build (`nixery internal plan-layers`): writes
/// the store-path layers of the image's plan ([`IncrementalPlan`]) to the
/// `out` output.
pub fn plan_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let b = read_build(attrs_path)?;
    let spec = b.spec.image_spec(&b.system, &std::env::temp_dir())?;
    let plan = assembly::plan(&spec, &b.graph).map_err(|source| BuildError::Assembly { name: b.spec.name.clone(), source })?;
    let layers = plan
        .jobs
        .into_iter()
        // Explicit layers have derivations of their own (pack-group).
        .filter(|j| j.kind == assembly::JobKind::Store)
        .map(|j| IncrementalLayer { paths: j.content.store_paths, perms: j.content.perms })
        .collect();
    let doc = IncrementalPlan { version: SPEC_VERSION, layers };
    write_out(&b.out, &serde_json::to_vec(&doc).expect("a plan serialises"))
}

/// The second stage (`nixery internal pack-layer`): packs one layer's store paths
/// into `out/blob`, with `out/layer.json` ([`PrepackedLayer`]) beside it.
pub fn pack_layer_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let attrs: PackLayerAttrs = read_json(attrs_path)?;
    if attrs.layer.version != SPEC_VERSION {
        return Err(BuildError::Version(attrs.layer.version));
    }
    let invalid = |message: String| BuildError::Invalid { name: "layer".into(), message };
    let out = attrs.outputs.get("out").ok_or_else(|| invalid("the derivation has no `out` output".into()))?;
    let opts = PackOptions::new(attrs.layer.compression, attrs.layer.compression_level).map_err(|e| invalid(e.to_string()))?;
    fs::create_dir_all(out).map_err(|source| BuildError::Write { path: out.clone(), source })?;
    let content = LayerContent { perms: attrs.layer.perms.clone(), ..LayerContent::store_paths(attrs.layer.paths.clone()) };
    let packed = pack_prepacked(&content, out, opts, attrs.layer.digest_only)?;
    let doc = PrepackedLayer { paths: attrs.layer.paths, perms: attrs.layer.perms, packed };
    write_out(&out.join("layer.json"), &serde_json::to_vec(&doc).expect("a layer serialises"))
}

#[derive(Deserialize)]
struct PackGroupAttrs {
    outputs: BTreeMap<String, PathBuf>,
    #[serde(rename = "nixeryGroup")]
    group: PackGroupSpec,
    #[serde(default)]
    graph: Vec<PathInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PackGroupSpec {
    version: u32,
    /// The group's packages.
    group: Vec<String>,
    /// The packages of the groups before it.
    before: Vec<String>,
    #[serde(default)]
    perms: Vec<PermSpec>,
    #[serde(default)]
    compression: Compression,
    #[serde(default)]
    compression_level: Option<u32>,
    /// Keep the digests alone (streamNixeryImage), not the blob.
    #[serde(default)]
    digest_only: bool,
}

/// Packs `content` into `out/blob`, or, with `digest_only`, into a hashing
/// sink (the layer of a stream image: its digests, no bytes kept).
fn pack_prepacked(content: &LayerContent, out: &Path, opts: PackOptions, digest_only: bool) -> Result<packing::PackedLayer, BuildError> {
    Ok(if digest_only { packing::pack_to_sink(content, opts)? } else { packing::pack_to_file(content, &out.join("blob"), opts)? })
}

/// The builder of an explicit layer (`nixery pack-group`): packs the
/// closure of the group less the closure of the groups before it, with
/// the rules that concern it, into `out/blob` with `out/layer.json`
/// ([`PrepackedLayer`]) beside it. Its inputs are the group and the
/// groups before it, nothing else, so it is built again only when they
/// change: no import-from-derivation is needed.
pub fn pack_group_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let attrs: PackGroupAttrs = read_json(attrs_path)?;
    let spec = attrs.group;
    if spec.version != SPEC_VERSION {
        return Err(BuildError::Version(spec.version));
    }
    let invalid = |message: String| BuildError::Invalid { name: "explicit layer".into(), message };
    let out = attrs.outputs.get("out").ok_or_else(|| invalid("the derivation has no `out` output".into()))?;
    let opts = PackOptions::new(spec.compression, spec.compression_level).map_err(|e| invalid(e.to_string()))?;
    let roots: Vec<String> = spec.group.iter().chain(&spec.before).cloned().collect();
    let graph = ClosureGraph::new(attrs.graph, Some(roots))?;
    let mut assigned = graph.closure(spec.before.iter().map(String::as_str))?;
    let paths = assembly::explicit_layer_paths(&graph, &spec.group, &mut assigned)?;
    let rules: Vec<PermRule> = spec.perms.iter().map(PermSpec::rule).collect::<Result<_, _>>().map_err(invalid)?;
    let perms: Vec<PermRule> = rules.into_iter().filter(|r| assembly::concerns(r, &paths)).collect();
    fs::create_dir_all(out).map_err(|source| BuildError::Write { path: out.clone(), source })?;
    let content = LayerContent { perms: perms.clone(), ..LayerContent::store_paths(paths.clone()) };
    let packed = pack_prepacked(&content, out, opts, spec.digest_only)?;
    write_out(&out.join("layer.json"), &serde_json::to_vec(&PrepackedLayer { paths, perms, packed }).expect("a layer serialises"))
}

/// Writes the image's SBOMs and provenance beside its `index.json` when
/// the spec asks, and lists them in it as referrers of the image.
fn write_sboms(b: &Build, created: &str, tag: &str, docs: &image::ImageDocs, base_layers: Vec<crate::digest::Digest>) -> Result<(), BuildError> {
    let manifest = &docs.manifest_digest;
    if !b.spec.sbom {
        return Ok(());
    }
    let facts = crate::sbom::ImageFacts {
        name: &b.spec.name,
        tag,
        created,
        manifest,
        graph: &b.graph,
        meta: &b.spec.package_meta,
        base_layers,
        supplier: b.spec.sbom_supplier.as_deref(),
    };
    let function = if b.spec.format == Format::Stream { "streamNixeryImage" } else { "buildNixeryImage" };
    let helper = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
    let invocation = crate::provenance::Invocation::Library { function, helper: &helper };
    let documents = crate::supply_chain::documents(&facts, &invocation);
    for (kind, bytes) in &documents {
        let path = b.out.join(kind.file);
        fs::write(&path, bytes).map_err(|source| BuildError::Write { path: path.clone(), source })?;
    }
    let subject = crate::supply_chain::referrers::subject(docs.manifest_media_type, manifest, docs.manifest.len());
    image::layout::add_referrers(&b.out, &crate::supply_chain::referrers::artifacts(&documents, &subject))?;
    Ok(())
}

/// Writes the image's layer lock beside its `index.json`, and says in
/// the build log what an earlier lock kept.
fn write_lock(
    b: &Build,
    image: &image::Image,
    store_layers: &[(usize, Vec<String>)],
    report: Option<LockReport>,
    earlier: Option<&LayerLock>,
) -> Result<(), BuildError> {
    let lock = assembly::layer_lock(image, store_layers);
    if let (Some(r), Some(earlier)) = (report, earlier) {
        let before: std::collections::BTreeSet<&crate::digest::Digest> = earlier.layers.iter().filter_map(|l| l.digest.as_ref()).collect();
        let same = lock.layers.iter().filter(|l| l.digest.as_ref().is_some_and(|d| before.contains(d))).count();
        eprintln!(
            "nixery: the layer lock kept {} of its {} layers ({same} unchanged, {} merged to fit), moved {} paths to where their earlier version was, planned {} new paths",
            r.kept,
            earlier.layers.len(),
            r.merged,
            r.moved_versions,
            r.new_paths
        );
    }
    let path = b.out.join(LOCK_FILE);
    fs::write(&path, lock.to_json()).map_err(|source| BuildError::Write { path: path.clone(), source })
}

/// Runs a build from an attributes file (`nixery internal build-image`), logging
/// to stderr.
pub fn build_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let b = read_build(attrs_path)?;
    let tag = b.spec.tag.clone().unwrap_or_else(|| out_hash(&b.out).to_string());
    let spec = b.spec.image_spec(&b.system, &std::env::temp_dir())?;
    let name = &b.spec.name;
    let assembly_error = |source| BuildError::Assembly { name: name.clone(), source };
    let plan = assembly::plan(&spec, &b.graph).map_err(assembly_error)?;
    let base_layers: Vec<crate::digest::Digest> = plan.base_layers.iter().map(|l| l.packed.digest.clone()).collect();
    let (store_layers, lock_report) = (plan.store_layer_paths(), plan.lock_report);
    for w in &plan.warnings {
        eprintln!("nixery: warning: {w}");
    }
    eprintln!(
        "nixery: {} store paths ({} bytes) in {} layers ({} layering), the root layer included",
        b.graph.paths.len(),
        b.graph.total_size(),
        plan.jobs.len(),
        spec.layering
    );
    if b.spec.format == Format::Stream {
        let mut store = assembly::StreamStore::new(image::oci::blobs_dir(&b.out));
        for dir in b.spec.prepacked.iter().flatten() {
            let doc: PrepackedLayer = read_json(&dir.join("layer.json"))?;
            let key = LayerContent { perms: doc.perms.clone(), ..LayerContent::store_paths(doc.paths.clone()) }.key(spec.pack);
            store.add_known(key, doc.packed, doc.paths, doc.perms);
        }
        let (image, _) = assembly::assemble(plan, &store).map_err(assembly_error)?;
        let docs = image::write_oci_layout(&image, name, &tag, &b.out)?;
        write_sboms(&b, &spec.created, &tag, &docs, base_layers)?;
        write_lock(&b, &image, &store_layers, lock_report, spec.layer_lock.as_ref())?;
        let recipes = store.recipes();
        let doc = crate::image::stream::StreamDoc {
            version: crate::image::stream::STREAM_VERSION,
            compression: spec.pack.compression,
            level: spec.pack.level,
            layers: recipes,
        };
        let path = b.out.join(crate::image::stream::STREAM_FILE);
        fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json")).map_err(|source| BuildError::Write { path: path.clone(), source })?;
        eprintln!("nixery: wrote stream image {name}:{tag} with {} layers ({} packed on push) to {}", image.layers.len(), doc.layers.len(), b.out.display());
        return Ok(());
    }
    let layout_dir = match b.spec.format {
        Format::OciDir | Format::Stream => b.out.clone(),
        Format::DockerArchive => std::env::temp_dir().join(format!("nixery-layout-{}", std::process::id())),
    };
    let mut store = DirStore::new(image::oci::blobs_dir(&layout_dir));
    for dir in b.spec.prepacked.iter().flatten() {
        let doc: PrepackedLayer = read_json(&dir.join("layer.json"))?;
        let key = LayerContent { perms: doc.perms, ..LayerContent::store_paths(doc.paths) }.key(spec.pack);
        store.add_prepacked(key, doc.packed, dir.join("blob"));
    }
    let (image, stats) = assembly::assemble(plan, &store).map_err(assembly_error)?;
    let docs = image::write_oci_layout(&image, name, &tag, &layout_dir)?;
    if b.spec.format == Format::OciDir {
        write_sboms(&b, &spec.created, &tag, &docs, base_layers)?;
        write_lock(&b, &image, &store_layers, lock_report, spec.layer_lock.as_ref())?;
    }
    if b.spec.format == Format::DockerArchive {
        let layout = image::read_oci_layout(&layout_dir)?;
        image::write_docker_archive(&layout, &format!("{name}:{tag}"), &b.out)?;
        let _ = fs::remove_dir_all(&layout_dir);
    }
    eprintln!(
        "nixery: wrote image {name}:{tag} with {} layers ({} packed, {} prepacked) to {}",
        image.layers.len(),
        stats.packed,
        stats.reused,
        b.out.display()
    );
    Ok(())
}

#[derive(Deserialize)]
struct WriteGraphAttrs {
    outputs: BTreeMap<String, PathBuf>,
    #[serde(rename = "nixeryGraph")]
    spec: WriteGraphSpec,
    #[serde(default)]
    graph: Vec<PathInfo>,
    #[serde(default, rename = "exportReferencesGraph")]
    export: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WriteGraphSpec {
    version: u32,
    not_found: Vec<String>,
    #[serde(default)]
    missing: Vec<MissingPackage>,
    #[serde(default)]
    package_meta: Vec<crate::graph::PackageMeta>,
}

/// The builder of prepare-image's graph derivation (`nixery internal write-graph`):
/// copies the closure graph Nix exported into the output as a
/// [`GraphDoc`], for the registry shim to read.
pub fn write_graph_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let attrs: WriteGraphAttrs = read_json(attrs_path)?;
    if attrs.spec.version != GRAPH_VERSION {
        return Err(BuildError::Version(attrs.spec.version));
    }
    let out = attrs.outputs.get("out").ok_or_else(|| BuildError::Invalid { name: "graph".into(), message: "the derivation has no `out` output".into() })?;
    let roots = attrs.export.and_then(|mut e| e.remove("graph")).unwrap_or_default();
    let doc = GraphDoc {
        version: GRAPH_VERSION,
        not_found: attrs.spec.not_found,
        missing: attrs.spec.missing,
        roots,
        graph: attrs.graph,
        package_meta: attrs.spec.package_meta,
    };
    write_out(out, &serde_json::to_vec(&doc).expect("a graph serialises"))
}

/// The hash part of an output path, the default tag (as dockerTools does).
fn out_hash(out: &Path) -> &str {
    let base = out.file_name().and_then(|n| n.to_str()).unwrap_or("latest");
    base.split('-').next().unwrap_or(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tag_is_the_output_hash() {
        assert_eq!(out_hash(Path::new("/nix/store/abc123-hello")), "abc123");
    }

    #[test]
    fn the_attrs_file_inside_the_sandbox_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().to_path_buf();
        // Nix 2.8 names the path outside the sandbox, which does not exist in it.
        let outside = PathBuf::from("/tmp/nix-build-x.drv-0/.attrs.json");
        assert_eq!(attrs_path_from(Some(outside), Some(top.clone())), top.join(".attrs.json"));
        fs::write(top.join("named.json"), "{}").unwrap();
        assert_eq!(attrs_path_from(Some(top.join("named.json")), Some(top.clone())), top.join("named.json"));
        assert_eq!(attrs_path_from(None, Some(top.clone())), top.join(".attrs.json"));
    }

    #[test]
    fn specs_take_the_enums_and_refuse_bad_levels() {
        let spec = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"version": 1, "name": "x", "maxLayers": 10, "format": "oci-dir"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            serde_json::from_value::<BuildSpec>(v)
        };
        let s = spec(serde_json::json!({"compression": "zstd", "layering": "nixery", "compressionLevel": 19})).unwrap();
        assert_eq!((s.compression, s.layering), (Compression::Zstd, Algorithm::Nixery));
        assert_eq!(s.pack_options().unwrap().level, 19);
        let e = spec(serde_json::json!({"compression": "lz4"})).unwrap_err().to_string();
        assert!(e.contains("lz4"), "{e}");
        assert!(spec(serde_json::json!({"layering": "bogus"})).unwrap_err().to_string().contains("bogus"));
        let bad = spec(serde_json::json!({"compressionLevel": 13})).unwrap();
        assert_eq!(bad.pack_options().unwrap_err().to_string(), "in image x: `compressionLevel`: compression level 13 is out of range for gzip (0 to 12)");
    }
}
