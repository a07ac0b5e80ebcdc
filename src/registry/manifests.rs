//! `GET`/`HEAD /v2/<name>/manifests/<tag or digest>`: by tag, the image is
//! built on demand (or found in the caches) and the manifest flavour the
//! client accepts is served; by digest, any stored manifest is served.

use axum::http::{header, HeaderMap, Method};
use axum::response::Response;

use super::blobs::{digest_param, serve_stored, stat, Served};
use super::errors::{ErrorCode, RegistryError};
use super::AppState;
use crate::image::media_type;
use crate::image_name::{is_digest_reference, valid_tag};
use crate::shim::explain::FailureKind;
use crate::shim::{BuiltImage, ShimError, StoredManifest};

/// Seconds a client is told to wait when the build queue is full.
const BUSY_RETRY_AFTER: u64 = 5;

/// The request id header ([`super::router`] sets it on every request).
const REQUEST_ID: &str = "x-request-id";

/// Picks the manifest for the client's `Accept` header: OCI when accepted
/// or when nothing is said, Docker's flavour (schema 2, or a manifest list
/// for an index) when only that is accepted.
pub fn negotiate<'a>(headers: &HeaderMap, image: &'a BuiltImage) -> &'a StoredManifest {
    let has = |t: &str| {
        headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|a| a.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case(t))
    };
    // OCI when accepted or when nothing is said; the Docker flavour when
    // only that is accepted.
    if !has(&image.oci.media_type) && has(&image.docker.media_type) {
        &image.docker
    } else {
        &image.oci
    }
}

fn is_manifest_type(t: &str) -> bool {
    t == media_type::OCI_MANIFEST || t == media_type::DOCKER_MANIFEST || t == media_type::OCI_INDEX || t == media_type::DOCKER_MANIFEST_LIST
}

/// Maps a build error to the registry error a client sees: its message
/// is [`ShimError::explain`]'s line, and the status one that docker,
/// podman and skopeo print that line for (a `4xx`; for a `5xx` they print
/// only the status line, where the line is the reason phrase). So what
/// the person pulling can act on is a `4xx`: a name the set lacks, a
/// package that fails to build and a build stopped at `NIX_TIMEOUT` are
/// `404 MANIFEST_UNKNOWN`, which no client retries (containers/image
/// retries a `429` five times, waiting as `Retry-After` says up to a
/// minute each, and podman all of that three times: right for a full
/// queue, which is `429` with a short `Retry-After`, wrong for a failure
/// remembered for `NIXERY_FAILURE_TTL`). Nix's log and other details that name host paths are in
/// `detail` only with `debug` (`NIXERY_DEBUG_ERRORS`); the server's log
/// always has them.
pub fn shim_error(e: &ShimError, name: &str, tag: &str, failure_ttl: std::time::Duration, debug: bool) -> RegistryError {
    let image = format!("{name}:{tag}");
    let (kind, line) = e.explanation(&image, failure_ttl);
    let mut detail = serde_json::json!({ "Name": name, "Tag": tag });
    if debug {
        detail["Error"] = serde_json::Value::String(e.to_string());
    }
    let error = match kind {
        FailureKind::BadName => ErrorCode::NameInvalid.with_detail(serde_json::json!({ "Name": name })),
        FailureKind::Busy => ErrorCode::TooManyRequests.with_detail(detail).retry_after(BUSY_RETRY_AFTER),
        FailureKind::NotFound => {
            if let ShimError::NotFound(missing) = e {
                detail["NotFound"] = missing.iter().map(|m| m.name.as_str()).collect();
            }
            ErrorCode::ManifestUnknown.with_detail(detail)
        }
        FailureKind::Unavailable => ErrorCode::Unavailable.with_detail(detail),
        FailureKind::Internal => ErrorCode::Unknown.with_detail(detail),
    };
    error.message(line)
}

/// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
pub async fn get_manifest(state: &AppState, method: &Method, headers: &HeaderMap, name: &str, reference: &str) -> Result<Response, RegistryError> {
    let unknown_revision = || ErrorCode::ManifestUnknown.with_detail(serde_json::json!({ "Name": name, "Revision": reference }));
    if is_digest_reference(reference) {
        let digest = digest_param(reference)?;
        let info = stat(state, &digest).await?.filter(|i| is_manifest_type(&i.media_type)).ok_or_else(unknown_revision)?;
        let served = Served { digest: &digest, info: &info, content_type: &info.media_type, ranges: false, in_memory: None, by_tag: false };
        return Ok(serve_stored(state, method, headers, served).await);
    }
    if let Some((digest, kind)) = crate::shim::referrers::cosign_tag(reference) {
        return super::referrers::get_signed(state, method, headers, name, reference, &digest, kind).await;
    }
    if !valid_tag(reference) {
        return Err(ErrorCode::TagInvalid.with_detail(serde_json::json!({ "Tag": reference })));
    }
    let request = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let image =
        state.shim.image(name, reference, request).await.map_err(|e| shim_error(&e, name, reference, state.shim.config().failure_ttl, state.debug_errors))?;
    let chosen = negotiate(headers, &image);
    let info = crate::storage::BlobInfo { size: chosen.size, media_type: chosen.media_type.clone() };
    match &chosen.bytes {
        Some(bytes) => {
            let served = Served { digest: &chosen.digest, info: &info, content_type: &chosen.media_type, ranges: false, in_memory: Some(bytes), by_tag: true };
            Ok(serve_stored(state, method, headers, served).await)
        }
        None => {
            // Not in memory (cannot happen for images this process built or
            // loaded): serve from storage.
            stat(state, &chosen.digest).await?.ok_or_else(|| ErrorCode::ManifestUnknown.with_detail(serde_json::json!({ "Name": name, "Tag": reference })))?;
            let served = Served { digest: &chosen.digest, info: &info, content_type: &chosen.media_type, ranges: false, in_memory: None, by_tag: true };
            Ok(serve_stored(state, method, headers, served).await)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use axum::http::HeaderValue;

    fn image() -> BuiltImage {
        let m = |t: &str| StoredManifest { digest: Digest::of(t.as_bytes()), size: 1, media_type: t.to_string(), bytes: None };
        BuiltImage { oci: m(media_type::OCI_MANIFEST), docker: m(media_type::DOCKER_MANIFEST) }
    }

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn content_negotiation() {
        let img = image();
        assert_eq!(negotiate(&accept(&[]), &img).media_type, media_type::OCI_MANIFEST);
        assert_eq!(negotiate(&accept(&["*/*"]), &img).media_type, media_type::OCI_MANIFEST);
        assert_eq!(negotiate(&accept(&[media_type::DOCKER_MANIFEST]), &img).media_type, media_type::DOCKER_MANIFEST);
        assert_eq!(
            negotiate(
                &accept(&["application/vnd.docker.distribution.manifest.v2+json; q=0.9, application/vnd.docker.distribution.manifest.v1+prettyjws"]),
                &img
            )
            .media_type,
            media_type::DOCKER_MANIFEST
        );
        assert_eq!(negotiate(&accept(&[media_type::DOCKER_MANIFEST, media_type::OCI_MANIFEST]), &img).media_type, media_type::OCI_MANIFEST);
    }
}
