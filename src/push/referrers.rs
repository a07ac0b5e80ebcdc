//! Publishing what an image carries beside its layers
//! ([`crate::supply_chain`]) to a registry: its documents as OCI 1.1
//! referrers, and (signed) cosign's signature and attestations.
//!
//! A registry with the referrers API acknowledges a referrer's subject
//! (`OCI-Subject`) and lists it itself; for one without (the reference
//! registry 2.8), the referrers are listed in the referrers tag schema's
//! index under the tag `sha256-<hex>`, keeping what that index listed
//! already (an artifact another tool attached).

use serde_json::{json, Value};

use super::client::Client;
use super::PushError;
use crate::digest::Digest;
use crate::image::media_type;
use crate::supply_chain::{referrers::fallback_tag, Artifact};

/// Uploads an artifact's blobs (those the registry lacks), then its
/// manifest under `reference` (its digest when None); whether the
/// registry acknowledged a subject.
pub fn push_artifact(client: &Client, artifact: &Artifact, reference: Option<&str>) -> Result<bool, PushError> {
    for blob in &artifact.blobs {
        client.ensure_blob(&blob.digest, &blob.bytes)?;
    }
    let reference = reference.map_or_else(|| artifact.digest.to_string(), str::to_string);
    let (_, acked) = client.put_manifest_acked(&reference, &artifact.media_type, &artifact.manifest)?;
    Ok(acked)
}

/// Pushes `referrers` of the manifest `subject`, and lists them in the
/// tag schema's index unless the registry lists them itself.
pub fn push_referrers(client: &Client, subject: &Digest, referrers: &[Artifact]) -> Result<(), PushError> {
    let mut all_acked = true;
    for a in referrers {
        all_acked &= push_artifact(client, a, None)?;
    }
    if !referrers.is_empty() && !all_acked {
        update_fallback_index(client, subject, referrers)?;
    }
    Ok(())
}

/// Adds `referrers` to the referrers tag schema's index of `subject`.
fn update_fallback_index(client: &Client, subject: &Digest, referrers: &[Artifact]) -> Result<(), PushError> {
    let tag = fallback_tag(subject);
    let mut index: Value = match client.get_manifest(&tag, media_type::OCI_INDEX)? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({})),
        None => json!({}),
    };
    if index["mediaType"] != media_type::OCI_INDEX || !index["manifests"].is_array() {
        index = json!({ "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": [] });
    }
    let manifests = index["manifests"].as_array_mut().expect("an array");
    for a in referrers {
        if !manifests.iter().any(|m| m["digest"] == a.digest.to_string()) {
            manifests.push(a.descriptor());
        }
    }
    let bytes = serde_json::to_vec(&index).expect("json");
    client.put_manifest(&tag, media_type::OCI_INDEX, &bytes)?;
    Ok(())
}
