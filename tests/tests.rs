//! Integration tests: the `nixery` CLI contract, images built by nix-build
//! through `lib.nix`, and real clients (skopeo, podman, umoci, the
//! reference registry) consuming them.

mod support;

mod cli;
mod nix_image;
mod library;
mod clients;
mod differential;
mod shim;
mod shim_safety;
mod push;
mod multiarch;
mod binary_cache;
mod deploy;
mod worlds;
mod flake;
mod faults;
