//! The docker-archive: an image as the tarball `docker save` writes and
//! `docker load`, `podman load` and `skopeo copy docker-archive:` read.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::{io_err, ImageError, LayoutImage};
use crate::packing::Owner;

/// Writes a docker-archive tarball (what `docker save` writes and
/// `docker load` and `skopeo copy docker-archive:` read) of a layout image.
/// Layers stay gzip-compressed; Docker and skopeo detect that. The tarball
/// is reproducible: fixed entry order and metadata.
pub fn write_docker_archive(image: &LayoutImage, repo_tag: &str, out: &Path) -> Result<(), ImageError> {
    let file = File::create(out).map_err(io_err(out))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let header = |size: u64, kind: tar::EntryType, mode: u32| crate::packing::tar::tar_header(kind, mode, size, &Owner::default());
    let mut layer_paths = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in &image.layers {
        let name = format!("{}/layer.tar", l.digest.hex());
        layer_paths.push(name.clone());
        if !seen.insert(l.digest.clone()) {
            continue;
        }
        let src = image.dir.join("blobs/sha256").join(l.digest.hex());
        let f = File::open(&src).map_err(io_err(&src))?;
        let len = f.metadata().map_err(io_err(&src))?.len();
        tar.append_data(&mut header(0, tar::EntryType::Directory, 0o755), l.digest.hex(), io::empty()).map_err(io_err(out))?;
        tar.append_data(&mut header(len, tar::EntryType::Regular, 0o644), &name, f).map_err(io_err(out))?;
    }
    let config_name = format!("{}.json", image.config_digest.hex());
    tar.append_data(&mut header(image.config.len() as u64, tar::EntryType::Regular, 0o644), &config_name, &image.config[..])
        .map_err(io_err(out))?;
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_paths,
    }]))
    .expect("manifest serialises");
    tar.append_data(&mut header(manifest.len() as u64, tar::EntryType::Regular, 0o644), "manifest.json", &manifest[..])
        .map_err(io_err(out))?;
    let mut w = tar.into_inner().map_err(io_err(out))?;
    w.flush().map_err(io_err(out))?;
    Ok(())
}

