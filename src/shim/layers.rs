//! The shim's layer store: layers live in storage, found through the layer
//! cache (`meta/layers/<key>.json` → the packed layer), with an in-memory
//! front that also makes packing single-flight. Two images built at the
//! same moment that share a layer pack it once; an image built after
//! another reuses its layers without packing.

use std::sync::Arc;

use crate::assembly::{LayerJob, LayerStore, StoreError};
use crate::image::media_type;
use crate::packing::{self, LayerKey, PackOptions, PackedLayer};
use crate::storage::{Storage, StorageError};

/// How many packed layers are remembered in memory.
const MEMORY_LAYERS: u64 = 100_000;

/// The in-memory front of the layer cache, shared by every build.
pub type LayerCache = moka::sync::Cache<LayerKey, PackedLayer>;

/// A new, empty in-memory layer cache.
pub fn layer_cache() -> LayerCache {
    moka::sync::Cache::new(MEMORY_LAYERS)
}

/// Layers in a storage backend. Used from the threads that assemble an
/// image; storage's async calls run on `runtime`.
pub struct StorageLayers<'a> {
    /// Where blobs and the layer cache live.
    pub storage: &'a Arc<dyn Storage>,
    /// Layers known in this process.
    pub cache: &'a LayerCache,
    /// The runtime that runs storage calls.
    pub runtime: tokio::runtime::Handle,
}

fn meta_key(key: &LayerKey) -> String {
    format!("layers/{key}.json")
}

impl std::fmt::Debug for StorageLayers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageLayers").field("storage", &self.storage.name()).field("cached", &self.cache.entry_count()).finish()
    }
}

impl StorageLayers<'_> {
    /// The layer the storage's cache has for `key`, if its blob is there
    /// at the size the entry records (an entry that says otherwise is a
    /// miss: the layer is packed again, and the entry rewritten).
    fn stored(&self, key: &LayerKey) -> Result<Option<PackedLayer>, StorageError> {
        self.runtime.block_on(async {
            let Some(bytes) = self.storage.get_meta(&meta_key(key)).await? else { return Ok(None) };
            // An entry of another format is a miss, not an error.
            let Ok(p) = serde_json::from_slice::<PackedLayer>(&bytes) else { return Ok(None) };
            match self.storage.stat_blob(&p.digest).await? {
                Some(info) if info.size == p.size => Ok(Some(p)),
                Some(info) => {
                    tracing::warn!(layer = %key, blob = %p.digest, recorded = p.size, actual = info.size, "a layer cache entry has a wrong size: the layer is packed again");
                    Ok(None)
                }
                None => Ok(None),
            }
        })
    }

    fn pack_into_storage(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError> {
        // Another process sharing the storage may have packed it meanwhile.
        if let Some(p) = self.stored(&job.key)? {
            return Ok(p);
        }
        let writer = self.storage.blob_writer()?;
        let name = format!("{} blob for layer {}", self.storage.name(), job.key);
        // On an error the writer is dropped with it: nothing is left behind.
        let (writer, packed) = packing::pack_to_writer(&job.content, writer, opts, std::path::Path::new(&name))?;
        let media = media_type::oci_layer(packed.compression);
        writer.commit(&packed.digest, media)?;
        let doc = serde_json::to_vec(&packed).expect("a layer serialises");
        self.runtime.block_on(self.storage.put_meta(&meta_key(&job.key), &doc))?;
        Ok(packed)
    }
}

impl LayerStore for StorageLayers<'_> {
    fn find(&self, job: &LayerJob) -> Result<Option<PackedLayer>, StoreError> {
        if let Some(p) = self.cache.get(&job.key) {
            return Ok(Some(p));
        }
        let found = self.stored(&job.key)?;
        if let Some(p) = &found {
            self.cache.insert(job.key.clone(), p.clone());
        }
        Ok(found)
    }

    fn pack(&self, job: &LayerJob, opts: PackOptions) -> Result<PackedLayer, StoreError> {
        // One packing per key at a time: callers that want the same layer
        // wait for the first and share its result.
        self.cache.try_get_with(job.key.clone(), || self.pack_into_storage(job, opts)).map_err(|e: Arc<StoreError>| -> StoreError { Box::new(SharedError(e)) })
    }
}

/// A store error several waiting builds share.
#[derive(Debug)]
struct SharedError(Arc<StoreError>);

impl std::fmt::Display for SharedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Shared, the error is still its cause's: classifiers walk through.
        self.0.source()
    }
}
