//! The GCS backend's [`Bucket`]: Google Cloud Storage through its JSON
//! API (the `gcloud-storage` crate), and the V4 signed URLs blob GETs are
//! redirected to.
//!
//! Where things come from, as in Google's own clients and the original
//! Nixery:
//!
//! - **Endpoint.** `STORAGE_EMULATOR_HOST` (`host:port` or a URL) points
//!   the client at an emulator, and then no token is ever asked for.
//!   Otherwise `https://storage.googleapis.com`.
//! - **Credentials.** `GOOGLE_APPLICATION_CREDENTIALS` (a service account
//!   file), else Application Default Credentials (the metadata server on
//!   GCE and GKE).
//! - **Signing.** `GCS_SIGNING_KEY` (a PKCS#8 PEM private key) with
//!   `GCS_SIGNING_ACCOUNT` (the service account's email); else the
//!   service account file's key; else, on Google's machines, IAM
//!   `signBlob` for the default account. With none of these (an emulator
//!   and no key), blobs are streamed through the shim.
//! - **Signed URL host.** `NIXERY_GCS_SIGNED_URL_BASE` (a scheme and host,
//!   for a bucket-bound hostname or a proxy); by default the endpoint's.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::buckets::get::GetBucketRequest;
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::sign::{SignBy, SignedURLError, SignedURLOptions, URLStyle};

use super::object::Bucket;
use super::{BlobInfo, ByteStream};

/// Google's production endpoint.
const GOOGLE_ENDPOINT: &str = "https://storage.googleapis.com";

/// How the GCS backend is reached and signs; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct GcsConfig {
    /// `GCS_BUCKET`.
    pub bucket: String,
    /// `STORAGE_EMULATOR_HOST`.
    pub emulator_host: Option<String>,
    /// `GOOGLE_APPLICATION_CREDENTIALS`.
    pub credentials: Option<PathBuf>,
    /// `GCS_SIGNING_KEY`.
    pub signing_key: Option<PathBuf>,
    /// `GCS_SIGNING_ACCOUNT`.
    pub signing_account: Option<String>,
    /// `NIXERY_GCS_SIGNED_URL_BASE`.
    pub signed_url_base: Option<String>,
}

/// Why the GCS backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    /// A setting that cannot be used.
    #[error("{0}")]
    Config(String),
    /// A file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Credentials that cannot be loaded.
    #[error("GCS credentials: {0}")]
    Auth(String),
    /// No HTTPS client: the machine has no CA certificates to check
    /// Google's with.
    #[error("no HTTPS client for GCS: {0}; install the CA certificates (Debian's ca-certificates) or name a bundle with SSL_CERT_FILE")]
    Tls(#[source] reqwest::Error),
}

/// Who signs blob URLs: an explicit account and key, or (both `None`) the
/// client's defaults from Application Default Credentials.
#[derive(Clone)]
struct Signing {
    account: Option<String>,
    key: Option<SignBy>,
}

/// A GCS bucket.
pub struct GcsBucket {
    client: Client,
    bucket: String,
    signing: Option<Signing>,
    /// Scheme and host of signed URLs.
    url_base: UrlBase,
}

impl std::fmt::Debug for GcsBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsBucket").field("bucket", &self.bucket).field("signs", &self.signing.is_some()).field("url_base", &self.url_base).finish()
    }
}

/// The scheme and host signed URLs point at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlBase {
    insecure: bool,
    host: String,
}

impl UrlBase {
    /// `http://host[:port]` or `https://host[:port]`; a bare `host:port`
    /// (as `STORAGE_EMULATOR_HOST` is often given) is plain HTTP.
    fn parse(s: &str, what: &str) -> Result<UrlBase, GcsError> {
        let (insecure, host) = match s.split_once("://") {
            Some(("http", h)) => (true, h),
            Some(("https", h)) => (false, h),
            Some((scheme, _)) => return Err(GcsError::Config(format!("{what} {s:?}: the scheme {scheme:?} is neither http nor https"))),
            None => (true, s),
        };
        let host = host.strip_suffix('/').unwrap_or(host);
        if host.is_empty() || host.ends_with(':') || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(GcsError::Config(format!("{what} {s:?}: expected a scheme and host (http://host:port), with no path")));
        }
        Ok(UrlBase { insecure, host: host.to_string() })
    }

    fn url(&self) -> String {
        format!("{}://{}", if self.insecure { "http" } else { "https" }, self.host)
    }
}

/// Path-style signed URLs on a given host.
struct PathOnHost(String);

impl URLStyle for PathOnHost {
    fn host(&self, _bucket: &str) -> String {
        self.0.clone()
    }
    fn path(&self, bucket: &str, object: &str) -> String {
        format!("{bucket}/{object}")
    }
}

/// Reads a PKCS#8 PEM private key, saying how to convert the forms that
/// are not.
/// The HTTP client GCS requests go through. gcloud-storage's own default
/// panics where the system has no CA certificates (a minimal container, a
/// build sandbox); this one is an error instead, except for an emulator,
/// spoken to in plain HTTP, which needs none.
fn http_client(emulator: bool) -> Result<reqwest_middleware::ClientWithMiddleware, GcsError> {
    let client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(_) if emulator => reqwest::Client::builder().tls_certs_only([]).build().map_err(GcsError::Tls)?,
        Err(e) => return Err(GcsError::Tls(e)),
    };
    Ok(reqwest_middleware::ClientBuilder::new(client).build())
}

fn read_signing_key(path: &Path) -> Result<Vec<u8>, GcsError> {
    let pem = std::fs::read(path).map_err(|source| GcsError::Read { path: path.to_path_buf(), source })?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("BEGIN RSA PRIVATE KEY") {
        return Err(GcsError::Config(format!(
            "GCS_SIGNING_KEY {}: a PKCS#1 key; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pem`",
            path.display()
        )));
    }
    if !text.contains("BEGIN PRIVATE KEY") {
        return Err(GcsError::Config(format!(
            "GCS_SIGNING_KEY {}: not a PEM private key (from a .p12: `openssl pkcs12 -in key.p12 -passin pass:notasecret -nodes -nocerts -out key.pem`)",
            path.display()
        )));
    }
    Ok(pem)
}

fn is_not_found(e: &gcloud_storage::http::Error) -> bool {
    match e {
        gcloud_storage::http::Error::Response(r) => r.code == 404,
        gcloud_storage::http::Error::HttpClient(e) => e.status().map(|s| s.as_u16()) == Some(404),
        _ => false,
    }
}

fn err(e: gcloud_storage::http::Error) -> io::Error {
    io::Error::other(e)
}

impl GcsBucket {
    /// Connects as `config` says (loading credentials, which on Google's
    /// machines asks the metadata server); nothing is read from the bucket
    /// yet.
    pub async fn connect(config: &GcsConfig) -> Result<GcsBucket, GcsError> {
        if config.bucket.is_empty() {
            return Err(GcsError::Config("the gcs storage backend needs GCS_BUCKET (--gcs-bucket)".into()));
        }
        let emulator = config.emulator_host.as_deref().filter(|h| !h.is_empty()).map(|h| UrlBase::parse(h, "STORAGE_EMULATOR_HOST")).transpose()?;
        let endpoint = emulator.as_ref().map(UrlBase::url).unwrap_or_else(|| GOOGLE_ENDPOINT.to_string());
        let url_base = match &config.signed_url_base {
            Some(b) => UrlBase::parse(b, "NIXERY_GCS_SIGNED_URL_BASE")?,
            None => UrlBase::parse(&endpoint, "the endpoint")?,
        };
        // The service account file, read once: for tokens and for its key.
        let credentials = match &config.credentials {
            Some(p) => Some(
                gcloud_storage::client::google_cloud_auth::credentials::CredentialsFile::new_from_file(p.display().to_string())
                    .await
                    .map_err(|e| GcsError::Auth(format!("{}: {e}", p.display())))?,
            ),
            None => None,
        };
        let base = ClientConfig { storage_endpoint: endpoint, http: Some(http_client(emulator.is_some())?), ..Default::default() };
        let client_config = match (&emulator, &credentials) {
            // An emulator takes no tokens, as with Google's clients.
            (Some(_), _) => base.anonymous(),
            (None, Some(c)) => base.with_credentials(c.clone()).await.map_err(|e| GcsError::Auth(e.to_string()))?,
            (None, None) => base
                .with_auth()
                .await
                .map_err(|e| GcsError::Auth(format!("{e} (set GOOGLE_APPLICATION_CREDENTIALS, or run where the metadata server answers)")))?,
        };
        let signing = match (&config.signing_key, &config.signing_account) {
            (Some(key), Some(account)) => Some(Signing { account: Some(account.clone()), key: Some(SignBy::PrivateKey(read_signing_key(key)?)) }),
            (Some(_), None) => return Err(GcsError::Config("GCS_SIGNING_KEY needs GCS_SIGNING_ACCOUNT, the email of the key's service account".into())),
            (None, Some(_)) => return Err(GcsError::Config("GCS_SIGNING_ACCOUNT needs GCS_SIGNING_KEY, a PEM file of the account's private key".into())),
            (None, None) => match credentials.as_ref().and_then(|c| Some((c.client_email.clone()?, c.private_key.clone()?))) {
                Some((account, key)) if !account.is_empty() && !key.is_empty() => {
                    Some(Signing { account: Some(account), key: Some(SignBy::PrivateKey(key.into_bytes())) })
                }
                // Application Default Credentials sign through IAM.
                _ if emulator.is_none() => Some(Signing { account: None, key: None }),
                _ => None,
            },
        };
        Ok(GcsBucket { client: Client::new(client_config), bucket: config.bucket.clone(), signing, url_base })
    }

    fn get_request(&self, key: &str) -> GetObjectRequest {
        GetObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() }
    }
}

#[async_trait]
impl Bucket for GcsBucket {
    async fn head(&self, key: &str) -> io::Result<Option<BlobInfo>> {
        match self.client.get_object(&self.get_request(key)).await {
            Ok(o) => Ok(Some(BlobInfo { size: o.size.max(0) as u64, media_type: o.content_type.unwrap_or_else(|| "application/octet-stream".into()) })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn read_range(&self, key: &str, offset: u64, len: u64) -> io::Result<ByteStream> {
        let range = Range(Some(offset), Some(offset + len - 1));
        let stream = self.client.download_streamed_object(&self.get_request(key), &range).await.map_err(err)?;
        Ok(Box::pin(stream.map_err(err)))
    }

    async fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        match self.client.download_object(&self.get_request(key), &Range::default()).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> io::Result<()> {
        let media = Media { name: key.to_string().into(), content_type: "application/octet-stream".into(), content_length: Some(bytes.len() as u64) };
        let req = UploadObjectRequest { bucket: self.bucket.clone(), ..Default::default() };
        self.client.upload_object(&req, bytes, &UploadType::Simple(media)).await.map_err(err)?;
        Ok(())
    }

    async fn put_file(&self, key: &str, file: File, size: u64, content_type: &str) -> io::Result<()> {
        let mut file = tokio::fs::File::from_std(file);
        tokio::io::AsyncSeekExt::rewind(&mut file).await?;
        let body = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        let media = Media { name: key.to_string().into(), content_type: content_type.to_string().into(), content_length: Some(size) };
        let req = UploadObjectRequest { bucket: self.bucket.clone(), ..Default::default() };
        self.client.upload_streamed_object(&req, body, &UploadType::Simple(media)).await.map_err(err)?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let req = DeleteObjectRequest { bucket: self.bucket.clone(), object: key.to_string(), ..Default::default() };
        match self.client.delete_object(&req).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }

    async fn check(&self) -> io::Result<()> {
        let req = GetBucketRequest { bucket: self.bucket.clone(), ..Default::default() };
        self.client.get_bucket(&req).await.map(|_| ()).map_err(err)
    }

    async fn signed_url(&self, key: &str, lifetime: Duration) -> io::Result<Option<String>> {
        let Some(signing) = &self.signing else { return Ok(None) };
        let opts = SignedURLOptions {
            expires: lifetime,
            style: Box::new(PathOnHost(self.url_base.host.clone())),
            insecure: self.url_base.insecure,
            ..Default::default()
        };
        match self.client.signed_url(&self.bucket, key, signing.account.clone(), signing.key.clone(), opts).await {
            Ok(url) => Ok(Some(url)),
            // Credentials with no key and no IAM identity (user credentials):
            // the shim serves the blob itself.
            Err(SignedURLError::InvalidOption(why)) if signing.key.is_none() => {
                tracing::warn!("cannot sign GCS URLs ({why}); serving blobs through the shim");
                Ok(None)
            }
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_bases() {
        assert_eq!(UrlBase::parse("127.0.0.1:4443", "x").unwrap(), UrlBase { insecure: true, host: "127.0.0.1:4443".into() });
        assert_eq!(UrlBase::parse("https://storage.googleapis.com/", "x").unwrap(), UrlBase { insecure: false, host: "storage.googleapis.com".into() });
        assert_eq!(UrlBase::parse("http://localhost:9", "x").unwrap().url(), "http://localhost:9");
        for bad in ["ftp://x", "http://", "https://host/path", "host?q", "user@host"] {
            assert!(UrlBase::parse(bad, "x").is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn settings_that_cannot_work_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let base = GcsConfig { bucket: "b".into(), emulator_host: Some("127.0.0.1:1".into()), ..Default::default() };
        let msg = |c: GcsConfig| async move { GcsBucket::connect(&c).await.unwrap_err().to_string() };
        assert!(msg(GcsConfig { bucket: String::new(), ..base.clone() }).await.contains("GCS_BUCKET"));
        assert!(msg(GcsConfig { signing_key: Some(dir.path().join("k")), ..base.clone() }).await.contains("GCS_SIGNING_ACCOUNT"));
        assert!(msg(GcsConfig { signing_account: Some("a@b".into()), ..base.clone() }).await.contains("GCS_SIGNING_KEY"));
        let pkcs1 = dir.path().join("pkcs1.pem");
        std::fs::write(&pkcs1, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n").unwrap();
        let m = msg(GcsConfig { signing_key: Some(pkcs1), signing_account: Some("a@b".into()), ..base.clone() }).await;
        assert!(m.contains("PKCS#1") && m.contains("openssl pkcs8"), "{m}");
        let m = msg(GcsConfig { signing_key: Some(dir.path().join("absent")), signing_account: Some("a@b".into()), ..base.clone() }).await;
        assert!(m.contains("cannot read") && m.contains("absent"), "{m}");
        assert!(msg(GcsConfig { emulator_host: Some("ftp://x".into()), ..base.clone() }).await.contains("STORAGE_EMULATOR_HOST"));
    }

    #[tokio::test]
    async fn an_emulator_without_a_key_streams_and_with_one_signs_for_the_given_host() {
        let base = GcsConfig { bucket: "b".into(), emulator_host: Some("127.0.0.1:1".into()), ..Default::default() };
        let b = GcsBucket::connect(&base).await.unwrap();
        assert_eq!(b.signed_url("blobs/sha256/ab", Duration::from_secs(5)).await.unwrap(), None);
    }
}
