//! Base images (`fromImage`): reading an image made elsewhere, so that its
//! layers come first in a new image, unchanged, and its config is the
//! new one's default.
//!
//! Accepted, by what is found at the path:
//!
//! - an OCI image layout directory (what `buildNixeryImage` writes, or
//!   `skopeo copy … oci:DIR`);
//! - a tarball, gzip-compressed or not, holding either an OCI layout
//!   (`oci-archive`) or a docker-archive (`docker save`,
//!   `dockerTools.pullImage`, `skopeo copy … docker-archive:`).
//!
//! Tarballs are unpacked into a scratch directory first. When the layout
//! names several images, `tag` chooses (`org.opencontainers.image.ref.name`,
//! or a docker-archive's `RepoTags`), and an index of several platforms is
//! narrowed to the platform asked for.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{io_err, media_type, Descriptor, ImageError, Platform, RuntimeConfig};
use crate::digest::{Digest, HashingWriter};
use crate::packing::{Compression, PackedLayer};

/// A layer of a base image: its blob and what is known of it.
#[derive(Debug, Clone)]
pub struct BaseLayer {
    /// Digest, diff_id, size and compression (`tar_size` is 0: unknown).
    pub packed: PackedLayer,
    /// Where the blob is.
    pub blob: PathBuf,
}

/// An image to build on.
#[derive(Debug, Clone)]
pub struct BaseImage {
    /// Its layers, bottom first.
    pub layers: Vec<BaseLayer>,
    /// Its runtime config.
    pub config: RuntimeConfig,
    /// Its history entries, as they were.
    pub history: Vec<serde_json::Value>,
    /// Its platform.
    pub platform: Platform,
}

fn bad(path: &Path, message: impl std::fmt::Display) -> ImageError {
    ImageError::Layout { dir: path.to_path_buf(), detail: message.to_string() }
}

/// Reads the base image at `path` (see the module documentation).
/// `scratch` is a directory where tarballs are unpacked. What goes wrong
/// is said of the base image, once.
pub fn open(path: &Path, tag: Option<&str>, platform: &Platform, scratch: &Path) -> Result<BaseImage, ImageError> {
    open_unnamed(path, tag, platform, scratch).map_err(|e| ImageError::Base { path: path.to_path_buf(), source: Box::new(e) })
}

fn open_unnamed(path: &Path, tag: Option<&str>, platform: &Platform, scratch: &Path) -> Result<BaseImage, ImageError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    let dir = if meta.is_dir() {
        path.to_path_buf()
    } else {
        let dir = scratch.join(format!("base-image-{}", std::process::id()));
        if let Err(e) = unpack(path, &dir, unpack_limit(meta.len())) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        dir
    };
    if dir.join("index.json").is_file() {
        from_oci_layout(&dir, tag, platform)
    } else if dir.join("manifest.json").is_file() {
        from_docker_archive(&dir, tag)
    } else {
        Err(bad(path, "is neither an OCI image layout nor a docker-archive (no index.json, no manifest.json)"))
    }
}

/// The most bytes a base image tarball of `size` bytes may unpack to: its
/// layers are compressed already, so an honest tarball unpacks to about
/// its own size (a docker-archive's uncompressed layers, gzipped, to a few
/// times it); a gzip bomb unpacks to thousands of times.
pub fn unpack_limit(size: u64) -> u64 {
    size.saturating_mul(16).max(256 << 20)
}

/// A reader that fails once more than `left` bytes have been read, and
/// says so in `exceeded` (the tar reader's own error hides its cause).
struct Bounded<R> {
    inner: R,
    left: u64,
    exceeded: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            self.exceeded.set(true);
            io::Error::new(io::ErrorKind::InvalidData, "past the bound")
        })?;
        Ok(n)
    }
}

/// Unpacks the regular files and directories of a tarball (gzip or not),
/// reading at most `limit` bytes of tar.
fn unpack(tarball: &Path, dir: &Path, limit: u64) -> Result<(), ImageError> {
    let mut f = BufReader::new(File::open(tarball).map_err(io_err(tarball))?);
    let mut head = [0u8; 2];
    let n = f.read(&mut head).map_err(io_err(tarball))?;
    let f = io::Cursor::new(head[..n].to_vec()).chain(f);
    let reader: Box<dyn Read> = if Compression::sniff(&head[..n]) == Compression::Gzip { Box::new(flate2::read::MultiGzDecoder::new(f)) } else { Box::new(f) };
    let exceeded = std::rc::Rc::new(std::cell::Cell::new(false));
    let mut ar = tar::Archive::new(Bounded { inner: reader, left: limit, exceeded: exceeded.clone() });
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let bounded = |e: io::Error| {
        if exceeded.get() {
            bad(tarball, format!("it unpacks to more than {limit} bytes, 16 times its size: a gzip bomb, or not an image"))
        } else {
            io_err(tarball)(e)
        }
    };
    // What the tar reader cannot parse is no image (its own message
    // quotes the file's first bytes as a header field).
    let not_a_tarball = |e: io::Error| match e.kind() {
        io::ErrorKind::Other | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof if !exceeded.get() => {
            bad(tarball, "is not an image: neither an OCI image layout directory nor a tarball of one or of a docker-archive")
        }
        _ => bounded(e),
    };
    for entry in ar.entries().map_err(not_a_tarball)? {
        let mut entry = entry.map_err(not_a_tarball)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        // unpack_in refuses paths that would leave `dir`.
        entry.unpack_in(dir).map_err(bounded)?;
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value, ImageError> {
    let bytes = super::layout::read_document(path)?;
    serde_json::from_slice(&bytes).map_err(|source| ImageError::Document { what: path.display().to_string(), source })
}

/// The compression a layer media type says.
fn compression_of(media: &str) -> Option<Compression> {
    if media.ends_with("+gzip") || media.ends_with(".tar.gzip") {
        Some(Compression::Gzip)
    } else if media.ends_with("+zstd") || media.ends_with(".tar.zstd") {
        Some(Compression::Zstd)
    } else if media.ends_with(".tar") || media.ends_with("layer.v1.tar") {
        Some(Compression::None)
    } else {
        None
    }
}

fn from_oci_layout(dir: &Path, tag: Option<&str>, platform: &Platform) -> Result<BaseImage, ImageError> {
    let layout = super::OciLayout::open(dir)?;
    let mut chosen = layout.tagged(tag);
    if chosen.len() > 1 {
        let on_platform: Vec<&Descriptor> = chosen.iter().copied().filter(|d| d.platform.as_ref() == Some(platform)).collect();
        if !on_platform.is_empty() {
            chosen = on_platform;
        }
    }
    let desc = match chosen.as_slice() {
        [one] => (*one).clone(),
        [] => return Err(bad(dir, format!("has no image tagged {:?}", tag.unwrap_or("")))),
        _ => return Err(bad(dir, format!("holds several images; choose one with fromImageTag (tags: {})", layout.tags()))),
    };
    // An index of platforms: the one asked for.
    let manifest_digest = if desc.media_type == media_type::OCI_INDEX || desc.media_type == media_type::DOCKER_MANIFEST_LIST {
        let index = layout.index(&desc.digest)?;
        let entry = index
            .manifests
            .iter()
            .find(|d| d.platform.as_ref() == Some(platform))
            .ok_or_else(|| bad(dir, format!("has no image for {}/{}", platform.os, platform.architecture)))?;
        entry.digest.clone()
    } else {
        desc.digest.clone()
    };
    let manifest = layout.manifest(&manifest_digest)?;
    let config = layout.config(&manifest.config.digest)?;
    let layers = manifest.layers;
    let with_blobs = layers
        .iter()
        .map(|l| {
            let compression = compression_of(&l.media_type).ok_or_else(|| bad(dir, format!("layer media type {} is not a tar layer", l.media_type)))?;
            Ok((l.digest.clone(), l.size, compression, layout.blob_path(&l.digest)))
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    from_config(dir, config, with_blobs)
}

fn from_docker_archive(dir: &Path, tag: Option<&str>) -> Result<BaseImage, ImageError> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_value(read_json(&dir.join("manifest.json"))?).map_err(|e| bad(dir, format!("manifest.json: {e}")))?;
    let chosen: Vec<&Entry> = match tag {
        Some(t) => entries.iter().filter(|e| e.repo_tags.iter().flatten().any(|rt| rt.rsplit_once(':').map(|(_, x)| x) == Some(t))).collect(),
        None => entries.iter().collect(),
    };
    let entry = match chosen.as_slice() {
        [one] => *one,
        [] => return Err(bad(dir, format!("has no image tagged {:?}", tag.unwrap_or("")))),
        _ => return Err(bad(dir, "holds several images; choose one with fromImageTag")),
    };
    let inside = |name: &str| -> Result<PathBuf, ImageError> {
        let p = Path::new(name);
        if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(bad(dir, format!("names a file outside the archive: {name}")));
        }
        Ok(dir.join(p))
    };
    let config = read_json(&inside(&entry.config)?)?;
    let with_blobs = entry
        .layers
        .iter()
        .map(|name| {
            let blob = inside(name)?;
            let mut f = File::open(&blob).map_err(io_err(&blob))?;
            let mut head = [0u8; 4];
            let n = f.read(&mut head).map_err(io_err(&blob))?;
            let mut hashing = HashingWriter::new(io::sink());
            io::copy(&mut io::Cursor::new(&head[..n]).chain(f), &mut hashing).map_err(io_err(&blob))?;
            let (_, digest, size) = hashing.finish();
            Ok((digest, size, Compression::sniff(&head[..n]), blob))
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    from_config(dir, config, with_blobs)
}

/// The base image from its config and its layers' blobs (digest, size,
/// compression, file), checked against the config's `diff_ids`.
fn from_config(dir: &Path, config: serde_json::Value, blobs: Vec<(Digest, u64, Compression, PathBuf)>) -> Result<BaseImage, ImageError> {
    let diff_ids: Vec<Digest> = serde_json::from_value(config["rootfs"]["diff_ids"].clone()).map_err(|e| bad(dir, format!("config rootfs.diff_ids: {e}")))?;
    if diff_ids.len() != blobs.len() {
        return Err(bad(dir, format!("the config has {} diff_ids for {} layers", diff_ids.len(), blobs.len())));
    }
    let platform = Platform {
        architecture: config["architecture"].as_str().unwrap_or("amd64").to_string(),
        os: config["os"].as_str().unwrap_or("linux").to_string(),
        variant: config["variant"].as_str().map(str::to_string),
    };
    let layers = blobs
        .into_iter()
        .zip(diff_ids)
        .map(|((digest, size, compression, blob), diff_id)| {
            let blob = fs::canonicalize(&blob).map_err(io_err(&blob))?;
            Ok(BaseLayer { packed: PackedLayer { digest, diff_id, size, tar_size: 0, compression }, blob })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let history = config["history"].as_array().cloned().unwrap_or_default();
    Ok(BaseImage { layers, config: RuntimeConfig::from_image_json(config["config"].clone())?, history, platform })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{layout, DEFAULT_CREATED};
    use crate::packing::{self, FileData, LayerContent, Owner, PackOptions, TreeEntry};

    /// A two-layer image written as an OCI layout under `dir`.
    fn layout_fixture(dir: &Path, compression: Compression) -> crate::image::Image {
        let file = |p: &str, text: &str| TreeEntry::File { path: p.into(), mode: 0o644, owner: Owner::default(), data: FileData::bytes(text) };
        let opts = PackOptions::new(compression, None).unwrap();
        let blobs = dir.join("blobs/sha256");
        let layers = [file("etc/os-release", "ID=base\n"), file("bin/tool", "#!/bin/sh\n")]
            .into_iter()
            .map(|e| crate::image::ImageLayer {
                packed: packing::pack_to_dir(&LayerContent::tree(vec![e]), &blobs, opts).unwrap(),
                comment: "base".into(),
                from_base: false,
            })
            .collect();
        let image = crate::image::Image {
            platform: Platform::from_nix_system("x86_64-linux").unwrap(),
            created: DEFAULT_CREATED.into(),
            config: RuntimeConfig::from_json_value(serde_json::json!({"Cmd": ["sh"], "Env": ["A=1"]})).unwrap(),
            layers,
            base_history: Vec::new(),
        };
        layout::write_oci_layout(&image, "base", "v1", dir).unwrap();
        image
    }

    fn check(base: &BaseImage, image: &crate::image::Image) {
        assert_eq!(base.layers.len(), 2);
        for (b, l) in base.layers.iter().zip(&image.layers) {
            assert_eq!((&b.packed.diff_id, b.packed.compression), (&l.packed.diff_id, l.packed.compression));
            assert_eq!(Digest::of(&fs::read(&b.blob).unwrap()), b.packed.digest, "the blob is the layer");
        }
        assert_eq!(base.config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(base.history.len(), 2);
        assert_eq!(base.platform.architecture, "amd64");
    }

    #[test]
    fn oci_layouts_as_directories_and_as_tarballs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let image = layout_fixture(&dir, Compression::Gzip);
        let amd64 = Platform::from_nix_system("x86_64-linux").unwrap();
        let base = open(&dir, None, &amd64, tmp.path()).unwrap();
        check(&base, &image);
        assert_eq!(base.layers[0].packed.digest, image.layers[0].packed.digest);
        assert!(open(&dir, Some("v2"), &amd64, tmp.path()).unwrap_err().to_string().contains("no image tagged"));
        // The same layout as a gzip-compressed tarball (oci-archive).
        let tarball = tmp.path().join("layout.tar.gz");
        let mut ar = tar::Builder::new(flate2::write::GzEncoder::new(File::create(&tarball).unwrap(), flate2::Compression::fast()));
        ar.append_dir_all(".", &dir).unwrap();
        ar.into_inner().unwrap().finish().unwrap();
        let scratch = tmp.path().join("scratch");
        check(&open(&tarball, Some("v1"), &amd64, &scratch).unwrap(), &image);
    }

    #[test]
    fn docker_archives_with_uncompressed_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        let image = layout_fixture(&dir, Compression::None);
        let archive = tmp.path().join("image.tar");
        crate::image::write_docker_archive(&crate::image::read_oci_layout(&dir).unwrap(), "base:v1", &archive).unwrap();
        let base = open(&archive, Some("v1"), &image.platform, tmp.path()).unwrap();
        check(&base, &image);
        assert_eq!(base.layers[0].packed.compression, Compression::None);
        assert_eq!(base.layers[0].packed.digest, base.layers[0].packed.diff_id, "an uncompressed layer's digest is its diff_id");
        assert!(open(&archive, Some("v9"), &image.platform, tmp.path()).is_err());
    }

    #[test]
    fn what_is_not_an_image_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let amd64 = Platform::from_nix_system("x86_64-linux").unwrap();
        let e = open(tmp.path(), None, &amd64, tmp.path()).unwrap_err().to_string();
        assert!(e.contains("neither an OCI image layout nor a docker-archive"), "{e}");
        assert!(open(&tmp.path().join("missing"), None, &amd64, tmp.path()).is_err());
    }
}
