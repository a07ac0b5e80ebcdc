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
//!
//! Its documents are [`super::oci`]'s types; [`OciLayout`] is the one
//! reader of layouts (images read back, base images, what `nixery push`
//! and `nixery load` send) and [`super::oci::write_layout_index`] the one
//! writer of `index.json`.

use std::fs;
use std::path::{Path, PathBuf};

use super::oci::{self, Descriptor, ImageIndex, ImageManifest};
use super::{io_err, media_type, Image, ImageDocs, ImageError, ManifestFlavour};
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
        return Err(ImageError::NotRegular(path.to_path_buf()));
    }
    if meta.len() > MAX_DOCUMENT {
        return Err(ImageError::TooLarge { path: path.to_path_buf(), size: meta.len(), max: MAX_DOCUMENT });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    use std::io::Read;
    fs::File::open(path).and_then(|f| f.take(MAX_DOCUMENT + 1).read_to_end(&mut bytes)).map_err(io_err(path))?;
    Ok(bytes)
}

/// Writes `bytes` as a blob of the layout at `root`.
fn write_blob(root: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), ImageError> {
    let path = oci::blob_path(root, digest);
    fs::write(&path, bytes).map_err(io_err(path))
}

/// Writes the OCI layout files of `image` into `out`, whose
/// `blobs/sha256/` must already hold the layer blobs. `name` and `tag`
/// name the manifest in `index.json`.
pub fn write_oci_layout(image: &Image, name: &str, tag: &str, out: &Path) -> Result<ImageDocs, ImageError> {
    let blobs = oci::blobs_dir(out);
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let docs = image.docs(ManifestFlavour::Oci);
    write_blob(out, &docs.config_digest, &docs.config)?;
    write_blob(out, &docs.manifest_digest, &docs.manifest)?;
    let mut desc = Descriptor::new(media_type::OCI_MANIFEST, docs.manifest_digest.clone(), docs.manifest.len() as u64);
    desc.platform = Some(image.platform.clone());
    oci::write_layout_index(out, vec![desc.tagged(Some(name), tag)])?;
    Ok(docs)
}

/// Lists `artifacts` (referrers of the layout's image: its SBOMs and
/// provenance) in the layout at `out`, after its image, and writes their
/// blobs: `oras discover --oci-layout DIR:TAG` finds them, `nixery push`
/// pushes them. Readers that take an image by tag (`oci:DIR:TAG`, nixery)
/// are not affected; one that takes the layout's only image (`oci:DIR`
/// without a tag) then sees several entries and asks for the tag.
pub fn add_referrers(out: &Path, artifacts: &[crate::supply_chain::Artifact]) -> Result<(), ImageError> {
    if artifacts.is_empty() {
        return Ok(());
    }
    let mut entries = OciLayout::open(out)?.entries;
    for a in artifacts {
        for b in &a.blobs {
            write_blob(out, &b.digest, &b.bytes)?;
        }
        write_blob(out, &a.digest, &a.manifest)?;
        let mut d = Descriptor::new(&a.media_type, a.digest.clone(), a.manifest.len() as u64);
        d.artifact_type = a.artifact_type.clone();
        entries.push(d);
    }
    oci::write_layout_index(out, entries)
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
/// manifests or indexes, each perhaps tagged), and its documents, read
/// with their digests and schema versions checked.
#[derive(Debug, Clone)]
pub struct OciLayout {
    /// The layout directory.
    pub dir: PathBuf,
    /// The entries of `index.json`.
    pub entries: Vec<Descriptor>,
}

impl OciLayout {
    /// Reads `dir/index.json`.
    pub fn open(dir: &Path) -> Result<OciLayout, ImageError> {
        let index = ImageIndex::from_slice(&read_document(&dir.join("index.json"))?)?;
        Ok(OciLayout { dir: dir.to_path_buf(), entries: index.manifests })
    }

    /// The entries that are images (or indexes), not referrers.
    pub fn images(&self) -> impl Iterator<Item = &Descriptor> {
        self.entries.iter().filter(|d| d.artifact_type.is_none())
    }

    /// The entries that are referrers (SBOMs, provenance): artifact
    /// manifests about an image of the layout.
    pub fn referrers(&self) -> impl Iterator<Item = &Descriptor> {
        self.entries.iter().filter(|d| d.artifact_type.is_some())
    }

    /// The tags of the images, for messages.
    pub fn tags(&self) -> String {
        self.images().filter_map(Descriptor::tag).collect::<Vec<_>>().join(", ")
    }

    /// The images tagged `tag`; all of them without one.
    pub fn tagged(&self, tag: Option<&str>) -> Vec<&Descriptor> {
        self.images().filter(|d| tag.is_none() || d.tag() == tag).collect()
    }

    /// Where a blob is.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        oci::blob_path(&self.dir, digest)
    }

    /// A document's bytes (a manifest, an index, a config), refused when
    /// they are not the digest's.
    pub fn read_document(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let bytes = read_document(&self.blob_path(digest))?;
        if Digest::of(&bytes) != *digest {
            return Err(self.error(format!("the blob {digest} does not hold the bytes it is named by")));
        }
        Ok(bytes)
    }

    /// An image manifest.
    pub fn manifest(&self, digest: &Digest) -> Result<ImageManifest, ImageError> {
        ImageManifest::from_slice(&self.read_document(digest)?)
    }

    /// An image index.
    pub fn index(&self, digest: &Digest) -> Result<ImageIndex, ImageError> {
        ImageIndex::from_slice(&self.read_document(digest)?)
    }

    /// A config, as JSON.
    pub fn config(&self, digest: &Digest) -> Result<serde_json::Value, ImageError> {
        serde_json::from_slice(&self.read_document(digest)?).map_err(|source| ImageError::Document { what: format!("config {digest}"), source })
    }

    /// What is wrong with this layout.
    pub fn error(&self, detail: impl Into<String>) -> ImageError {
        ImageError::Layout { dir: self.dir.clone(), detail: detail.into() }
    }
}

/// Reads the first image of an OCI layout written by [`write_oci_layout`].
pub fn read_oci_layout(dir: &Path) -> Result<LayoutImage, ImageError> {
    let layout = OciLayout::open(dir)?;
    let desc = layout.images().next().ok_or_else(|| layout.error("index.json names no manifest"))?;
    let manifest = layout.manifest(&desc.digest)?;
    let config = layout.read_document(&manifest.config.digest)?;
    Ok(LayoutImage { dir: dir.to_path_buf(), config, config_digest: manifest.config.digest, layers: manifest.layers, ref_name: desc.tag().map(str::to_string) })
}

/// Writes an OCI layout at `out` whose one entry, tagged `tag`, is an
/// image index of the images of the layouts `images` (one per platform,
/// as `buildNixeryIndex` gives them): `skopeo copy --all` and `nixery
/// push` push it as one name, and each client pulls its platform. Blobs
/// are symlinks to the images' own; stream images' recipes are merged.
pub fn write_index_layout(images: &[PathBuf], name: &str, tag: &str, out: &Path) -> Result<Digest, ImageError> {
    let blobs = oci::blobs_dir(out);
    fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let mut entries: Vec<Descriptor> = Vec::new();
    let mut recipes: Option<crate::image::stream::StreamDoc> = None;
    let mut referrers: Vec<Descriptor> = Vec::new();
    for dir in images {
        let layout = OciLayout::open(dir)?;
        let images: Vec<&Descriptor> = layout.images().collect();
        let [desc] = images.as_slice() else { return Err(layout.error("not a layout of one image")) };
        if desc.media_type != media_type::OCI_MANIFEST {
            return Err(layout.error(format!("an index takes images, not {}", desc.media_type)));
        }
        let platform = desc.platform.clone().ok_or_else(|| layout.error("the image names no platform"))?;
        if entries.iter().any(|e| e.platform.as_ref() == Some(&platform)) {
            return Err(layout.error(format!("a second image for {}/{}", platform.os, platform.architecture)));
        }
        let their_blobs = oci::blobs_dir(dir);
        for e in fs::read_dir(&their_blobs).map_err(io_err(&their_blobs))? {
            let e = e.map_err(io_err(&their_blobs))?;
            let link = blobs.join(e.file_name());
            if fs::symlink_metadata(&link).is_err() {
                let target = fs::canonicalize(e.path()).map_err(io_err(e.path()))?;
                std::os::unix::fs::symlink(&target, &link).map_err(io_err(&link))?;
            }
        }
        if let Ok(bytes) = fs::read(dir.join(crate::image::stream::STREAM_FILE)) {
            let doc = crate::image::stream::StreamDoc::from_slice(&bytes).map_err(|e| layout.error(e))?;
            match &mut recipes {
                None => recipes = Some(doc),
                Some(r) if r.compression == doc.compression && r.level == doc.level => r.layers.extend(doc.layers),
                Some(_) => return Err(layout.error("stream images of an index must share their compression")),
            }
        }
        let mut entry = Descriptor::new(&desc.media_type, desc.digest.clone(), desc.size);
        entry.platform = Some(platform);
        entries.push(entry);
        // Each image's referrers stay listed, about that image.
        referrers.extend(layout.referrers().cloned());
    }
    if entries.is_empty() {
        return Err(ImageError::Layout { dir: out.to_path_buf(), detail: "an index needs at least one image".into() });
    }
    let index = ImageIndex::new(media_type::OCI_INDEX, entries).to_bytes();
    let digest = Digest::of(&index);
    write_blob(out, &digest, &index)?;
    let desc = Descriptor::new(media_type::OCI_INDEX, digest.clone(), index.len() as u64);
    oci::write_layout_index(out, std::iter::once(desc.tagged(Some(name), tag)).chain(referrers).collect())?;
    if let Some(r) = recipes {
        let path = out.join(crate::image::stream::STREAM_FILE);
        fs::write(&path, serde_json::to_vec_pretty(&r).expect("json")).map_err(io_err(path))?;
    }
    Ok(digest)
}
