//! The OCI image layout: an image as a directory (what `buildNixeryImage`
//! writes by default, and what `skopeo copy oci:DIR:TAG` and
//! `podman load` read).
//!
//! ```text
//! $out/
//! ├── oci-layout                {"imageLayoutVersion":"1.0.0"}
//! ├── index.json                names the manifest with the tag
//! └── blobs/sha256/
//!     ├── <manifest digest>     the image manifest
//!     ├── <config digest>       the image config
//!     └── <layer digest>…       the layers
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use super::{io_err, media_type, Descriptor, Image, ImageDocs, ImageError, ManifestFlavour};
use crate::digest::Digest;

/// Writes `bytes` to `dir/<hex digest>`.
fn write_blob(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
    let path = dir.join(digest.hex());
    fs::write(&path, bytes).map_err(io_err(path))
}

/// Writes the OCI layout files of `image` into `out`, whose
/// `blobs/sha256/` must already hold the layer blobs. `name` and `tag`
/// name the manifest in `index.json`.
pub fn write_oci_layout(image: &Image, name: &str, tag: &str, out: &Path) -> Result<ImageDocs, ImageError> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let docs = image.docs(ManifestFlavour::Oci);
    write_blob(&blobs, &docs.config_digest, &docs.config)?;
    write_blob(&blobs, &docs.manifest_digest, &docs.manifest)?;
    let mut desc = Descriptor::new(media_type::OCI_MANIFEST, docs.manifest_digest.clone(), docs.manifest.len() as u64);
    desc.platform = Some(image.platform.clone());
    desc.annotations.insert("org.opencontainers.image.ref.name".into(), tag.to_string());
    desc.annotations.insert("io.containerd.image.name".into(), format!("{name}:{tag}"));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": [desc],
    });
    let index_path = out.join("index.json");
    fs::write(&index_path, serde_json::to_vec(&index).expect("index serialises")).map_err(io_err(index_path))?;
    let layout = out.join("oci-layout");
    fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(layout))?;
    Ok(docs)
}

/// An image read back from an OCI layout directory.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// The layout directory.
    pub dir: PathBuf,
    /// The config's bytes.
    pub config: Vec<u8>,
    /// Their digest.
    pub config_digest: Digest,
    /// The layers' descriptors, bottom first.
    pub layers: Vec<Descriptor>,
    /// The tag (`org.opencontainers.image.ref.name`), if any.
    pub ref_name: Option<String>,
}

/// Reads the single image of an OCI layout written by [`write_oci_layout`].
pub fn read_oci_layout(dir: &Path) -> Result<LayoutImage, ImageError> {
    let bad = |m: &str| ImageError::Config(format!("{}: {m}", dir.display()));
    let read = |p: PathBuf| fs::read(&p).map_err(io_err(p));
    let index: serde_json::Value =
        serde_json::from_slice(&read(dir.join("index.json"))?).map_err(|e| bad(&format!("index.json: {e}")))?;
    let desc: Descriptor = serde_json::from_value(index["manifests"][0].clone()).map_err(|_| bad("index.json names no manifest"))?;
    let ref_name = desc.annotations.get("org.opencontainers.image.ref.name").cloned();
    let manifest: serde_json::Value =
        serde_json::from_slice(&read(dir.join("blobs/sha256").join(desc.digest.hex()))?).map_err(|e| bad(&format!("manifest: {e}")))?;
    let config_desc: Descriptor = serde_json::from_value(manifest["config"].clone()).map_err(|_| bad("manifest has no config"))?;
    let layers: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone()).map_err(|_| bad("manifest has no layers"))?;
    let config = read(dir.join("blobs/sha256").join(config_desc.digest.hex()))?;
    Ok(LayoutImage { dir: dir.to_path_buf(), config, config_digest: config_desc.digest, layers, ref_name })
}

