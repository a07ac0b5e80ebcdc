//! What the shim keeps beside each image it builds: the image's SBOMs and
//! provenance as OCI 1.1 referrers (served by the referrers API), and,
//! with a signing key (`NIXERY_SIGNING_KEY`), cosign's signature and
//! attestations of it (served under the tags `sha256-<hex>.sig` and
//! `sha256-<hex>.att`), so that `oras discover` and `cosign verify` work
//! against the shim itself.
//!
//! ```text
//! build ─► documents ─► artifact manifests (blobs) ─► meta referrers/<hex>.json
//!                                                     (one list per manifest
//!                                                     flavour; [] for an index)
//! GET …/referrers/<digest>[?artifactType=T] ─► that list, filtered
//! GET …/manifests/sha256-<hex>.sig|.att    ─► meta signatures/<key>/<hex>.<kind>.json,
//!                                              or signed now and kept there
//! ```
//!
//! Signatures are made on the first request for them, not at build time:
//! images from an older build or another shim sharing the storage are
//! signed too, and a new key signs anew (the stored signatures are kept
//! per key).

use serde_json::Value;

use super::{read_document, BuiltImage, ShimError, StoredManifest};
use crate::digest::Digest;
use crate::storage::{put_bytes, Storage, StorageError};
use crate::supply_chain::key::SigningKey;
use crate::supply_chain::{cosign, referrers, Artifact, DocumentKind};

/// The meta key of the referrers list of manifest `digest`.
fn referrers_key(digest: &Digest) -> String {
    format!("referrers/{}.json", digest.hex())
}

/// The meta key of a signature (`sig`) or attestations (`att`) by the key
/// `key_id` of manifest `digest`.
fn signature_key(key_id: &str, digest: &Digest, kind: &str) -> String {
    format!("signatures/{key_id}/{}.{kind}.json", digest.hex())
}

/// A short, stable name of a key: its public point's digest.
pub fn key_id(key: &SigningKey) -> String {
    Digest::of(key.public().to_pem().as_bytes()).hex()[..16].to_string()
}

/// Stores an artifact's blobs, then its manifest (blocking).
fn store(storage: &dyn Storage, artifact: &Artifact) -> Result<StoredManifest, StorageError> {
    for b in &artifact.blobs {
        put_bytes(storage, &b.bytes, &b.media_type)?;
    }
    put_bytes(storage, &artifact.manifest, &artifact.media_type)?;
    Ok(StoredManifest {
        digest: artifact.digest.clone(),
        size: artifact.manifest.len() as u64,
        media_type: artifact.media_type.clone(),
        bytes: Some(artifact.manifest.clone().into()),
    })
}

/// Stores `documents` as referrers of both of `image`'s manifests
/// (blocking); returns each manifest's referrers list, for [`record`].
pub fn store_documents(storage: &dyn Storage, image: &BuiltImage, documents: &[(DocumentKind, Vec<u8>)]) -> Result<Vec<(Digest, Vec<Value>)>, StorageError> {
    let mut lists = Vec::new();
    for m in [&image.oci, &image.docker] {
        let subject = referrers::subject(&m.media_type, &m.digest, m.size as usize);
        let mut listed = Vec::new();
        for a in referrers::artifacts(documents, &subject) {
            store(storage, &a)?;
            listed.push(a.descriptor());
        }
        lists.push((m.digest.clone(), listed));
    }
    Ok(lists)
}

/// Records the referrers lists [`store_documents`] made (an empty list
/// marks an image without documents, an index, as the shim's own).
pub async fn record(storage: &dyn Storage, lists: &[(Digest, Vec<Value>)]) -> Result<(), StorageError> {
    for (digest, listed) in lists {
        storage.put_meta(&referrers_key(digest), &serde_json::to_vec(listed).expect("json")).await?;
    }
    Ok(())
}

/// The referrers of manifest `digest`; None when the shim built no such
/// image.
pub async fn listed(storage: &dyn Storage, digest: &Digest) -> Result<Option<Vec<Value>>, StorageError> {
    let Some(bytes) = storage.get_meta(&referrers_key(digest)).await? else { return Ok(None) };
    Ok(serde_json::from_slice(&bytes).ok())
}

/// `sha256-<hex>.sig` or `sha256-<hex>.att`: the manifest digest and the
/// kind.
pub fn cosign_tag(tag: &str) -> Option<(Digest, &'static str)> {
    let rest = tag.strip_prefix("sha256-")?;
    let (hex, kind) = rest.split_once('.')?;
    let kind = match kind {
        "sig" => "sig",
        "att" => "att",
        _ => return None,
    };
    Some((Digest::parse(&format!("sha256:{hex}")).ok()?, kind))
}

/// The documents listed as referrers of `digest`, read back from storage.
async fn documents(storage: &dyn Storage, listed: &[Value]) -> Result<Vec<(DocumentKind, Vec<u8>)>, ShimError> {
    let mut out = Vec::new();
    for d in listed {
        let Some(kind) = crate::supply_chain::DOCUMENTS.into_iter().find(|k| d["artifactType"] == k.artifact_type) else { continue };
        let Some(manifest) = d["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else { continue };
        let Some(bytes) = read_document(storage, &manifest).await? else { continue };
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let Some(blob) = doc["layers"][0]["digest"].as_str().and_then(|d| Digest::parse(d).ok()) else { continue };
        if let Some(document) = read_document(storage, &blob).await? {
            out.push((kind, document));
        }
    }
    Ok(out)
}

/// The signature (`sig`) or attestations (`att`) by `key` of manifest
/// `digest`, as `repository` names it: the stored one, or made and stored
/// now. None when the shim built no such image (or, for `att`, it has no
/// documents).
pub async fn signed(
    storage: &std::sync::Arc<dyn Storage>,
    key: &SigningKey,
    repository: &str,
    digest: &Digest,
    kind: &str,
) -> Result<Option<StoredManifest>, ShimError> {
    let meta = signature_key(&key_id(key), digest, kind);
    if let Some(bytes) = storage.get_meta(&meta).await? {
        if let Ok(mut stored) = serde_json::from_slice::<StoredManifest>(&bytes) {
            if let Some(manifest) = read_document(&**storage, &stored.digest).await? {
                stored.bytes = Some(manifest.into());
                return Ok(Some(stored));
            }
        }
    }
    let Some(listed) = listed(&**storage, digest).await? else { return Ok(None) };
    let artifact = match kind {
        "sig" => cosign::signature(key, repository, digest),
        _ => {
            let documents = documents(&**storage, &listed).await?;
            if documents.is_empty() {
                return Ok(None);
            }
            cosign::attestations(key, repository, digest, &documents).map_err(ShimError::Attach)?
        }
    };
    let writer = storage.clone();
    let stored = tokio::task::spawn_blocking(move || store(&*writer, &artifact)).await??;
    storage.put_meta(&meta, &serde_json::to_vec(&stored).expect("json")).await?;
    Ok(Some(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosign_tags_name_a_digest_and_a_kind() {
        let d = Digest::of(b"image");
        assert_eq!(cosign_tag(&format!("sha256-{}.sig", d.hex())), Some((d.clone(), "sig")));
        assert_eq!(cosign_tag(&format!("sha256-{}.att", d.hex())), Some((d.clone(), "att")));
        assert_eq!(cosign_tag(&format!("sha256-{}.sbom", d.hex())), None);
        assert_eq!(cosign_tag(&format!("sha256-{}", d.hex())), None);
        assert_eq!(cosign_tag("sha256-abc.sig"), None);
        assert_eq!(cosign_tag("latest"), None);
    }
}
