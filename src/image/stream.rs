//! The stream image format (`streamNixeryImage`): an OCI layout that
//! holds the manifest, the config and the small layers, and for the
//! layers of store paths only a recipe ([`STREAM_FILE`]). Packing is
//! deterministic, so a recipe packs again to the bytes of its digest;
//! `nixery push` and `nixery load` do that on the fly.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::packing::PermRule;

/// The file of a stream image's layout that says how to pack the layers
/// it does not hold.
pub const STREAM_FILE: &str = "nixery-stream.json";

/// How a stream image's layer is packed again: store paths and the rules
/// over them, under the image's pack options.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecipe {
    /// The layer's digest, as the build computed it.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its store paths.
    pub store_paths: Vec<String>,
    /// Mode and ownership rules.
    #[serde(default)]
    pub perms: Vec<PermRule>,
}

/// The version of [`StreamDoc`] this helper writes and reads.
pub const STREAM_VERSION: u32 = 1;

/// What [`STREAM_FILE`] holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamDoc {
    /// [`STREAM_VERSION`].
    pub version: u32,
    /// The compression of every layer.
    pub compression: crate::packing::Compression,
    /// Its level.
    pub level: u32,
    /// The layers packed on demand.
    pub layers: Vec<LayerRecipe>,
}

impl StreamDoc {
    /// Reads one, refusing another version than this helper writes.
    pub fn from_slice(bytes: &[u8]) -> Result<StreamDoc, String> {
        let doc: StreamDoc = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if doc.version != STREAM_VERSION {
            return Err(format!("version {} (this helper reads version {STREAM_VERSION}: use the helper that built the image)", doc.version));
        }
        Ok(doc)
    }
}
