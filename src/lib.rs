//! nixery: container images from Nix.
//!
//! The data path reads top to bottom, one module per step; nothing further
//! down imports anything further up:
//!
//! ```text
//! digest      content addresses, and the writer that hashes as it writes
//! graph       the closure of store paths and their references, popularity
//!   ↓
//! layering    which store paths share a layer (a plan within a budget)
//!   ↓
//! packing     a layer's contents as a reproducible compressed tar
//!   ↓
//! image       config and manifests; OCI layout, docker-archive, index,
//!             and the stream image format (layers as recipes)
//!   ↓
//! assembly    THE one place an image is put together: plan the layers
//!             (root layer included, one budget rule), get each from a
//!             layer store or pack it, return the image
//!   ↓
//! sbom, provenance, supply_chain   what an image carries beside its
//!             layers: SBOMs, provenance, referrers, cosign's signatures
//!   ↓                                   ↓
//! builder     buildNixeryImage          shim       on-demand images, cached
//!             inside nix-build          ↑ image_name, nix, storage
//!                                       registry   the distribution API
//! push        a built image out: to a registry, podman, docker, a layout
//!
//! scratch (temporary names a process owns), closest_name ("did you mean")
//! and fuzz (the properties the fuzz targets check) stand aside.
//! ```
//!
//! Both entry points call [`assembly::plan`] and [`assembly::assemble`];
//! they differ only in their [`assembly::LayerStore`] (a directory of
//! blobs, or a storage backend with its layer cache). So the same store
//! paths always give the same layer bytes, whichever way an image is
//! built, and images share layers in registries and client caches.

#![deny(missing_docs)]
#![deny(missing_debug_implementations)]

pub mod assembly;
pub mod builder;
pub mod closest_name;
pub mod digest;
pub mod fuzz;
pub mod graph;
pub mod image;
pub mod image_name;
pub mod layering;
pub mod nix;
pub mod packing;
pub mod provenance;
pub mod push;
pub mod registry;
pub mod sbom;
pub mod scratch;
pub mod serve;
pub mod shim;
pub mod storage;
pub mod supply_chain;

/// The version of the bytes nixery writes: layers, configs and manifests.
/// Every cache key includes it, and the golden digests in the packing
/// tests are pinned per version: a change to any of those bytes bumps it,
/// so no cache ever serves bytes of an older format.
pub const FORMAT_VERSION: u32 = 2;
