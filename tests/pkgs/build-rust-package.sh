# The phases of nixpkgs' buildRustPackage, for the stand-in package set
# (tests/pkgs/rust.nix), run by busybox's sh in Nix's sandbox: stdenv's
# unpackPhase, then the cargo hooks in nixpkgs' order and with their
# flags (cargoSetupPostUnpackHook, cargoSetupPostPatchHook,
# cargoBuildHook, cargoCheckHook, cargoInstallHook). Nix has set
# HOME=/homeless-shelter, which does not exist, and there is no network.

cd "$NIX_BUILD_TOP"

# What the sandbox gives, in the log (tests/flake.rs reads it).
if touch "$HOME/.probe" 2>/dev/null; then echo "HOME=$HOME (writable)"; else echo "HOME=$HOME (not writable)"; fi
for p in nix-build skopeo podman; do
  echo "$p: $(command -v "$p" || echo unreachable)"
done

echo "unpacking source archive $src"
cp -r "$src" source
chmod -R u+w source

echo "Executing cargoSetupPostUnpackHook"
cp -rL "$cargoDeps" cargo-vendor-dir
chmod -R u+w cargo-vendor-dir
mkdir -p .cargo
sed "s|@vendor@|$NIX_BUILD_TOP/cargo-vendor-dir|" cargo-vendor-dir/.cargo/config.toml >> .cargo/config.toml
cat >> .cargo/config.toml <<EOF

[target."$rustTarget"]
"linker" = "$(command -v cc)"
EOF

cd source

echo "Executing cargoSetupPostPatchHook"
if ! diff Cargo.lock ../cargo-vendor-dir/Cargo.lock; then
  echo "ERROR: Cargo.lock is not the same as the vendored one" >&2
  exit 1
fi

echo "Executing cargoBuildHook"
export CARGO_PROFILE_RELEASE_STRIP=false
set -x
# shellcheck disable=SC2086 # flags are word lists, as nixpkgs splits them
cargo build -j "$NIX_BUILD_CORES" --target "$rustTarget" --offline --profile release $cargoBuildFlags
set +x

if [ -n "$doCheck" ]; then
  echo "Executing cargoCheckHook"
  set -x
  # shellcheck disable=SC2086
  cargo test -j "$NIX_BUILD_CORES" --profile release --target "$rustTarget" --frozen $cargoTestFlags \
    -- --test-threads="$NIX_BUILD_CORES" $checkFlags
  set +x
fi

echo "Executing cargoInstallHook"
mkdir -p "$out/bin"
for f in target/"$rustTarget"/release/*; do
  if [ -f "$f" ] && [ -x "$f" ]; then
    case $f in *.so | *.a | *.rlib | *.d) ;; *) cp "$f" "$out/bin/" ;; esac
  fi
done

# stdenv's fixupPhase: debug sections stripped (they name the compilers'
# store paths, which would keep the toolchain alive).
echo "Executing fixupPhase"
for f in "$out"/bin/*; do
  strip -S -p "$f"
done
