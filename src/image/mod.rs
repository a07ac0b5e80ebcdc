//! The OCI image: its config and manifest documents and their exact
//! bytes, and the forms an image takes on disk: an OCI image layout
//! directory ([`layout`]) or a docker-archive tarball ([`docker_archive`]).
//!
//! This module takes packed layers ([`crate::packing::PackedLayer`]) as
//! given; [`crate::assembly`] decides which layers an image has.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::packing::PackedLayer;

pub mod docker_archive;
pub mod layout;

pub use docker_archive::write_docker_archive;
pub use layout::{read_oci_layout, write_oci_layout, LayoutImage};

/// OCI media types.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Docker schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// OCI zstd layer (also what Docker 23+ reads in its own manifests).
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
}

/// The default creation time: one second after the epoch, as Nix uses.
pub const DEFAULT_CREATED: &str = "1970-01-01T00:00:01Z";
/// The `PATH` an image gets when its config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors building or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The runtime config, or a document read back, is not valid.
    #[error("invalid image config: {0}")]
    Config(String),
    /// A Nix system images cannot be made for.
    #[error("unsupported system {0:?} (expected e.g. x86_64-linux or aarch64-linux)")]
    System(String),
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { path, source }
}

/// The platform an image runs on. Multi-arch indexes will carry several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// GOARCH-style architecture: `amd64`, `arm64`, …
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// CPU variant (`v8` for arm64), when relevant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform for a Nix system double such as `x86_64-linux`.
    pub fn from_nix_system(system: &str) -> Result<Platform, ImageError> {
        let (cpu, os) = system.split_once('-').ok_or_else(|| ImageError::System(system.to_string()))?;
        let (architecture, variant) = match cpu {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "i686" => ("386", None),
            "armv7l" => ("arm", Some("v7")),
            "armv6l" => ("arm", Some("v6")),
            "riscv64" => ("riscv64", None),
            "powerpc64le" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            _ => return Err(ImageError::System(system.to_string())),
        };
        Ok(Platform { architecture: architecture.to_string(), os: os.to_string(), variant: variant.map(str::to_string) })
    }
}

/// A set of strings that Nix users may write as a list (`[ "80/tcp" ]`) or
/// as an attribute set (`{ "80/tcp" = {}; }`); serialised as the OCI map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringSet(pub std::collections::BTreeSet<String>);

impl Serialize for StringSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m: BTreeMap<&String, BTreeMap<(), ()>> = self.0.iter().map(|k| (k, BTreeMap::new())).collect();
        m.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StringSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            List(Vec<String>),
            Map(BTreeMap<String, serde::de::IgnoredAny>),
        }
        Ok(StringSet(match Either::deserialize(d)? {
            Either::List(v) => v.into_iter().collect(),
            Either::Map(m) => m.into_keys().collect(),
        }))
    }
}

/// The runtime configuration a user sets (the OCI config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The user (name or uid, optionally `:group`) the process runs as.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports the image listens on (`80/tcp`).
    #[serde(rename = "ExposedPorts", default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<StringSet>,
    /// Environment, `NAME=value` each.
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// The program and its first arguments.
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// The default command (arguments to the entrypoint, if any).
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Paths expected to be volumes.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<StringSet>,
    /// The working directory.
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels (`org.opencontainers.image.source`, …).
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The signal that stops the container.
    #[serde(rename = "StopSignal", default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

impl RuntimeConfig {
    /// Parses a user's config, naming the offending key on error.
    pub fn from_json_value(v: serde_json::Value) -> Result<RuntimeConfig, ImageError> {
        if v.is_null() {
            return Ok(RuntimeConfig::default());
        }
        let c: RuntimeConfig = serde_json::from_value(v).map_err(|e| ImageError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ImageError> {
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=')) {
            return Err(ImageError::Config(format!("Env entry {bad:?} is not of the form NAME=value")));
        }
        Ok(())
    }

    /// Adds the default `PATH` when `Env` sets none.
    pub fn with_default_path(mut self) -> RuntimeConfig {
        if !self.env.iter().any(|e| e.starts_with("PATH=")) {
            self.env.insert(0, DEFAULT_PATH.to_string());
        }
        self
    }
}

/// A descriptor: media type, digest and size of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The blob's media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub(crate) fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.to_string(), digest, size, platform: None, annotations: BTreeMap::new() }
    }
}

#[derive(Serialize)]
struct ConfigDoc<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: &'a RuntimeConfig,
    rootfs: RootFs<'a>,
    history: Vec<History<'a>>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: Vec<&'a Digest>,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
    comment: String,
}

#[derive(Serialize)]
struct ManifestDoc<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// A layer of an image, with a note for its history entry.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    /// The blob.
    pub packed: PackedLayer,
    /// What the layer holds, for the config's history (`store paths: …`).
    pub comment: String,
}

/// Which manifest flavour to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFlavour {
    /// OCI image manifest and config media types.
    Oci,
    /// Docker schema 2 manifest and config media types.
    Docker,
}

/// An image: its layers and its config, ready to be serialised.
#[derive(Debug, Clone)]
pub struct Image {
    /// What it runs on.
    pub platform: Platform,
    /// The creation time in the config.
    pub created: String,
    /// The runtime config.
    pub config: RuntimeConfig,
    /// The layers, bottom first.
    pub layers: Vec<ImageLayer>,
}

/// The serialised documents of an image, with their digests.
#[derive(Debug, Clone)]
pub struct ImageDocs {
    /// The config's bytes.
    pub config: Vec<u8>,
    /// Their digest.
    pub config_digest: Digest,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// Their digest.
    pub manifest_digest: Digest,
    /// The manifest's media type.
    pub manifest_media_type: &'static str,
}

impl Image {
    /// The config JSON (identical for both manifest flavours).
    pub fn config_json(&self) -> Vec<u8> {
        let doc = ConfigDoc {
            created: &self.created,
            architecture: &self.platform.architecture,
            os: &self.platform.os,
            variant: self.platform.variant.as_deref(),
            config: &self.config,
            rootfs: RootFs { kind: "layers", diff_ids: self.layers.iter().map(|l| &l.packed.diff_id).collect() },
            history: self
                .layers
                .iter()
                .map(|l| History { created: &self.created, created_by: "nixery", comment: l.comment.clone() })
                .collect(),
        };
        serde_json::to_vec(&doc).expect("config serialises")
    }

    /// The config and manifest documents in the given flavour.
    pub fn docs(&self, flavour: ManifestFlavour) -> ImageDocs {
        use media_type::*;
        let (manifest_type, config_type, gzip_layer) = match flavour {
            ManifestFlavour::Oci => (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP),
            ManifestFlavour::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP),
        };
        let layer_type = |c: crate::packing::Compression| match c {
            crate::packing::Compression::Gzip => gzip_layer,
            crate::packing::Compression::Zstd => OCI_LAYER_ZSTD,
        };
        let config = self.config_json();
        let config_digest = Digest::of(&config);
        let doc = ManifestDoc {
            schema_version: 2,
            media_type: manifest_type,
            config: Descriptor::new(config_type, config_digest.clone(), config.len() as u64),
            layers: self
                .layers
                .iter()
                .map(|l| Descriptor::new(layer_type(l.packed.compression), l.packed.digest.clone(), l.packed.size))
                .collect(),
        };
        let manifest = serde_json::to_vec(&doc).expect("manifest serialises");
        ImageDocs { manifest_digest: Digest::of(&manifest), manifest, config, config_digest, manifest_media_type: manifest_type }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};

    fn layer(n: u8) -> ImageLayer {
        ImageLayer {
            packed: PackedLayer {
                digest: Digest::of(&[n]),
                diff_id: Digest::of(&[n, n]),
                size: 10 + n as u64,
                tar_size: 1024,
                compression: Default::default(),
            },
            comment: format!("layer {n}"),
        }
    }

    fn image() -> Image {
        Image {
            platform: Platform::from_nix_system("x86_64-linux").unwrap(),
            created: DEFAULT_CREATED.into(),
            config: RuntimeConfig::from_json_value(serde_json::json!({"Cmd": ["hello"], "ExposedPorts": ["80/tcp"]}))
                .unwrap()
                .with_default_path(),
            layers: vec![layer(1), layer(2)],
        }
    }

    #[test]
    fn config_and_manifest_documents() {
        let docs = image().docs(ManifestFlavour::Oci);
        let config: serde_json::Value = serde_json::from_slice(&docs.config).unwrap();
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["created"], DEFAULT_CREATED);
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["hello"]));
        assert_eq!(config["config"]["ExposedPorts"], serde_json::json!({"80/tcp": {}}));
        assert_eq!(config["config"]["Env"][0], DEFAULT_PATH);
        assert_eq!(config["rootfs"]["diff_ids"][1], Digest::of(&[2, 2]).as_str());
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
        let manifest: serde_json::Value = serde_json::from_slice(&docs.manifest).unwrap();
        assert_eq!(manifest["mediaType"], media_type::OCI_MANIFEST);
        assert_eq!(manifest["config"]["digest"], Digest::of(&docs.config).as_str());
        assert_eq!(manifest["layers"][0]["size"], 11);
        assert_eq!(docs.manifest_digest, Digest::of(&docs.manifest));
        let docker = image().docs(ManifestFlavour::Docker);
        assert_eq!(docker.config_digest, docs.config_digest);
        assert_ne!(docker.manifest_digest, docs.manifest_digest);
    }

    #[test]
    fn user_config_errors_name_the_problem() {
        let e = RuntimeConfig::from_json_value(serde_json::json!({"Cmnd": ["x"]})).unwrap_err().to_string();
        assert!(e.contains("Cmnd"), "{e}");
        let e = RuntimeConfig::from_json_value(serde_json::json!({"Env": ["NOEQUALS"]})).unwrap_err().to_string();
        assert!(e.contains("NOEQUALS"), "{e}");
        let c = RuntimeConfig::from_json_value(serde_json::json!({"Env": ["PATH=/bin"], "Volumes": {"/data": {}}})).unwrap();
        assert_eq!(c.clone().with_default_path().env, vec!["PATH=/bin"]);
        assert!(c.volumes.unwrap().0.contains("/data"));
    }

    #[test]
    fn platforms() {
        let p = Platform::from_nix_system("aarch64-linux").unwrap();
        assert_eq!((p.architecture.as_str(), p.variant.as_deref()), ("arm64", Some("v8")));
        assert!(Platform::from_nix_system("bogus").is_err());
    }

    #[test]
    fn layout_round_trip_and_docker_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let blobs = tmp.path().join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        let mut img = image();
        for l in &mut img.layers {
            let bytes = l.comment.as_bytes().to_vec();
            l.packed.digest = Digest::of(&bytes);
            l.packed.size = bytes.len() as u64;
            fs::write(blobs.join(l.packed.digest.hex()), &bytes).unwrap();
        }
        let docs = write_oci_layout(&img, "hello", "v1", tmp.path()).unwrap();
        let back = read_oci_layout(tmp.path()).unwrap();
        assert_eq!(back.ref_name.as_deref(), Some("v1"));
        assert_eq!(back.config_digest, docs.config_digest);
        assert_eq!(back.layers.len(), 2);
        let a = tmp.path().join("a.tar");
        let b = tmp.path().join("b.tar");
        write_docker_archive(&back, "hello:v1", &a).unwrap();
        write_docker_archive(&back, "hello:v1", &b).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let mut ar = tar::Archive::new(File::open(&a).unwrap());
        let names: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"manifest.json".to_string()));
        assert!(names.contains(&format!("{}.json", docs.config_digest.hex())));
    }
}
