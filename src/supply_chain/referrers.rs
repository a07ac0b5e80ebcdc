//! OCI 1.1 referrers: a document about an image as an artifact manifest
//! whose `subject` is the image (its one layer the document, its config
//! the empty JSON object), and the index that lists an image's referrers,
//! as the referrers API answers and as the referrers tag schema
//! (`sha256-<hex>`) stores it for registries without that API.

use serde_json::{json, Value};

use super::{Artifact, Blob, DocumentKind};
use crate::digest::Digest;
use crate::image::media_type;

/// The empty JSON object, the config of an artifact manifest.
pub const EMPTY_JSON: &[u8] = b"{}";
/// Its media type.
pub const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The tag of the referrers tag schema for `digest`.
pub fn fallback_tag(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// The subject descriptor of a manifest.
pub fn subject(media_type: &str, digest: &Digest, size: usize) -> Value {
    json!({ "mediaType": media_type, "digest": digest.to_string(), "size": size })
}

/// The artifact manifest of `document` (of `kind`) about `subject`.
pub fn artifact(kind: &DocumentKind, document: &[u8], subject: &Value) -> Artifact {
    let blob = Digest::of(document);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "artifactType": kind.artifact_type,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": Digest::of(EMPTY_JSON).to_string(), "size": EMPTY_JSON.len() },
        "layers": [{ "mediaType": kind.artifact_type, "digest": blob.to_string(), "size": document.len() }],
        "subject": subject,
    }))
    .expect("json");
    Artifact {
        digest: Digest::of(&manifest),
        manifest,
        media_type: media_type::OCI_MANIFEST.to_string(),
        artifact_type: Some(kind.artifact_type.to_string()),
        blobs: vec![
            Blob::new(EMPTY_MEDIA_TYPE, EMPTY_JSON.to_vec()),
            Blob { digest: blob, media_type: kind.artifact_type.to_string(), bytes: document.to_vec() },
        ],
    }
}

/// The artifact manifests of `documents` about `subject`.
pub fn artifacts(documents: &[(DocumentKind, Vec<u8>)], subject: &Value) -> Vec<Artifact> {
    documents.iter().map(|(kind, bytes)| artifact(kind, bytes, subject)).collect()
}

/// The index of referrers `descriptors` (as [`Artifact::descriptor`]
/// gives them), only those of `artifact_type` when one is asked for, as
/// the referrers API answers.
pub fn index(descriptors: &[Value], artifact_type: Option<&str>) -> Vec<u8> {
    let listed: Vec<&Value> = descriptors.iter().filter(|d| artifact_type.is_none_or(|t| d["artifactType"] == t)).collect();
    serde_json::to_vec(&json!({ "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": listed })).expect("json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supply_chain::DOCUMENTS;

    #[test]
    fn an_artifact_names_its_subject_and_holds_its_document() {
        let subject = subject(media_type::OCI_MANIFEST, &Digest::of(b"image"), 5);
        let a = artifact(&DOCUMENTS[0], b"{\"spdxVersion\":\"SPDX-2.3\"}", &subject);
        let m: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["subject"], subject);
        assert_eq!(m["artifactType"], "application/spdx+json");
        assert_eq!(m["layers"][0]["digest"], Digest::of(b"{\"spdxVersion\":\"SPDX-2.3\"}").to_string());
        assert_eq!(a.digest, Digest::of(&a.manifest));
        assert!(a.blobs.iter().all(|b| b.digest == Digest::of(&b.bytes)));
    }

    #[test]
    fn the_index_filters_by_artifact_type() {
        let subject = subject(media_type::OCI_MANIFEST, &Digest::of(b"image"), 5);
        let docs: Vec<(DocumentKind, Vec<u8>)> = DOCUMENTS.iter().map(|k| (*k, b"{}".to_vec())).collect();
        let descriptors: Vec<Value> = artifacts(&docs, &subject).iter().map(Artifact::descriptor).collect();
        let all: Value = serde_json::from_slice(&index(&descriptors, None)).unwrap();
        assert_eq!(all["manifests"].as_array().unwrap().len(), 3);
        let spdx: Value = serde_json::from_slice(&index(&descriptors, Some("application/spdx+json"))).unwrap();
        assert_eq!(spdx["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(spdx["manifests"][0]["artifactType"], "application/spdx+json");
        let none: Value = serde_json::from_slice(&index(&descriptors, Some("text/plain"))).unwrap();
        assert_eq!(none["manifests"], json!([]));
        assert_eq!(none["mediaType"], media_type::OCI_INDEX);
    }
}
