//! Storage: where the registry shim keeps blobs (layers, configs,
//! manifests) and its caches, behind one trait so that backends (the
//! filesystem, object storage: GCS and S3) are interchangeable and several
//! shims can share one store.
//!
//! # Semantics every backend keeps
//!
//! - A blob is written through a [`BlobWriter`] and becomes visible only on
//!   [`BlobWriter::commit`], which checks the digest of what was written
//!   against the expected one first. A failed or cancelled write leaves
//!   nothing behind.
//! - Blobs are immutable and addressed by digest; writing one that exists
//!   is a success that keeps it, unless its bytes are not its digest's
//!   (a bit flipped on disk): then the new bytes replace it.
//! - What storage returns is checked before it is trusted: a blob's bytes
//!   against its digest ([`Storage::verify_blob`], and as they are served),
//!   a cache entry's sizes against the blob. A blob found corrupt is
//!   removed, so that what needs it packs or stores it again.
//! - Each blob carries its media type (metadata).
//! - Cache entries ([`Storage::get_meta`], [`Storage::put_meta`]) are small
//!   documents under a key; writes replace them atomically.
//!
//! [`conformance`] is the suite every backend runs (public, so that the
//! integration tests run it against GCS's and S3's emulators).

use std::io::{self, Write};
use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

use crate::digest::Digest;

pub mod filesystem;
pub mod gcs;
pub mod object;
pub mod s3;

/// Errors from a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Reading or writing failed.
    #[error("storage I/O on {path}: {source}")]
    Io {
        /// The file or object.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// What was written is not the blob it was meant to be.
    #[error("digest mismatch: expected {expected}, wrote {actual}")]
    DigestMismatch {
        /// The digest the writer was committed as.
        expected: Digest,
        /// The digest of what was written.
        actual: Digest,
    },
    /// A cache key that could escape its folder.
    #[error("invalid storage key {0:?}")]
    InvalidKey(String),
}

/// What is known of a stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// The media type it was stored with.
    pub media_type: String,
}

/// What [`Storage::verify_blob`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobCheck {
    /// The blob holds the bytes its digest names.
    Good(BlobInfo),
    /// There is no such blob.
    Missing,
    /// It held other bytes, and was removed.
    Removed {
        /// The digest of what it held.
        actual: Digest,
    },
}

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<bytes::Bytes>> + Send>>;

/// A blob being written. Plain `Write`, so packing threads can write into
/// it directly; nothing is visible until `commit`.
pub trait BlobWriter: Write + Send {
    /// Checks that what was written has digest `expected`, then makes the
    /// blob visible with `media_type`.
    fn commit(self: Box<Self>, expected: &Digest, media_type: &str) -> Result<(), StorageError>;
    /// Discards what was written.
    fn cancel(self: Box<Self>);
}

/// A storage backend. Every backend keeps these semantics, which
/// [`conformance`] checks (every backend runs it: the filesystem, an
/// in-memory object store, and GCS and S3 against their emulators).
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs (`filesystem`, `gcs`, …).
    fn name(&self) -> &'static str;

    /// Starts writing a blob: nothing is visible until the writer's
    /// [`BlobWriter::commit`], which checks the digest of what was
    /// written and, for a blob that exists, keeps it unless its bytes are
    /// not its digest's (then replaces it). Committing works from any
    /// thread, inside an async runtime of any flavour or outside one. A
    /// writer dropped without a commit leaves nothing behind.
    fn blob_writer(&self) -> Result<Box<dyn BlobWriter>, StorageError>;

    /// Size and media type of a blob, or `None` when it is not stored.
    /// Cheap (a stat, a HEAD): no bytes are read.
    async fn stat_blob(&self, digest: &Digest) -> Result<Option<BlobInfo>, StorageError>;

    /// The bytes of a blob from `offset`, `len` bytes long (the caller has
    /// checked the range against [`Storage::stat_blob`]); a range past the
    /// end gives fewer bytes, never an error.
    async fn read_blob(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream, StorageError>;

    /// A cache entry, or `None`. The key is checked ([`check_key`]).
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;

    /// Writes a cache entry, replacing any earlier one atomically: a reader
    /// sees the old value or the new, never half of one.
    async fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;

    /// A URL clients can fetch the blob from themselves (a signed object
    /// storage URL), or `None` when blobs are served through the shim.
    async fn blob_url(&self, _digest: &Digest) -> Result<Option<String>, StorageError> {
        Ok(None)
    }

    /// What writes left in this process's scratch (staging files, spool
    /// files), by name: empty whenever every writer has committed or been
    /// dropped.
    fn leftovers(&self) -> Vec<String>;

    /// Whether the blob's bytes are known to be its digest's, since they
    /// were written or last checked, without reading them. Readers that
    /// stream a blob that is not known good hash it as they go.
    async fn known_good(&self, digest: &Digest) -> bool;

    /// Records that the blob's bytes were found to be its digest's (by a
    /// reader that hashed them).
    async fn mark_good(&self, digest: &Digest);

    /// Checks that the blob holds the bytes its digest names, as far as
    /// the backend can without undue cost (the filesystem reads and hashes
    /// it, once per version of the file; object storage, whose stores check
    /// their objects' integrity themselves, compares sizes); removes it
    /// when it does not.
    async fn verify_blob(&self, digest: &Digest) -> Result<BlobCheck, StorageError>;

    /// Removes a blob (one found corrupt). Removing one that is not there
    /// succeeds.
    async fn remove_blob(&self, digest: &Digest) -> Result<(), StorageError>;
}

/// Reads a whole blob and compares its digest; the digest of what it
/// holds, or `None` when it is not stored.
pub async fn hash_blob(storage: &dyn Storage, digest: &Digest) -> Result<Option<(BlobInfo, Digest)>, StorageError> {
    use futures::StreamExt;
    let Some(info) = storage.stat_blob(digest).await? else { return Ok(None) };
    let mut stream = storage.read_blob(digest, 0, info.size).await?;
    let mut hasher = crate::digest::HashingWriter::new(io::sink());
    let io_err = |source| StorageError::Io { path: format!("blob {digest}"), source };
    while let Some(chunk) = stream.next().await {
        hasher.write_all(&chunk.map_err(io_err)?).map_err(io_err)?;
    }
    Ok(Some((info, hasher.finish().1)))
}

/// Which backend keeps the shim's blobs and caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Backend {
    /// A directory ([`filesystem`]).
    #[default]
    Filesystem,
    /// A Google Cloud Storage bucket ([`gcs`]).
    Gcs,
    /// An S3 (or S3-compatible) bucket ([`s3`]).
    S3,
}

/// Where `nixery serve` keeps blobs and caches: the settings of every
/// backend, each a flag that also reads the original Nixery's (or the
/// cloud's usual) environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Settings {
    /// Where layers and manifests are stored.
    #[arg(long, env = "NIXERY_STORAGE_BACKEND", value_enum, default_value_t = Backend::Filesystem)]
    pub storage_backend: Backend,
    /// The storage directory of the filesystem backend.
    #[arg(long, env = "STORAGE_PATH")]
    pub storage_path: Option<std::path::PathBuf>,
    /// The bucket of the gcs backend.
    #[arg(long, env = "GCS_BUCKET")]
    pub gcs_bucket: Option<String>,
    /// Service account credentials of the gcs backend (else Application
    /// Default Credentials: the metadata server on Google's machines).
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    pub google_application_credentials: Option<std::path::PathBuf>,
    /// A GCS emulator (host:port or URL) for the gcs backend; no tokens are
    /// asked for.
    #[arg(long, env = "STORAGE_EMULATOR_HOST")]
    pub storage_emulator_host: Option<String>,
    /// A PEM file (PKCS#8) with the private key that signs blob URLs of
    /// the gcs backend (with --gcs-signing-account).
    #[arg(long, env = "GCS_SIGNING_KEY", requires = "gcs_signing_account")]
    pub gcs_signing_key: Option<std::path::PathBuf>,
    /// The email of the service account whose key GCS_SIGNING_KEY is.
    #[arg(long, env = "GCS_SIGNING_ACCOUNT", requires = "gcs_signing_key")]
    pub gcs_signing_account: Option<String>,
    /// Scheme and host that signed GCS URLs point at (a bucket-bound
    /// hostname or a proxy); by default the endpoint's.
    #[arg(long, env = "NIXERY_GCS_SIGNED_URL_BASE")]
    pub gcs_signed_url_base: Option<String>,
    /// The bucket of the s3 backend (credentials, region and endpoint come
    /// from the AWS_* variables).
    #[arg(long, env = "NIXERY_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// With gcs or s3: redirect blob GETs to signed URLs of the bucket
    /// (true), or stream blobs through the shim (false).
    #[arg(long, env = "NIXERY_BLOB_REDIRECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub blob_redirect: bool,
    /// Seconds a signed blob URL stays valid.
    #[arg(long, env = "NIXERY_SIGNED_URL_EXPIRY", default_value_t = object::SIGNED_URL_LIFETIME.as_secs(), value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub signed_url_expiry: u64,
}

/// Why a storage backend cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A setting the backend needs is missing.
    #[error("the {backend} storage backend needs {variable} ({flag})")]
    Missing {
        /// The backend.
        backend: &'static str,
        /// Its variable.
        variable: &'static str,
        /// Its flag.
        flag: &'static str,
    },
    /// The GCS bucket cannot be used.
    #[error("cannot use the GCS bucket {bucket}")]
    Gcs {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The S3 bucket cannot be used.
    #[error("cannot use the S3 bucket {bucket}")]
    S3 {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The storage does not answer.
    #[error("cannot reach the {backend} storage")]
    Unreachable {
        /// The backend.
        backend: &'static str,
        /// Why.
        #[source]
        source: StorageError,
    },
    /// The filesystem storage cannot be opened.
    #[error(transparent)]
    Filesystem(#[from] StorageError),
}

/// Opens the storage `settings` name, on `runtime` (which object storage
/// runs its uploads on), and checks that it answers: a bucket that does
/// not exist, or an endpoint out of reach, fails here, at start, not at
/// the first pull.
pub fn open(settings: &Settings, runtime: &tokio::runtime::Runtime) -> Result<std::sync::Arc<dyn Storage>, OpenError> {
    use std::sync::Arc;
    let redirect = settings.blob_redirect.then(|| std::time::Duration::from_secs(settings.signed_url_expiry));
    let storage: Arc<dyn Storage> = match settings.storage_backend {
        Backend::Filesystem => {
            let path = settings.storage_path.as_ref().ok_or(OpenError::Missing { backend: "filesystem", variable: "STORAGE_PATH", flag: "--storage-path" })?;
            Arc::new(filesystem::FilesystemStorage::open(path)?)
        }
        Backend::Gcs => {
            let bucket = settings.gcs_bucket.clone().ok_or(OpenError::Missing { backend: "gcs", variable: "GCS_BUCKET", flag: "--gcs-bucket" })?;
            let config = gcs::GcsConfig {
                bucket: bucket.clone(),
                emulator_host: settings.storage_emulator_host.clone(),
                credentials: settings.google_application_credentials.clone(),
                signing_key: settings.gcs_signing_key.clone(),
                signing_account: settings.gcs_signing_account.clone(),
                signed_url_base: settings.gcs_signed_url_base.clone(),
            };
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| OpenError::Gcs { bucket: bucket.clone(), source: e };
            let gcs = runtime.block_on(gcs::GcsBucket::connect(&config)).map_err(|e| failed(Box::new(e)))?;
            let storage = object::ObjectStorage::new("gcs", Arc::new(gcs), redirect, runtime.handle().clone());
            runtime.block_on(storage.check()).map_err(|e| failed(Box::new(e)))?;
            Arc::new(storage)
        }
        Backend::S3 => {
            let bucket = settings.s3_bucket.clone().ok_or(OpenError::Missing { backend: "s3", variable: "NIXERY_S3_BUCKET", flag: "--s3-bucket" })?;
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| OpenError::S3 { bucket: bucket.clone(), source: e };
            let s3 = s3::StoreBucket::s3(&bucket).map_err(|e| failed(Box::new(e)))?;
            let storage = object::ObjectStorage::new("s3", Arc::new(s3), redirect, runtime.handle().clone());
            runtime.block_on(storage.check()).map_err(|e| failed(Box::new(e)))?;
            Arc::new(storage)
        }
    };
    runtime.block_on(storage.get_meta("startup-check")).map_err(|source| OpenError::Unreachable { backend: storage.name(), source })?;
    Ok(storage)
}

/// Stores `bytes` as a blob (for small documents: configs, manifests).
pub fn put_bytes(storage: &dyn Storage, bytes: &[u8], media_type: &str) -> Result<Digest, StorageError> {
    let digest = Digest::of(bytes);
    let mut w = storage.blob_writer()?;
    if let Err(e) = w.write_all(bytes) {
        w.cancel();
        return Err(StorageError::Io { path: format!("blob {digest}"), source: e });
    }
    w.commit(&digest, media_type)?;
    Ok(digest)
}

/// Checks a cache key: slash-separated segments of `[A-Za-z0-9._-]`, no
/// `..`. Backends call this before touching anything.
pub fn check_key(key: &str) -> Result<(), StorageError> {
    let ok = !key.is_empty()
        && key.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".." && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

/// Reads a whole stream (for tests and small blobs).
pub async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
    use futures::StreamExt;
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The conformance suite: every backend runs this against a fresh, empty
/// instance of itself (it panics on the first broken promise). It checks
/// the semantics [`Storage`] states, and that nothing is left behind.
#[doc(hidden)]
pub async fn conformance(storage: &dyn Storage) {
    use crate::image::media_type::OCI_LAYER_GZIP;

    // Commit makes a blob visible with its media type and exact bytes.
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&data);
    assert_eq!(storage.stat_blob(&digest).await.unwrap(), None);
    let mut w = storage.blob_writer().unwrap();
    w.write_all(&data).unwrap();
    w.commit(&digest, OCI_LAYER_GZIP).unwrap();
    assert_eq!(storage.stat_blob(&digest).await.unwrap(), Some(BlobInfo { size: data.len() as u64, media_type: OCI_LAYER_GZIP.into() }));
    assert_eq!(collect(storage.read_blob(&digest, 0, data.len() as u64).await.unwrap()).await.unwrap(), data);
    // Ranges.
    assert_eq!(collect(storage.read_blob(&digest, 10, 5).await.unwrap()).await.unwrap(), &data[10..15]);
    assert_eq!(collect(storage.read_blob(&digest, 99_990, 10).await.unwrap()).await.unwrap(), &data[99_990..]);

    // A wrong digest is refused and leaves nothing behind.
    let other = Digest::of(b"something else");
    let mut w = storage.blob_writer().unwrap();
    w.write_all(b"not that").unwrap();
    assert!(matches!(w.commit(&other, OCI_LAYER_GZIP), Err(StorageError::DigestMismatch { .. })));
    assert_eq!(storage.stat_blob(&other).await.unwrap(), None);
    assert_eq!(storage.stat_blob(&Digest::of(b"not that")).await.unwrap(), None);

    // A cancelled write leaves nothing behind.
    let mut w = storage.blob_writer().unwrap();
    w.write_all(b"cancelled").unwrap();
    w.cancel();
    assert_eq!(storage.stat_blob(&Digest::of(b"cancelled")).await.unwrap(), None);

    // Writing an existing blob again succeeds and changes nothing.
    let again = put_bytes(storage, &data, OCI_LAYER_GZIP).unwrap();
    assert_eq!(again, digest);
    assert!(matches!(storage.verify_blob(&digest).await.unwrap(), BlobCheck::Good(_)));
    assert!(storage.known_good(&digest).await);
    assert_eq!(storage.verify_blob(&Digest::of(b"never stored")).await.unwrap(), BlobCheck::Missing);

    // Removing a blob, and one that is not there.
    let gone = put_bytes(storage, b"to be removed", OCI_LAYER_GZIP).unwrap();
    storage.remove_blob(&gone).await.unwrap();
    assert_eq!(storage.stat_blob(&gone).await.unwrap(), None);
    storage.remove_blob(&gone).await.unwrap();

    // Small documents keep their media type.
    let doc = br#"{"schemaVersion":2}"#;
    let d = put_bytes(storage, doc, "application/vnd.oci.image.manifest.v1+json").unwrap();
    assert_eq!(storage.stat_blob(&d).await.unwrap().unwrap().media_type, "application/vnd.oci.image.manifest.v1+json");

    // Cache entries.
    assert_eq!(storage.get_meta("layers/abc").await.unwrap(), None);
    storage.put_meta("layers/abc", b"one").await.unwrap();
    storage.put_meta("layers/abc", b"two").await.unwrap();
    assert_eq!(storage.get_meta("layers/abc").await.unwrap().as_deref(), Some(&b"two"[..]));
    for bad in ["../escape", "a//b", "", "a/../b", "with space"] {
        assert!(matches!(storage.put_meta(bad, b"x").await, Err(StorageError::InvalidKey(_))), "{bad}");
    }

    // A removed blob is stored again by a commit of its bytes.
    let fixed = put_bytes(storage, b"a blob to corrupt", OCI_LAYER_GZIP).unwrap();
    storage.remove_blob(&fixed).await.unwrap();
    put_bytes(storage, b"a blob to corrupt", OCI_LAYER_GZIP).unwrap();
    assert_eq!(collect(storage.read_blob(&fixed, 0, 17).await.unwrap()).await.unwrap(), b"a blob to corrupt");

    // A dropped writer (an error, a panic) leaves nothing.
    let mut w = storage.blob_writer().unwrap();
    w.write_all(b"half a blob").unwrap();
    drop(w);

    // Commits work from a thread outside any runtime, and from inside a
    // current-thread runtime (where blocking in place is not allowed).
    let in_thread = std::thread::scope(|s| s.spawn(|| put_bytes(storage, b"from a plain thread", OCI_LAYER_GZIP)).join().unwrap());
    assert_eq!(in_thread.unwrap(), Digest::of(b"from a plain thread"));
    let current_thread = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { put_bytes(storage, b"from a current-thread runtime", OCI_LAYER_GZIP) })
        })
        .join()
        .unwrap()
    });
    assert_eq!(current_thread.unwrap(), Digest::of(b"from a current-thread runtime"));

    assert_eq!(storage.leftovers(), Vec::<String>::new(), "every write committed or dropped leaves nothing in scratch");
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys() {
        assert!(super::check_key("manifests/0123abc.json").is_ok());
        assert!(super::check_key("..").is_err());
        assert!(super::check_key("/abs").is_err());
    }
}
