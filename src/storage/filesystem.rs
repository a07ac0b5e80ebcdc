//! The filesystem storage backend (`NIXERY_STORAGE_BACKEND=filesystem`,
//! `STORAGE_PATH`).
//!
//! ```text
//! STORAGE_PATH/
//! ├── blobs/sha256/<hex>        layers, configs, manifests; media type in
//! │                             the xattr user.nixery.media-type, or in
//! │                             <hex>.media-type where xattrs are missing
//! ├── staging/                  blobs and meta entries being written,
//! │   staging.<token>.<n>       named by their writer (renamed on commit);
//! │   staging.<token>.owner     locked by the writer while it lives
//! └── meta/<key>                cache entries (layers/…, manifests/…)
//! ```
//!
//! Several shims may share one storage directory: a staging file belongs
//! to the process that writes it, and a shim that opens the storage
//! removes only what a process that is gone left behind
//! ([`crate::scratch`]).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{check_key, BlobInfo, BlobWriter, ByteStream, Storage, StorageError};
use crate::digest::{Digest, HashingWriter};

const MEDIA_TYPE_XATTR: &str = "user.nixery.media-type";
const SIDECAR_SUFFIX: &str = ".media-type";
/// The name prefix of staging files ([`crate::scratch::owned`]).
const STAGING_PREFIX: &str = "staging";

/// Blobs and caches in a directory.
#[derive(Debug, Clone)]
pub struct FilesystemStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    /// Whether to try extended attributes at all (tests turn them off to
    /// exercise the fallback).
    use_xattrs: bool,
    counter: AtomicU64,
    /// Blobs whose bytes were found to be their digest's, with the version
    /// of the file that was checked: a file replaced or changed since (its
    /// inode, size or modification time differ) is checked again.
    good: moka::sync::Cache<Digest, FileVersion>,
}

/// What tells one version of a file from another without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileVersion {
    inode: u64,
    size: u64,
    modified: Option<std::time::SystemTime>,
}

impl FileVersion {
    fn of(meta: &fs::Metadata) -> FileVersion {
        use std::os::unix::fs::MetadataExt;
        FileVersion { inode: meta.ino(), size: meta.len(), modified: meta.modified().ok() }
    }
}

/// How many checked blobs are remembered.
const GOOD_BLOBS: u64 = 1_000_000;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.display().to_string(), source }
}

impl FilesystemStorage {
    /// Opens (creating if needed) storage at `root`. Leftovers of
    /// interrupted writes in `staging/` are removed when the process that
    /// wrote them is gone; the staging files of live shims sharing the
    /// storage are left alone.
    pub fn open(root: impl Into<PathBuf>) -> Result<FilesystemStorage, StorageError> {
        Self::open_with(root.into(), true)
    }

    fn open_with(root: PathBuf, use_xattrs: bool) -> Result<FilesystemStorage, StorageError> {
        for d in ["blobs/sha256", "staging", "meta"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let removed = crate::scratch::remove_leftovers(&root.join("staging"), STAGING_PREFIX);
        if removed > 0 {
            tracing::info!(removed, "removed staging files of interrupted writes");
        }
        Ok(FilesystemStorage { inner: Arc::new(Inner { root, use_xattrs, counter: AtomicU64::new(0), good: moka::sync::Cache::new(GOOD_BLOBS) }) })
    }

    /// Whether the blob file at `path` is the version that was checked.
    fn is_good(&self, digest: &Digest, path: &Path) -> bool {
        match (self.inner.good.get(digest), fs::metadata(path)) {
            (Some(v), Ok(m)) => v == FileVersion::of(&m),
            _ => false,
        }
    }

    /// Reads the blob file and compares its digest (unless this version of
    /// it was checked already); a file that is not its digest's is
    /// removed. Synchronous: for commits and blocking tasks.
    fn check_file(&self, digest: &Digest) -> Result<super::BlobCheck, StorageError> {
        let path = self.blob_path(digest);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(super::BlobCheck::Missing),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let info = BlobInfo { size: meta.len(), media_type: self.read_media_type(&path).unwrap_or_else(|| "application/octet-stream".to_string()) };
        if self.is_good(digest, &path) {
            return Ok(super::BlobCheck::Good(info));
        }
        let mut f = File::open(&path).map_err(io_err(&path))?;
        let mut w = HashingWriter::new(io::sink());
        io::copy(&mut f, &mut w).map_err(io_err(&path))?;
        let actual = w.finish().1;
        if &actual == digest {
            self.inner.good.insert(digest.clone(), FileVersion::of(&meta));
            return Ok(super::BlobCheck::Good(info));
        }
        tracing::error!(blob = %digest, %actual, path = %path.display(), "a stored blob does not hold the bytes it is named by: removed, it will be stored again");
        self.remove_file(digest)?;
        Ok(super::BlobCheck::Removed { actual })
    }

    fn remove_file(&self, digest: &Digest) -> Result<(), StorageError> {
        self.inner.good.invalidate(digest);
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// A staging file name of this process, unique within it.
    fn staging_path(&self) -> Result<PathBuf, StorageError> {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let staging = self.inner.root.join("staging");
        crate::scratch::owned(&staging, STAGING_PREFIX, Some(&n.to_string())).map_err(io_err(&staging))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        crate::image::oci::blob_path(&self.inner.root, digest)
    }

    fn read_media_type(&self, path: &Path) -> Option<String> {
        if self.inner.use_xattrs {
            if let Ok(Some(v)) = xattr::get(path, MEDIA_TYPE_XATTR) {
                return String::from_utf8(v).ok();
            }
        }
        fs::read_to_string(sidecar(path)).ok()
    }
}

fn sidecar(blob: &Path) -> PathBuf {
    let mut s = blob.as_os_str().to_owned();
    s.push(SIDECAR_SUFFIX);
    PathBuf::from(s)
}

struct FsBlobWriter {
    storage: FilesystemStorage,
    tmp: PathBuf,
    file: Option<HashingWriter<BufWriter<File>>>,
}

impl FsBlobWriter {
    /// The error says which storage file failed: a caller that copies a
    /// store file into this writer reports its own path beside it, so a
    /// full disk is not mistaken for an unreadable store path.
    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("writing {}: {e}", self.tmp.display()))
    }
}

impl Write for FsBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.file.as_mut().expect("writer is open").write(buf);
        r.map_err(|e| self.named(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.file.as_mut().expect("writer is open").flush();
        r.map_err(|e| self.named(e))
    }
}

impl Drop for FsBlobWriter {
    fn drop(&mut self) {
        // Neither committed nor cancelled (a panic, an early return): clean up.
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl BlobWriter for FsBlobWriter {
    fn commit(mut self: Box<Self>, expected: &Digest, media_type: &str) -> Result<(), StorageError> {
        let file = self.file.take().expect("writer is open");
        let tmp = self.tmp.clone();
        let result = (|| {
            let (file, actual, _) = file.finish();
            let file = file.into_inner().map_err(|e| StorageError::Io { path: tmp.display().to_string(), source: e.into_error() })?;
            file.sync_all().map_err(io_err(&tmp))?;
            if &actual != expected {
                return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
            }
            let dest = self.storage.blob_path(expected);
            // Media type first, so a visible blob always has one.
            let mut tagged = false;
            if self.storage.inner.use_xattrs {
                tagged = xattr::set(&tmp, MEDIA_TYPE_XATTR, media_type.as_bytes()).is_ok();
            }
            if !tagged {
                let side = sidecar(&dest);
                let side_tmp = sidecar(&tmp);
                fs::write(&side_tmp, media_type).map_err(io_err(&side_tmp))?;
                fs::rename(&side_tmp, &side).map_err(io_err(&side))?;
            }
            // Blobs are immutable: one that is there already is kept, if
            // it is these bytes; a corrupt one is replaced.
            if dest.exists() && matches!(self.storage.check_file(expected)?, super::BlobCheck::Good(_)) {
                let _ = fs::remove_file(&tmp);
                return Ok(());
            }
            fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
            if let Ok(m) = fs::metadata(&dest) {
                self.storage.inner.good.insert(expected.clone(), FileVersion::of(&m));
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn cancel(mut self: Box<Self>) {
        self.file.take();
        let _ = fs::remove_file(&self.tmp);
    }
}

#[async_trait]
impl Storage for FilesystemStorage {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn blob_writer(&self) -> Result<Box<dyn BlobWriter>, StorageError> {
        let tmp = self.staging_path()?;
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        Ok(Box::new(FsBlobWriter { storage: self.clone(), tmp, file: Some(HashingWriter::new(BufWriter::with_capacity(1 << 20, file))) }))
    }

    async fn stat_blob(&self, digest: &Digest) -> Result<Option<BlobInfo>, StorageError> {
        let this = self.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || {
            let path = this.blob_path(&digest);
            match fs::metadata(&path) {
                Ok(m) => {
                    Ok(Some(BlobInfo { size: m.len(), media_type: this.read_media_type(&path).unwrap_or_else(|| "application/octet-stream".to_string()) }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&path)(e)),
            }
        })
        .await
        .expect("stat task")
    }

    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        let path = self.blob_path(digest);
        let mut f = tokio::fs::File::open(&path).await.map_err(io_err(&path))?;
        f.seek(io::SeekFrom::Start(offset)).await.map_err(io_err(&path))?;
        let reader = f.take(len);
        Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20)))
    }

    async fn known_good(&self, digest: &Digest) -> bool {
        self.inner.good.contains_key(digest) && self.is_good(digest, &self.blob_path(digest))
    }

    async fn mark_good(&self, digest: &Digest) {
        if let Ok(m) = fs::metadata(self.blob_path(digest)) {
            self.inner.good.insert(digest.clone(), FileVersion::of(&m));
        }
    }

    async fn verify_blob(&self, digest: &Digest) -> Result<super::BlobCheck, StorageError> {
        let this = self.clone();
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || this.check_file(&digest)).await.expect("verify task")
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<(), StorageError> {
        self.remove_file(digest)
    }

    fn leftovers(&self) -> Vec<String> {
        // This process's staging files; its owner file is not one.
        let staging = self.inner.root.join("staging");
        let Ok(own) = crate::scratch::owned(&staging, STAGING_PREFIX, None) else { return Vec::new() };
        let own = own.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        std::fs::read_dir(&staging)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{own}.")) && !n.ends_with(".owner"))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        let path = self.inner.root.join("meta").join(key);
        match tokio::fs::read(&path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        let path = self.inner.root.join("meta").join(key);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_err(parent))?;
        }
        let tmp = self.staging_path()?;
        let written = match tokio::fs::write(&tmp, value).await {
            Ok(()) => tokio::fs::rename(&tmp, &path).await.map_err(io_err(&path)),
            Err(e) => Err(io_err(&tmp)(e)),
        };
        if written.is_err() {
            // A full disk must not leave half an entry behind.
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `p` holds nothing but owner files (crate::scratch).
    fn empty_dir(p: &Path) -> bool {
        fs::read_dir(p).unwrap().all(|e| e.unwrap().path().extension().is_some_and(|x| x == "owner"))
    }

    #[tokio::test]
    async fn conformance_with_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilesystemStorage::open(dir.path()).unwrap();
        super::super::conformance(&s).await;
        assert!(empty_dir(&dir.path().join("staging")), "staging is left clean");
    }

    #[tokio::test]
    async fn conformance_without_xattrs() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilesystemStorage::open_with(dir.path().to_path_buf(), false).unwrap();
        super::super::conformance(&s).await;
        assert!(empty_dir(&dir.path().join("staging")));
        let sidecars = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(SIDECAR_SUFFIX))
            .count();
        assert!(sidecars > 0, "the fallback keeps media types beside the blobs");
    }

    #[tokio::test]
    async fn a_dropped_writer_leaves_nothing_and_reopening_cleans_staging() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilesystemStorage::open(dir.path()).unwrap();
        {
            let mut w = s.blob_writer().unwrap();
            w.write_all(b"half").unwrap();
        }
        assert!(empty_dir(&dir.path().join("staging")));
        // What a killed process left is removed (its owner file is not
        // locked); what a live one (this process, standing in for a second
        // shim) writes is not.
        let staging = dir.path().join("staging");
        fs::write(staging.join(format!("{STAGING_PREFIX}.0123456789abcdef.owner")), b"").unwrap();
        fs::write(staging.join(format!("{STAGING_PREFIX}.0123456789abcdef.3")), b"x").unwrap();
        let live = s.staging_path().unwrap();
        fs::write(&live, b"in flight").unwrap();
        FilesystemStorage::open(dir.path()).unwrap();
        let mut left: Vec<_> = fs::read_dir(&staging).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_none_or(|e| e != "owner")).collect();
        left.sort();
        assert_eq!(left, vec![live]);
    }

    #[tokio::test]
    async fn a_corrupt_blob_is_found_removed_and_replaced_by_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilesystemStorage::open(dir.path()).unwrap();
        let d = crate::storage::put_bytes(&s, b"the right bytes", "application/octet-stream").unwrap();
        let path = s.blob_path(&d);
        fs::write(&path, b"the wrong bytes").unwrap();
        // A commit of the right bytes replaces the wrong ones.
        crate::storage::put_bytes(&s, b"the right bytes", "application/octet-stream").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"the right bytes");
        // Found by a check: removed, and said so.
        fs::write(&path, b"the wrong bytes").unwrap();
        assert_eq!(s.verify_blob(&d).await.unwrap(), crate::storage::BlobCheck::Removed { actual: Digest::of(b"the wrong bytes") });
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_failed_meta_write_leaves_no_staging_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = FilesystemStorage::open(dir.path()).unwrap();
        // The target is a directory: the rename fails after the write.
        fs::create_dir_all(dir.path().join("meta/manifests/x.json/inner")).unwrap();
        let err = s.put_meta("manifests/x.json", b"{}").await.unwrap_err();
        assert!(err.to_string().contains("manifests/x.json"), "{err}");
        assert!(empty_dir(&dir.path().join("staging")));
    }
}
