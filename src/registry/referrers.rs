//! What the shim serves about its images beside them
//! ([`crate::shim::referrers`]):
//!
//! - `GET /v2/<name>/referrers/<digest>[?artifactType=T]`: the OCI 1.1
//!   referrers API, an image index of the image's SBOMs and provenance
//!   (filtered by artifact type when asked, and then said in
//!   `OCI-Filters-Applied`); an image the shim did not build has none.
//! - `GET /v2/<name>/manifests/sha256-<hex>.sig` and `.att`: cosign's
//!   signature and attestations, with `NIXERY_SIGNING_KEY`.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::blobs::{digest_param, serve_stored, unknown, Served};
use super::errors::{ErrorCode, RegistryError};
use super::AppState;
use crate::digest::Digest;
use crate::image::media_type;
use crate::shim::referrers;

/// The `artifactType` query parameter, decoded (`application/spdx%2Bjson`).
fn artifact_type(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "artifactType").map(|(_, v)| v.into_owned())
}

/// Whether `h` is `host[:port]` (a name, an IPv4 address or a bracketed
/// IPv6 one): what may stand in a signed payload.
fn is_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// `GET`/`HEAD /v2/<name>/referrers/<digest>`.
pub async fn get_referrers(state: &AppState, method: &Method, digest: &str, query: Option<&str>) -> Result<Response, RegistryError> {
    let digest = digest_param(digest)?;
    let listed = referrers::listed(&**state.shim.storage(), &digest).await.map_err(|e| unknown(state, e))?.unwrap_or_default();
    let wanted = artifact_type(query);
    let body = crate::supply_chain::referrers::index(&listed, wanted.as_deref());
    let mut resp = if method == Method::HEAD { StatusCode::OK.into_response() } else { body.clone().into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type::OCI_INDEX));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if wanted.is_some() {
        h.insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
    }
    Ok(resp)
}

/// `GET`/`HEAD /v2/<name>/manifests/sha256-<hex>.sig|.att`: cosign's
/// signature or attestations of an image the shim built, signed with
/// `NIXERY_SIGNING_KEY` (when the request is the first to ask).
pub async fn get_signed(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    name: &str,
    reference: &str,
    digest: &Digest,
    kind: &str,
) -> Result<Response, RegistryError> {
    let unknown_tag = |why: &str| ErrorCode::ManifestUnknown.with_detail(serde_json::json!({ "Name": name, "Tag": reference })).message(why.to_string());
    let Some(key) = &state.shim.config().signing_key else {
        return Err(unknown_tag("this registry signs nothing: its operator has not set NIXERY_SIGNING_KEY"));
    };
    // The payload names the image as the client does: this host, the name
    // (a Host that is not a host name, or none, is `localhost`). The first
    // request for a signature decides it: cosign checks the digest, not
    // this name.
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| is_host(h)).unwrap_or("localhost");
    let repository = format!("{host}/{name}");
    let stored = referrers::signed(state.shim.storage(), key, &repository, digest, kind).await.map_err(|e| unknown(state, e))?;
    let Some(stored) = stored else {
        return Err(unknown_tag(if kind == "sig" {
            "this registry built no image of that digest: pull the image by its name first"
        } else {
            "this registry has no SBOM or provenance of that digest: pull the image by its name first"
        }));
    };
    let info = crate::storage::BlobInfo { size: stored.size, media_type: stored.media_type.clone() };
    let served =
        Served { digest: &stored.digest, info: &info, content_type: &stored.media_type, ranges: false, in_memory: stored.bytes.as_ref(), by_tag: true };
    Ok(serve_stored(state, method, headers, served).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifact_type_is_read_from_the_query_decoded() {
        assert_eq!(artifact_type(Some("artifactType=application/spdx%2Bjson")).as_deref(), Some("application/spdx+json"));
        assert_eq!(artifact_type(Some("n=1&artifactType=application%2Fvnd.cyclonedx%2bjson")).as_deref(), Some("application/vnd.cyclonedx+json"));
        assert_eq!(artifact_type(Some("other=1")), None);
        assert_eq!(artifact_type(None), None);
        assert_eq!(artifact_type(Some("artifactType=%zz%2")).as_deref(), Some("%zz%2"));
        assert!(is_host("127.0.0.1:8080") && is_host("[::1]:5000") && is_host("registry.example"));
        assert!(!is_host("evil.example/other") && !is_host("a b") && !is_host(""));
    }
}
