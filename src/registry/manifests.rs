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
use crate::nix::NixError;
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

/// Maps a build error to the registry error a client sees. Nix's log and
/// other details that name host paths are there only with `debug`
/// (`NIXERY_DEBUG_ERRORS`); the server's log always has them.
pub fn shim_error(e: &ShimError, name: &str, tag: &str, debug: bool) -> RegistryError {
    let hidden = |what: &str, detail: String| if debug { detail } else { format!("{what}; the server's log has the details") };
    match e {
        ShimError::Name(_) => ErrorCode::NameInvalid.with_detail(serde_json::json!({ "Name": name })),
        ShimError::TooManyPackages { .. } => ErrorCode::NameInvalid.with_detail(serde_json::json!({ "Name": name })).message(e.to_string()),
        ShimError::Busy { .. } => ErrorCode::TooManyRequests
            .with_detail(serde_json::json!({ "Name": name, "Tag": tag }))
            .message(format!("{name}:{tag} is not built yet and too many images wait to be built; try again in a moment"))
            .retry_after(BUSY_RETRY_AFTER),
        ShimError::NotFound(pkgs) => ErrorCode::ManifestUnknown
            .with_detail(serde_json::json!({ "Name": name, "Tag": tag, "NotFound": pkgs }))
            .message(format!("manifest unknown: packages not found: {}", pkgs.join(", "))),
        e => match e.nix() {
            Some(NixError::UnknownRef(r)) => ErrorCode::ManifestUnknown
                .with_detail(serde_json::json!({ "Name": name, "Tag": tag }))
                .message(format!("manifest unknown: the package set has no ref {r:?}")),
            Some(NixError::Timeout { timeout, log }) => ErrorCode::Unavailable
                .with_detail(serde_json::json!({ "Log": hidden("the build took too long", log.clone()) }))
                .message(format!("the nix build of {name}:{tag} timed out after {} s", timeout.as_secs())),
            Some(e) => ErrorCode::Unknown
                .with_detail(serde_json::json!({ "Error": hidden("the nix build failed", e.to_string()) }))
                .message(format!("the nix build of {name}:{tag} failed")),
            None => ErrorCode::Unknown
                .with_detail(serde_json::json!({ "Error": hidden("building the image failed", e.to_string()) }))
                .message(format!("building {name}:{tag} failed")),
        },
    }
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
    if !valid_tag(reference) {
        return Err(ErrorCode::TagInvalid.with_detail(serde_json::json!({ "Tag": reference })));
    }
    let request = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let image = state.shim.image(name, reference, request).await.map_err(|e| shim_error(&e, name, reference, state.debug_errors))?;
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
