# An image as a service wants it: it runs as a user of its own, who owns
# its home; its entrypoint is named only in `config` (jq is not in
# `contents`, and is in the image all the same); CA certificates are real
# files at the usual place; jq's closure gets a layer of its own that stays
# the same however the rest changes.
#
#   nix-build examples/app.nix --arg helper $(scripts/helper-path)
#   podman run --rm $(podman pull -q oci:$(readlink result):v1)     # prints {"user": "app", ...}
{
  # The nixery helper: a path to the static binary, or the flake's package.
  helper,
  # The package set: the bundled test set, or nixpkgs (the flake's checks).
  pkgs ? import ../tests/pkgs { },
  # The build machine's system (needed in pure evaluation with a path helper).
  system ? null,
}:

let
  nixery = import ../lib.nix { inherit helper system; };
in
nixery.buildNixeryImage {
  name = "localhost/nixery-examples/app";
  tag = "v1";
  contents = [ pkgs.bashInteractive pkgs.coreutils ];
  copyToRoot = [ pkgs.cacert ];
  layers = [ [ pkgs.jq ] ];
  users = [ { name = "app"; uid = 1000; } ];
  config = {
    User = "app";
    WorkingDir = "/home/app";
    Entrypoint = [ "${pkgs.jq}/bin/jq" "-n" ];
    Cmd = [ "{ user: env.USER, home: env.HOME, certificates: (env.SSL_CERT_FILE | length > 0) }" ];
    Env = [ "USER=app" "HOME=/home/app" "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt" ];
  };
}
