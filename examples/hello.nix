# The example image: a shell, GNU hello and jq from the bundled test
# package set, built by buildNixeryImage.
#
#   nix-build examples/hello.nix --arg helper $(scripts/helper-path)
#   skopeo copy oci:result:v1 containers-storage:localhost/hello:v1
{
  # The nixery helper: a path to the static binary, or the flake's package.
  helper,
  # The package set: the bundled test set, or nixpkgs (the flake's checks).
  pkgs ? import ../tests/pkgs { },
  # The build machine's system (needed in pure evaluation with a path helper).
  system ? null,
  maxLayers ? 20,
  # A layer lock: an image built before, or a layers.lock.json.
  layerLock ? null,
}:

let
  nixery = import ../lib.nix { inherit helper system; };
in
nixery.buildNixeryImage {
  name = "hello";
  tag = "v1";
  contents = [ pkgs.bashInteractive pkgs.coreutils pkgs.hello pkgs.jq ];
  config = {
    Cmd = [ "hello" ];
    Env = [ "FOO=bar" ];
    Labels."org.opencontainers.image.source" = "nixery/examples/hello.nix";
  };
  inherit maxLayers layerLock;
}
