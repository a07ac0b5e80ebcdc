#!/usr/bin/env bash
# A CI job: build the image with Nix, push it to a registry. Run it twice
# with another VERSION: the second push uploads only the app's layer, the
# root layer and the config, and says so.
#
#   REGISTRY=127.0.0.1:5000 VERSION=1 examples/ci-push.sh
#   REGISTRY=127.0.0.1:5000 VERSION=2 examples/ci-push.sh
#
# Credentials: --creds in NIXERY_PUSH_FLAGS, or what `podman login` /
# `docker login` saved (REGISTRY_AUTH_FILE, ~/.docker/config.json).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${REGISTRY:?set REGISTRY, for example 127.0.0.1:5000}"
version=${VERSION:-1}
helper=${NIXERY_HELPER:-$(scripts/helper-path)}
image=$(nix-build examples/ci-push.nix --arg helper "$helper" --argstr version "$version" --no-out-link)
# shellcheck disable=SC2086
"$helper" push ${NIXERY_PUSH_FLAGS:-} "$image" "$REGISTRY/nixery-examples/ci-app:v$version"
