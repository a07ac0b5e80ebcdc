//! Packing: turning a layer's file tree into a reproducible gzip tar blob,
//! hashed while it is written.
//!
//! This module owns the bytes of a layer: which tar entries, in which
//! order, with which headers, compressed how. It does not decide what goes
//! into a layer ([`crate::layering`]) nor how layers form an image
//! ([`crate::image`]).
//!
//! # Reproducibility
//!
//! The same tree gives the same bytes on every machine and every run:
//!
//! - entries are written depth first with each directory's children sorted
//!   by name (byte order), after the parent directories `nix/` and
//!   `nix/store/` of store paths;
//! - every header has mtime 1, uid and gid 0, no user or group names, and
//!   the file's permission bits (`mode & 0o7777`);
//! - hard links are not recorded: a file that is hard-linked elsewhere (as
//!   `nix-store --optimise` makes them) is written in full, so a layer does
//!   not depend on whether the store it came from was optimised;
//! - the gzip header carries no file name and no time.
//!
//! # One pass, all cores
//!
//! The tar stream goes through a SHA-256 (the layer's `diff_id`), then the
//! gzip encoder, then a second SHA-256 (the blob's digest) and into a file.
//! Nothing holds a whole layer in memory.
//!
//! The gzip encoder compresses pigz-style: the stream is cut into chunks of
//! [`GZIP_CHUNK`] bytes, each compressed on its own core as raw deflate
//! primed with the previous chunk's last 32 KiB (so the ratio stays close
//! to one stream's) and ended with a sync flush; the chunks are written in
//! order behind one gzip header, with the CRC-32 and length of the whole.
//! Chunk boundaries are fixed, so the bytes never depend on the number of
//! threads. Layers are packed side by side, and a large layer still keeps
//! every core busy.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use flate2::{Compress, FlushCompress, Status};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The fixed modification time of every entry (1 second after the epoch,
/// as Nix uses for store paths).
pub const ENTRY_MTIME: u64 = 1;
/// The default gzip level. Level 5 rather than gzip's usual 6: with
/// zlib-rs it packs 4-18 % faster for 0.2-0.3 % more bytes (BENCHMARKS.md).
/// Part of the output format: changing it changes every layer digest.
pub const DEFAULT_GZIP_LEVEL: u32 = 5;
/// The input size of one independently compressed gzip chunk. Part of the
/// output format: changing it changes every layer digest.
pub const GZIP_CHUNK: usize = 1 << 20;
/// The deflate window: how much of the previous chunk primes the next.
const DICTIONARY: usize = 32 * 1024;

/// Errors while packing a layer.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: unsupported file type (only files, directories and symlinks can be packed)")]
    UnsupportedFileType(PathBuf),
    #[error("{0}: {1}")]
    Walk(PathBuf, walkdir::Error),
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> PackError {
    let path = path.into();
    move |source| PackError::Io { path, source }
}

/// A sha256 digest in the `sha256:<hex>` form OCI uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Digest(pub String);

impl Digest {
    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }
    fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("sha256:{:x}", h.finalize()))
    }
    /// The hex part, as used for blob file names.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One entry of a synthetic tree (the root layer), with a path relative to
/// the image's root and no leading slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    /// A directory with these permission bits.
    Dir { path: String, mode: u32 },
    /// A symbolic link.
    Symlink { path: String, target: String },
}

impl TreeEntry {
    /// The entry's path in the image.
    pub fn path(&self) -> &str {
        match self {
            TreeEntry::Dir { path, .. } | TreeEntry::Symlink { path, .. } => path,
        }
    }
}

/// What a layer holds.
#[derive(Debug, Clone)]
pub enum LayerContent {
    /// Store paths, each packed whole under `nix/store/`. Sorted on packing.
    StorePaths(Vec<String>),
    /// Synthetic entries (directories and symlinks). Sorted on packing.
    Tree(Vec<TreeEntry>),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (`tar+gzip`), which every client reads. The default.
    #[default]
    Gzip,
    /// zstd (`tar+zstd`), for Docker 23+, containerd 1.5+, podman 4+.
    Zstd,
}

impl Compression {
    /// The level used when none is given: gzip 5, zstd 3.
    pub fn default_level(self) -> u32 {
        match self {
            Compression::Gzip => DEFAULT_GZIP_LEVEL,
            Compression::Zstd => 3,
        }
    }
    /// The name, as in `lib.nix` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!("unknown compression {s:?} (expected gzip or zstd)")),
        }
    }
}

/// How layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PackOptions {
    pub compression: Compression,
    /// gzip: 0 to 9; zstd: 1 to 19.
    pub level: u32,
}

impl PackOptions {
    /// `compression` at `level`, or at its default level.
    pub fn new(compression: Compression, level: Option<u32>) -> PackOptions {
        let level = level.unwrap_or(compression.default_level());
        let level = match compression {
            Compression::Gzip => level.min(9),
            Compression::Zstd => level.clamp(1, 19),
        };
        PackOptions { compression, level }
    }
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions::new(Compression::Gzip, None)
    }
}

/// A writer that hashes and counts what passes through it (layers as they
/// are packed; blobs as storage writes them).
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }
    /// The inner writer, the SHA-256 digest and the byte count of what
    /// was written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A deterministic tar header: GNU format, mtime [`ENTRY_MTIME`], uid and
/// gid 0, no user or group names, the permission bits of `mode`.
pub fn tar_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode & 0o7777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(ENTRY_MTIME);
    h.set_size(size);
    h
}

/// Writes deterministic tar entries.
struct TarWriter<W: Write> {
    tar: tar::Builder<W>,
}

impl<W: Write> TarWriter<W> {
    fn new(w: W) -> Self {
        TarWriter { tar: tar::Builder::new(w) }
    }

    fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut h = tar_header(tar::EntryType::Directory, mode, 0);
        self.tar.append_data(&mut h, path, io::empty())
    }

    fn symlink(&mut self, path: &str, target: &Path) -> io::Result<()> {
        let mut h = tar_header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)
    }

    fn file(&mut self, path: &str, mode: u32, size: u64, data: impl io::Read) -> io::Result<()> {
        let mut h = tar_header(tar::EntryType::Regular, mode, size);
        self.tar.append_data(&mut h, path, data)
    }

    /// Writes `source` (a file, directory or symlink on disk) and, for a
    /// directory, everything below it, under the tar path `name`.
    fn tree(&mut self, source: &Path, name: &str) -> Result<(), PackError> {
        let walk = walkdir::WalkDir::new(source).follow_links(false).follow_root_links(false).sort_by(|a, b| a.file_name().cmp(b.file_name()));
        for entry in walk {
            let entry = entry.map_err(|e| PackError::Walk(source.to_path_buf(), e))?;
            let rel = entry.path().strip_prefix(source).expect("walkdir stays below its root");
            let tar_path = if rel.as_os_str().is_empty() {
                name.to_string()
            } else {
                format!("{name}/{}", rel.to_str().ok_or_else(|| PackError::UnsupportedFileType(entry.path().to_path_buf()))?)
            };
            let meta = entry.metadata().map_err(|e| PackError::Walk(entry.path().to_path_buf(), e))?;
            let ft = meta.file_type();
            let path = entry.path();
            if ft.is_dir() {
                self.dir(&tar_path, meta.mode()).map_err(io_err(path))?;
            } else if ft.is_symlink() {
                let target = fs::read_link(path).map_err(io_err(path))?;
                self.symlink(&tar_path, &target).map_err(io_err(path))?;
            } else if ft.is_file() {
                let f = File::open(path).map_err(io_err(path))?;
                self.file(&tar_path, meta.permissions().mode(), meta.len(), f).map_err(io_err(path))?;
            } else {
                return Err(PackError::UnsupportedFileType(path.to_path_buf()));
            }
        }
        Ok(())
    }

    fn into_inner(self) -> io::Result<W> {
        self.tar.into_inner()
    }
}

/// Writes the uncompressed tar of `content` to `out`.
pub fn write_tar<W: Write>(content: &LayerContent, out: W) -> Result<W, PackError> {
    let mut tw = TarWriter::new(out);
    match content {
        LayerContent::StorePaths(paths) => {
            let mut paths: Vec<&String> = paths.iter().collect();
            paths.sort();
            paths.dedup();
            if !paths.is_empty() {
                tw.dir("nix", 0o755).map_err(io_err("nix"))?;
                tw.dir("nix/store", 0o755).map_err(io_err("nix/store"))?;
            }
            for p in paths {
                let name = p.trim_start_matches('/');
                tw.tree(Path::new(p), name)?;
            }
        }
        LayerContent::Tree(entries) => {
            let mut entries: Vec<&TreeEntry> = entries.iter().collect();
            entries.sort_by(|a, b| tar_order(a.path(), b.path()));
            for e in entries {
                match e {
                    TreeEntry::Dir { path, mode } => tw.dir(path, *mode).map_err(io_err(path))?,
                    TreeEntry::Symlink { path, target } => tw.symlink(path, Path::new(target)).map_err(io_err(path))?,
                }
            }
        }
    }
    tw.into_inner().map_err(io_err("<tar>"))
}

/// Orders paths as a sorted depth-first walk does: component by component,
/// so `a/b` comes before `a.c` and right after `a`.
fn tar_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

/// A gzip writer that compresses fixed-size chunks on rayon's thread pool
/// (see the module documentation). Output is identical whatever the number
/// of threads, including none: on a rayon worker thread, chunks are
/// compressed inline, so nested use cannot deadlock.
pub struct ParallelGzWriter<W: Write> {
    inner: W,
    level: u32,
    chunk: Vec<u8>,
    dictionary: Vec<u8>,
    crc: crc32fast::Hasher,
    length: u64,
    pending: VecDeque<mpsc::Receiver<io::Result<Vec<u8>>>>,
    max_pending: usize,
}

impl<W: Write> std::fmt::Debug for ParallelGzWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelGzWriter").field("level", &self.level).field("length", &self.length).field("pending", &self.pending.len()).finish()
    }
}

impl<W: Write> ParallelGzWriter<W> {
    /// Starts a gzip stream (no file name, no time) at `level` (0 to 9).
    pub fn new(mut inner: W, level: u32) -> io::Result<Self> {
        // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown).
        inner.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
        Ok(ParallelGzWriter {
            inner,
            level: level.min(9),
            chunk: Vec::with_capacity(GZIP_CHUNK),
            dictionary: Vec::new(),
            crc: crc32fast::Hasher::new(),
            length: 0,
            pending: VecDeque::new(),
            max_pending: 2 * rayon::current_num_threads() + 1,
        })
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(&mut self.chunk, if last { Vec::new() } else { Vec::with_capacity(GZIP_CHUNK) });
        let tail = input.len().saturating_sub(DICTIONARY);
        let dictionary = std::mem::replace(&mut self.dictionary, input[tail..].to_vec());
        let level = self.level;
        let (tx, rx) = mpsc::sync_channel(1);
        if rayon::current_thread_index().is_some() {
            let _ = tx.send(compress_chunk(&input, &dictionary, level, last));
        } else {
            rayon::spawn(move || {
                let _ = tx.send(compress_chunk(&input, &dictionary, level, last));
            });
        }
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let rx = self.pending.pop_front().expect("a pending chunk");
        let bytes = rx.recv().map_err(|_| io::Error::other("a compression task failed"))??;
        self.inner.write_all(&bytes)
    }

    /// Compresses what is left, writes the trailer and returns the inner
    /// writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        let crc = std::mem::take(&mut self.crc).finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&(self.length as u32).to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(GZIP_CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.length += n as u64;
        if self.chunk.len() == GZIP_CHUNK {
            self.submit(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of one chunk, primed with `dictionary`, ending with a sync
/// flush (byte-aligned, not final) or, for the last chunk, the final block.
fn compress_chunk(input: &[u8], dictionary: &[u8], level: u32, last: bool) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dictionary.is_empty() {
        c.set_dictionary(dictionary).map_err(io::Error::other)?;
    }
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        let room_left = out.len() < out.capacity();
        match status {
            Status::StreamEnd => return Ok(out),
            _ if !last && all_in && room_left => return Ok(out),
            _ => out.reserve(out.capacity().max(64 * 1024)),
        }
    }
}

/// A compressing writer of either kind.
enum Compressor<W: Write> {
    Gzip(ParallelGzWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    fn new(out: W, opts: PackOptions) -> io::Result<Self> {
        Ok(match opts.compression {
            Compression::Gzip => Compressor::Gzip(ParallelGzWriter::new(out, opts.level)?),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, opts.level as i32)?;
                e.include_checksum(false)?;
                e.include_contentsize(false)?;
                // zstd's multithreaded output is the same for any number
                // of workers from one up, so it never depends on the machine.
                e.multithread(rayon::current_num_threads().max(1) as u32)?;
                Compressor::Zstd(e)
            }
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(g) => g.write(buf),
            Compressor::Zstd(z) => z.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Packs `content` as a compressed tar into `out`, returning the writer
/// and the layer's digests. `out` should be buffered.
pub fn pack_to_writer<W: Write>(content: &LayerContent, out: W, opts: PackOptions) -> Result<(W, PackedLayer), PackError> {
    let blob = HashingWriter::new(out);
    let compressor = Compressor::new(blob, opts).map_err(io_err("<compressor>"))?;
    let tar = write_tar(content, HashingWriter::new(compressor))?;
    let (compressor, diff_id, tar_size) = tar.finish();
    let blob = compressor.finish().map_err(io_err("<compressor>"))?;
    let (out, digest, size) = blob.finish();
    Ok((out, PackedLayer { digest, diff_id, size, tar_size, compression: opts.compression }))
}

/// Packs `content` into a gzip tar written to `dest`, returning its digests.
/// `dest` is created (truncated if it exists).
pub fn pack_to_file(content: &LayerContent, dest: &Path, opts: PackOptions) -> Result<PackedLayer, PackError> {
    let file = File::create(dest).map_err(io_err(dest))?;
    let (buf, packed) = pack_to_writer(content, BufWriter::with_capacity(1 << 20, file), opts)?;
    buf.into_inner().map_err(|e| PackError::Io { path: dest.to_path_buf(), source: e.into_error() })?;
    Ok(packed)
}

/// How many layers to pack at once: for gzip, one per core (chunks of all
/// of them share rayon's pool); for zstd, one, as zstd's own workers use
/// every core for one layer and each encoder holds buffers per worker.
pub fn producers(opts: PackOptions) -> usize {
    match opts.compression {
        Compression::Gzip => rayon::current_num_threads(),
        Compression::Zstd => 1,
    }
}

/// Runs `f` on every item, on `threads` plain threads, and returns the
/// results in order. Layer producers run here rather than on rayon's
/// workers, which stay free for compressing chunks.
pub fn run_parallel<T: Send, R: Send>(items: Vec<T>, threads: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let threads = threads.clamp(1, n.max(1));
    let slots: Vec<std::sync::Mutex<Option<T>>> = items.into_iter().map(|t| std::sync::Mutex::new(Some(t))).collect();
    let results: Vec<std::sync::Mutex<Option<R>>> = (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let item = slots[i].lock().expect("slot").take().expect("taken once");
                let r = f(item);
                *results[i].lock().expect("result") = Some(r);
            });
        }
    });
    results.into_iter().map(|r| r.into_inner().expect("result").expect("every item ran")).collect()
}

/// Packs every layer in parallel into `blob_dir/<hex digest>`, each first
/// written under a temporary name and renamed once its digest is known.
/// Returns the packed layers in the order given.
pub fn pack_all(contents: &[LayerContent], blob_dir: &Path, opts: PackOptions) -> Result<Vec<PackedLayer>, PackError> {
    fs::create_dir_all(blob_dir).map_err(io_err(blob_dir))?;
    let jobs: Vec<(usize, &LayerContent)> = contents.iter().enumerate().collect();
    run_parallel(jobs, producers(opts), |(i, content)| {
        let tmp = blob_dir.join(format!(".packing-{}-{i}", std::process::id()));
        let packed = pack_to_file(content, &tmp, opts).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        let dest = blob_dir.join(packed.digest.hex());
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        Ok(packed)
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tree_fixture(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("share/doc")).unwrap();
        fs::write(dir.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
        fs::set_permissions(dir.join("bin/hello"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::write(dir.join("share/doc/README"), b"read me").unwrap();
        fs::write(dir.join("a.txt"), vec![b'x'; 10_000]).unwrap();
        std::os::unix::fs::symlink("bin/hello", dir.join("link")).unwrap();
        let long = "l".repeat(150);
        fs::write(dir.join(&long), b"long name").unwrap();
        std::os::unix::fs::symlink(format!("/some/where/{}", "t".repeat(120)), dir.join("longlink")).unwrap();
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, u64, String)> {
        let mut ar = tar::Archive::new(tar_bytes);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                assert!(h.username().unwrap().unwrap_or("").is_empty());
                assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
                (e.path().unwrap().to_string_lossy().into_owned(), h.entry_type(), h.mode().unwrap(), h.mtime().unwrap(), body.len() as u64, link)
            })
            .collect()
    }

    #[test]
    fn tar_entries_are_sorted_with_fixed_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("0123456789abcdfghijklmnpqrsvwxyz-pkg");
        tree_fixture(&src);
        // Pack via a fake store path: write_tar takes absolute paths.
        let content = LayerContent::StorePaths(vec![src.to_str().unwrap().to_string()]);
        let bytes = write_tar(&content, Vec::new()).unwrap();
        let es = entries(&bytes);
        let prefix = src.to_str().unwrap().trim_start_matches('/').to_string();
        let names: Vec<String> = es.iter().map(|e| e.0.clone()).collect();
        let mut want = vec!["nix".to_string(), "nix/store".to_string(), prefix.clone()];
        for n in ["a.txt", "bin", "bin/hello", "link", &"l".repeat(150), "longlink", "share", "share/doc", "share/doc/README"] {
            want.push(format!("{prefix}/{n}"));
        }
        assert_eq!(names, want);
        for e in &es {
            assert_eq!(e.3, ENTRY_MTIME, "{}", e.0);
        }
        let hello = es.iter().find(|e| e.0.ends_with("bin/hello")).unwrap();
        assert_eq!((hello.2, hello.4), (0o555, 21));
        let link = es.iter().find(|e| e.0.ends_with("/longlink")).unwrap();
        assert_eq!(link.1, tar::EntryType::Symlink);
        assert!(link.5.ends_with(&"t".repeat(120)));
    }

    #[test]
    fn packing_is_reproducible_and_hashes_match_the_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("0123456789abcdfghijklmnpqrsvwxyz-pkg");
        tree_fixture(&src);
        let content = LayerContent::StorePaths(vec![src.to_str().unwrap().to_string()]);
        let a = pack_to_file(&content, &tmp.path().join("a.tgz"), PackOptions::default()).unwrap();
        let b = pack_to_file(&content, &tmp.path().join("b.tgz"), PackOptions::default()).unwrap();
        assert_eq!(a, b);
        let blob = fs::read(tmp.path().join("a.tgz")).unwrap();
        assert_eq!(Digest::of(&blob), a.digest);
        assert_eq!(blob.len() as u64, a.size);
        // gzip header: no mtime (bytes 4..8), no FNAME flag.
        assert_eq!(&blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(blob[3] & 0x08, 0);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[..]).read_to_end(&mut tar).unwrap();
        assert_eq!(Digest::of(&tar), a.diff_id);
        assert_eq!(tar.len() as u64, a.tar_size);
    }

    /// Bytes that compress somewhat, like binaries: a mix of runs and noise.
    fn sample_bytes(n: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if (i / 4096) % 3 == 0 { (i % 7) as u8 } else { (x >> 16) as u8 }
            })
            .collect()
    }

    fn gzip_with_threads(data: &[u8], threads: usize) -> Vec<u8> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        // A plain thread as the producer, as pack_all runs them.
        pool.install(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut w = ParallelGzWriter::new(Vec::new(), 6).unwrap();
                    for piece in data.chunks(70_000) {
                        w.write_all(piece).unwrap();
                    }
                    w.finish().unwrap()
                })
                .join()
                .unwrap()
            })
        })
    }

    #[test]
    fn parallel_gzip_is_valid_and_independent_of_threads() {
        for len in [0, 1000, GZIP_CHUNK, 3 * GZIP_CHUNK + 12345] {
            let data = sample_bytes(len);
            let one = gzip_with_threads(&data, 1);
            let four = gzip_with_threads(&data, 4);
            assert_eq!(one, four, "{len} bytes: same output whatever the threads");
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&one[..]).read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{len} bytes round-trip");
            // A single-stream gzip of the same data is not much smaller.
            let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            single.write_all(&data).unwrap();
            let single = single.finish().unwrap();
            assert!(one.len() as f64 <= single.len() as f64 * 1.03 + 64.0, "{} vs {}", one.len(), single.len());
        }
        // Compressing inline on a rayon worker gives the same bytes.
        let data = sample_bytes(2 * GZIP_CHUNK + 7);
        let inline = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| {
            let mut w = ParallelGzWriter::new(Vec::new(), 6).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap()
        });
        assert_eq!(inline, gzip_with_threads(&data, 2));
    }

    #[test]
    fn zstd_layers_round_trip_and_do_not_depend_on_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("0123456789abcdfghijklmnpqrsvwxyz-pkg");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("data"), sample_bytes(3 * GZIP_CHUNK)).unwrap();
        let content = LayerContent::StorePaths(vec![src.to_str().unwrap().to_string()]);
        let opts = PackOptions::new(Compression::Zstd, None);
        let with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| pack_to_writer(&content, Vec::new(), opts).unwrap())
        };
        let (one, p1) = with(1);
        let (three, p3) = with(3);
        assert_eq!(one, three);
        assert_eq!(p1, p3);
        assert_eq!(p1.compression, Compression::Zstd);
        let tar = zstd::stream::decode_all(&one[..]).unwrap();
        assert_eq!(Digest::of(&tar), p1.diff_id);
        assert_eq!(Digest::of(&one), p1.digest);
    }

    #[test]
    fn run_parallel_keeps_order() {
        for threads in [1, 3] {
            let out = run_parallel((0..50).collect(), threads, |i: u32| i * 2);
            assert_eq!(out, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        }
        assert!(run_parallel(Vec::<u8>::new(), 2, |x| x).is_empty());
    }

    #[test]
    fn a_store_path_that_is_a_symlink_stays_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("0123456789abcdfghijklmnpqrsvwxyz-target");
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("big"), vec![0u8; 10_000]).unwrap();
        let link = tmp.path().join("1123456789abcdfghijklmnpqrsvwxyz-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let bytes = write_tar(&LayerContent::StorePaths(vec![link.to_str().unwrap().to_string()]), Vec::new()).unwrap();
        let es = entries(&bytes);
        assert_eq!(es.len(), 3, "nix, nix/store and the link itself: {es:?}");
        assert_eq!(es[2].1, tar::EntryType::Symlink);
        assert_eq!(es[2].5, target.to_str().unwrap());
    }

    #[test]
    fn hard_links_are_written_as_files() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("0123456789abcdfghijklmnpqrsvwxyz-pkg");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a"), b"same").unwrap();
        let content = LayerContent::StorePaths(vec![src.to_str().unwrap().to_string()]);
        let before = write_tar(&content, Vec::new()).unwrap();
        fs::hard_link(src.join("a"), tmp.path().join("elsewhere")).unwrap();
        assert_eq!(before, write_tar(&content, Vec::new()).unwrap());
    }

    #[test]
    fn tree_entries_are_sorted_like_a_walk() {
        let content = LayerContent::Tree(vec![
            TreeEntry::Symlink { path: "bin/sh".into(), target: "/nix/store/x/bin/sh".into() },
            TreeEntry::Dir { path: "bin.d".into(), mode: 0o755 },
            TreeEntry::Dir { path: "tmp".into(), mode: 0o1777 },
            TreeEntry::Dir { path: "bin".into(), mode: 0o755 },
        ]);
        let bytes = write_tar(&content, Vec::new()).unwrap();
        let es = entries(&bytes);
        let names: Vec<&str> = es.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/sh", "bin.d", "tmp"]);
        assert_eq!(es[3].2, 0o1777);
    }

    #[test]
    fn pack_all_names_blobs_by_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let contents = vec![
            LayerContent::Tree(vec![TreeEntry::Dir { path: "tmp".into(), mode: 0o1777 }]),
            LayerContent::Tree(vec![TreeEntry::Dir { path: "etc".into(), mode: 0o755 }]),
        ];
        let blobs = tmp.path().join("blobs");
        let packed = pack_all(&contents, &blobs, PackOptions::default()).unwrap();
        assert_eq!(packed.len(), 2);
        for p in &packed {
            let bytes = fs::read(blobs.join(p.digest.hex())).unwrap();
            assert_eq!(Digest::of(&bytes), p.digest);
        }
        assert_eq!(fs::read_dir(&blobs).unwrap().count(), 2, "no temporary files are left");
    }
}
