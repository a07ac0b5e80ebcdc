//! OCI 1.1 referrers: the documents an image's build wrote beside it
//! (SBOMs, provenance) pushed after the image as artifact manifests whose
//! `subject` is the image, so `oras discover` and any OCI 1.1 client find
//! them. A registry with the referrers API acknowledges the subject
//! (`OCI-Subject`) and lists them itself; for one without (the reference
//! registry 2.8), they are listed in the referrers tag schema's index under
//! the tag `sha256-<hex>`, keeping what that index listed already.

use serde_json::{json, Value};

use super::client::Client;
use super::{DocumentKind, PushError, Source};
use crate::digest::Digest;
use crate::image::media_type;

/// The empty JSON object, the config of an artifact manifest.
const EMPTY_JSON: &[u8] = b"{}";
/// Its media type.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The tag of the referrers tag schema for `digest`.
pub fn fallback_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// An artifact manifest of one blob about `subject`.
fn artifact_manifest(artifact_type: &str, blob: &Digest, size: usize, subject: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": Digest::of(EMPTY_JSON).to_string(), "size": EMPTY_JSON.len() },
        "layers": [{ "mediaType": artifact_type, "digest": blob.to_string(), "size": size }],
        "subject": subject,
    }))
    .expect("json")
}

/// Pushes `documents` (read beside `source`) as referrers of its manifest
/// `digest`; returns the artifact manifests' digests.
pub fn push_referrers(client: &Client, source: &Source, digest: &Digest, documents: &[(DocumentKind, Vec<u8>)]) -> Result<Vec<Digest>, PushError> {
    let subject = json!({ "mediaType": source.media_type, "digest": digest.to_string(), "size": source.manifest.len() });
    let mut pushed: Vec<(Digest, usize, &str)> = Vec::new();
    let mut all_acked = true;
    if !documents.is_empty() {
        client.ensure_blob(&Digest::of(EMPTY_JSON), EMPTY_JSON)?;
    }
    for (kind, bytes) in documents {
        let blob = Digest::of(bytes);
        client.ensure_blob(&blob, bytes)?;
        let manifest = artifact_manifest(kind.artifact_type, &blob, bytes.len(), &subject);
        let (d, acked) = client.put_manifest_acked(&Digest::of(&manifest).to_string(), media_type::OCI_MANIFEST, &manifest)?;
        all_acked &= acked;
        pushed.push((d, manifest.len(), kind.artifact_type));
    }
    if !pushed.is_empty() && !all_acked {
        update_fallback_index(client, digest, &pushed)?;
    }
    Ok(pushed.into_iter().map(|(d, _, _)| d).collect())
}

/// Adds `pushed` to the referrers tag schema's index of `digest`.
fn update_fallback_index(client: &Client, digest: &Digest, pushed: &[(Digest, usize, &str)]) -> Result<(), PushError> {
    let tag = fallback_tag(digest);
    let mut index: Value = match client.get_manifest(&tag, media_type::OCI_INDEX)? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    if index["mediaType"] != media_type::OCI_INDEX || !index["manifests"].is_array() {
        index = json!({ "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [] });
    }
    let manifests = index["manifests"].as_array_mut().expect("an array");
    for (d, size, artifact_type) in pushed {
        if !manifests.iter().any(|m| m["digest"] == d.to_string()) {
            manifests.push(json!({ "mediaType": media_type::OCI_MANIFEST, "digest": d.to_string(), "size": size, "artifactType": artifact_type }));
        }
    }
    let bytes = serde_json::to_vec(&index).expect("json");
    client.put_manifest(&tag, media_type::OCI_INDEX, &bytes)?;
    Ok(())
}
