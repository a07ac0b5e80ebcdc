//! Digests: the content addresses of blobs (layers, configs, manifests),
//! and the writer that computes them while bytes go by.
//!
//! A [`Digest`] is always a well-formed `sha256:<64 lower-case hex>`: the
//! only ways to get one are to hash bytes ([`Digest::of`],
//! [`HashingWriter::finish`]) or to parse a string ([`Digest::parse`],
//! which is also what deserialising does). Everything that names a file
//! after a digest (blob directories, storage keys) can rely on that.
//!
//! ```
//! use nixery::digest::Digest;
//! let d = Digest::of(b"hello");
//! assert_eq!(d.hex().len(), 64);
//! assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
//! assert!(Digest::parse("sha256:XYZ").is_err());
//! ```

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A string that is not a digest nixery accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {0:?} (expected sha256: followed by 64 lower-case hex digits)")]
pub struct DigestError(pub String);

/// A sha256 digest in the `sha256:<hex>` form OCI uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Digest(String);

const PREFIX: &str = "sha256:";

impl Digest {
    /// The digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// Parses `sha256:<64 lower-case hex digits>`; anything else (another
    /// algorithm, upper case, a short or long hex part) is an error.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        match s.strip_prefix(PREFIX) {
            Some(hex) if is_hex64(hex) => Ok(Digest(s.to_string())),
            _ => Err(DigestError(s.to_string())),
        }
    }

    /// The digest whose hex part is `hex` (a blob's file name).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if is_hex64(hex) {
            Ok(Digest(format!("{PREFIX}{hex}")))
        } else {
            Err(DigestError(hex.to_string()))
        }
    }

    fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("{PREFIX}{:x}", h.finalize()))
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, as used for blob file names.
    pub fn hex(&self) -> &str {
        &self.0[PREFIX.len()..]
    }
}

fn is_hex64(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A writer that hashes and counts what passes through it: layers as they
/// are packed (the tar for the `diff_id`, the compressed blob for the
/// digest), blobs as storage writes them.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Hashes everything written through to `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    /// The writer the bytes go to.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// How many bytes have been written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The inner writer, the SHA-256 digest and the byte count of what
    /// was written.
    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sha256_digests_parse() {
        let hex = "a".repeat(64);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.hex(), hex);
        assert_eq!(Digest::from_hex(&hex).unwrap(), d);
        for bad in [
            "sha256:xyz".to_string(),
            "sha256:abcd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(65)),
            format!("md5:{hex}"),
            format!("sha256:../{}", &hex[3..]),
            "nocolon".to_string(),
            String::new(),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad}");
            assert!(serde_json::from_value::<Digest>(serde_json::json!(bad)).is_err(), "{bad}");
        }
        assert!(Digest::from_hex("../etc/passwd").is_err());
    }

    #[test]
    fn the_hashing_writer_agrees_with_hashing_the_bytes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hel").unwrap();
        w.write_all(b"lo").unwrap();
        assert_eq!(w.count(), 5);
        let (bytes, digest, n) = w.finish();
        assert_eq!((bytes.as_slice(), n), (&b"hello"[..], 5));
        assert_eq!(digest, Digest::of(b"hello"));
        assert_eq!(digest.as_str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let back: Digest = serde_json::from_str(&serde_json::to_string(&digest).unwrap()).unwrap();
        assert_eq!(back, digest);
    }
}
