# The Nix outputs for `nix-build` users without flakes:
#
#   nix-build nix -A nixery          # the helper
#   nix-build nix -A nixery-image    # the registry shim's container image
#
# `pkgs` is nixpkgs (<nixpkgs> by default).
{ pkgs ? import <nixpkgs> { } }:

rec {
  nixery = pkgs.callPackage ./helper.nix { };
  nixery-image = import ./nixery-image.nix { inherit pkgs; helper = nixery; };
}
