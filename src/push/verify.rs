//! `nixery verify`: what a registry holds about an image, checked as
//! cosign checks it. The image's manifest is read (by tag or digest) and
//! its digest computed here; then its cosign signatures
//! (`sha256-<hex>.sig`) and attestations (`sha256-<hex>.att`) are checked
//! with a public key, and its OCI 1.1 referrers listed (through the
//! referrers API, or the referrers tag schema). Every blob read is checked
//! against its digest before it is trusted.

use serde_json::Value;

use super::client::{Client, Connection, Destination};
use super::PushError;
use crate::digest::Digest;
use crate::image::media_type;
use crate::supply_chain::key::VerifyingKey;
use crate::supply_chain::{cosign, referrers};

/// What `nixery verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verification {
    /// The image manifest's digest.
    pub digest: Option<Digest>,
    /// Signatures the key made over a payload naming that digest.
    pub signatures: usize,
    /// The predicate types of the statements the key signed about it.
    pub attestations: Vec<String>,
    /// Its referrers: (artifact type, manifest digest).
    pub referrers: Vec<(String, Digest)>,
}

/// The media types a manifest is asked for in.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// `REGISTRY/REPOSITORY[:TAG|@sha256:HEX]`: where, and the digest when
/// one is named.
pub fn parse_reference(s: &str) -> Result<(Destination, Option<Digest>), PushError> {
    match s.split_once('@') {
        Some((name, digest)) => {
            let digest = Digest::parse(digest).map_err(|_| PushError::Destination(s.to_string()))?;
            Ok((name.parse()?, Some(digest)))
        }
        None => Ok((s.parse()?, None)),
    }
}

/// A blob of the repository, its bytes checked against `digest`.
fn blob(client: &Client, digest: &Digest) -> Result<Vec<u8>, String> {
    let bytes =
        client.get_document(&format!("blobs/{digest}"), "*/*").map_err(|e| e.to_string())?.ok_or_else(|| format!("the registry has no blob {digest}"))?;
    if Digest::of(&bytes) != *digest {
        return Err(format!("the registry's blob {digest} does not hold the bytes its digest names"));
    }
    Ok(bytes)
}

/// Checks the image at `dest` (its tag, or `digest`) with `key`.
pub fn verify(dest: &Destination, digest: Option<&Digest>, connection: &Connection, key: &VerifyingKey) -> Result<Verification, PushError> {
    let client = Client::connect_to_read(dest, connection)?;
    let reference = digest.map_or_else(|| dest.tag.clone(), Digest::to_string);
    let what = format!("{}/{}:{reference}", dest.registry, dest.repository);
    let manifest = client
        .get_document(&format!("manifests/{reference}"), ACCEPT)?
        .ok_or_else(|| PushError::Untrusted { what: what.clone(), detail: "the registry has no such image".into() })?;
    let actual = Digest::of(&manifest);
    if digest.is_some_and(|d| *d != actual) {
        return Err(PushError::Untrusted { what, detail: format!("the manifest served is {actual}, not the digest asked for") });
    }
    let invalid = |detail: String| PushError::Untrusted { what: what.clone(), detail };
    let mut found = Verification { digest: Some(actual.clone()), ..Default::default() };
    if let Some(sig) = client.get_document(&format!("manifests/{}", cosign::signature_tag(&actual)), media_type::OCI_MANIFEST)? {
        found.signatures = cosign::verify_signatures(key, &actual, &sig, |d| blob(&client, d)).map_err(invalid)?;
    }
    if let Some(att) = client.get_document(&format!("manifests/{}", cosign::attestation_tag(&actual)), media_type::OCI_MANIFEST)? {
        found.attestations = cosign::verify_attestations(key, &actual, &att, |d| blob(&client, d)).map_err(invalid)?;
    }
    // The referrers API, else the tag schema's index.
    let listed = match client.get_document(&format!("referrers/{actual}"), media_type::OCI_INDEX) {
        Ok(Some(index)) => Some(index),
        Ok(None) | Err(PushError::Registry { .. }) => client.get_document(&format!("manifests/{}", referrers::fallback_tag(&actual)), media_type::OCI_INDEX)?,
        Err(e) => return Err(e),
    };
    if let Some(index) = listed.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
        for m in index["manifests"].as_array().into_iter().flatten() {
            if let (Some(t), Some(d)) = (m["artifactType"].as_str(), m["digest"].as_str().and_then(|d| Digest::parse(d).ok())) {
                found.referrers.push((t.to_string(), d));
            }
        }
    }
    Ok(found)
}
