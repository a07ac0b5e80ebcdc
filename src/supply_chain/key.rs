//! Signing and verifying keys: ECDSA P-256, as cosign uses them.
//!
//! A private key is read from a PEM file, either a PKCS#8 key
//! (`-----BEGIN PRIVATE KEY-----`, what `openssl genpkey -algorithm EC
//! -pkeyopt ec_paramgen_curve:P-256` writes) or cosign's own encrypted key
//! (`cosign generate-key-pair`: scrypt, then NaCl secretbox, around a
//! PKCS#8 key), whose password is cosign's `COSIGN_PASSWORD`. A public key
//! is the PEM `-----BEGIN PUBLIC KEY-----` both tools write. Keys are read
//! where they are used (a push, the shim at start, a verification) and
//! never enter the Nix store.

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING};

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("the key {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a key this program reads, or cannot be opened.
    #[error("the key {path} {problem}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        problem: String,
    },
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

/// The PEM labels of cosign's encrypted private keys (2.x, then 1.x).
const ENCRYPTED_LABELS: [&str; 2] = ["ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY"];

/// The most memory scrypt may take opening a key (cosign asks for 64 MiB):
/// a key file cannot make this program allocate without bound.
const MAX_SCRYPT_MEMORY: u64 = 512 << 20;

/// cosign's encrypted key document (sigstore's `encrypted` package);
/// byte strings are base64, as Go writes `[]byte`.
#[derive(serde::Deserialize)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(serde::Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(serde::Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(serde::Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// Opens cosign's encrypted key document with `password`: the PKCS#8 key
/// inside, or what is wrong.
fn decrypt_cosign_key(document: &[u8], password: &str) -> Result<Vec<u8>, String> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let b64 = &base64::engine::general_purpose::STANDARD;
    let doc: EncryptedKey = serde_json::from_slice(document).map_err(|e| format!("is not a cosign key document ({e})"))?;
    if doc.kdf.name != "scrypt" || doc.cipher.name != "nacl/secretbox" {
        return Err(format!("uses {} and {}, where cosign's keys use scrypt and nacl/secretbox", doc.kdf.name, doc.cipher.name));
    }
    let ScryptParams { n, r, p } = doc.kdf.params;
    if !n.is_power_of_two() || n < 2 || r == 0 || p == 0 || p > 16 || 128u64.saturating_mul(n).saturating_mul(r as u64) > MAX_SCRYPT_MEMORY {
        return Err(format!("asks for scrypt parameters N={n} r={r} p={p}, beyond what a key needs"));
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32).map_err(|e| format!("has bad scrypt parameters ({e})"))?;
    let salt = b64.decode(&doc.kdf.salt).map_err(|_| "has a salt that is not base64".to_string())?;
    let nonce = b64.decode(&doc.cipher.nonce).map_err(|_| "has a nonce that is not base64".to_string())?;
    let ciphertext = b64.decode(&doc.ciphertext).map_err(|_| "has a ciphertext that is not base64".to_string())?;
    if nonce.len() != 24 {
        return Err(format!("has a {}-byte nonce (secretbox takes 24)", nonce.len()));
    }
    let mut secret = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut secret).map_err(|e| format!("cannot be opened ({e})"))?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(&secret.into());
    cipher
        .decrypt(crypto_secretbox::Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map_err(|_| "cannot be opened with the password in COSIGN_PASSWORD: is it this key's password?".to_string())
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

impl SigningKey {
    /// Reads a private key: PKCS#8 PEM, or cosign's encrypted key opened
    /// with `password` (`COSIGN_PASSWORD`).
    pub fn from_file(path: &Path, password: Option<&str>) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let bad = |problem: String| KeyError::Format { path: path.into(), problem };
        let der = if let Some(doc) = ENCRYPTED_LABELS.iter().find_map(|l| pem_block(&text, l)) {
            let Some(password) = password else {
                return Err(bad("is cosign's encrypted key: set COSIGN_PASSWORD to its password (as cosign reads it)".into()));
            };
            decrypt_cosign_key(&doc, password).map_err(bad)?
        } else if let Some(der) = pem_block(&text, "PRIVATE KEY") {
            der
        } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            return Err(bad("is a SEC 1 key: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out key.pem`".into()));
        } else {
            return Err(bad("is not a private key: pass a PKCS#8 PEM P-256 key (`openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem`) or a key from `cosign generate-key-pair`".into()));
        };
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &rng)
            .map_err(|_| bad("is not an EC P-256 key (cosign and nixery sign with P-256)".into()))?;
        Ok(SigningKey { pair, rng })
    }

    /// Signs `payload` (ECDSA P-256 over its SHA-256, DER).
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        self.pair.sign(&self.rng, payload).expect("P-256 signing with the system's randomness").as_ref().to_vec()
    }

    /// Its public half.
    pub fn public(&self) -> VerifyingKey {
        VerifyingKey { point: self.pair.public_key().as_ref().to_vec() }
    }
}

/// The DER prefix of a P-256 public key's SubjectPublicKeyInfo, before its
/// uncompressed point: SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 },
/// BIT STRING }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// An ECDSA P-256 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    /// The uncompressed point.
    point: Vec<u8>,
}

impl VerifyingKey {
    /// Reads a PEM public key (`cosign.pub`, `openssl pkey -pubout`).
    pub fn from_file(path: &Path) -> Result<VerifyingKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read { path: path.into(), source })?;
        let bad = |problem: &str| KeyError::Format { path: path.into(), problem: problem.into() };
        if text.contains("PRIVATE KEY-----") {
            return Err(bad("is a private key: verify with its public half (`cosign public-key --key KEY` or `openssl pkey -in KEY -pubout`)"));
        }
        let der = pem_block(&text, "PUBLIC KEY").ok_or_else(|| bad("is not a PEM public key (-----BEGIN PUBLIC KEY-----)"))?;
        VerifyingKey::from_spki(&der).ok_or_else(|| bad("is not an EC P-256 public key"))
    }

    /// From a DER SubjectPublicKeyInfo of P-256.
    pub fn from_spki(der: &[u8]) -> Option<VerifyingKey> {
        let point = der.strip_prefix(&P256_SPKI_PREFIX)?;
        (point.len() == 65 && point[0] == 4).then(|| VerifyingKey { point: point.to_vec() })
    }

    /// The key as a PEM public key.
    pub fn to_pem(&self) -> String {
        let der: Vec<u8> = P256_SPKI_PREFIX.iter().chain(&self.point).copied().collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// Whether `signature` (DER) is this key's over `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point).verify(payload, signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkcs8_pem() -> String {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref()))
    }

    #[test]
    fn a_pkcs8_key_signs_what_its_public_half_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, pkcs8_pem()).unwrap();
        let key = SigningKey::from_file(&path, None).unwrap();
        let sig = key.sign(b"payload");
        let public = key.public();
        assert!(public.verifies(b"payload", &sig));
        assert!(!public.verifies(b"another payload", &sig));
        // Its PEM reads back.
        let pub_path = dir.path().join("key.pub");
        std::fs::write(&pub_path, public.to_pem()).unwrap();
        assert_eq!(VerifyingKey::from_file(&pub_path).unwrap(), public);
        // Another key does not verify it.
        std::fs::write(&path, pkcs8_pem()).unwrap();
        assert!(!SigningKey::from_file(&path, None).unwrap().public().verifies(b"payload", &sig));
    }

    /// A key `COSIGN_PASSWORD=correct-horse cosign generate-key-pair` wrote
    /// (cosign 2.5), with its public half.
    #[test]
    fn cosigns_encrypted_key_opens_with_its_password_only() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/supply_chain/testdata");
        let (key_path, pub_path) = (root.join("cosign-2.5.key"), root.join("cosign-2.5.pub"));
        let key = SigningKey::from_file(&key_path, Some("correct-horse")).unwrap();
        let public = VerifyingKey::from_file(&pub_path).unwrap();
        assert_eq!(key.public(), public);
        assert_eq!(public.to_pem(), std::fs::read_to_string(&pub_path).unwrap());
        let wrong = SigningKey::from_file(&key_path, Some("battery-staple")).unwrap_err().to_string();
        assert!(wrong.contains("cannot be opened with the password in COSIGN_PASSWORD"), "{wrong}");
        let none = SigningKey::from_file(&key_path, None).unwrap_err().to_string();
        assert!(none.contains("set COSIGN_PASSWORD"), "{none}");
        // A public key given as a private one, and the other way round.
        assert!(SigningKey::from_file(&pub_path, None).unwrap_err().to_string().contains("is not a private key"));
        assert!(VerifyingKey::from_file(&key_path).unwrap_err().to_string().contains("is a private key"));
    }

    #[test]
    fn a_key_document_cannot_ask_for_unbounded_memory() {
        let doc = serde_json::json!({
            "kdf": { "name": "scrypt", "params": { "N": 1u64 << 30, "r": 8, "p": 1 }, "salt": "AAAA" },
            "cipher": { "name": "nacl/secretbox", "nonce": "AAAA" },
            "ciphertext": "AAAA",
        });
        let e = decrypt_cosign_key(doc.to_string().as_bytes(), "pw").unwrap_err();
        assert!(e.contains("beyond what a key needs"), "{e}");
    }
}
