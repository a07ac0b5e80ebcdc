//! The docker-archive: an image as the tarball `docker save` writes and
//! `docker load`, `podman load` and `skopeo copy docker-archive:` read.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::{io_err, Descriptor, ImageError, LayoutImage};
use crate::digest::Digest;
use crate::packing::Owner;

/// Writes a docker-archive tarball (what `docker save` writes and
/// `docker load` and `skopeo copy docker-archive:` read) of a layout image.
/// Layers stay gzip-compressed; Docker and skopeo detect that. The tarball
/// is reproducible: fixed entry order and metadata.
pub fn write_docker_archive(image: &LayoutImage, repo_tag: &str, out: &Path) -> Result<(), ImageError> {
    let file = File::create(out).map_err(io_err(out))?;
    let mut w =
        write_docker_archive_to(&image.layers, &image.config, &image.config_digest, repo_tag, BufWriter::new(file), &mut |l| layout_blob(&image.dir, l))
            .map_err(io_err(out))?;
    w.flush().map_err(io_err(out))?;
    Ok(())
}

/// A blob of the layout at `dir`.
fn layout_blob(dir: &Path, l: &Descriptor) -> io::Result<Box<dyn Read + 'static>> {
    let src = super::oci::blob_path(dir, &l.digest);
    Ok(Box::new(File::open(&src).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?))
}

/// Writes a docker-archive to `out`, each layer's bytes read from what
/// `open` gives for it (exactly its descriptor's size).
pub fn write_docker_archive_to<'a, W: Write>(
    layers: &[Descriptor],
    config: &[u8],
    config_digest: &Digest,
    repo_tag: &str,
    out: W,
    open: &mut dyn FnMut(&Descriptor) -> io::Result<Box<dyn Read + 'a>>,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    let header = |size: u64, kind: tar::EntryType, mode: u32| crate::packing::tar::tar_header(kind, mode, size, &Owner::default());
    let mut layer_paths = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in layers {
        let name = format!("{}/layer.tar", l.digest.hex());
        layer_paths.push(name.clone());
        if !seen.insert(l.digest.clone()) {
            continue;
        }
        tar.append_data(&mut header(0, tar::EntryType::Directory, 0o755), l.digest.hex(), io::empty())?;
        let reader = open(l)?;
        tar.append_data(&mut header(l.size, tar::EntryType::Regular, 0o644), &name, reader.take(l.size))?;
    }
    let config_name = format!("{}.json", config_digest.hex());
    tar.append_data(&mut header(config.len() as u64, tar::EntryType::Regular, 0o644), &config_name, config)?;
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]))
    .expect("manifest serialises");
    tar.append_data(&mut header(manifest.len() as u64, tar::EntryType::Regular, 0o644), "manifest.json", &manifest[..])?;
    tar.into_inner()
}
