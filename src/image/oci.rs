//! The OCI documents nixery writes and reads, typed: descriptors, image
//! manifests, image indexes (and Docker's manifest list, which has an
//! index's shape), the annotations nixery sets, and where a layout keeps a
//! blob. Each has one writer here: their bytes (field order, nothing
//! extra) are what the golden digests of `packing::tests` pin. Own types
//! rather than oci-spec's: those serialise fields nixery never writes
//! (`annotations: {}`, `artifactType`), which would change every digest.
//!
//! Every document read is checked for the `schemaVersion` it must have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io_err, media_type, ImageError, Platform};
use crate::digest::Digest;

/// Annotations nixery sets.
pub mod annotation {
    /// The tag of an entry of a layout's `index.json`.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// The `name:tag` of an entry, as containerd and podman read it.
    pub const IMAGE_NAME: &str = "io.containerd.image.name";
}

/// The `schemaVersion` of every manifest and index.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// What an artifact manifest is (a referrer's type: an SBOM, the
    /// provenance); none for an image.
    #[serde(rename = "artifactType", default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (`org.opencontainers.image.ref.name`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// A descriptor with no platform and no annotations.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.to_string(), digest, size, artifact_type: None, platform: None, annotations: BTreeMap::new() }
    }

    /// The descriptor of `bytes`.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor::new(media_type, Digest::of(bytes), bytes.len() as u64)
    }

    /// This descriptor, tagged for a layout's `index.json`: `tag`, and
    /// `name:tag` for containerd and podman.
    pub fn tagged(mut self, name: Option<&str>, tag: &str) -> Descriptor {
        self.annotations.insert(annotation::REF_NAME.into(), tag.to_string());
        if let Some(name) = name {
            self.annotations.insert(annotation::IMAGE_NAME.into(), format!("{name}:{tag}"));
        }
        self
    }

    /// The tag of an entry of a layout's `index.json`, if it has one.
    pub fn tag(&self) -> Option<&str> {
        self.annotations.get(annotation::REF_NAME).map(String::as_str)
    }
}

/// Reads a versioned document, refusing another `schemaVersion`.
fn read_versioned<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str, version: impl Fn(&T) -> u32) -> Result<T, ImageError> {
    let doc: T = serde_json::from_slice(bytes).map_err(|source| ImageError::Document { what: what.to_string(), source })?;
    match version(&doc) {
        SCHEMA_VERSION => Ok(doc),
        other => Err(ImageError::Version { what: what.to_string(), found: other, expected: SCHEMA_VERSION }),
    }
}

/// An image manifest (OCI's, or Docker's schema 2: the same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// [`SCHEMA_VERSION`].
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`media_type::OCI_MANIFEST`] or [`media_type::DOCKER_MANIFEST`].
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The config.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// A manifest of `media_type` with `config` and `layers`.
    pub fn new(media_type: &str, config: Descriptor, layers: Vec<Descriptor>) -> ImageManifest {
        ImageManifest { schema_version: SCHEMA_VERSION, media_type: media_type.to_string(), config, layers }
    }

    /// Its bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest serialises")
    }

    /// Reads one, checking its schema version.
    pub fn from_slice(bytes: &[u8]) -> Result<ImageManifest, ImageError> {
        read_versioned(bytes, "image manifest", |m: &ImageManifest| m.schema_version)
    }
}

/// An image index (OCI's, or Docker's manifest list: the same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    /// [`SCHEMA_VERSION`].
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// [`media_type::OCI_INDEX`] or [`media_type::DOCKER_MANIFEST_LIST`].
    #[serde(rename = "mediaType", default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The manifests (or indexes) it lists.
    pub manifests: Vec<Descriptor>,
}

impl ImageIndex {
    /// An index of `media_type` listing `manifests`.
    pub fn new(media_type: &str, manifests: Vec<Descriptor>) -> ImageIndex {
        ImageIndex { schema_version: SCHEMA_VERSION, media_type: media_type.to_string(), manifests }
    }

    /// Its bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an index serialises")
    }

    /// Reads one, checking its schema version.
    pub fn from_slice(bytes: &[u8]) -> Result<ImageIndex, ImageError> {
        read_versioned(bytes, "image index", |i: &ImageIndex| i.schema_version)
    }
}

/// Where a layout rooted at `root` keeps the blob `digest`:
/// `root/blobs/sha256/<hex>`.
pub fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    blobs_dir(root).join(digest.hex())
}

/// The folder of a layout's blobs: `root/blobs/sha256`.
pub fn blobs_dir(root: &Path) -> PathBuf {
    root.join("blobs/sha256")
}

/// Writes a layout's `index.json` listing `entries`, and its `oci-layout`
/// marker: the one writer of both, for images, indexes and layouts that
/// are added to.
pub fn write_layout_index(root: &Path, entries: Vec<Descriptor>) -> Result<(), ImageError> {
    let index = ImageIndex::new(media_type::OCI_INDEX, entries);
    let path = root.join("index.json");
    std::fs::write(&path, index.to_bytes()).map_err(io_err(path))?;
    let marker = root.join("oci-layout");
    std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_field_order_and_check_their_version() {
        let d = Descriptor::of(media_type::OCI_CONFIG, b"{}");
        let m = ImageManifest::new(media_type::OCI_MANIFEST, d.clone(), vec![]);
        let text = String::from_utf8(m.to_bytes()).unwrap();
        assert!(text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType""#), "{text}");
        assert_eq!(ImageManifest::from_slice(text.as_bytes()).unwrap(), m);
        let v3 = text.replace(r#""schemaVersion":2"#, r#""schemaVersion":3"#);
        assert!(matches!(ImageManifest::from_slice(v3.as_bytes()), Err(ImageError::Version { found: 3, .. })));
        let i = ImageIndex::new(media_type::OCI_INDEX, vec![d.tagged(Some("app"), "v1")]);
        let text = String::from_utf8(i.to_bytes()).unwrap();
        assert!(text.contains(r#""annotations":{"io.containerd.image.name":"app:v1","org.opencontainers.image.ref.name":"v1"}"#), "{text}");
        assert_eq!(ImageIndex::from_slice(text.as_bytes()).unwrap().manifests[0].tag(), Some("v1"));
    }
}
