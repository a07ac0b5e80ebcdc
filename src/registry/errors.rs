//! Registry errors: one table of the distribution spec's codes, and one
//! responder that writes the JSON envelope `{"errors":[{code,message,detail}]}`
//! with its headers before its status and body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// An error code of the distribution spec (and the reference registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN` (404).
    BlobUnknown,
    /// `DIGEST_INVALID` (400).
    DigestInvalid,
    /// `MANIFEST_UNKNOWN` (404).
    ManifestUnknown,
    /// `NAME_INVALID` (400).
    NameInvalid,
    /// `NAME_UNKNOWN` (404).
    NameUnknown,
    /// `TAG_INVALID` (400).
    TagInvalid,
    /// `UNAUTHORIZED` (401).
    Unauthorized,
    /// `UNSUPPORTED` (405).
    Unsupported,
    /// `UNKNOWN` (500).
    Unknown,
    /// `UNAVAILABLE` (503).
    Unavailable,
    /// `TOOMANYREQUESTS` (429).
    TooManyRequests,
}

impl ErrorCode {
    /// The code, its default message and HTTP status, as registered in the
    /// reference registry.
    pub fn info(self) -> (&'static str, &'static str, StatusCode) {
        use ErrorCode::*;
        match self {
            BlobUnknown => ("BLOB_UNKNOWN", "blob unknown to registry", StatusCode::NOT_FOUND),
            DigestInvalid => ("DIGEST_INVALID", "provided digest did not match uploaded content", StatusCode::BAD_REQUEST),
            ManifestUnknown => ("MANIFEST_UNKNOWN", "manifest unknown", StatusCode::NOT_FOUND),
            NameInvalid => ("NAME_INVALID", "invalid repository name", StatusCode::BAD_REQUEST),
            NameUnknown => ("NAME_UNKNOWN", "repository name not known to registry", StatusCode::NOT_FOUND),
            TagInvalid => ("TAG_INVALID", "manifest tag did not match URI", StatusCode::BAD_REQUEST),
            Unauthorized => ("UNAUTHORIZED", "authentication required", StatusCode::UNAUTHORIZED),
            Unsupported => ("UNSUPPORTED", "The operation is unsupported.", StatusCode::METHOD_NOT_ALLOWED),
            Unknown => ("UNKNOWN", "unknown error", StatusCode::INTERNAL_SERVER_ERROR),
            Unavailable => ("UNAVAILABLE", "service unavailable", StatusCode::SERVICE_UNAVAILABLE),
            TooManyRequests => ("TOOMANYREQUESTS", "too many requests", StatusCode::TOO_MANY_REQUESTS),
        }
    }

    /// This error with a detail.
    pub fn with_detail(self, detail: impl Into<Value>) -> RegistryError {
        RegistryError { code: self, message: None, detail: Some(detail.into()), retry_after: None }
    }

    /// This error with its default message and no detail.
    pub fn plain(self) -> RegistryError {
        RegistryError { code: self, message: None, detail: None, retry_after: None }
    }
}

/// An error response.
#[derive(Debug, Clone)]
pub struct RegistryError {
    /// The code.
    pub code: ErrorCode,
    /// A message instead of the code's default one.
    pub message: Option<String>,
    /// The `detail` of the envelope.
    pub detail: Option<Value>,
    /// Seconds after which the client may try again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl RegistryError {
    /// Replaces the default message.
    pub fn message(mut self, m: impl Into<String>) -> RegistryError {
        self.message = Some(m.into());
        self
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, seconds: u64) -> RegistryError {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (code, default_message, status) = self.code.info();
        let mut entry = serde_json::json!({ "code": code, "message": self.message.as_deref().unwrap_or(default_message) });
        if let Some(d) = self.detail {
            entry["detail"] = d;
        }
        let body = serde_json::to_vec(&serde_json::json!({ "errors": [entry] })).expect("json");
        let mut resp = Response::new(axum::body::Body::from(body));
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        *resp.status_mut() = status;
        if let Some(phrase) = self.message.as_deref().and_then(reason_phrase) {
            resp.extensions_mut().insert(phrase);
        }
        resp
    }
}

/// The longest reason phrase sent (clients print the status line whole).
const MAX_REASON_PHRASE: usize = 300;

/// A message as an HTTP/1.1 reason phrase, which clients print for
/// statuses whose body they do not read (docker, podman and skopeo for
/// `5xx`, containerd for all): visible ASCII and spaces only, one line,
/// at most [`MAX_REASON_PHRASE`] bytes. HTTP/2 has no reason phrase.
fn reason_phrase(message: &str) -> Option<hyper::ext::ReasonPhrase> {
    let mut phrase: String = message.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect();
    if phrase.len() > MAX_REASON_PHRASE {
        phrase.truncate(MAX_REASON_PHRASE - 3);
        phrase.push_str("...");
    }
    hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelope() {
        let resp = ErrorCode::BlobUnknown.with_detail("sha256:00").into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json; charset=utf-8");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": "sha256:00"}]}));
    }

    #[test]
    fn a_message_is_the_reason_phrase() {
        let resp = ErrorCode::Unknown.plain().message("cannot build x: é\r\nInjected: 1").into_response();
        let phrase = resp.extensions().get::<hyper::ext::ReasonPhrase>().expect("a reason phrase");
        assert_eq!(phrase.as_bytes(), b"cannot build x: ???Injected: 1");
        let long = ErrorCode::Unknown.plain().message("a".repeat(1000)).into_response();
        assert_eq!(long.extensions().get::<hyper::ext::ReasonPhrase>().unwrap().as_bytes().len(), MAX_REASON_PHRASE);
        // The code's own message leaves the standard phrase.
        assert!(ErrorCode::Unknown.plain().into_response().extensions().get::<hyper::ext::ReasonPhrase>().is_none());
    }
}
