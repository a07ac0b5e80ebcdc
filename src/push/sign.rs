//! Signatures that cosign verifies: after an image is pushed, its manifest
//! digest is put into a simple-signing payload, the payload is signed with
//! an ECDSA P-256 key (SHA-256, an ASN.1 DER signature, as cosign signs),
//! and pushed as cosign lays signatures out: an OCI manifest whose one
//! layer is the payload, the signature in its
//! `dev.cosignproject.cosign/signature` annotation, under the tag
//! `sha256-<hex>.sig` of the same repository. `cosign verify --key PUB
//! --insecure-ignore-tlog` accepts it (no transparency log is written).
//!
//! Keys are read at push time from a file and never enter the Nix store.
//! The key is a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, what
//! `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
//! writes); cosign's own encrypted keys are not read.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::client::{Client, Destination};
use super::{DocumentKind, PushError};
use crate::digest::Digest;
use crate::image::media_type;

/// The media type of cosign's signed payload.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation that carries the signature, base64.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("the signing key {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key this program reads.
    #[error("the signing key {path} {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: &'static str,
    },
}

/// An ECDSA P-256 private key.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(P-256)")
    }
}

/// The body of the first PEM block labelled `label`, decoded.
fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

impl SigningKey {
    /// Reads a PKCS#8 PEM P-256 key.
    pub fn from_pem_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let bad = |problem| KeyError::Format { path: path.into(), problem };
        if text.contains("ENCRYPTED COSIGN PRIVATE KEY") || text.contains("ENCRYPTED SIGSTORE PRIVATE KEY") {
            return Err(bad("is cosign's encrypted key, which nixery does not read: make a PKCS#8 key with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem` (cosign import-key-pair takes it too)"));
        }
        let der = pem_block(&text, "PRIVATE KEY").ok_or_else(|| bad("is not a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)"))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng).map_err(|_| bad("is not an EC P-256 key"))?;
        Ok(SigningKey { pair, rng })
    }

    /// Signs `payload` (ECDSA P-256 over its SHA-256, DER).
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        self.pair.sign(&self.rng, payload).expect("P-256 signing with the system's randomness").as_ref().to_vec()
    }

    /// The public key, as an uncompressed point.
    pub fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

/// cosign's simple-signing payload for `digest` in `repository`
/// (`registry/repo`, no tag).
pub fn simple_signing_payload(repository: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": { "docker-reference": repository },
            "image": { "docker-manifest-digest": digest.to_string() },
            "type": "cosign container image signature",
        },
        "optional": null,
    }))
    .expect("json")
}

/// The tag cosign looks for a manifest's signatures under.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// The media type of a DSSE envelope, cosign's attestation layer.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The payload type of an in-toto statement in a DSSE envelope.
pub const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";

/// The tag cosign looks for a manifest's attestations under.
pub fn attestation_tag(digest: &Digest) -> String {
    format!("sha256-{}.att", digest.hex())
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
    serde_json::to_vec(&serde_json::json!({
        "payloadType": IN_TOTO_PAYLOAD,
        "payload": b64.encode(statement),
        "signatures": [{ "keyid": "", "sig": b64.encode(sig) }],
    }))
    .expect("json")
}

/// An in-toto Statement v1 about the manifest `digest` of `repository`.
pub fn statement(repository: &str, digest: &Digest, predicate_type: &str, predicate: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "_type": crate::provenance::STATEMENT_V1,
        "subject": [{ "name": repository, "digest": { "sha256": digest.hex() } }],
        "predicateType": predicate_type,
        "predicate": predicate,
    }))
    .expect("json")
}

/// In-toto statements about the manifest `digest` of `repository`, one per
/// document: (predicate type, statement).
pub fn statements(repository: &str, digest: &Digest, documents: &[(DocumentKind, Vec<u8>)]) -> Result<Vec<(String, Vec<u8>)>, PushError> {
    documents
        .iter()
        .map(|(kind, bytes)| {
            let doc: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| PushError::Source { path: kind.file.to_string(), detail: format!("is not JSON: {e}") })?;
            let predicate = if kind.is_statement { doc["predicate"].clone() } else { doc };
            Ok((kind.predicate_type.to_string(), statement(repository, digest, kind.predicate_type, &predicate)))
        })
        .collect()
}

/// Pushes `layers` (bytes, media type, annotations) under `tag` as the
/// OCI manifest cosign writes: a config naming them as its diff_ids.
fn push_cosign_manifest(client: &Client, tag: &str, layers: &[(Vec<u8>, &str, serde_json::Value)]) -> Result<Digest, PushError> {
    let digests: Vec<Digest> = layers.iter().map(|(bytes, _, _)| Digest::of(bytes)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{ "created": "0001-01-01T00:00:00Z" }],
        "os": "",
        "rootfs": { "type": "layers", "diff_ids": digests.iter().map(|d| d.to_string()).collect::<Vec<_>>() },
    }))
    .expect("json");
    let config_digest = Digest::of(&config);
    for (d, bytes) in digests.iter().zip(layers.iter().map(|(b, _, _)| b)).chain([(&config_digest, &config)]) {
        client.ensure_blob(d, bytes)?;
    }
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .zip(&digests)
        .map(|((bytes, media, annotations), d)| serde_json::json!({ "mediaType": media, "size": bytes.len(), "digest": d.to_string(), "annotations": annotations }))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "size": config.len(), "digest": config_digest.to_string() },
        "layers": layers,
    }))
    .expect("json");
    client.put_manifest(tag, media_type::OCI_MANIFEST, &manifest)
}

/// Signs each statement (predicate type, statement) into a DSSE envelope
/// and pushes them as cosign's attestations of `digest`.
pub fn push_attestations(client: &Client, key: &SigningKey, digest: &Digest, statements: &[(String, Vec<u8>)]) -> Result<Digest, PushError> {
    let layers: Vec<(Vec<u8>, &str, serde_json::Value)> = statements
        .iter()
        .map(|(predicate_type, statement)| {
            (dsse_envelope(key, statement), DSSE_ENVELOPE, serde_json::json!({ SIGNATURE_ANNOTATION: "", "predicateType": predicate_type }))
        })
        .collect();
    push_cosign_manifest(client, &attestation_tag(digest), &layers)
}

/// Signs the manifest `digest` pushed to `dest` and pushes the signature
/// where cosign finds it; returns the signature manifest's digest.
pub fn push_signature(client: &Client, dest: &Destination, key: &SigningKey, digest: &Digest) -> Result<Digest, PushError> {
    let payload = simple_signing_payload(&format!("{}/{}", dest.registry, dest.repository), digest);
    let signature = base64::engine::general_purpose::STANDARD.encode(key.sign(&payload));
    push_cosign_manifest(client, &signature_tag(digest), &[(payload, SIMPLE_SIGNING, serde_json::json!({ SIGNATURE_ANNOTATION: signature }))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_the_public_key_and_the_payload_names_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref()));
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pem).unwrap();
        let key = SigningKey::from_pem_file(&path).unwrap();
        let digest = Digest::of(b"manifest");
        let payload = simple_signing_payload("127.0.0.1:5000/app", &digest);
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["critical"]["image"]["docker-manifest-digest"], digest.to_string());
        let sig = key.sign(&payload);
        let public = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key.public_point());
        assert!(public.verify(&payload, &sig).is_ok());
        assert!(public.verify(b"another payload", &sig).is_err());
        assert_eq!(signature_tag(&digest), format!("sha256-{}.sig", digest.hex()));

        std::fs::write(&path, "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\nxx\n-----END ENCRYPTED COSIGN PRIVATE KEY-----\n").unwrap();
        assert!(SigningKey::from_pem_file(&path).unwrap_err().to_string().contains("cosign's encrypted key"));
        std::fs::write(&path, "not a key").unwrap();
        assert!(SigningKey::from_pem_file(&path).unwrap_err().to_string().contains("is not a PKCS#8 PEM private key"));
    }
}
