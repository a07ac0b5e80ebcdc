//! cosign's signatures and attestations, made and checked.
//!
//! A signature: the manifest digest in a simple-signing payload, signed
//! with ECDSA P-256 (SHA-256, ASN.1 DER), laid out as cosign lays it out:
//! an OCI manifest whose one layer is the payload, the signature (base64)
//! in its `dev.cosignproject.cosign/signature` annotation, under the tag
//! `sha256-<hex>.sig` of the image's repository.
//!
//! An attestation: an in-toto Statement v1 about the manifest, whose
//! predicate is a document (an SBOM, the provenance), signed into a DSSE
//! envelope; one layer per document under `sha256-<hex>.att`.
//!
//! `cosign verify --key PUB` and `cosign verify-attestation --key PUB
//! --type spdxjson|cyclonedx|slsaprovenance1` accept both (with
//! `--insecure-ignore-tlog`: no transparency log is written), and
//! [`verify_signatures`] and [`verify_attestations`] check them as cosign
//! does.

use base64::Engine;
use serde_json::{json, Value};

use super::key::{SigningKey, VerifyingKey};
use super::{Artifact, Blob, DocumentKind};
use crate::digest::Digest;
use crate::image::media_type;

/// The media type of cosign's signed payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries a signature, base64.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The media type of a DSSE envelope, cosign's attestation layer.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The payload type of an in-toto statement in a DSSE envelope.
pub const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";

/// The tag cosign looks for a manifest's signatures under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The tag cosign looks for a manifest's attestations under.
pub fn attestation_tag(digest: &Digest) -> String {
    format!("sha256-{}.att", digest.hex())
}

/// cosign's simple-signing payload for `digest` in `repository`
/// (`registry/repo`, no tag).
pub fn simple_signing_payload(repository: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": digest.to_string() },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("json")
}

/// DSSE's pre-authentication encoding of a payload: what is signed.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A statement signed into a DSSE envelope (JSON).
pub fn dsse_envelope(key: &SigningKey, statement: &[u8]) -> Vec<u8> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let sig = key.sign(&pae(IN_TOTO_PAYLOAD, statement));
    serde_json::to_vec(&json!({
        "payloadType": IN_TOTO_PAYLOAD,
        "payload": b64.encode(statement),
        "signatures": [{ "keyid": "", "sig": b64.encode(sig) }],
    }))
    .expect("json")
}

/// An in-toto Statement v1 about the manifest `digest` of `repository`.
pub fn statement(repository: &str, digest: &Digest, predicate_type: &str, predicate: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "_type": crate::provenance::STATEMENT_V1,
        "subject": [{ "name": repository, "digest": { "sha256": digest.hex() } }],
        "predicateType": predicate_type,
        "predicate": predicate,
    }))
    .expect("json")
}

/// The manifest cosign writes for `layers` (bytes, media type,
/// annotations): a config naming them as its diff_ids.
fn cosign_manifest(layers: Vec<(Vec<u8>, &'static str, Value)>) -> Artifact {
    let annotations: Vec<Value> = layers.iter().map(|(_, _, a)| a.clone()).collect();
    let layers: Vec<Blob> = layers.into_iter().map(|(bytes, media, _)| Blob::new(media, bytes)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|b| b.digest.to_string()).collect::<Vec<_>>() },
    }))
    .expect("json");
    let config = Blob::new(media_type::OCI_CONFIG, config);
    let descriptors: Vec<Value> = layers
        .iter()
        .zip(annotations)
        .map(|(b, annotations)| json!({ "mediaType": b.media_type, "size": b.bytes.len(), "digest": b.digest.to_string(), "annotations": annotations }))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": config.media_type, "size": config.bytes.len(), "digest": config.digest.to_string() },
        "layers": descriptors,
    }))
    .expect("json");
    let mut blobs = layers;
    blobs.push(config);
    Artifact { digest: Digest::of(&manifest), manifest, media_type: media_type::OCI_MANIFEST.to_string(), artifact_type: None, blobs }
}

/// The signature of manifest `digest` in `repository`, under
/// [`signature_tag`].
pub fn signature(key: &SigningKey, repository: &str, digest: &Digest) -> Artifact {
    let payload = simple_signing_payload(repository, digest);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    cosign_manifest(vec![(payload, SIMPLE_SIGNING, json!({ SIGNATURE_ANNOTATION: signature }))])
}

/// The attestations of manifest `digest` in `repository`, one per
/// document, under [`attestation_tag`]; an error names a document that is
/// not JSON.
pub fn attestations(key: &SigningKey, repository: &str, digest: &Digest, documents: &[(DocumentKind, Vec<u8>)]) -> Result<Artifact, String> {
    let mut layers = Vec::new();
    for (kind, bytes) in documents {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("{} is not JSON: {e}", kind.file))?;
        let predicate = if kind.is_statement { doc["predicate"].clone() } else { doc };
        let statement = statement(repository, digest, kind.predicate_type, &predicate);
        layers.push((dsse_envelope(key, &statement), DSSE_ENVELOPE, json!({ SIGNATURE_ANNOTATION: "", "predicateType": kind.predicate_type })));
    }
    Ok(cosign_manifest(layers))
}

/// The layers of a cosign manifest: (digest, media type, annotations).
fn layers_of(manifest: &[u8]) -> Result<Vec<(Digest, String, Value)>, String> {
    let doc: Value = serde_json::from_slice(manifest).map_err(|e| format!("is not JSON ({e})"))?;
    let layers = doc["layers"].as_array().ok_or("has no layers")?;
    layers
        .iter()
        .map(|l| {
            let digest = l["digest"].as_str().and_then(|d| Digest::parse(d).ok()).ok_or("has a layer without a valid digest")?;
            Ok((digest, l["mediaType"].as_str().unwrap_or_default().to_string(), l["annotations"].clone()))
        })
        .collect()
}

/// Checks the signature manifest (`sha256-<hex>.sig`) of image manifest
/// `digest` with `key`, reading its layers with `blob` (whose bytes the
/// caller checked against their digest): how many signatures `key` made
/// over a payload naming `digest`. Signatures by other keys, or over
/// another digest, do not count.
pub fn verify_signatures(
    key: &VerifyingKey,
    digest: &Digest,
    manifest: &[u8],
    mut blob: impl FnMut(&Digest) -> Result<Vec<u8>, String>,
) -> Result<usize, String> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut good = 0;
    for (layer, media, annotations) in layers_of(manifest)? {
        if media != SIMPLE_SIGNING {
            continue;
        }
        let Some(sig) = annotations[SIGNATURE_ANNOTATION].as_str().and_then(|s| b64.decode(s).ok()) else { continue };
        let payload = blob(&layer)?;
        if !key.verifies(&payload, &sig) {
            continue;
        }
        let claims: Value = serde_json::from_slice(&payload).map_err(|e| format!("a signed payload is not JSON ({e})"))?;
        if claims["critical"]["image"]["docker-manifest-digest"] == digest.to_string() && claims["critical"]["type"] == "cosign container image signature" {
            good += 1;
        }
    }
    Ok(good)
}

/// Checks the attestations manifest (`sha256-<hex>.att`) of image manifest
/// `digest` with `key`: the predicate types of the statements `key` signed
/// about `digest`, sorted, each once.
pub fn verify_attestations(
    key: &VerifyingKey,
    digest: &Digest,
    manifest: &[u8],
    mut blob: impl FnMut(&Digest) -> Result<Vec<u8>, String>,
) -> Result<Vec<String>, String> {
    let b64 = &base64::engine::general_purpose::STANDARD;
    let mut types = Vec::new();
    for (layer, media, _) in layers_of(manifest)? {
        if media != DSSE_ENVELOPE {
            continue;
        }
        let envelope: Value = serde_json::from_slice(&blob(&layer)?).map_err(|e| format!("an attestation is not JSON ({e})"))?;
        let (Some(payload_type), Some(payload)) = (envelope["payloadType"].as_str(), envelope["payload"].as_str().and_then(|p| b64.decode(p).ok())) else {
            continue;
        };
        let signed = pae(payload_type, &payload);
        let signatures = envelope["signatures"].as_array().map(Vec::as_slice).unwrap_or_default();
        if !signatures.iter().filter_map(|s| s["sig"].as_str().and_then(|s| b64.decode(s).ok())).any(|sig| key.verifies(&signed, &sig)) {
            continue;
        }
        let statement: Value = serde_json::from_slice(&payload).map_err(|e| format!("an attested statement is not JSON ({e})"))?;
        let about = statement["subject"].as_array().into_iter().flatten().any(|s| s["digest"]["sha256"] == digest.hex());
        if payload_type == IN_TOTO_PAYLOAD && about {
            if let Some(t) = statement["predicateType"].as_str() {
                types.push(t.to_string());
            }
        }
    }
    types.sort();
    types.dedup();
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supply_chain::DOCUMENTS;

    fn key() -> SigningKey {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/supply_chain/testdata/cosign-2.5.key");
        SigningKey::from_file(&root, Some("correct-horse")).unwrap()
    }

    fn blobs(a: &Artifact) -> impl FnMut(&Digest) -> Result<Vec<u8>, String> + '_ {
        |d| a.blobs.iter().find(|b| b.digest == *d).map(|b| b.bytes.clone()).ok_or_else(|| format!("no blob {d}"))
    }

    #[test]
    fn a_signature_names_the_digest_and_verifies_with_its_key_only() {
        let key = key();
        let digest = Digest::of(b"manifest");
        let sig = signature(&key, "127.0.0.1:5000/app", &digest);
        let payload: Value = serde_json::from_slice(&sig.blobs[0].bytes).unwrap();
        assert_eq!(payload["critical"]["image"]["docker-manifest-digest"], digest.to_string());
        assert_eq!(verify_signatures(&key.public(), &digest, &sig.manifest, blobs(&sig)), Ok(1));
        // Not for another image, not with another key.
        assert_eq!(verify_signatures(&key.public(), &Digest::of(b"other"), &sig.manifest, blobs(&sig)), Ok(0));
        let rng = ring::rand::SystemRandom::new();
        let other = ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.pem");
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64::engine::general_purpose::STANDARD.encode(other.as_ref()));
        std::fs::write(&path, pem).unwrap();
        let other = SigningKey::from_file(&path, None).unwrap();
        assert_eq!(verify_signatures(&other.public(), &digest, &sig.manifest, blobs(&sig)), Ok(0));
        assert_eq!(signature_tag(&digest), format!("sha256-{}.sig", digest.hex()));
    }

    #[test]
    fn attestations_carry_each_documents_predicate_about_the_digest() {
        let key = key();
        let digest = Digest::of(b"manifest");
        let documents: Vec<(DocumentKind, Vec<u8>)> = DOCUMENTS
            .iter()
            .map(|k| {
                let doc = if k.is_statement { json!({ "predicate": { "of": k.file } }) } else { json!({ "of": k.file }) };
                (*k, serde_json::to_vec(&doc).unwrap())
            })
            .collect();
        let att = attestations(&key, "127.0.0.1:5000/app", &digest, &documents).unwrap();
        let mut expected: Vec<String> = DOCUMENTS.iter().map(|k| k.predicate_type.to_string()).collect();
        expected.sort();
        assert_eq!(verify_attestations(&key.public(), &digest, &att.manifest, blobs(&att)), Ok(expected));
        assert_eq!(verify_attestations(&key.public(), &Digest::of(b"other"), &att.manifest, blobs(&att)), Ok(vec![]));
        // The provenance's predicate is attested, not its whole statement.
        let envelope: Value = serde_json::from_slice(&att.blobs[2].bytes).unwrap();
        let statement: Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(statement["predicate"], json!({ "of": crate::provenance::PROVENANCE_FILE }));
        let broken = [(DOCUMENTS[0], b"not json".to_vec())];
        assert!(attestations(&key, "app", &digest, &broken).unwrap_err().contains("is not JSON"));
    }
}
