//! The registry shim's HTTP side: a pull-only Docker/OCI distribution API
//! (`/v2/`), plus the start page or a static site (`WEB_DIR`) for
//! everything else.
//!
//! ```text
//! GET  /v2/                              200 {}            (this file)
//! GET  /v2/<name>/manifests/<reference>  build on demand   (manifests.rs)
//! GET  /v2/<name>/manifests/sha256-<hex>.sig|.att  cosign's  (referrers.rs)
//! GET  /v2/<name>/blobs/<digest>         from storage      (blobs.rs)
//! GET  /v2/<name>/referrers/<digest>     SBOMs, provenance (referrers.rs)
//! GET  /v2/<name>/tags/list             latest, git refs
//! PUT, POST, PATCH, DELETE …             405 UNSUPPORTED
//! GET  /                                 start page        (web.rs)
//! ```
//!
//! Every `/v2` response carries `Docker-Distribution-API-Version:
//! registry/2.0`. Errors come from one table (errors.rs). The router is a
//! plain axum `Router`, so middleware (auth, TLS termination, metrics) can
//! be layered on later without touching the handlers. Request logs are on
//! with `RUST_LOG=tower_http=debug`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

pub mod auth;
pub mod blobs;
pub mod errors;
pub mod manifests;
pub mod referrers;
pub mod server;
pub mod web;

use errors::ErrorCode;

use crate::image_name::valid_repository_name;
use crate::shim::Shim;

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The image service.
    pub shim: Arc<Shim>,
    /// A line for the start page saying where packages come from (no
    /// host paths).
    pub source_description: String,
    /// Error bodies carry Nix's log and storage details
    /// (`NIXERY_DEBUG_ERRORS`); otherwise they say what failed and point
    /// at the server's log.
    pub debug_errors: bool,
    /// The server speaks HTTPS: the start page's pull commands need no
    /// flag for a plain-HTTP registry.
    pub tls: bool,
}

/// The answer to what this pull-only registry does not do (pushes,
/// deletes): `405 UNSUPPORTED` with `Allow`, and a message of our own,
/// since Docker's client retries the spec's default message for a minute.
pub fn unsupported() -> Response {
    let mut resp = ErrorCode::Unsupported
        .plain()
        .message("this registry builds images from their names on demand and is pull-only: pushes and deletes are not accepted")
        .into_response();
    resp.headers_mut().insert(axum::http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    resp
}

/// Builds the router: `/v2/…`, `/metrics`, and with `web_dir`, paths
/// outside those are files from it; otherwise `/` is the embedded start
/// page. With `credentials`, every
/// request needs them.
pub fn router(state: Arc<AppState>, web_dir: Option<PathBuf>, credentials: Option<Arc<auth::Credentials>>) -> Router {
    let v2 = Router::new().route("/v2", any(base)).route("/v2/", any(base)).route("/v2/{*rest}", any(dispatch)).layer(
        tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::HeaderName::from_static("docker-distribution-api-version"),
            HeaderValue::from_static("registry/2.0"),
        ),
    );
    let web = match web_dir {
        Some(dir) => Router::new().fallback_service(tower_http::services::ServeDir::new(dir)),
        None => Router::new().route("/", axum::routing::get(web::start_page)),
    };
    let metrics = Router::new().route("/metrics", axum::routing::get(metrics)).route("/events", axum::routing::get(web::events));
    let gate = credentials.map(|credentials| auth::Gate { credentials, metrics: state.shim.metrics_handle() });
    let mut app = v2.merge(metrics).merge(web).with_state(state);
    if let Some(gate) = gate {
        app = app.layer(axum::middleware::from_fn_with_state(gate, auth::require));
    }
    // Every request gets an id (`X-Request-Id`, kept when the client or a
    // proxy sent one), echoed in the response; a manifest request's logs,
    // and those of the build it starts, carry it.
    let app = app
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(SequentialIds::default()));
    // Per-request logs cost a span and two events on every request: only
    // when asked for (RUST_LOG=tower_http=debug).
    if tracing::enabled!(target: "tower_http::trace::on_response", tracing::Level::DEBUG) {
        app.layer(tower_http::trace::TraceLayer::new_for_http())
    } else {
        app
    }
}

/// Request ids unique to this process and cheap on the warm path (a
/// counter, where a UUID costs random bytes on every request): the
/// process's start time and pid, then the request's number, in hex.
#[derive(Clone, Debug)]
struct SequentialIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl Default for SequentialIds {
    fn default() -> Self {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        SequentialIds { prefix: format!("{started:x}-{:x}", std::process::id()).into(), next: Default::default() }
    }
}

impl tower_http::request_id::MakeRequestId for SequentialIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<tower_http::request_id::RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:x}", self.prefix)).ok().map(tower_http::request_id::RequestId::new)
    }
}

/// `GET /metrics`: the shim's metrics in Prometheus' (OpenMetrics) text
/// format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut resp = state.shim.metrics().render().into_response();
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    resp
}

async fn base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return unsupported();
    }
    let mut resp = axum::Json(serde_json::json!({})).into_response();
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    resp
}

/// `GET /v2/<name>/tags/list`: the tags every image name has (the source's
/// git refs, or just `latest`).
async fn tags(state: &AppState, name: &str) -> Result<Response, errors::RegistryError> {
    let tags = state.shim.tags().await.map_err(|e| {
        tracing::error!(error = %e, "listing tags failed");
        ErrorCode::Unknown.with_detail(serde_json::json!({ "Error": if state.debug_errors { e.to_string() } else { "listing the package source's refs failed; the server's log has the details".into() } }))
    })?;
    let mut resp = axum::Json(serde_json::json!({ "name": name, "tags": tags.as_slice() })).into_response();
    resp.headers_mut().insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    Ok(resp)
}

/// The parts of a `/v2/` path.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `<name>/manifests/<reference>`.
    Manifest {
        /// The repository name.
        name: &'a str,
        /// A tag or digest.
        reference: &'a str,
    },
    /// `<name>/blobs/<digest>`.
    Blob {
        /// The repository name.
        name: &'a str,
        /// The digest, unchecked.
        digest: &'a str,
    },
    /// `<name>/referrers/<digest>`.
    Referrers {
        /// The repository name.
        name: &'a str,
        /// The subject's digest, unchecked.
        digest: &'a str,
    },
    /// `<name>/tags/list`.
    Tags {
        /// The repository name.
        name: &'a str,
    },
    /// Uploads and anything else this pull-only registry
    /// does not do.
    Unsupported,
}

/// Splits `<name>/manifests/<reference>` and `<name>/blobs/<digest>`.
pub fn route(rest: &str) -> Route<'_> {
    if rest.contains("/blobs/uploads") {
        return Route::Unsupported;
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Route::Tags { name };
    }
    let Some((head, last)) = rest.rsplit_once('/') else { return Route::Unsupported };
    let Some((name, kind)) = head.rsplit_once('/') else { return Route::Unsupported };
    match kind {
        "manifests" => Route::Manifest { name, reference: last },
        "blobs" => Route::Blob { name, digest: last },
        "referrers" => Route::Referrers { name, digest: last },
        _ => Route::Unsupported,
    }
}

/// Why a request is refused before any work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A method this pull-only registry does not serve, or a path it has
    /// no route for: `405 UNSUPPORTED`.
    Unsupported,
    /// A repository name outside the spec's grammar: `400 NAME_INVALID`.
    NameInvalid(String),
}

/// What a request is, from its method and path alone: the method first
/// (a push is refused as one, whatever its name), then the route, then
/// the name's grammar. Only what passes reaches the image service.
pub fn classify<'a>(method: &Method, path: &'a str) -> Result<Route<'a>, Refusal> {
    if method != Method::GET && method != Method::HEAD {
        return Err(Refusal::Unsupported);
    }
    let rest = path.strip_prefix("/v2/").unwrap_or("");
    let r = route(rest);
    match &r {
        Route::Manifest { name, .. } | Route::Blob { name, .. } | Route::Referrers { name, .. } | Route::Tags { name } if !valid_repository_name(name) => {
            Err(Refusal::NameInvalid(name.to_string()))
        }
        Route::Unsupported => Err(Refusal::Unsupported),
        _ => Ok(r),
    }
}

async fn dispatch(State(state): State<Arc<AppState>>, req: Request) -> Response {
    // Pull requests have no body: keep the head, without copying it.
    let (axum::http::request::Parts { method, headers, uri, .. }, _) = req.into_parts();
    let result = match classify(&method, uri.path()) {
        Err(Refusal::Unsupported) => return unsupported(),
        Err(Refusal::NameInvalid(name)) => return ErrorCode::NameInvalid.with_detail(serde_json::json!({ "Name": name })).into_response(),
        Ok(Route::Manifest { name, reference }) => manifests::get_manifest(&state, &method, &headers, name, reference).await,
        Ok(Route::Blob { digest, .. }) => blobs::get_blob(&state, &method, &headers, digest).await,
        Ok(Route::Referrers { digest, .. }) => referrers::get_referrers(&state, &method, digest, uri.query()).await,
        Ok(Route::Tags { name }) => tags(&state, name).await,
        Ok(Route::Unsupported) => return unsupported(),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("shell/hello/manifests/latest"), Route::Manifest { name: "shell/hello", reference: "latest" });
        assert_eq!(route("hello/blobs/sha256:00"), Route::Blob { name: "hello", digest: "sha256:00" });
        assert_eq!(route("a/b/c/manifests/sha256:1"), Route::Manifest { name: "a/b/c", reference: "sha256:1" });
        assert_eq!(route("hello/blobs/uploads/"), Route::Unsupported);
        assert_eq!(route("hello/blobs/uploads/1234"), Route::Unsupported);
        assert_eq!(route("a/b/tags/list"), Route::Tags { name: "a/b" });
        assert_eq!(route("a/b/referrers/sha256:1"), Route::Referrers { name: "a/b", digest: "sha256:1" });
        assert_eq!(route("manifests/latest"), Route::Unsupported);
        assert_eq!(route(""), Route::Unsupported);
    }
}
