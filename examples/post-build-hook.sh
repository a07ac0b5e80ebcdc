#!/bin/sh
# A Nix post-build hook that uploads what a build made to a binary cache,
# so other shims (and CI, and developers) substitute it instead of building.
#
# In the shim's nix.conf or NIX_CONFIG:
#   post-build-hook = /path/to/post-build-hook.sh
#   secret-key-files = /path/to/cache-key.sec   # signs what is built
# and in its environment (Nix passes it on to the hook):
#   NIX_UPLOAD_CACHE=file:///srv/nix-cache   (or s3://bucket?region=…, ssh://host)
#
# The other shims read it with:
#   substituters = file:///srv/nix-cache
#   trusted-public-keys = <the contents of cache-key.pub>
#
# Nix waits for the hook before the build finishes, so keep the cache close.
set -eu
# OUT_PATHS is empty on some Nix versions (2.8); the derivation names them.
paths=${OUT_PATHS:-$(nix-store --query --outputs "$DRV_PATH")}
exec nix --extra-experimental-features nix-command copy --to "${NIX_UPLOAD_CACHE:?set NIX_UPLOAD_CACHE to the cache URL}" $paths
