//! `nixery load`: an image into podman or docker (through their archive
//! import, `podman load` / `docker load`), a docker-archive file, or an
//! OCI layout directory. A stream image's layers are packed on the fly,
//! streamed through a pipe, and checked against their digests.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{PushError, Source};
use crate::digest::{Digest, HashingWriter};
use crate::image::Descriptor;

/// Where to load an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `oci:DIR[:TAG]`: an OCI layout directory (created, or added to).
    Oci {
        /// The directory.
        dir: PathBuf,
        /// The tag in its index (default: the image's own).
        tag: Option<String>,
    },
    /// `docker-archive:FILE`.
    DockerArchive(PathBuf),
    /// `podman`: `podman load`.
    Podman,
    /// `docker`: `docker load` (`DOCKER_HOST` as the docker CLI reads it).
    Docker,
}

impl std::str::FromStr for Target {
    type Err = PushError;
    fn from_str(s: &str) -> Result<Target, PushError> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if crate::image_name::valid_tag(t) => (d, Some(t.to_string())),
                _ => (rest, None),
            };
            return Ok(Target::Oci { dir: PathBuf::from(dir), tag });
        }
        if let Some(file) = s.strip_prefix("docker-archive:") {
            return Ok(Target::DockerArchive(PathBuf::from(file)));
        }
        match s {
            "podman" => Ok(Target::Podman),
            "docker" => Ok(Target::Docker),
            _ => {
                let near = crate::closest_name::closest(s, ["podman", "docker", "oci:", "docker-archive:"], 2);
                let suggestion = near.map(|t| format!("; did you mean {t}?")).unwrap_or_default();
                Err(PushError::LoadTarget { given: s.to_string(), suggestion })
            }
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PushError + '_ {
    move |source| PushError::Io { path: path.display().to_string(), source }
}

/// Loads `source` into `target`.
pub fn load(source: &Source, target: &Target) -> Result<(), PushError> {
    if !source.children.is_empty() && !matches!(target, Target::Oci { .. }) {
        return Err(PushError::Source {
            path: source.dir.display().to_string(),
            detail: "an image index loads only into an OCI layout (oci:DIR); podman and docker take one image".into(),
        });
    }
    let name = source.image_name.clone().unwrap_or_else(|| "nixery-image:latest".to_string());
    match target {
        Target::Oci { dir, tag } => write_oci(source, dir, tag.as_deref().unwrap_or_else(|| name.rsplit_once(':').map_or("latest", |(_, t)| t))),
        Target::DockerArchive(file) => {
            // Written beside the file, which it becomes only when whole.
            let (tmp, out) = crate::scratch::TempFile::beside(file).map_err(io(file))?;
            let mut w = write_archive(source, &name, BufWriter::with_capacity(1 << 20, out))?;
            w.flush().map_err(io(tmp.path()))?;
            drop(w);
            tmp.persist().map_err(io(file))
        }
        Target::Podman | Target::Docker => {
            let program = if *target == Target::Podman { "podman" } else { "docker" };
            let mut child = match Command::new(program).arg("load").stdin(Stdio::piped()).stdout(Stdio::inherit()).spawn() {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(PushError::Source { path: program.into(), detail: "is not installed here (not on PATH)".into() })
                }
                Err(e) => return Err(io(Path::new(program))(e)),
            };
            let stdin = child.stdin.take().expect("piped");
            let written = write_archive(source, &name, BufWriter::with_capacity(1 << 20, stdin)).and_then(|mut w| w.flush().map_err(io(Path::new(program))));
            let status = child.wait().map_err(io(Path::new(program)))?;
            // A loader that failed stopped reading: the broken pipe is
            // its failure's echo, and its own message (above) the cause.
            if !status.success() {
                return Err(PushError::Source { path: format!("{program} load"), detail: format!("failed ({status}); its message above says why") });
            }
            written?;
            Ok(())
        }
    }
}

/// A docker-archive of the image, layers packed on the fly where needed.
fn write_archive<W: Write>(source: &Source, name: &str, out: W) -> Result<W, PushError> {
    // blobs[0] is the config of a single image (an index is refused above).
    let config = read_small(source, &source.blobs[0])?;
    std::thread::scope(|scope| {
        let mut packers = Vec::new();
        let mut open = |l: &Descriptor| -> std::io::Result<Box<dyn std::io::Read + '_>> {
            let (reader, packer) = source.open_blob(scope, &l.digest).map_err(std::io::Error::other)?;
            packers.extend(packer);
            Ok(reader)
        };
        let written = crate::image::write_docker_archive_to(&source.blobs[1..], &config, &source.blobs[0].digest, name, out, &mut open);
        let packed: Result<Vec<u64>, PushError> = packers.into_iter().map(|p| p.join().expect("packer thread")).collect();
        // A packing failure explains a failed archive, unless it is the
        // pipe the failed archive closed.
        match (written, packed) {
            (Ok(w), Ok(_)) => Ok(w),
            (_, Err(pack)) if !pack.is_broken_pipe() => Err(pack),
            (Err(source), _) => Err(PushError::Io { path: "the archive".into(), source }),
            (Ok(_), Err(pack)) => Err(pack),
        }
    })
}

fn read_small(source: &Source, d: &Descriptor) -> Result<Vec<u8>, PushError> {
    let mut bytes = Vec::with_capacity(d.size.min(1 << 20) as usize);
    source.write_blob(&d.digest, &mut bytes)?;
    Ok(bytes)
}

/// Adds the image to the OCI layout at `dir` under `tag` (replacing what
/// had that tag).
fn write_oci(source: &Source, dir: &Path, tag: &str) -> Result<(), PushError> {
    use crate::image::oci;
    let blobs = oci::blobs_dir(dir);
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let manifest_digest = Digest::of(&source.manifest);
    for (digest, _, bytes) in &source.children {
        std::fs::write(oci::blob_path(dir, digest), bytes).map_err(io(&blobs))?;
    }
    for d in &source.blobs {
        let dest = oci::blob_path(dir, &d.digest);
        if dest.exists() {
            continue;
        }
        // Written beside the blob, which it becomes once its digest checks.
        let (tmp, file) = crate::scratch::TempFile::beside(&dest).map_err(io(&dest))?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        source.write_blob(&d.digest, &mut w)?;
        let (buf, digest, _) = w.finish();
        buf.into_inner().map_err(|e| PushError::Io { path: tmp.path().display().to_string(), source: e.into_error() })?;
        if digest != d.digest {
            return Err(PushError::PackedOther { digest: d.digest.clone(), actual: digest });
        }
        tmp.persist().map_err(io(&dest))?;
    }
    std::fs::write(oci::blob_path(dir, &manifest_digest), &source.manifest).map_err(io(&blobs))?;
    let mut entries = if dir.join("index.json").exists() { crate::image::OciLayout::open(dir)?.entries } else { Vec::new() };
    entries.retain(|e| e.tag() != Some(tag));
    entries.push(Descriptor::new(&source.media_type, manifest_digest, source.manifest.len() as u64).tagged(None, tag));
    oci::write_layout_index(dir, entries)?;
    Ok(())
}
