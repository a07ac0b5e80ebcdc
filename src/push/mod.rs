//! Getting a built image out: `nixery push` to a registry, and `nixery
//! load` ([`load`]) into podman, docker or an OCI layout, of an image that
//! `buildNixeryImage` or `streamNixeryImage` built.
//!
//! ```text
//! OCI layout (result) ─► manifest, config, layers
//!        │  each blob: HEAD ─ has it? skip
//!        │             ─ --mount-from REPO? mount (201) or upload
//!        │             ─ upload: from the layout's file, or packed on the
//!        │               fly for a stream image (the recipe in
//!        │               nixery-stream.json; packing is deterministic, so
//!        │               the bytes match the digest the build computed)
//!        ▼  in parallel; the manifest last
//! REGISTRY/REPO:TAG ─► prints the manifest digest
//! ```

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::digest::Digest;
use crate::image::{Descriptor, OciLayout};
use crate::packing::{LayerContent, PackOptions};
use crate::supply_chain::key::SigningKey;
use crate::supply_chain::{cosign, Documents, DOCUMENTS};

pub mod client;
pub mod credentials;
pub mod load;
pub mod referrers;
pub mod verify;

pub use crate::image::stream::{LayerRecipe, StreamDoc, STREAM_FILE};
pub use client::{Connection, Destination};

/// Errors pushing.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The destination is not `REGISTRY/REPOSITORY[:TAG]`.
    #[error("{0:?} is not a destination: expected REGISTRY/REPOSITORY[:TAG] (for example 127.0.0.1:5000/app:v1 or ghcr.io/acme/app)")]
    Destination(String),
    /// What `nixery load` was given to load into is none of its targets.
    #[error("{given:?} is not where an image loads: expected podman, docker, docker-archive:FILE or oci:DIR[:TAG]{suggestion}")]
    LoadTarget {
        /// What was given.
        given: String,
        /// `; did you mean …?`, or nothing.
        suggestion: String,
    },
    /// The source is not an image nixery built.
    #[error("{path}: {detail}")]
    Source {
        /// The source.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// The source's layout cannot be read.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The signing key cannot be used.
    #[error(transparent)]
    Key(#[from] crate::supply_chain::key::KeyError),
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file is not usable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The registry cannot be reached or the connection failed.
    #[error("cannot talk to {base}: {detail}")]
    Http {
        /// The registry's base URL.
        base: String,
        /// What failed.
        detail: String,
    },
    /// The registry wants credentials, or refused them.
    #[error("not authorized at {registry}: {detail}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// What happened.
        detail: String,
    },
    /// The registry answered an unexpected status.
    #[error("{what}: the registry answered {status}: {body}")]
    Registry {
        /// The request.
        what: String,
        /// Its status.
        status: u16,
        /// The answer's body.
        body: String,
    },
    /// What a registry holds is not what it claims to be.
    #[error("{what}: {detail}")]
    Untrusted {
        /// What was read.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Packing a layer of a stream image failed.
    #[error("packing layer {digest}")]
    Pack {
        /// The layer.
        digest: Digest,
        /// What failed.
        source: crate::packing::PackError,
    },
    /// Packing a layer of a stream image gave other bytes than the build
    /// computed.
    #[error("packing layer {digest} gave {actual} (is the store path the same one the image was built from?)")]
    PackedOther {
        /// The layer.
        digest: Digest,
        /// What packing gave.
        actual: Digest,
    },
}

impl PushError {
    /// Whether this is a write to a pipe whose reader went away (the
    /// upload that read a packing thread's output failed first).
    fn is_broken_pipe(&self) -> bool {
        use std::error::Error;
        let mut cause: Option<&(dyn Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// An image to push: its manifest and where each blob comes from.
#[derive(Debug)]
pub struct Source {
    /// The layout directory.
    pub dir: PathBuf,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    /// Its media type.
    pub media_type: String,
    /// The config, then the layers.
    pub blobs: Vec<Descriptor>,
    /// `name:tag` as the build recorded it (`io.containerd.image.name`).
    pub image_name: Option<String>,
    /// When the source is an image index: its images' manifests (digest,
    /// media type, bytes), pushed by digest before the index.
    pub children: Vec<(Digest, String, Vec<u8>)>,
    /// The referrers the layout lists of the image or its children (its
    /// SBOMs and provenance, as the build made them): (subject, artifact).
    pub referrers: Vec<(Digest, crate::supply_chain::Artifact)>,
    stream: Option<(PackOptions, Vec<LayerRecipe>)>,
    /// Layout blobs whose bytes were checked against their digests.
    checked: Mutex<std::collections::HashSet<Digest>>,
}

fn source_error(path: &Path, detail: impl Into<String>) -> PushError {
    PushError::Source { path: path.display().to_string(), detail: detail.into() }
}

/// The referrers `layout` lists about `subjects`, read with their blobs
/// (each checked against its digest).
fn layout_referrers(layout: &OciLayout, subjects: &[Digest]) -> Result<Vec<(Digest, crate::supply_chain::Artifact)>, PushError> {
    let mut out = Vec::new();
    for d in layout.referrers() {
        let manifest = layout.read_document(&d.digest)?;
        let m = crate::image::oci::ImageManifest::from_slice(&manifest)?;
        let subject: Option<Digest> =
            serde_json::from_slice::<serde_json::Value>(&manifest).ok().and_then(|v| v["subject"]["digest"].as_str().and_then(|s| Digest::parse(s).ok()));
        let Some(subject) = subject.filter(|s| subjects.contains(s)) else { continue };
        let mut blobs = Vec::new();
        for b in std::iter::once(&m.config).chain(&m.layers) {
            blobs.push(crate::supply_chain::Blob { digest: b.digest.clone(), media_type: b.media_type.clone(), bytes: layout.read_document(&b.digest)? });
        }
        let artifact = crate::supply_chain::Artifact {
            manifest,
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            artifact_type: d.artifact_type.clone(),
            blobs,
        };
        out.push((subject, artifact));
    }
    Ok(out)
}

impl Source {
    /// The documents of the image's child `subject` (an index's image),
    /// from the referrers the layout lists about it.
    pub fn documents_of(&self, subject: &Digest) -> Documents {
        self.referrers
            .iter()
            .filter(|(s, _)| s == subject)
            .filter_map(|(_, a)| {
                let kind = DOCUMENTS.into_iter().find(|k| a.artifact_type.as_deref() == Some(k.artifact_type))?;
                let blob = a.blobs.iter().find(|b| b.media_type == kind.artifact_type)?;
                Some((kind, blob.bytes.clone()))
            })
            .collect()
    }

    /// The documents the build wrote beside the image, read once for the
    /// referrers and the attestations (none for an index, whose images
    /// have theirs: [`Source::documents_of`], nor for an image built with
    /// `sbom = false`).
    pub fn documents(&self) -> Result<Documents, PushError> {
        if !self.children.is_empty() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for kind in DOCUMENTS {
            let path = self.dir.join(kind.file);
            if path.exists() {
                out.push((kind, crate::image::layout::read_document(&path)?));
            }
        }
        Ok(out)
    }

    /// Opens `SOURCE[:TAG]`: an OCI layout directory (a `buildNixeryImage`
    /// or `streamNixeryImage` result). The tag picks an image when the
    /// layout has several.
    pub fn open(spec: &str) -> Result<Source, PushError> {
        let (dir, tag) = match spec.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') && Path::new(d).is_dir() => (PathBuf::from(d), Some(t)),
            _ => (PathBuf::from(spec), None),
        };
        if dir.is_file() {
            return Err(source_error(&dir, "a file, not an OCI layout directory (build with format = \"oci-dir\", the default)"));
        }
        if !dir.exists() {
            return Err(source_error(&dir, "does not exist: pass the result of nix-build (a buildNixeryImage or streamNixeryImage)"));
        }
        if !dir.join("index.json").exists() {
            return Err(source_error(&dir, "is not an image (it has no index.json): pass the result of nix-build of a buildNixeryImage or streamNixeryImage"));
        }
        let layout = OciLayout::open(&dir)?;
        let chosen = match (tag, layout.tagged(tag).as_slice()) {
            (_, [one]) => (*one).clone(),
            (Some(t), []) => return Err(source_error(&dir, format!("no image tagged {t:?} (it has {})", layout.tags()))),
            (Some(_), [first, ..]) => (*first).clone(),
            (None, []) => return Err(source_error(&dir, "index.json lists no image")),
            (None, many) => {
                let tags: Vec<&str> = many.iter().map(|d| d.tag().unwrap_or_default()).collect();
                return Err(source_error(&dir, format!("several images: name one as SOURCE:TAG ({})", tags.join(", "))));
            }
        };
        let manifest = layout.read_document(&chosen.digest)?;
        let image_blobs = |manifest: &[u8]| -> Result<Vec<Descriptor>, PushError> {
            let m = crate::image::oci::ImageManifest::from_slice(manifest)?;
            Ok(std::iter::once(m.config).chain(m.layers).collect())
        };
        let mut children = Vec::new();
        let blobs = if chosen.media_type == crate::image::media_type::OCI_INDEX {
            // An index (buildNixeryIndex): every image's blobs, once.
            let index = crate::image::oci::ImageIndex::from_slice(&manifest)?;
            let mut all: Vec<Descriptor> = Vec::new();
            for e in index.manifests {
                let bytes = layout.read_document(&e.digest)?;
                for b in image_blobs(&bytes)? {
                    if !all.iter().any(|a| a.digest == b.digest) {
                        all.push(b);
                    }
                }
                children.push((e.digest, e.media_type, bytes));
            }
            all
        } else {
            image_blobs(&manifest)?
        };
        let stream = match std::fs::read(dir.join(STREAM_FILE)) {
            Ok(bytes) => {
                let s = StreamDoc::from_slice(&bytes).map_err(|e| source_error(&dir, format!("{STREAM_FILE}: {e}")))?;
                let opts = PackOptions::new(s.compression, Some(s.level)).map_err(|e| source_error(&dir, format!("{STREAM_FILE}: {e}")))?;
                Some((opts, s.layers))
            }
            Err(_) => None,
        };
        let image_name = chosen.annotations.get(crate::image::oci::annotation::IMAGE_NAME).cloned();
        let subjects: Vec<Digest> = std::iter::once(chosen.digest.clone()).chain(children.iter().map(|(d, _, _)| d.clone())).collect();
        let referrers = layout_referrers(&layout, &subjects)?;
        let source =
            Source { media_type: chosen.media_type.clone(), dir, manifest, blobs, image_name, children, referrers, stream, checked: Default::default() };
        for b in &source.blobs {
            let path = source.blob_path(&b.digest);
            match std::fs::metadata(&path) {
                // A symbolic link to a device, a FIFO or a folder is not a
                // blob (nothing is opened); nor is a file of another size.
                Ok(m) if !m.is_file() => return Err(source_error(&source.dir, format!("the blob {} is not a regular file", b.digest))),
                Ok(m) if m.len() != b.size => {
                    return Err(source_error(&source.dir, format!("the blob {} has {} bytes, its descriptor says {}", b.digest, m.len(), b.size)));
                }
                Ok(_) => {}
                Err(_) if source.recipe(&b.digest).is_some() => {}
                Err(_) => return Err(source_error(&source.dir, format!("the blob {} is neither in the layout nor in {STREAM_FILE}", b.digest))),
            }
        }
        Ok(source)
    }

    /// Checks that the layout's file of blob `d` holds the bytes its
    /// digest names (once per blob), before any of them goes anywhere: a
    /// file that is not what it claims (a link out of the layout under a
    /// made-up digest) is refused, not uploaded or loaded. Stream layers are
    /// checked as they are packed.
    pub fn check_blob(&self, d: &Digest) -> Result<(), PushError> {
        let path = self.blob_path(d);
        if !path.exists() || self.checked.lock().expect("lock").contains(d) {
            return Ok(());
        }
        let mut f = std::fs::File::open(&path).map_err(|source| PushError::Io { path: path.display().to_string(), source })?;
        let mut w = crate::digest::HashingWriter::new(std::io::sink());
        std::io::copy(&mut f, &mut w).map_err(|source| PushError::Io { path: path.display().to_string(), source })?;
        let (_, actual, _) = w.finish();
        if &actual != d {
            return Err(source_error(&self.dir, format!("the blob {d} does not hold the bytes it is named by (they are {actual}): refusing to send it")));
        }
        self.checked.lock().expect("lock").insert(d.clone());
        Ok(())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        crate::image::oci::blob_path(&self.dir, d)
    }

    fn recipe(&self, d: &Digest) -> Option<(PackOptions, &LayerRecipe)> {
        let (opts, recipes) = self.stream.as_ref()?;
        recipes.iter().find(|r| &r.digest == d).map(|r| (*opts, r))
    }

    /// Writes the blob's bytes to `out`: copied from the layout, or packed
    /// from the store (and checked against the digest the build computed).
    pub fn write_blob(&self, d: &Digest, out: &mut dyn Write) -> Result<u64, PushError> {
        let path = self.blob_path(d);
        if path.exists() {
            self.check_blob(d)?;
            let mut f = std::fs::File::open(&path).map_err(|source| PushError::Io { path: path.display().to_string(), source })?;
            return std::io::copy(&mut f, out).map_err(|source| PushError::Io { path: path.display().to_string(), source });
        }
        let (opts, recipe) = self.recipe(d).ok_or_else(|| source_error(&self.dir, format!("no blob {d}")))?;
        let content = LayerContent { perms: recipe.perms.clone(), ..LayerContent::store_paths(recipe.store_paths.clone()) };
        let (_, packed) =
            crate::packing::pack_to_writer(&content, out, opts, Path::new("<push>")).map_err(|source| PushError::Pack { digest: d.clone(), source })?;
        if &packed.digest != d {
            return Err(PushError::PackedOther { digest: d.clone(), actual: packed.digest });
        }
        Ok(packed.size)
    }

    /// Reads the blob as a stream: a file of the layout, or the output of
    /// a packing thread through a pipe (nothing held whole in memory).
    pub(crate) fn open_blob<'s>(&'s self, scope: &'s std::thread::Scope<'s, '_>, d: &Digest) -> Result<(Box<dyn Read + 's>, Option<Packer<'s>>), PushError> {
        let path = self.blob_path(d);
        if path.exists() {
            self.check_blob(d)?;
            let f = std::fs::File::open(&path).map_err(|source| PushError::Io { path: path.display().to_string(), source })?;
            return Ok((Box::new(std::io::BufReader::with_capacity(1 << 20, f)), None));
        }
        let (reader, mut writer) = std::io::pipe().map_err(|source| PushError::Io { path: "a pipe".into(), source })?;
        let d = d.clone();
        let packer = scope.spawn(move || {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut writer);
            let n = self.write_blob(&d, &mut w)?;
            w.flush().map_err(|source| PushError::Io { path: "a pipe".into(), source })?;
            Ok(n)
        });
        Ok((Box::new(reader), Some(packer)))
    }
}

/// A thread packing a layer into a pipe; its result says whether the
/// bytes it wrote were the layer's.
type Packer<'s> = std::thread::ScopedJoinHandle<'s, Result<u64, PushError>>;

/// Push settings.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// How to reach the registry.
    pub connection: Connection,
    /// A repository of the same registry to mount blobs from.
    pub mount_from: Option<String>,
    /// Uploads at once.
    pub jobs: usize,
    /// Sign the pushed manifest for cosign with this key.
    pub sign_key: Option<std::sync::Arc<SigningKey>>,
}

/// What a push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    /// The artifact manifests of the SBOMs and provenance, pushed as
    /// referrers of the image.
    pub referrers: Vec<Digest>,
    /// The signature manifest's digest (`sha256-<hex>.sig`), when signed.
    pub signature: Option<Digest>,
    /// The attestations manifest's digest (`sha256-<hex>.att`), when
    /// signed and the image has SBOMs and provenance.
    pub attestations: Option<Digest>,
    /// The manifest's digest.
    pub digest: Option<Digest>,
    /// Blobs the registry had.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

/// Progress on a terminal: one line, rewritten.
struct Progress {
    total: usize,
    done: AtomicUsize,
    bytes: AtomicU64,
    terminal: bool,
    line: Mutex<()>,
}

impl Progress {
    fn step(&self, bytes: u64) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if self.terminal {
            let _guard = self.line.lock();
            eprint!("\r\x1b[Kblobs {done}/{}, {:.1} MB uploaded", self.total, bytes as f64 / 1e6);
            if done == self.total {
                eprintln!();
            }
        }
    }
}

/// Pushes `source` to `dest`: missing blobs in parallel (mounted when
/// asked, uploaded otherwise), then the manifest.
pub fn push(source: &Source, dest: &Destination, opts: &PushOptions) -> Result<PushReport, PushError> {
    let client = client::Client::connect(dest, &opts.connection, opts.mount_from.as_deref())?;
    let progress = Progress {
        total: source.blobs.len(),
        done: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
        terminal: std::io::stderr().is_terminal(),
        line: Mutex::new(()),
    };
    let report = Mutex::new(PushReport::default());
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<PushError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.clamp(1, 16) {
            scope.spawn(|| loop {
                if first_error.lock().expect("lock").is_some() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(blob) = source.blobs.get(i) else { return };
                let result = (|| -> Result<(), PushError> {
                    if client.has_blob(&blob.digest)? {
                        report.lock().expect("lock").present += 1;
                        progress.step(0);
                        return Ok(());
                    }
                    if let Some(from) = &opts.mount_from {
                        if client.mount(&blob.digest, from)? {
                            report.lock().expect("lock").mounted += 1;
                            progress.step(0);
                            return Ok(());
                        }
                    }
                    // Each try reads the blob afresh (a stream layer is
                    // packed again: the same bytes).
                    client::with_retries(&format!("uploading {}", blob.digest), || {
                        std::thread::scope(|inner| -> Result<(), PushError> {
                            let (mut body, packer) = source.open_blob(inner, &blob.digest)?;
                            let uploaded = client.upload(&blob.digest, blob.size, &mut body);
                            drop(body);
                            let packed = packer.map(|p| p.join().expect("packer thread"));
                            match (uploaded, packed) {
                                // A packing failure explains an upload
                                // failure, unless it is the pipe the failed
                                // upload closed.
                                (Ok(()), Some(Err(pack))) => Err(pack),
                                (Err(_), Some(Err(pack))) if !pack.is_broken_pipe() => Err(pack),
                                (uploaded, _) => uploaded,
                            }
                        })
                    })?;
                    let mut r = report.lock().expect("lock");
                    r.uploaded += 1;
                    r.uploaded_bytes += blob.size;
                    progress.step(blob.size);
                    Ok(())
                })();
                if let Err(e) = result {
                    first_error.lock().expect("lock").get_or_insert(e);
                    return;
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().expect("lock") {
        return Err(e);
    }
    for (digest, media_type, bytes) in &source.children {
        client.put_manifest(&digest.to_string(), media_type, bytes)?;
    }
    let digest = client.put_manifest(&dest.tag, &source.media_type, &source.manifest)?;
    let mut report = report.into_inner().expect("lock");
    // The referrers the layout lists (each image's SBOMs and provenance);
    // for a layout from before they were listed, made from the documents.
    let documents = source.documents()?;
    let mut referrers: Vec<(Digest, crate::supply_chain::Artifact)> = source.referrers.clone();
    if !referrers.iter().any(|(s, _)| *s == digest) {
        let subject = crate::supply_chain::referrers::subject(&source.media_type, &digest, source.manifest.len());
        referrers.extend(crate::supply_chain::referrers::artifacts(&documents, &subject).into_iter().map(|a| (digest.clone(), a)));
    }
    let subjects: std::collections::BTreeSet<&Digest> = referrers.iter().map(|(s, _)| s).collect();
    for subject in subjects {
        let about: Vec<crate::supply_chain::Artifact> = referrers.iter().filter(|(s, _)| s == subject).map(|(_, a)| a.clone()).collect();
        referrers::push_referrers(&client, subject, &about)?;
    }
    report.referrers = referrers.iter().map(|(_, a)| a.digest.clone()).collect();
    if let Some(key) = &opts.sign_key {
        let repository = format!("{}/{}", dest.registry, dest.repository);
        // The image (or index), then an index's images: each signed, each
        // with documents attested.
        let mut signed: Vec<(Digest, Documents)> = vec![(digest.clone(), documents)];
        signed.extend(source.children.iter().map(|(d, _, _)| (d.clone(), source.documents_of(d))));
        for (subject, documents) in signed {
            let signature = cosign::signature(key, &repository, &subject);
            referrers::push_artifact(&client, &signature, Some(&cosign::signature_tag(&subject)))?;
            let attested = if documents.is_empty() {
                None
            } else {
                let attestations = cosign::attestations(key, &repository, &subject, &documents)
                    .map_err(|detail| PushError::Source { path: source.dir.display().to_string(), detail })?;
                referrers::push_artifact(&client, &attestations, Some(&cosign::attestation_tag(&subject)))?;
                Some(attestations.digest)
            };
            if subject == digest {
                report.signature = Some(signature.digest);
                report.attestations = attested;
            }
        }
    }
    report.digest = Some(digest);
    Ok(report)
}
