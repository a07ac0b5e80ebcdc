//! The image builder: the whole path from a closure graph to an image on
//! disk, as `buildNixeryImage` runs it inside `nix-build`.
//!
//! Inside a build the helper is the derivation's builder. Nix writes the
//! derivation's attributes to `.attrs.json` (`$NIX_ATTRS_JSON_FILE`), with
//! the closure graph from `exportReferencesGraph` and the image arguments
//! under `nixery` (see [`BuildSpec`]). This module reads them, plans the
//! layers, packs them in parallel with the root layer, and writes the OCI
//! layout (or a docker-archive) to the `out` output.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::graph::{package_name, ClosureGraph, GraphError, Popularity};
use crate::image::{self, Image, ImageError, ImageLayer, Platform, RuntimeConfig};
use crate::layering::{self, LayeringError};
use crate::packing::{self, LayerContent, PackError, PackOptions};
use crate::root_layer;

/// Version of the `nixery` attribute contract between `lib.nix` and the
/// helper.
pub const SPEC_VERSION: u32 = 1;

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid nixery build description: {source}")]
    Attrs { path: PathBuf, source: serde_json::Error },
    #[error("the build description has version {0}, this helper understands version {SPEC_VERSION}; use the helper that matches lib.nix")]
    Version(u32),
    #[error("in image {name}: {message}")]
    Invalid { name: String, message: String },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Layering(#[from] LayeringError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("joining the contents into the image root: {0}")]
    RootLayer(std::io::Error),
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
}

/// Popularity given either inline or as a file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PopularitySource {
    /// A path to a JSON file.
    File(PathBuf),
    /// The data itself.
    Inline(std::collections::BTreeMap<String, u64>),
}

/// The image arguments `lib.nix` passes under the `nixery` attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BuildSpec {
    pub version: u32,
    pub name: String,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub config: serde_json::Value,
    pub max_layers: usize,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub popularity: Option<PopularitySource>,
    pub format: Format,
    /// "gzip" or "zstd"; gzip when absent.
    #[serde(default)]
    pub compression: Option<String>,
    /// The compression level; the compression's default when absent.
    #[serde(default)]
    pub compression_level: Option<u32>,
    /// The layering algorithm by name; the default when absent.
    #[serde(default)]
    pub layering: Option<String>,
    /// Incremental builds: the outputs of `pack-layer` derivations, one
    /// per planned layer, in plan order. When set, only the root layer is
    /// packed here.
    #[serde(default)]
    pub prepacked: Option<Vec<PathBuf>>,
}

impl BuildSpec {
    /// The layers left for store paths: `maxLayers` less the root layer.
    pub fn store_layer_budget(&self) -> Result<usize, BuildError> {
        if self.max_layers < 2 {
            return Err(BuildError::Invalid {
                name: self.name.clone(),
                message: format!(
                    "maxLayers must be at least 2 (one layer for the store paths, one for the image root), got {}",
                    self.max_layers
                ),
            });
        }
        Ok(self.max_layers - 1)
    }
}

/// What a `pack-layer` derivation writes beside its `blob`.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct PrepackedLayer {
    pub paths: Vec<String>,
    pub packed: packing::PackedLayer,
}

#[derive(Deserialize)]
struct PackLayerAttrs {
    outputs: std::collections::BTreeMap<String, PathBuf>,
    #[serde(rename = "nixeryLayer")]
    layer: PackLayerSpec,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PackLayerSpec {
    version: u32,
    paths: Vec<String>,
    #[serde(default)]
    compression: Option<String>,
    #[serde(default)]
    compression_level: Option<u32>,
}

#[derive(Deserialize)]
struct Attrs {
    outputs: std::collections::BTreeMap<String, PathBuf>,
    system: String,
    nixery: BuildSpec,
    #[serde(default)]
    graph: Vec<crate::graph::PathInfo>,
    #[serde(default, rename = "exportReferencesGraph")]
    export: Option<ExportRoots>,
}

#[derive(Deserialize)]
struct ExportRoots {
    #[serde(default)]
    graph: Vec<String>,
}

/// Where the attributes file is: `$NIX_ATTRS_JSON_FILE`, else `.attrs.json`
/// in the build directory (older Nix).
pub fn default_attrs_path() -> PathBuf {
    match std::env::var_os("NIX_ATTRS_JSON_FILE") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("NIX_BUILD_TOP").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".attrs.json"),
    }
}

fn read_attrs<T: serde::de::DeserializeOwned>(attrs_path: &Path) -> Result<T, BuildError> {
    let text = fs::read_to_string(attrs_path).map_err(|source| BuildError::Read { path: attrs_path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| BuildError::Attrs { path: attrs_path.to_path_buf(), source })
}

/// Maps an I/O error on `path` to a build error.
fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Image(ImageError::Io { path: path.to_path_buf(), source })
}

fn write_out(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    fs::write(path, bytes).map_err(io_at(path))
}

/// The first stage of an incremental build (`nixery plan-layers`): writes
/// the layer plan of the image's closure to the `out` output.
pub fn plan_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let attrs: Attrs = read_attrs(attrs_path)?;
    let spec = attrs.nixery;
    if spec.version != SPEC_VERSION {
        return Err(BuildError::Version(spec.version));
    }
    let out = attrs.outputs.get("out").ok_or_else(|| BuildError::Invalid { name: spec.name.clone(), message: "no `out` output".into() })?;
    let graph = ClosureGraph::new(attrs.graph, Some(attrs.export.map(|e| e.graph).unwrap_or_default()))?;
    let plan = plan_layers(&spec, &graph)?;
    write_out(out, &serde_json::to_vec(&plan).expect("json"))
}

/// The second stage (`nixery pack-layer`): packs one layer's store paths
/// into `out/blob`, with `out/layer.json` ([`PrepackedLayer`]) beside it.
pub fn pack_layer_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let attrs: PackLayerAttrs = read_attrs(attrs_path)?;
    if attrs.layer.version != SPEC_VERSION {
        return Err(BuildError::Version(attrs.layer.version));
    }
    let invalid = |message: String| BuildError::Invalid { name: "layer".into(), message };
    let out = attrs.outputs.get("out").ok_or_else(|| invalid("no `out` output".into()))?;
    let compression = compression_named(&attrs.layer.compression).map_err(invalid)?;
    fs::create_dir_all(out).map_err(io_at(out))?;
    let content = LayerContent::StorePaths(attrs.layer.paths.clone());
    let packed = packing::pack_to_file(&content, &out.join("blob"), PackOptions::new(compression, attrs.layer.compression_level))?;
    let doc = PrepackedLayer { paths: attrs.layer.paths, packed };
    write_out(&out.join("layer.json"), &serde_json::to_vec(&doc).expect("json"))
}

/// Runs a build from an attributes file, logging to stderr.
pub fn build_from_attrs(attrs_path: &Path) -> Result<(), BuildError> {
    let attrs: Attrs = read_attrs(attrs_path)?;
    let spec = attrs.nixery;
    if spec.version != SPEC_VERSION {
        return Err(BuildError::Version(spec.version));
    }
    let invalid = |message: String| BuildError::Invalid { name: spec.name.clone(), message };
    let out = attrs.outputs.get("out").ok_or_else(|| invalid("the derivation has no `out` output".into()))?;
    let roots = attrs.export.map(|e| e.graph).unwrap_or_default();
    let graph = ClosureGraph::new(attrs.graph, Some(roots))?;
    let tag = match &spec.tag {
        Some(t) => t.clone(),
        None => out_hash(out).to_string(),
    };
    let platform = Platform::from_nix_system(&attrs.system)?;
    let image = build_image(&spec, &graph, platform, out, &tag)?;
    eprintln!("nixery: wrote image {}:{} with {} layers to {}", spec.name, tag, image.layers.len(), out.display());
    Ok(())
}

/// The hash part of an output path, the default tag (as dockerTools does).
fn out_hash(out: &Path) -> &str {
    let base = out.file_name().and_then(|n| n.to_str()).unwrap_or("latest");
    base.split('-').next().unwrap_or(base)
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

/// A short description of a layer's paths for its history entry.
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

/// The compression a build description names (gzip when it names none).
fn compression_named(name: &Option<String>) -> Result<packing::Compression, String> {
    name.as_deref().map_or(Ok(packing::Compression::default()), str::parse)
}

/// The history comment of the root layer.
pub const ROOT_LAYER_COMMENT: &str = "image root: links to the contents, /tmp";

/// The plan of an image's store-path layers: the budget less the root layer.
fn plan_layers(spec: &BuildSpec, graph: &ClosureGraph) -> Result<layering::LayerPlan, BuildError> {
    let invalid = |message: String| BuildError::Invalid { name: spec.name.clone(), message };
    let budget = spec.store_layer_budget()?;
    let popularity = load_popularity(&spec.popularity)?;
    let algorithm = match &spec.layering {
        Some(name) => name.parse::<layering::Algorithm>().map_err(&invalid)?,
        None => layering::Algorithm::default(),
    };
    let plan = layering::plan_with(graph, &popularity, budget, algorithm)?;
    eprintln!(
        "nixery: {} store paths ({} bytes) in {} layers ({algorithm} layering), plus the root layer",
        graph.paths.len(),
        graph.total_size(),
        plan.layers.len()
    );
    Ok(plan)
}

/// Plans, packs and writes the image of `graph` to `out`.
pub fn build_image(spec: &BuildSpec, graph: &ClosureGraph, platform: Platform, out: &Path, tag: &str) -> Result<Image, BuildError> {
    let invalid = |message: String| BuildError::Invalid { name: spec.name.clone(), message };
    spec.store_layer_budget()?;
    let config = RuntimeConfig::from_json_value(spec.config.clone()).map_err(|e| invalid(e.to_string()))?.with_default_path();
    let root = root_layer::join(&graph.roots).map_err(BuildError::RootLayer)?;
    for w in &root.warnings {
        eprintln!("nixery: warning: {w}");
    }
    let compression = compression_named(&spec.compression).map_err(&invalid)?;
    let opts = PackOptions::new(compression, spec.compression_level);
    let layout_dir = match spec.format {
        Format::OciDir => out.to_path_buf(),
        Format::DockerArchive => std::env::temp_dir().join(format!("nixery-layout-{}", std::process::id())),
    };
    let blobs = layout_dir.join("blobs/sha256");
    let root_layer = LayerContent::Tree(root.entries);
    let mut layers: Vec<ImageLayer> = Vec::new();
    match &spec.prepacked {
        // Incremental: the store-path layers come packed by their own
        // derivations; link them in and pack only the root layer.
        Some(dirs) => {
            fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
            for dir in dirs {
                let doc: PrepackedLayer = read_attrs(&dir.join("layer.json"))?;
                let link = blobs.join(doc.packed.digest.hex());
                if !link.exists() {
                    std::os::unix::fs::symlink(dir.join("blob"), &link).map_err(io_at(&link))?;
                }
                layers.push(ImageLayer { comment: layer_comment(&doc.paths), packed: doc.packed });
            }
            eprintln!("nixery: {} prepacked layers, plus the root layer", layers.len());
            let packed = packing::pack_all(std::slice::from_ref(&root_layer), &blobs, opts)?;
            layers.extend(packed.into_iter().map(|packed| ImageLayer { packed, comment: ROOT_LAYER_COMMENT.to_string() }));
        }
        None => {
            let plan = plan_layers(spec, graph)?;
            let mut contents: Vec<LayerContent> = plan.layers.iter().map(|l| LayerContent::StorePaths(l.paths.clone())).collect();
            contents.push(root_layer);
            let mut comments: Vec<String> = plan.layers.iter().map(|l| layer_comment(&l.paths)).collect();
            comments.push(ROOT_LAYER_COMMENT.to_string());
            let packed = packing::pack_all(&contents, &blobs, opts)?;
            layers = packed.into_iter().zip(comments).map(|(packed, comment)| ImageLayer { packed, comment }).collect();
        }
    }
    let image = Image {
        platform,
        created: spec.created.clone().unwrap_or_else(|| image::DEFAULT_CREATED.to_string()),
        config,
        layers,
    };
    image::write_oci_layout(&image, &spec.name, tag, &layout_dir)?;
    if spec.format == Format::DockerArchive {
        let layout = image::read_oci_layout(&layout_dir)?;
        image::write_docker_archive(&layout, &format!("{}:{tag}", spec.name), out)?;
        let _ = fs::remove_dir_all(&layout_dir);
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_list_names_and_count_the_rest() {
        let paths: Vec<String> = (0..10).map(|i| format!("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-p{i}")).collect();
        assert_eq!(layer_comment(&paths[..2]), "store paths: p0, p1");
        assert!(layer_comment(&paths).ends_with("p7 and 2 more"));
    }

    #[test]
    fn default_tag_is_the_output_hash() {
        assert_eq!(out_hash(Path::new("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-hello")), "0123456789abcdfghijklmnpqrsvwxyz");
    }

    #[test]
    fn spec_rejects_unknown_keys() {
        let e = serde_json::from_value::<BuildSpec>(serde_json::json!({
            "version": 1, "name": "x", "maxLayers": 3, "format": "oci-dir", "maxLayer": 2
        }))
        .unwrap_err();
        assert!(e.to_string().contains("maxLayer"));
    }
}
