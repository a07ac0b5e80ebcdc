//! Object storage: blobs and caches in a bucket (`NIXERY_STORAGE_BACKEND=gcs`
//! with `GCS_BUCKET`, or `s3` with `NIXERY_S3_BUCKET`). This module owns
//! what every bucket backend shares: the layout of the bucket, spooling and
//! digest checks, and redirects to signed URLs. What differs per service
//! is behind [`Bucket`] ([`super::gcs`], [`super::s3`]).
//!
//! ```text
//! <bucket>/
//! ├── blobs/sha256/<hex>   layers, configs, manifests; the media type is
//! │                        the object's Content-Type
//! └── meta/<key>           cache entries (layers/…, manifests/…)
//! ```
//!
//! A blob being written is spooled to a local temporary file while it is
//! hashed. `commit` checks the digest first and uploads only then, so no
//! object ever has a blob's name without its bytes (the upload streams
//! from the spool file, never whole in memory). Blob GETs are redirected
//! to signed URLs of the bucket, valid for the configured lifetime, when
//! the bucket can sign; otherwise the shim streams them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{check_key, BlobInfo, BlobWriter, ByteStream, Storage, StorageError};
use crate::digest::{Digest, HashingWriter};

/// The name prefix of spool folders in the temporary directory
/// ([`crate::scratch::owned`]): a shim removes the ones of processes that
/// are gone when it starts, and its own when it stops.
const SPOOL_PREFIX: &str = "nixery-spool";

/// How long a signed blob URL is valid by default
/// (`NIXERY_SIGNED_URL_EXPIRY`): a client starts its download right after
/// the redirect.
pub const SIGNED_URL_LIFETIME: Duration = Duration::from_secs(600);

/// One object storage service, as [`ObjectStorage`] uses it. Keys are
/// object names in the bucket; errors are I/O errors that name the
/// service's complaint.
#[async_trait]
pub trait Bucket: Send + Sync + std::fmt::Debug + 'static {
    /// Size and Content-Type of an object, or `None` when there is none.
    async fn head(&self, key: &str) -> io::Result<Option<BlobInfo>>;
    /// `len` bytes of an object from `offset` (`len` > 0, in range).
    async fn read_range(&self, key: &str, offset: u64, len: u64) -> io::Result<ByteStream>;
    /// A whole small object, or `None`.
    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>>;
    /// Writes a small object, replacing any earlier one.
    async fn put(&self, key: &str, bytes: Vec<u8>) -> io::Result<()>;
    /// Writes an object from `file` (read from its start, `size` bytes),
    /// streaming; the object appears whole or not at all.
    async fn put_file(&self, key: &str, file: File, size: u64, content_type: &str) -> io::Result<()>;
    /// A URL anyone holding it can GET the object from for `lifetime`, or
    /// `None` when this bucket has no way to sign.
    async fn signed_url(&self, key: &str, lifetime: Duration) -> io::Result<Option<String>>;
    /// Removes an object; removing one that is not there succeeds.
    async fn delete(&self, key: &str) -> io::Result<()>;
    /// Fails unless the bucket exists and answers (checked at start).
    async fn check(&self) -> io::Result<()>;
}

/// Blobs and caches in an object store bucket.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    bucket: Arc<dyn Bucket>,
    /// How long signed blob URLs last; `None`: the shim streams blobs
    /// itself.
    redirect: Option<Duration>,
    /// What runs uploads for the synchronous `commit`.
    runtime: tokio::runtime::Handle,
    /// Where blobs are spooled before upload.
    spool: PathBuf,
    /// Blobs whose bytes were hashed (as they were uploaded or served) and
    /// found to be their digest's.
    good: moka::sync::Cache<Digest, ()>,
    counter: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

fn bucket_err(what: impl std::fmt::Display, e: io::Error) -> StorageError {
    StorageError::Io { path: what.to_string(), source: e }
}

impl ObjectStorage {
    /// A backend named `name` on `bucket`. With `redirect`, blob GETs go
    /// to URLs signed for that long, when the bucket can sign; `runtime`
    /// runs uploads for blob writers.
    pub fn new(name: &'static str, bucket: Arc<dyn Bucket>, redirect: Option<Duration>, runtime: tokio::runtime::Handle) -> ObjectStorage {
        let temp = std::env::temp_dir();
        crate::scratch::remove_leftovers(&temp, SPOOL_PREFIX);
        // Without an owner file (a read-only temporary directory) the
        // spool's creation fails, and says so, at the first write.
        let spool = crate::scratch::owned(&temp, SPOOL_PREFIX, None).unwrap_or_else(|_| temp.join(SPOOL_PREFIX));
        ObjectStorage { inner: Arc::new(Inner { name, bucket, redirect, runtime, spool, counter: AtomicU64::new(0), good: moka::sync::Cache::new(1_000_000) }) }
    }

    fn blob_key(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Runs `f` to completion from synchronous code: on the backend's
    /// runtime, or, when called on a runtime worker, in place.
    /// Runs `f` to completion from synchronous code, whatever runs the
    /// caller: in place outside a runtime; on a multi-threaded runtime's
    /// worker, blocking in place; on a current-thread runtime (which may
    /// not block in place), on a thread of its own.
    fn block_on<F: std::future::Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => self.inner.runtime.block_on(f),
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| self.inner.runtime.block_on(f)),
            Ok(_) => std::thread::scope(|s| s.spawn(|| self.inner.runtime.block_on(f)).join().expect("the storage thread panicked")),
        }
    }
}

/// A blob being spooled to a local file.
struct ObjectBlobWriter {
    storage: ObjectStorage,
    tmp: PathBuf,
    file: Option<HashingWriter<BufWriter<File>>>,
}

impl Write for ObjectBlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("writer is open").write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().expect("writer is open").flush()
    }
}

impl Drop for ObjectBlobWriter {
    fn drop(&mut self) {
        self.file.take();
        let _ = std::fs::remove_file(&self.tmp);
    }
}

impl BlobWriter for ObjectBlobWriter {
    fn commit(mut self: Box<Self>, expected: &Digest, media_type: &str) -> Result<(), StorageError> {
        let (file, actual, size) = self.file.take().expect("writer is open").finish();
        let io = |e: io::Error| StorageError::Io { path: self.tmp.display().to_string(), source: e };
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        if &actual != expected {
            return Err(StorageError::DigestMismatch { expected: expected.clone(), actual });
        }
        let storage = self.storage.clone();
        let key = ObjectStorage::blob_key(expected);
        storage.block_on(async {
            // Blobs are immutable: one that is there already is these
            // bytes, unless it has another size (a torn or replaced object).
            if storage.stat_blob(expected).await?.is_some_and(|info| info.size == size) {
                return Ok(());
            }
            storage.inner.bucket.put_file(&key, file, size, media_type).await.map_err(|e| bucket_err(&key, e))?;
            storage.inner.good.insert(expected.clone(), ());
            Ok(())
        })
        // Drop removes the spool file.
    }

    /// Dropping the writer removes the spool file; nothing was uploaded.
    fn cancel(self: Box<Self>) {}
}

#[async_trait]
impl Storage for ObjectStorage {
    fn name(&self) -> &'static str {
        self.inner.name
    }

    fn blob_writer(&self) -> Result<Box<dyn BlobWriter>, StorageError> {
        let spool = &self.inner.spool;
        std::fs::create_dir_all(spool).map_err(|e| StorageError::Io { path: spool.display().to_string(), source: e })?;
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = spool.join(n.to_string());
        // Read and write: commit reads the spool back to upload it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StorageError::Io { path: tmp.display().to_string(), source: e })?;
        Ok(Box::new(ObjectBlobWriter { storage: self.clone(), tmp, file: Some(HashingWriter::new(BufWriter::with_capacity(1 << 20, file))) }))
    }

    async fn stat_blob(&self, digest: &Digest) -> Result<Option<BlobInfo>, StorageError> {
        let key = ObjectStorage::blob_key(digest);
        self.inner.bucket.head(&key).await.map_err(|e| bucket_err(&key, e))
    }

    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        if len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let key = ObjectStorage::blob_key(digest);
        self.inner.bucket.read_range(&key, offset, len).await.map_err(|e| bucket_err(&key, e))
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        let key = format!("meta/{key}");
        self.inner.bucket.get(&key).await.map_err(|e| bucket_err(&key, e))
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        let key = format!("meta/{key}");
        self.inner.bucket.put(&key, value.to_vec()).await.map_err(|e| bucket_err(&key, e))
    }

    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let Some(lifetime) = self.inner.redirect else { return Ok(None) };
        let key = ObjectStorage::blob_key(digest);
        self.inner.bucket.signed_url(&key, lifetime).await.map_err(|e| bucket_err(&key, e))
    }

    async fn known_good(&self, digest: &Digest) -> bool {
        self.inner.good.contains_key(digest)
    }

    async fn mark_good(&self, digest: &Digest) {
        self.inner.good.insert(digest.clone(), ());
    }

    /// Existence: object stores check their objects' integrity themselves
    /// (S3's and GCS's checksums), and reading every blob back would cost
    /// its download; the shim hashes what it serves itself.
    async fn verify_blob(&self, digest: &Digest) -> Result<super::BlobCheck, StorageError> {
        Ok(match self.stat_blob(digest).await? {
            Some(info) => super::BlobCheck::Good(info),
            None => super::BlobCheck::Missing,
        })
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.inner.spool).map(|d| d.flatten().map(|e| e.path().display().to_string()).collect()).unwrap_or_default()
    }

    async fn remove_blob(&self, digest: &Digest) -> Result<(), StorageError> {
        self.inner.good.invalidate(digest);
        let key = ObjectStorage::blob_key(digest);
        self.inner.bucket.delete(&key).await.map_err(|e| bucket_err(&key, e))
    }
}

impl ObjectStorage {
    /// Fails unless the bucket exists and answers: a shim checks at start,
    /// so that a wrong bucket name is an error then, not at the first pull.
    pub async fn check(&self) -> Result<(), StorageError> {
        self.inner.bucket.check().await.map_err(|e| bucket_err(format!("the {} bucket", self.inner.name), e))
    }
}

#[cfg(test)]
impl ObjectStorage {
    /// Whether no blob is being spooled (tests check that commits and
    /// cancels leave nothing).
    pub(crate) fn spool_is_empty(&self) -> bool {
        std::fs::read_dir(&self.inner.spool).map(|mut d| d.next().is_none()).unwrap_or(true)
    }
}
