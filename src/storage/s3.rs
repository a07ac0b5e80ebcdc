//! The S3 backend's [`Bucket`]: Amazon S3 and S3-compatible stores through
//! the `object_store` crate (any `object_store` store works, which is how
//! the unit tests run it in memory). Credentials and endpoint come from the
//! usual environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`. Blobs larger than
//! [`SINGLE_PUT_MAX`] go up as multipart uploads in [`PART_SIZE`] parts,
//! at most two in flight.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, WriteMultipart};

use super::object::Bucket;
use super::{BlobInfo, ByteStream};

/// Blobs up to this size are uploaded in one request.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// The part size of multipart uploads.
const PART_SIZE: usize = 16 << 20;

/// A bucket of an `object_store` store, signing URLs when it can.
#[derive(Debug)]
pub struct StoreBucket {
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<dyn object_store::signer::Signer>>,
}

/// Transient failures are retried for seconds, not the crate's default of
/// minutes: a registry client is waiting.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig { max_retries: 4, retry_timeout: Duration::from_secs(15), ..Default::default() }
}

fn err(e: object_store::Error) -> io::Error {
    io::Error::other(e)
}

impl StoreBucket {
    /// Any store; `signer` signs blob URLs when given.
    pub fn new(store: Arc<dyn ObjectStore>, signer: Option<Arc<dyn object_store::signer::Signer>>) -> StoreBucket {
        StoreBucket { store, signer }
    }

    /// The S3 bucket `bucket`, the rest from `AWS_*` variables.
    pub fn s3(bucket: &str) -> Result<StoreBucket, object_store::Error> {
        let store = Arc::new(object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry()).build()?);
        Ok(StoreBucket::new(store.clone(), Some(store)))
    }
}

#[async_trait]
impl Bucket for StoreBucket {
    async fn head(&self, key: &str) -> io::Result<Option<BlobInfo>> {
        match self.store.get_opts(&ObjectPath::from(key), GetOptions { head: true, ..Default::default() }).await {
            Ok(r) => {
                let media_type = r.attributes.get(&Attribute::ContentType).map(|v| v.to_string()).unwrap_or_else(|| "application/octet-stream".into());
                Ok(Some(BlobInfo { size: r.meta.size, media_type }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> io::Result<ByteStream> {
        let opts = GetOptions { range: Some((offset..offset + len).into()), ..Default::default() };
        let r = self.store.get_opts(&ObjectPath::from(key), opts).await.map_err(err)?;
        Ok(Box::pin(r.into_stream().map_err(io::Error::other).boxed()))
    }

    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.store.get(&ObjectPath::from(key)).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(err)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> io::Result<()> {
        self.store.put(&ObjectPath::from(key), PutPayload::from(bytes)).await.map_err(err)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    /// A listing of at most one key: a missing bucket (or one these
    /// credentials cannot read) fails it, an empty one does not.
    async fn check(&self) -> io::Result<()> {
        use futures::StreamExt;
        let mut listing = self.store.list(Some(&ObjectPath::from("meta")));
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(err(e)),
        }
    }

    async fn put_file(&self, key: &str, mut file: File, size: u64, content_type: &str) -> io::Result<()> {
        let path = ObjectPath::from(key);
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, content_type.to_string().into());
        file.rewind()?;
        if size <= SINGLE_PUT_MAX {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf)?;
            let opts = PutOptions { attributes, ..Default::default() };
            self.store.put_opts(&path, PutPayload::from(buf), opts).await.map_err(err)?;
            return Ok(());
        }
        let opts = object_store::PutMultipartOptions { attributes, ..Default::default() };
        let upload = self.store.put_multipart_opts(&path, opts).await.map_err(err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; PART_SIZE];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e);
                }
            };
            // At most two parts in flight: memory stays bounded.
            if let Err(e) = writer.wait_for_capacity(2).await {
                let _ = writer.abort().await;
                return Err(err(e));
            }
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(err)?;
        Ok(())
    }

    async fn signed_url(&self, key: &str, lifetime: Duration) -> io::Result<Option<String>> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let url = signer.signed_url(axum::http::Method::GET, &ObjectPath::from(key), lifetime).await.map_err(err)?;
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::digest::Digest;
    use crate::storage::object::ObjectStorage;
    use crate::storage::Storage;

    fn in_memory() -> ObjectStorage {
        let bucket = StoreBucket::new(Arc::new(object_store::memory::InMemory::new()), None);
        ObjectStorage::new("memory", Arc::new(bucket), None, tokio::runtime::Handle::current())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_in_memory() {
        crate::storage::conformance(&in_memory()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_blobs_go_up_in_parts_and_read_back_in_ranges() {
        let storage = in_memory();
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
        assert!(storage.spool_is_empty(), "the spool is empty again");
    }
}
