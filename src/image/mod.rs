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

pub mod base;
pub mod docker_archive;
pub mod layout;
pub mod oci;
pub mod stream;

pub use docker_archive::{write_docker_archive, write_docker_archive_to};
pub use layout::{read_oci_layout, write_index_layout, write_oci_layout, LayoutImage, OciLayout};
pub use oci::Descriptor;

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
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Docker uncompressed layer.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker manifest list (a multi-platform index).
    pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

    /// The OCI media type of a layer compressed so.
    pub fn oci_layer(c: crate::packing::Compression) -> &'static str {
        layer(super::ManifestFlavour::Oci, c)
    }

    /// The media type of a layer compressed so, in a manifest of
    /// `flavour` (zstd layers have OCI's type in both, as Docker 23+ reads
    /// them).
    pub fn layer(flavour: super::ManifestFlavour, c: crate::packing::Compression) -> &'static str {
        use super::ManifestFlavour::*;
        use crate::packing::Compression::*;
        match (flavour, c) {
            (Oci, Gzip) => OCI_LAYER_GZIP,
            (Oci, None) => OCI_LAYER_TAR,
            (Docker, Gzip) => DOCKER_LAYER_GZIP,
            (Docker, None) => DOCKER_LAYER_TAR,
            (_, Zstd) => OCI_LAYER_ZSTD,
        }
    }
}

/// The default creation time: one second after the epoch, as Nix uses.
pub const DEFAULT_CREATED: &str = "1970-01-01T00:00:01Z";
/// The `PATH` an image gets when its config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Errors building, writing or reading an image.
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
    /// A user's runtime config (`config` of buildNixeryImage) is not
    /// valid; the message names the key.
    #[error("invalid image config: {0}")]
    RuntimeConfig(String),
    /// A layout (an image read back, a base image, an image to push or
    /// load) is not what it must be.
    #[error("{dir}: {detail}")]
    Layout {
        /// The layout or archive.
        dir: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A base image (`fromImage`) cannot be built on.
    #[error("the base image (fromImage) {path}: {source}")]
    Base {
        /// What `fromImage` named.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<ImageError>,
    },
    /// A document is not the JSON it must be.
    #[error("the {what} is not valid: {source}")]
    Document {
        /// Which document.
        what: String,
        /// What is wrong.
        source: serde_json::Error,
    },
    /// A versioned document of another version.
    #[error("the {what} has schemaVersion {found}, not {expected}")]
    Version {
        /// Which document.
        what: String,
        /// Its version.
        found: u32,
        /// The version nixery reads.
        expected: u32,
    },
    /// A file that should be a document or a blob is a device, a FIFO or
    /// a folder (it is not opened).
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    /// A document larger than any image's.
    #[error("{path} has {size} bytes, more than a document of an image may have ({max})")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The most a document may have.
        max: u64,
    },
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
    /// The Nix system of an `os/architecture[/variant]` platform name
    /// (`linux/amd64` → `x86_64-linux`), as `NIXERY_PLATFORMS` lists them.
    pub fn nix_system_of(name: &str) -> Result<String, ImageError> {
        let mut parts = name.split('/');
        let (Some(os), Some(arch)) = (parts.next(), parts.next()) else { return Err(ImageError::System(name.to_string())) };
        let cpu = match arch {
            "amd64" => "x86_64",
            "arm64" => "aarch64",
            "386" => "i686",
            "riscv64" => "riscv64",
            "ppc64le" => "powerpc64le",
            "s390x" => "s390x",
            "arm" => match parts.next() {
                Some("v6") => "armv6l",
                _ => "armv7l",
            },
            _ => return Err(ImageError::System(name.to_string())),
        };
        let system = format!("{cpu}-{os}");
        Platform::from_nix_system(&system)?;
        Ok(system)
    }

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

/// The keys of the runtime config a user may set.
pub const CONFIG_KEYS: &[&str] = &["User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir", "Labels", "StopSignal"];

/// The runtime configuration (the OCI config's `config`): what a user sets,
/// and what a base image brings (its other keys, such as `Healthcheck`,
/// are kept in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Keys of a base image's config that users cannot set here
    /// (`Healthcheck`, `Shell`, …), kept as they were.
    #[serde(flatten, default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl RuntimeConfig {
    /// Parses a user's config, naming the offending key on error.
    pub fn from_json_value(v: serde_json::Value) -> Result<RuntimeConfig, ImageError> {
        if v.is_null() {
            return Ok(RuntimeConfig::default());
        }
        if let Some(unknown) = v.as_object().and_then(|o| o.keys().find(|k| !CONFIG_KEYS.contains(&k.as_str()))) {
            let expected: Vec<String> = CONFIG_KEYS.iter().map(|k| format!("`{k}`")).collect();
            return Err(ImageError::RuntimeConfig(format!("unknown field `{unknown}`, expected one of {}", expected.join(", "))));
        }
        let c: RuntimeConfig = serde_json::from_value(v).map_err(|e| ImageError::RuntimeConfig(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Parses the runtime config of an image from elsewhere (a base
    /// image): every key is taken, unknown ones into `extra`.
    pub fn from_image_json(v: serde_json::Value) -> Result<RuntimeConfig, ImageError> {
        if v.is_null() {
            return Ok(RuntimeConfig::default());
        }
        serde_json::from_value(v).map_err(|source| ImageError::Document { what: "runtime config".into(), source })
    }

    /// This config with `base`'s as its defaults, as a Dockerfile's `FROM`
    /// inherits: `Env` entries are merged by name (this one's win, new ones
    /// are appended), `Labels` merged, `ExposedPorts` and `Volumes` joined;
    /// any other key this config sets replaces the base's, except that
    /// setting `Entrypoint` alone clears the base's `Cmd`, as Docker does.
    pub fn over(self, base: &RuntimeConfig) -> RuntimeConfig {
        let mut env = base.env.clone();
        for e in self.env {
            let name = e.split('=').next().unwrap_or("").to_string();
            match env.iter_mut().find(|b| b.split('=').next() == Some(name.as_str())) {
                Some(slot) => *slot = e,
                None => env.push(e),
            }
        }
        let join = |a: &Option<StringSet>, b: Option<StringSet>| match (a, b) {
            (None, b) => b,
            (Some(a), None) => Some(a.clone()),
            (Some(a), Some(b)) => Some(StringSet(a.0.union(&b.0).cloned().collect())),
        };
        let labels = match (&base.labels, self.labels) {
            (None, l) => l,
            (Some(b), None) => Some(b.clone()),
            (Some(b), Some(l)) => Some(b.clone().into_iter().chain(l).collect()),
        };
        let cmd = match (&self.entrypoint, self.cmd) {
            (_, Some(c)) => Some(c),
            (Some(_), None) => None,
            (None, None) => base.cmd.clone(),
        };
        let mut extra = base.extra.clone();
        extra.extend(self.extra);
        RuntimeConfig {
            user: self.user.or_else(|| base.user.clone()),
            exposed_ports: join(&base.exposed_ports, self.exposed_ports),
            env,
            entrypoint: self.entrypoint.or_else(|| base.entrypoint.clone()),
            cmd,
            volumes: join(&base.volumes, self.volumes),
            working_dir: self.working_dir.or_else(|| base.working_dir.clone()),
            labels,
            stop_signal: self.stop_signal.or_else(|| base.stop_signal.clone()),
            extra,
        }
    }

    fn validate(&self) -> Result<(), ImageError> {
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=')) {
            return Err(ImageError::RuntimeConfig(format!("Env entry {bad:?} is not of the form NAME=value")));
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
#[serde(untagged)]
enum History<'a> {
    Ours {
        created: &'a str,
        created_by: &'a str,
        comment: String,
    },
    /// A base image's entry, as it was.
    Base(&'a serde_json::Value),
}

/// A layer of an image, with a note for its history entry.
#[derive(Debug, Clone)]
pub struct ImageLayer {
    /// The blob.
    pub packed: PackedLayer,
    /// What the layer holds, for the config's history (`store paths: …`).
    pub comment: String,
    /// A base image's layer, whose history entry is among
    /// [`Image::base_history`].
    pub from_base: bool,
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
    /// A base image's history entries, kept as they were, before this
    /// image's own (one per layer not from the base).
    pub base_history: Vec<serde_json::Value>,
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
                .base_history
                .iter()
                .map(History::Base)
                .chain(self.layers.iter().filter(|l| !l.from_base).map(|l| History::Ours {
                    created: &self.created,
                    created_by: "nixery",
                    comment: l.comment.clone(),
                }))
                .collect(),
        };
        serde_json::to_vec(&doc).expect("config serialises")
    }

    /// The config and manifest documents in the given flavour.
    pub fn docs(&self, flavour: ManifestFlavour) -> ImageDocs {
        use media_type::*;
        let (manifest_type, config_type) = match flavour {
            ManifestFlavour::Oci => (OCI_MANIFEST, OCI_CONFIG),
            ManifestFlavour::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let config = self.config_json();
        let config_digest = Digest::of(&config);
        let doc = oci::ImageManifest::new(
            manifest_type,
            Descriptor::new(config_type, config_digest.clone(), config.len() as u64),
            self.layers.iter().map(|l| Descriptor::new(layer(flavour, l.packed.compression), l.packed.digest.clone(), l.packed.size)).collect(),
        );
        let manifest = doc.to_bytes();
        ImageDocs { manifest_digest: Digest::of(&manifest), manifest, config, config_digest, manifest_media_type: manifest_type }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::os::unix::fs::PermissionsExt;

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
            from_base: false,
        }
    }

    fn image() -> Image {
        Image {
            platform: Platform::from_nix_system("x86_64-linux").unwrap(),
            created: DEFAULT_CREATED.into(),
            config: RuntimeConfig::from_json_value(serde_json::json!({"Cmd": ["hello"], "ExposedPorts": ["80/tcp"]})).unwrap().with_default_path(),
            layers: vec![layer(1), layer(2)],
            base_history: Vec::new(),
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
    fn a_config_over_a_base_inherits_as_from_does() {
        let base = RuntimeConfig::from_image_json(serde_json::json!({
            "Env": ["PATH=/base/bin", "LANG=C"], "Cmd": ["sh"], "User": "base", "Labels": {"a": "1", "b": "2"},
            "ExposedPorts": {"80/tcp": {}}, "Healthcheck": {"Test": ["CMD", "true"]}
        }))
        .unwrap();
        assert!(base.extra.contains_key("Healthcheck"), "keys users cannot set are kept");
        let ours =
            RuntimeConfig::from_json_value(serde_json::json!({"Env": ["LANG=C.UTF-8", "FOO=1"], "Labels": {"b": "3"}, "ExposedPorts": ["443/tcp"]})).unwrap();
        let c = ours.over(&base);
        assert_eq!(c.env, vec!["PATH=/base/bin", "LANG=C.UTF-8", "FOO=1"]);
        assert_eq!(c.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(c.user.as_deref(), Some("base"));
        assert_eq!(c.labels.unwrap(), [("a".to_string(), "1".to_string()), ("b".to_string(), "3".to_string())].into_iter().collect());
        assert_eq!(c.exposed_ports.unwrap().0.len(), 2);
        assert!(c.extra.contains_key("Healthcheck"));
        // An entrypoint alone clears the base's Cmd, as in a Dockerfile.
        let ep = RuntimeConfig::from_json_value(serde_json::json!({"Entrypoint": ["/bin/app"]})).unwrap().over(&base);
        assert_eq!((ep.entrypoint, ep.cmd), (Some(vec!["/bin/app".to_string()]), None));
        // Users cannot set keys outside the documented set.
        let e = RuntimeConfig::from_json_value(serde_json::json!({"Healthcheck": {}})).unwrap_err().to_string();
        assert!(e.contains("unknown field `Healthcheck`"), "{e}");
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

        // The layout reader picks entries by tag, and refuses a blob whose
        // bytes are not its digest's.
        let layout = OciLayout::open(tmp.path()).unwrap();
        assert_eq!(layout.tagged(Some("v1")).len(), 1);
        assert!(layout.tagged(Some("v2")).is_empty());
        assert_eq!(layout.tags(), "v1");
        let config = blobs.join(docs.config_digest.hex());
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&config, b"{}").unwrap();
        let err = read_oci_layout(tmp.path()).unwrap_err().to_string();
        assert!(err.contains("does not hold the bytes it is named by"), "{err}");
    }
}
