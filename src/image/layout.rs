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

/// The largest JSON document (index, manifest, config) read from a
/// layout: registries refuse manifests past 4 MiB; a config with a long
/// history stays far below this.
pub const MAX_DOCUMENT: u64 = 16 << 20;

/// Reads a JSON document of a layout: a regular file (a link to a device
/// or a FIFO is refused before it is opened) of at most [`MAX_DOCUMENT`]
/// bytes.
pub fn read_document(path: &Path) -> Result<Vec<u8>, ImageError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(ImageError::Config(format!("{} is not a regular file", path.display())));
    }
    if meta.len() > MAX_DOCUMENT {
        return Err(ImageError::Config(format!("{} has {} bytes, more than a document of an image may have ({MAX_DOCUMENT})", path.display(), meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    use std::io::Read;
    fs::File::open(path).and_then(|f| f.take(MAX_DOCUMENT + 1).read_to_end(&mut bytes)).map_err(io_err(path))?;
    Ok(bytes)
}

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

/// An OCI layout on disk, opened: the entries of its `index.json` (image
/// manifests or indexes, each perhaps tagged), and its blobs, read with
/// their digests checked. The one reader of layouts: images read back,
/// base images, and what `nixery push` sends.
#[derive(Debug, Clone)]
pub struct OciLayout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The entries of `index.json`.
    pub entries: Vec<Descriptor>,
}

/// The annotation that tags an entry of `index.json`.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

impl OciLayout {
    /// Reads `dir/index.json`.
    pub fn open(dir: &Path) -> Result<OciLayout, ImageError> {
        let path = dir.join("index.json");
        let bytes = read_document(&path)?;
        let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| layout_error(dir, format!("index.json: {e}")))?;
        let entries = serde_json::from_value(index["manifests"].clone()).map_err(|e| layout_error(dir, format!("index.json: {e}")))?;
        Ok(OciLayout { dir: dir.to_path_buf(), entries })
    }

    /// The tag of an entry, if it has one.
    pub fn tag_of(entry: &Descriptor) -> Option<&str> {
        entry.annotations.get(REF_NAME).map(String::as_str)
    }

    /// The tags of the entries, for messages.
    pub fn tags(&self) -> String {
        self.entries.iter().filter_map(OciLayout::tag_of).collect::<Vec<_>>().join(", ")
    }

    /// The entries tagged `tag`; all of them without one.
    pub fn tagged(&self, tag: Option<&str>) -> Vec<&Descriptor> {
        self.entries.iter().filter(|d| tag.is_none() || OciLayout::tag_of(d) == tag).collect()
    }

    /// Where a blob is.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// A blob's bytes, refused when they are not the digest's.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest);
        let bytes = read_document(&path)?;
        if Digest::of(&bytes) != *digest {
            return Err(layout_error(&self.dir, format!("the blob {digest} does not hold the bytes it is named by")));
        }
        Ok(bytes)
    }

    /// A JSON blob (a manifest, an index, a config), its digest checked.
    pub fn read_json(&self, digest: &Digest) -> Result<serde_json::Value, ImageError> {
        serde_json::from_slice(&self.read_blob(digest)?).map_err(|e| layout_error(&self.dir, format!("{digest}: {e}")))
    }

    /// The config and layer descriptors of an image manifest.
    pub fn manifest_parts(&self, manifest: &serde_json::Value) -> Result<(Descriptor, Vec<Descriptor>), ImageError> {
        let config = serde_json::from_value(manifest["config"].clone()).map_err(|e| layout_error(&self.dir, format!("manifest config: {e}")))?;
        let layers = serde_json::from_value(manifest["layers"].clone()).map_err(|e| layout_error(&self.dir, format!("manifest layers: {e}")))?;
        Ok((config, layers))
    }
}

fn layout_error(dir: &Path, message: impl std::fmt::Display) -> ImageError {
    ImageError::Config(format!("{}: {message}", dir.display()))
}

/// Reads the first image of an OCI layout written by [`write_oci_layout`].
pub fn read_oci_layout(dir: &Path) -> Result<LayoutImage, ImageError> {
    let layout = OciLayout::open(dir)?;
    let desc = layout.entries.first().ok_or_else(|| layout_error(dir, "index.json names no manifest"))?;
    let ref_name = OciLayout::tag_of(desc).map(str::to_string);
    let (config_desc, layers) = layout.manifest_parts(&layout.read_json(&desc.digest)?)?;
    let config = layout.read_blob(&config_desc.digest)?;
    Ok(LayoutImage { dir: dir.to_path_buf(), config, config_digest: config_desc.digest, layers, ref_name })
}

/// Writes an OCI layout at `out` whose one entry, tagged `tag`, is an
/// image index of the images of the layouts `images` (one per platform,
/// as `buildNixeryIndex` gives them): `skopeo copy --all` and `nixery
/// push` push it as one name, and each client pulls its platform. Blobs
/// are symlinks to the images' own; stream images' recipes are merged.
pub fn write_index_layout(images: &[PathBuf], name: &str, tag: &str, out: &Path) -> Result<Digest, ImageError> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let mut entries: Vec<Descriptor> = Vec::new();
    let mut recipes: Option<crate::image::stream::StreamDoc> = None;
    for dir in images {
        let bad = |m: String| ImageError::Config(format!("{}: {m}", dir.display()));
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).map_err(io_err(dir.join("index.json")))?).map_err(|e| bad(e.to_string()))?;
        let descs: Vec<Descriptor> = serde_json::from_value(index["manifests"].clone()).map_err(|e| bad(e.to_string()))?;
        let [desc] = descs.as_slice() else { return Err(bad("not a layout of one image".into())) };
        if desc.media_type != media_type::OCI_MANIFEST {
            return Err(bad(format!("an index takes images, not {}", desc.media_type)));
        }
        let platform = desc.platform.clone().ok_or_else(|| bad("the image names no platform".into()))?;
        if entries.iter().any(|e| e.platform.as_ref() == Some(&platform)) {
            return Err(bad(format!("a second image for {}/{}", platform.os, platform.architecture)));
        }
        for e in fs::read_dir(dir.join("blobs/sha256")).map_err(io_err(dir.join("blobs/sha256")))? {
            let e = e.map_err(io_err(dir))?;
            let link = blobs.join(e.file_name());
            if fs::symlink_metadata(&link).is_err() {
                let target = fs::canonicalize(e.path()).map_err(io_err(e.path()))?;
                std::os::unix::fs::symlink(&target, &link).map_err(io_err(&link))?;
            }
        }
        if let Ok(bytes) = fs::read(dir.join(crate::image::stream::STREAM_FILE)) {
            let doc: crate::image::stream::StreamDoc = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
            match &mut recipes {
                None => recipes = Some(doc),
                Some(r) if r.compression == doc.compression && r.level == doc.level => r.layers.extend(doc.layers),
                Some(_) => return Err(bad("stream images of an index must share their compression".into())),
            }
        }
        let mut entry = Descriptor::new(&desc.media_type, desc.digest.clone(), desc.size);
        entry.platform = Some(platform);
        entries.push(entry);
    }
    if entries.is_empty() {
        return Err(ImageError::Config("an index needs at least one image".into()));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": entries,
    }))
    .expect("index serialises");
    let digest = Digest::of(&index);
    write_blob(&blobs, &digest, &index)?;
    let mut desc = Descriptor::new(media_type::OCI_INDEX, digest.clone(), index.len() as u64);
    desc.annotations.insert("org.opencontainers.image.ref.name".into(), tag.to_string());
    desc.annotations.insert("io.containerd.image.name".into(), format!("{name}:{tag}"));
    let top = serde_json::json!({ "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [desc] });
    let index_path = out.join("index.json");
    fs::write(&index_path, serde_json::to_vec(&top).expect("index serialises")).map_err(io_err(index_path))?;
    let layout = out.join("oci-layout");
    fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err(layout))?;
    if let Some(r) = recipes {
        let path = out.join(crate::image::stream::STREAM_FILE);
        fs::write(&path, serde_json::to_vec_pretty(&r).expect("json")).map_err(io_err(path))?;
    }
    Ok(digest)
}
