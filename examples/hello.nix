# The example image: a shell, GNU hello and jq from the bundled test
# package set, built by buildNixeryImage.
#
#   nix-build examples/hello.nix --arg helper ./target/release/nixery
#   skopeo copy oci:result:v1 containers-storage:localhost/hello:v1
{
  # The nixery helper: a path to the binary, or the flake's package.
  helper,
  pkgs ? import ../tests/pkgs { },
  maxLayers ? 20,
}:

let
  nixery = import ../lib.nix { inherit helper; };
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
  inherit maxLayers;
}
