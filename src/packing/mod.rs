//! Packing: a layer's contents as a reproducible compressed tar blob,
//! hashed while it is written.
//!
//! This module owns the bytes of a layer: which tar entries, in which
//! order, with which headers ([`tar`]), compressed how ([`gzip`], or zstd).
//! It does not decide what goes into a layer ([`crate::layering`],
//! [`crate::assembly`]) nor how layers form an image ([`crate::image`]).
//!
//! # One pass
//!
//! The tar stream goes through a SHA-256 (the layer's `diff_id`), then the
//! compressor, then a second SHA-256 (the blob's digest) and into whatever
//! writer the caller gives: a file, a storage backend's blob writer, or a
//! sink that keeps nothing. Nothing holds a whole layer in memory.
//!
//! # Reproducibility
//!
//! The same contents give the same bytes on every machine, every run and
//! any number of threads: see [`tar`] for the entries and [`gzip`] for the
//! compression. zstd layers use zstd's multithreaded mode, whose output is
//! the same for any number of workers. [`crate::FORMAT_VERSION`] names this
//! format; the golden digests in this module's tests pin it.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};

pub mod gzip;
pub mod parallel;
pub mod tar;

pub use parallel::run_parallel;

/// The default gzip level. Level 5 rather than gzip's usual 6: it packs
/// 4-18 % faster for 0.2-0.3 % more bytes (BENCHMARKS.md). Part of the
/// output format: changing it changes every layer digest.
pub const DEFAULT_GZIP_LEVEL: u32 = 5;
/// The default zstd level.
pub const DEFAULT_ZSTD_LEVEL: u32 = 3;

/// Errors while packing a layer.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading a source or writing the blob failed.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed (a source file, or the blob being written).
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// A source is a device, socket or fifo.
    #[error("{0}: unsupported file type (only files, directories and symlinks can be packed)")]
    UnsupportedFileType(PathBuf),
    /// A source's name is not UTF-8 (image paths are UTF-8).
    #[error("{0}: the name is not UTF-8")]
    NotUtf8(PathBuf),
    /// Walking a store path failed.
    #[error("{0}: {1}")]
    Walk(PathBuf, walkdir::Error),
    /// Two entries of a layer claim the same path.
    #[error("two entries of the layer are at {0}")]
    Conflict(String),
    /// A permission rule is not valid.
    #[error("invalid permission rule: {0}")]
    Perms(String),
    /// A compression level out of the compression's range.
    #[error("compression level {level} is out of range for {compression} ({min} to {max})")]
    Level {
        /// The compression.
        compression: Compression,
        /// The level asked for.
        level: u32,
        /// The lowest level.
        min: u32,
        /// The highest level.
        max: u32,
    },
}

impl PackError {
    /// Maps an I/O error on `path` to a pack error.
    pub(crate) fn io(path: impl AsRef<Path>) -> impl FnOnce(io::Error) -> PackError {
        let path = path.as_ref().to_path_buf();
        move |source| PackError::Io { path, source }
    }
}

/// Who owns an entry: uid and gid, and optionally names in the header.
/// The default is root (0, 0) with no names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// User name recorded in the header (at most 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uname: Option<String>,
    /// Group name recorded in the header (at most 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gname: Option<String>,
}

/// The ownership a permission rule sets; unset fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnerRule {
    /// New uid.
    #[serde(default)]
    pub uid: Option<u32>,
    /// New gid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// New user name.
    #[serde(default)]
    pub uname: Option<String>,
    /// New group name.
    #[serde(default)]
    pub gname: Option<String>,
}

impl OwnerRule {
    /// Sets what this rule sets on `owner`.
    pub fn apply_to(&self, owner: &mut Owner) {
        if let Some(u) = self.uid {
            owner.uid = u;
        }
        if let Some(g) = self.gid {
            owner.gid = g;
        }
        if let Some(n) = &self.uname {
            owner.uname = Some(n.clone());
        }
        if let Some(n) = &self.gname {
            owner.gname = Some(n.clone());
        }
    }
}

/// Mode and ownership for the files under `path` whose image path
/// matches `regex` (nix2container's `perms`). Rules apply in order, later
/// ones winning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PermRule {
    /// A store path (or a path in the image): the rule covers it and
    /// everything below it, and files copied from it.
    pub path: String,
    /// A regular expression matched against the entry's absolute path in
    /// the image.
    pub regex: String,
    /// The permission bits to set.
    #[serde(default)]
    pub mode: Option<u32>,
    /// The ownership to set.
    #[serde(default, flatten)]
    pub owner: OwnerRule,
}

/// The bytes of a synthetic file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Bytes given in memory (small generated files: `/etc/passwd`).
    Bytes(Arc<[u8]>),
    /// A file on disk, read when packing. It must not change: layer keys
    /// name it by path (store paths never change).
    Disk(String),
}

impl FileData {
    /// In-memory file contents.
    pub fn bytes(b: impl AsRef<[u8]>) -> FileData {
        FileData::Bytes(Arc::from(b.as_ref()))
    }
}

impl Serialize for FileData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            FileData::Bytes(b) => m.serialize_entry("sha256", &Digest::of(b))?,
            FileData::Disk(p) => m.serialize_entry("disk", p)?,
        }
        m.end()
    }
}

/// One synthetic entry of a layer, with a path relative to the image's
/// root and no leading slash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TreeEntry {
    /// A directory with these permission bits.
    Dir {
        /// Path in the image.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        owner: Owner,
    },
    /// A symbolic link.
    Symlink {
        /// Path in the image.
        path: String,
        /// Where it points.
        target: String,
    },
    /// A regular file.
    File {
        /// Path in the image.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Owner.
        owner: Owner,
        /// Its bytes.
        data: FileData,
    },
}

impl TreeEntry {
    /// The entry's path in the image.
    pub fn path(&self) -> &str {
        match self {
            TreeEntry::Dir { path, .. } | TreeEntry::Symlink { path, .. } | TreeEntry::File { path, .. } => path,
        }
    }
}

/// What a layer holds: store paths (each packed whole under `nix/store/`),
/// synthetic entries, and permission rules over both. Order does not
/// matter: entries are sorted on packing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerContent {
    /// Store paths (`/nix/store/<hash>-<name>`).
    pub store_paths: Vec<String>,
    /// Synthetic entries (directories, symlinks, files).
    pub entries: Vec<TreeEntry>,
    /// Mode and ownership rules.
    pub perms: Vec<PermRule>,
    /// Where store paths are read from: `/` for the local store; a chroot
    /// store keeps `/nix/store/x` at `<root>/nix/store/x`. Not part of the
    /// layer's key: the bytes are the same.
    pub store_root: PathBuf,
}

impl Default for LayerContent {
    fn default() -> Self {
        LayerContent { store_paths: Vec::new(), entries: Vec::new(), perms: Vec::new(), store_root: PathBuf::from("/") }
    }
}

impl LayerContent {
    /// A layer of store paths.
    pub fn store_paths(paths: Vec<String>) -> LayerContent {
        LayerContent { store_paths: paths, ..Default::default() }
    }

    /// A layer of synthetic entries.
    pub fn tree(entries: Vec<TreeEntry>) -> LayerContent {
        LayerContent { entries, ..Default::default() }
    }

    /// The key of the layer packed with `opts`: a hash of everything that
    /// determines its bytes (the format version, compression and level,
    /// the sorted store paths, the sorted entries, the rules in order).
    pub fn key(&self, opts: PackOptions) -> LayerKey {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        let mut line = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        line(&crate::FORMAT_VERSION.to_string());
        line(opts.compression.name());
        line(&opts.level.to_string());
        let mut paths: Vec<&str> = self.store_paths.iter().map(String::as_str).collect();
        paths.sort_unstable();
        paths.dedup();
        line(&paths.len().to_string());
        paths.into_iter().for_each(&mut line);
        let mut entries: Vec<String> = self.entries.iter().map(|e| serde_json::to_string(e).expect("entries serialise")).collect();
        entries.sort_unstable();
        line(&entries.len().to_string());
        entries.iter().for_each(|e| line(e));
        line(&self.perms.len().to_string());
        for r in &self.perms {
            line(&serde_json::to_string(r).expect("rules serialise"));
        }
        LayerKey(format!("{:x}", h.finalize()))
    }
}

/// Identifies a layer's bytes before they are packed (see
/// [`LayerContent::key`]): the key of layer caches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LayerKey(String);

impl LayerKey {
    /// The key as 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A packed layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedLayer {
    /// sha256 of the compressed blob.
    pub digest: Digest,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar in bytes.
    pub tar_size: u64,
    /// How the blob is compressed.
    #[serde(default)]
    pub compression: Compression,
}

/// A layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (`tar+gzip`), which every client reads. The default.
    #[default]
    Gzip,
    /// zstd (`tar+zstd`), for Docker 23+, containerd 1.5+, podman 4+.
    Zstd,
    /// No compression (`tar`): the fastest to pack and to load locally,
    /// and what `docker save` archives hold.
    None,
}

impl Compression {
    /// The level used when none is given: gzip 5, zstd 3.
    pub fn default_level(self) -> u32 {
        match self {
            Compression::Gzip => DEFAULT_GZIP_LEVEL,
            Compression::Zstd => DEFAULT_ZSTD_LEVEL,
            Compression::None => 0,
        }
    }

    /// The levels this compression takes: gzip 0 to 12 (libdeflate's), zstd 1 to 19.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Compression::Gzip => 0..=gzip::MAX_LEVEL,
            Compression::Zstd => 1..=19,
            Compression::None => 0..=0,
        }
    }

    /// The compression of a blob, from its first bytes (gzip and zstd
    /// have magic numbers; anything else is taken for a plain tar).
    pub fn sniff(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The name, as in `lib.nix` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" => Ok(Compression::None),
            _ => Err(format!("unknown compression {s:?} (expected gzip, zstd or none)")),
        }
    }
}

/// How layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackOptions {
    /// The compression.
    pub compression: Compression,
    /// Its level, within [`Compression::levels`].
    pub level: u32,
}

impl PackOptions {
    /// `compression` at `level`, or at its default level; a level out of
    /// the compression's range is an error.
    pub fn new(compression: Compression, level: Option<u32>) -> Result<PackOptions, PackError> {
        let level = level.unwrap_or(compression.default_level());
        let range = compression.levels();
        if !range.contains(&level) {
            return Err(PackError::Level { compression, level, min: *range.start(), max: *range.end() });
        }
        Ok(PackOptions { compression, level })
    }
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions { compression: Compression::Gzip, level: DEFAULT_GZIP_LEVEL }
    }
}

/// A compressing writer of either kind.
enum Compressor<W: Write> {
    Gzip(gzip::ParallelGzWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    fn new(out: W, opts: PackOptions) -> io::Result<Self> {
        Ok(match opts.compression {
            Compression::Gzip => Compressor::Gzip(gzip::ParallelGzWriter::new(out, opts.level)?),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, opts.level as i32)?;
                e.include_checksum(false)?;
                e.include_contentsize(false)?;
                // zstd's multithreaded output is the same for any number
                // of workers from one up, so it never depends on the machine.
                e.multithread(rayon::current_num_threads().max(1) as u32)?;
                Compressor::Zstd(e)
            }
            Compression::None => Compressor::None(out),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
            Compressor::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes writes through and remembers whether one failed, so that an
/// error (a full disk) is reported against the blob being written rather
/// than the source file being read at the time.
struct WriteFailures<W> {
    inner: W,
    failed: bool,
}

impl<W: Write> Write for WriteFailures<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| self.failed = true)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

/// Packs `content` as a compressed tar into `out`, returning the writer
/// and the layer's digests. `out` should be buffered. `blob` names the
/// destination in errors.
pub fn pack_to_writer<W: Write>(content: &LayerContent, out: W, opts: PackOptions, blob: &Path) -> Result<(W, PackedLayer), PackError> {
    let hashed_blob = HashingWriter::new(WriteFailures { inner: out, failed: false });
    let compressor = Compressor::new(hashed_blob, opts).map_err(PackError::io(blob))?;
    let mut tar_hash = HashingWriter::new(compressor);
    let written = tar::write_tar(content, &mut tar_hash).map(drop);
    let (compressor, diff_id, tar_size) = tar_hash.finish();
    if let Err(e) = written {
        let write_failed = match &compressor {
            Compressor::Gzip(g) => g.get_ref().get_ref().failed,
            Compressor::Zstd(z) => z.get_ref().get_ref().failed,
            Compressor::None(w) => w.get_ref().failed,
        };
        return Err(match e {
            PackError::Io { source, .. } if write_failed => PackError::Io { path: blob.to_path_buf(), source },
            other => other,
        });
    }
    let hashed_blob = compressor.finish().map_err(PackError::io(blob))?;
    let (out, digest, size) = hashed_blob.finish();
    Ok((out.inner, PackedLayer { digest, diff_id, size, tar_size, compression: opts.compression }))
}

/// Packs `content` into a file at `dest` (created, or truncated), returning
/// its digests.
pub fn pack_to_file(content: &LayerContent, dest: &Path, opts: PackOptions) -> Result<PackedLayer, PackError> {
    let file = File::create(dest).map_err(PackError::io(dest))?;
    let (buf, packed) = pack_to_writer(content, BufWriter::with_capacity(1 << 20, file), opts, dest)?;
    buf.into_inner().map_err(|e| PackError::Io { path: dest.to_path_buf(), source: e.into_error() })?;
    Ok(packed)
}

/// Packs `content` into `dir/<hex digest>`: written under a temporary name
/// first and renamed once its digest is known.
pub fn pack_to_dir(content: &LayerContent, dir: &Path, opts: PackOptions) -> Result<PackedLayer, PackError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    let tmp = dir.join(format!(".packing-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let packed = pack_to_file(content, &tmp, opts).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    let dest = dir.join(packed.digest.hex());
    fs::rename(&tmp, &dest).map_err(PackError::io(&dest))?;
    Ok(packed)
}

/// Packs `content` with nothing written anywhere: only its digests and
/// sizes (for images whose layers are packed again when pushed).
pub fn pack_to_sink(content: &LayerContent, opts: PackOptions) -> Result<PackedLayer, PackError> {
    pack_to_writer(content, io::sink(), opts, Path::new("<digest only>")).map(|(_, p)| p)
}

/// How many layers to pack at once: for gzip, one per core (chunks of all
/// of them share rayon's pool); for zstd, one, as zstd's own workers use
/// every core for one layer and each encoder holds buffers per worker.
pub fn producers(opts: PackOptions) -> usize {
    match opts.compression {
        Compression::Gzip | Compression::None => rayon::current_num_threads(),
        Compression::Zstd => 1,
    }
}

#[cfg(test)]
pub(crate) mod tests;
