//! `GET`/`HEAD /v2/<name>/blobs/<digest>`: blobs straight from storage,
//! with `Content-Length`, `Docker-Content-Digest`, `ETag`, byte ranges
//! (206, 416 with `Content-Range: bytes */N`) and `If-None-Match` (304).
//! Manifests fetched by digest are served through here too.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::errors::{ErrorCode, RegistryError};
use super::AppState;
use crate::digest::Digest;
use crate::storage::BlobInfo;

/// What a `Range` header asks of a blob of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No range, or one to ignore (malformed, several ranges): the whole blob.
    Full,
    /// Bytes `start..=end`.
    Partial {
        /// The first byte.
        start: u64,
        /// The last byte (inclusive).
        end: u64,
    },
    /// A well-formed range that lies outside the blob.
    Unsatisfiable,
}

/// What a `Range` header asks of a blob of `size` bytes. The syntax is
/// `http-range-header`'s; what a range means follows RFC 9110 as the
/// reference registry (Go's `http.ServeContent`) applies it: a header that
/// does not parse, or asks for several ranges, is ignored; a suffix longer
/// than the blob is the whole blob; a range that starts past the end is
/// unsatisfiable.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeRequest {
    use http_range_header::{EndPosition, RangeUnsatisfiableError, StartPosition};
    let Some(value) = value else { return RangeRequest::Full };
    let ranges = match http_range_header::parse_range_header(value.trim()) {
        Ok(r) => r.ranges,
        // `bytes=-0` parses, but asks for nothing.
        Err(RangeUnsatisfiableError::ZeroSuffix) => return RangeRequest::Unsatisfiable,
        Err(_) => return RangeRequest::Full,
    };
    let [range] = ranges.as_slice() else { return RangeRequest::Full };
    if size == 0 {
        return RangeRequest::Unsatisfiable;
    }
    let last = size - 1;
    let (start, end) = match (range.start, range.end) {
        (StartPosition::FromLast(n), _) => (size.saturating_sub(n), last),
        (StartPosition::Index(start), EndPosition::LastByte) => (start, last),
        (StartPosition::Index(start), EndPosition::Index(end)) if start <= end => (start, end.min(last)),
        // A reversed range is a syntax error: ignored.
        (StartPosition::Index(_), EndPosition::Index(_)) => return RangeRequest::Full,
    };
    if start > last {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Partial { start, end }
}

fn etag(digest: &Digest) -> String {
    format!("\"{digest}\"")
}

/// Whether `If-None-Match` names `tag` (the blob's ETag) or `*`.
fn if_none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(str::trim).any(|t| t == "*" || t == tag || t.strip_prefix("W/") == Some(tag)))
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}

/// What to serve: a stored blob, or a manifest.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// Its digest.
    pub digest: &'a Digest,
    /// Its size and media type.
    pub info: &'a BlobInfo,
    /// What to send as Content-Type.
    pub content_type: &'a str,
    /// Whether `Range` requests are answered (blobs) or not (manifests).
    pub ranges: bool,
    /// Its bytes, when they are in memory (storage is then not read).
    pub in_memory: Option<&'a bytes::Bytes>,
    /// Asked for by tag, whose image may change: caches must revalidate.
    /// By digest it never changes: caches may keep it for a year.
    pub by_tag: bool,
}

/// Serves a stored blob or a manifest.
pub async fn serve_stored(state: &AppState, method: &Method, headers: &HeaderMap, s: Served<'_>) -> Response {
    let Served { digest, info, content_type, ranges, in_memory, by_tag } = s;
    // Bytes in memory are what is served: their length is the size,
    // whatever a cache entry said.
    let in_memory_info;
    let info = match in_memory {
        Some(bytes) if bytes.len() as u64 != info.size => {
            in_memory_info = BlobInfo { size: bytes.len() as u64, media_type: info.media_type.clone() };
            &in_memory_info
        }
        _ => info,
    };
    let tag = etag(digest);
    let not_modified = if_none_match(headers, &tag);
    let mut h = HeaderMap::with_capacity(8);
    h.insert("Docker-Content-Digest", hv(digest.as_str()));
    h.insert(header::ETAG, HeaderValue::try_from(tag).expect("a digest is a header value"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(if by_tag { "no-cache" } else { "max-age=31536000, immutable" }));
    let respond = |status: StatusCode, headers: HeaderMap, body: Body| {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        resp
    };
    if not_modified {
        return respond(StatusCode::NOT_MODIFIED, h, Body::empty());
    }
    h.insert(header::CONTENT_TYPE, hv(content_type));
    let range = if ranges {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), info.size)
    } else {
        RangeRequest::Full
    };
    let (status, start, len) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, info.size),
        RangeRequest::Partial { start, end } => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes {start}-{end}/{}", info.size)));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            h.insert(header::CONTENT_RANGE, hv(&format!("bytes */{}", info.size)));
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            return respond(StatusCode::RANGE_NOT_SATISFIABLE, h, Body::empty());
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if method == Method::HEAD {
        return respond(status, h, Body::empty());
    }
    state.shim.metrics().served_bytes.inc_by(len);
    if let Some(bytes) = in_memory {
        return respond(status, h, Body::from(bytes.slice(start as usize..(start + len) as usize)));
    }
    let storage = state.shim.storage();
    let known_good = storage.known_good(digest).await;
    if !known_good && len != info.size {
        // A range of a blob not checked yet: check it whole first.
        match storage.verify_blob(digest).await {
            Ok(crate::storage::BlobCheck::Good(_)) => {}
            Ok(_) => {
                state.shim.forget_blob(digest);
                return ErrorCode::BlobUnknown.with_detail(digest.as_str()).into_response();
            }
            Err(e) => return unknown(state, e).into_response(),
        }
    }
    match storage.read_blob(digest, start, len).await {
        Ok(stream) if known_good || len != info.size => respond(status, h, Body::from_stream(stream)),
        Ok(stream) => respond(status, h, Body::from_stream(verifying(stream, digest.clone(), len, state.shim.clone()))),
        Err(e) => unknown(state, e).into_response(),
    }
}

/// A whole blob's bytes as they are served, hashed as they go, one chunk
/// held back: the last is sent only once the digest checks, so a blob
/// whose bytes are not its digest's (a bit flipped on disk) never reaches
/// a client whole. It is then removed, and the images that need it are
/// built again ([`crate::shim::Shim::forget_blob`]); the client sees the
/// connection end early and tries again. A blob that checks is marked
/// good, and served without hashing from then on.
fn verifying(stream: crate::storage::ByteStream, digest: Digest, size: u64, shim: std::sync::Arc<crate::shim::Shim>) -> crate::storage::ByteStream {
    use futures::StreamExt;
    use std::io::Write;
    struct State {
        inner: crate::storage::ByteStream,
        hasher: Option<crate::digest::HashingWriter<std::io::Sink>>,
        held: Option<bytes::Bytes>,
        digest: Digest,
        size: u64,
        shim: std::sync::Arc<crate::shim::Shim>,
    }
    let state = State { inner: stream, hasher: Some(crate::digest::HashingWriter::new(std::io::sink())), held: None, digest, size, shim };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            let hasher = st.hasher.as_mut()?;
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    let _ = hasher.write_all(&chunk);
                    if let Some(previous) = st.held.replace(chunk) {
                        return Some((Ok(previous), st));
                    }
                }
                Some(Err(e)) => {
                    st.hasher = None;
                    return Some((Err(e), st));
                }
                None => {
                    let (_, actual, count) = st.hasher.take()?.finish();
                    if actual == st.digest && count == st.size {
                        st.shim.storage().mark_good(&st.digest).await;
                        return st.held.take().map(|last| (Ok(last), st));
                    }
                    tracing::error!(blob = %st.digest, %actual, bytes = count, "a stored blob does not hold the bytes it is named by: not served, removed, its images built again");
                    if let Err(e) = st.shim.storage().remove_blob(&st.digest).await {
                        tracing::error!(blob = %st.digest, error = %e, "removing the corrupt blob failed");
                    }
                    st.shim.forget_blob(&st.digest);
                    let e = std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the stored blob {} is corrupt", st.digest));
                    return Some((Err(e), st));
                }
            }
        }
    }))
}

/// A digest from a URL, or DIGEST_INVALID (as the reference registry
/// answers for anything but a well-formed sha256 digest).
pub fn digest_param(reference: &str) -> Result<Digest, RegistryError> {
    Digest::parse(reference).map_err(|_| ErrorCode::DigestInvalid.with_detail(serde_json::json!({})))
}

/// A storage failure, as the client sees it: UNKNOWN, with the cause only
/// when `NIXERY_DEBUG_ERRORS` is set (it names storage paths); it is
/// logged either way.
pub fn unknown(state: &AppState, e: impl std::fmt::Display) -> RegistryError {
    tracing::error!(error = %e, "storage failed");
    let detail = if state.debug_errors { e.to_string() } else { "storage failed; the server's log has the details".to_string() };
    ErrorCode::Unknown.with_detail(detail)
}

/// What storage knows of a blob; a storage failure is UNKNOWN.
pub async fn stat(state: &AppState, digest: &Digest) -> Result<Option<BlobInfo>, RegistryError> {
    state.shim.storage().stat_blob(digest).await.map_err(|e| unknown(state, e))
}

/// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
pub async fn get_blob(state: &AppState, method: &Method, headers: &HeaderMap, reference: &str) -> Result<Response, RegistryError> {
    let digest = digest_param(reference)?;
    let info = stat(state, &digest).await?.ok_or_else(|| ErrorCode::BlobUnknown.with_detail(digest.as_str()))?;
    // Object storage: the client fetches the bytes from the bucket (a
    // temporary redirect, as the reference registry's storage redirects
    // do); HEAD is answered here.
    if method == Method::GET {
        let url = state.shim.storage().blob_url(&digest).await.map_err(|e| unknown(state, e))?;
        if let Some(url) = url {
            let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
            let h = resp.headers_mut();
            h.insert(header::LOCATION, HeaderValue::from_str(&url).map_err(|e| unknown(state, e))?);
            h.insert("Docker-Content-Digest", hv(digest.as_str()));
            return Ok(resp);
        }
    }
    let served = Served { digest: &digest, info: &info, content_type: "application/octet-stream", ranges: true, in_memory: None, by_tag: false };
    Ok(serve_stored(state, method, headers, served).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(parse_range(Some("bytes=0-9"), 100), Partial { start: 0, end: 9 });
        assert_eq!(parse_range(Some("bytes=90-"), 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range(Some("bytes=90-1000"), 100), Partial { start: 90, end: 99 });
        assert_eq!(parse_range(Some("bytes=-5"), 100), Partial { start: 95, end: 99 });
        assert_eq!(parse_range(Some("bytes=-500"), 100), Partial { start: 0, end: 99 });
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=100-200"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-0"), 1), Partial { start: 0, end: 0 });
        assert_eq!(parse_range(Some("bytes=-1"), 0), Unsatisfiable);
        // Ignored: malformed, reversed, several ranges, other units.
        for v in ["bytes=9-0", "bytes=a-b", "bytes=0-1,5-6", "items=0-1", "bytes=-", "bytes=+1-2", "bytes=00-1", "bytes=1-2-3"] {
            assert_eq!(parse_range(Some(v), 100), Full, "{v}");
        }
    }

    #[test]
    fn etags() {
        let d = etag(&Digest::of(b"x"));
        let mut h = HeaderMap::new();
        assert!(!if_none_match(&h, &d));
        h.insert(header::IF_NONE_MATCH, hv(&format!("\"other\", {d}")));
        assert!(if_none_match(&h, &d));
        h.insert(header::IF_NONE_MATCH, hv(&format!("W/{d}")));
        assert!(if_none_match(&h, &d));
        h.insert(header::IF_NONE_MATCH, hv("*"));
        assert!(if_none_match(&h, &d));
    }
}
