//! The object storage backends (`NIXERY_STORAGE_BACKEND=gcs` with
//! `GCS_BUCKET`, or `s3` with `NIXERY_S3_BUCKET`), through the
//! `object_store` crate. Blob GETs are redirected to signed URLs of the
//! bucket (valid for [`SIGNED_URL_LIFETIME`]), unless redirects are off,
//! in which case the shim streams them.
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
//! object ever has a blob's name without its bytes (large blobs go up as
//! multipart uploads in 16 MiB parts, never whole in memory). Credentials
//! and endpoints come from the usual environment: `GOOGLE_APPLICATION_CREDENTIALS`
//! (or the metadata server) for GCS; `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`
//! for S3 and S3-compatible stores.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, WriteMultipart};

use super::{check_key, BlobInfo, BlobWriter, ByteStream, Storage, StorageError};

/// The name prefix of spool folders in the temporary directory
/// ([`crate::scratch::owned`]): a shim removes the ones of processes that
/// are gone when it starts, and its own when it stops.
const SPOOL_PREFIX: &str = "nixery-spool";
use crate::digest::{Digest, HashingWriter};

/// How long a signed blob URL is valid: a client starts its download
/// right after the redirect.
pub const SIGNED_URL_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);
/// Blobs up to this size are uploaded in one request.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The part size of multipart uploads.
const PART_SIZE: usize = 16 << 20;

/// Blobs and caches in an object store bucket.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: &'static str,
    store: Arc<dyn ObjectStore>,
    /// Signs blob URLs for clients to fetch directly; `None`: the shim
    /// streams blobs itself.
    signer: Option<Arc<dyn object_store::signer::Signer>>,
    /// What runs uploads for the synchronous `commit`.
    runtime: tokio::runtime::Handle,
    /// Where blobs are spooled before upload.
    spool: PathBuf,
    counter: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// Transient failures are retried for seconds, not the crate's default of
/// minutes: a registry client is waiting.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 4, retry_timeout: std::time::Duration::from_secs(15), ..Default::default() }
}

fn store_err(what: impl std::fmt::Display, e: object_store::Error) -> StorageError {
    StorageError::Io { path: what.to_string(), source: io::Error::other(e) }
}

impl ObjectStorage {
    /// A backend on `store`, redirecting blob GETs to URLs signed by
    /// `signer` when there is one; `runtime` runs uploads for blob writers.
    pub fn new(
        name: &'static str,
        store: Arc<dyn ObjectStore>,
        signer: Option<Arc<dyn object_store::signer::Signer>>,
        runtime: tokio::runtime::Handle,
    ) -> ObjectStorage {
        let temp = std::env::temp_dir();
        crate::scratch::remove_leftovers(&temp, SPOOL_PREFIX);
        let spool = temp.join(crate::scratch::owned(SPOOL_PREFIX, None));
        ObjectStorage { inner: Arc::new(Inner { name, store, signer, runtime, spool, counter: AtomicU64::new(0) }) }
    }

    /// Google Cloud Storage: `bucket`, with credentials from the service
    /// account file `credentials` when given, else from the environment.
    /// With `redirect`, blob GETs go to signed URLs.
    pub fn gcs(bucket: &str, credentials: Option<&str>, redirect: bool, runtime: tokio::runtime::Handle) -> Result<ObjectStorage, object_store::Error> {
        let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry());
        if let Some(c) = credentials {
            b = b.with_service_account_path(c);
        }
        let store = Arc::new(b.build()?);
        Ok(ObjectStorage::new("gcs", store.clone(), redirect.then_some(store as _), runtime))
    }

    /// Amazon S3 or an S3-compatible store: `bucket`, with the rest
    /// (credentials, region, endpoint) from `AWS_*` variables. With
    /// `redirect`, blob GETs go to signed URLs.
    pub fn s3(bucket: &str, redirect: bool, runtime: tokio::runtime::Handle) -> Result<ObjectStorage, object_store::Error> {
        let b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry());
        let store = Arc::new(b.build()?);
        Ok(ObjectStorage::new("s3", store.clone(), redirect.then_some(store as _), runtime))
    }

    fn blob_path(digest: &Digest) -> ObjectPath {
        ObjectPath::from(format!("blobs/sha256/{}", digest.hex()))
    }

    /// Runs `f` to completion from synchronous code: on the backend's
    /// runtime, or, when called on a runtime worker, in place.
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.inner.runtime.block_on(f))
        } else {
            self.inner.runtime.block_on(f)
        }
    }

    async fn upload(&self, path: &ObjectPath, mut file: File, size: u64, media_type: &str) -> Result<(), StorageError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, media_type.to_string().into());
        let io = |e: io::Error| StorageError::Io { path: format!("spooled blob for {path}"), source: e };
        file.rewind().map_err(io)?;
        if size <= SINGLE_PUT_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf).map_err(io)?;
            let opts = PutOptions { attributes, ..Default::default() };
            self.inner.store.put_opts(path, PutPayload::from(buf), opts).await.map_err(|e| store_err(path, e))?;
            return Ok(());
        }
        let opts = object_store::PutMultipartOptions { attributes, ..Default::default() };
        let upload = self.inner.store.put_multipart_opts(path, opts).await.map_err(|e| store_err(path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            // At most two parts in flight: memory stays bounded.
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(store_err(path, e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(|e| store_err(path, e))?;
        Ok(())
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
        let path = ObjectStorage::blob_path(expected);
        storage.block_on(async {
            // Blobs are immutable: one that is there already is these bytes.
            if storage.stat_blob(expected).await?.is_some() {
                return Ok(());
            }
            storage.upload(&path, file, size, media_type).await
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
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(|e| StorageError::Io { path: tmp.display().to_string(), source: e })?;
        Ok(Box::new(ObjectBlobWriter { storage: self.clone(), tmp, file: Some(HashingWriter::new(BufWriter::with_capacity(1 << 20, file))) }))
    }

    async fn stat_blob(&self, digest: &Digest) -> Result<Option<BlobInfo>, StorageError> {
        let path = ObjectStorage::blob_path(digest);
        match self.inner.store.get_opts(&path, GetOptions { head: true, ..Default::default() }).await {
            Ok(r) => {
                let media_type = r.attributes.get(&Attribute::ContentType).map(|v| v.to_string()).unwrap_or_else(|| "application/octet-stream".into());
                Ok(Some(BlobInfo { size: r.meta.size, media_type }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&path, e)),
        }
    }

    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream, StorageError> {
        if len == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let path = ObjectStorage::blob_path(digest);
        let opts = GetOptions { range: Some((offset..offset + len).into()), ..Default::default() };
        let r = self.inner.store.get_opts(&path, opts).await.map_err(|e| store_err(&path, e))?;
        Ok(Box::pin(r.into_stream().map_err(io::Error::other).boxed()))
    }

    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        let path = ObjectPath::from(format!("meta/{key}"));
        match self.inner.store.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| store_err(&path, e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(&path, e)),
        }
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        check_key(key)?;
        let path = ObjectPath::from(format!("meta/{key}"));
        self.inner.store.put(&path, PutPayload::from(value.to_vec())).await.map_err(|e| store_err(&path, e))?;
        Ok(())
    }

    async fn blob_url(&self, digest: &Digest) -> Result<Option<String>, StorageError> {
        let Some(signer) = &self.inner.signer else { return Ok(None) };
        let path = ObjectStorage::blob_path(digest);
        let url = signer.signed_url(axum::http::Method::GET, &path, SIGNED_URL_LIFETIME).await.map_err(|e| store_err(&path, e))?;
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_in_memory() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let storage = ObjectStorage::new("memory", store, None, tokio::runtime::Handle::current());
        crate::storage::conformance(&storage).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_blobs_go_up_in_parts_and_read_back_in_ranges() {
        let store = Arc::new(object_store::memory::InMemory::new());
        let storage = ObjectStorage::new("memory", store, None, tokio::runtime::Handle::current());
        let data: Vec<u8> = (0..(SINGLE_PUT_MAX as usize + PART_SIZE + 12_345)).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(&data);
        let mut w = storage.blob_writer().unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write_all(chunk).unwrap();
        }
        w.commit(&digest, "application/octet-stream").unwrap();
        assert_eq!(storage.stat_blob(&digest).await.unwrap().unwrap().size, data.len() as u64);
        let mid = PART_SIZE as u64 - 10;
        let got = crate::storage::collect(storage.read_blob(&digest, mid, 20).await.unwrap()).await.unwrap();
        assert_eq!(got, &data[mid as usize..mid as usize + 20]);
        assert!(std::fs::read_dir(&storage.inner.spool).unwrap().next().is_none(), "the spool is empty again");
    }
}
