# rustPlatform for the stand-in package set, as nixpkgs gives it to
# nix/helper.nix: `buildRustPackage` runs the phases nixpkgs runs (stdenv's
# unpack and install, the cargo setup, build, check and install hooks;
# build-rust-package.sh), in Nix's sandbox, offline, with
# HOME=/homeless-shelter, and `importCargoLock` vendors Cargo.lock's
# crates, each a fixed-output download from crates.io checked against the
# lock's checksum.
#
# The compilers are this machine's (a store has no other): Debian's gcc 12
# and binutils with glibc's headers and libraries (the C toolchain), and
# rustup's rustc and cargo, read from `root` (a tree assembled by
# tests/support/standin-host) and made to run in the sandbox, with the
# toolchain's own glibc as their interpreter. Like nixpkgs' cc-wrapper,
# `cc` links programs against the store's glibc and libgcc_s (their
# dynamic linker and RPATH), so what it builds runs in the sandbox too.
{ system, root, lib, busybox, glibc, patchelf, runBusybox }:

let
  triple = {
    "x86_64-linux" = { gnu = "x86_64-linux-gnu"; rust = "x86_64-unknown-linux-gnu"; loader = "ld-linux-x86-64.so.2"; };
  }.${system} or (throw "tests/pkgs: the stand-in rustPlatform builds for x86_64-linux only, not ${system}");

  fromStore =
    if builtins.isString root && lib.hasPrefix builtins.storeDir root then root
    else throw "tests/pkgs: rustPlatform needs `hostRoot` to be a store path holding the toolchain (tests/support/standin-host assembles one; the stand-in flake's `host` input)";

  # libgcc_s, which Rust programs load (unwinding): a path of its own, so
  # a program's closure is glibc and this, not the toolchain.
  gccLib = runBusybox "gcc-12-lib" { } ''
    mkdir -p $out/lib
    cp -L ${fromStore}/usr/lib/${triple.gnu}/libgcc_s.so.1 $out/lib/
  '';

  toolchain = runBusybox "rust-toolchain" { } ''
    sysroot=$out/sysroot
    mkdir -p $out/bin $sysroot
    cp -a ${fromStore}/usr $sysroot/usr
    cp -a ${fromStore}/rust $out/rust
    chmod -R u+w $out
    ln -s usr/lib $sysroot/lib
    ln -s usr/lib64 $sysroot/lib64
    lib=$sysroot/usr/lib/${triple.gnu}
    # librustc_driver and libLLVM find their libraries beside them
    # ($ORIGIN/../lib).
    for l in libc.so.6 libm.so.6 libdl.so.2 librt.so.1 libpthread.so.0 libgcc_s.so.1 libz.so.1; do
      ln -s $lib/$l $out/rust/lib/$l
    done
    # Every program: the toolchain's glibc as its interpreter, its
    # libraries found through an RPATH (inherited by the libraries it loads).
    for f in $sysroot/usr/bin/* $sysroot/usr/lib/gcc/${triple.gnu}/12/* $out/rust/bin/* \
             $out/rust/lib/rustlib/${triple.rust}/bin/* $out/rust/lib/rustlib/${triple.rust}/bin/gcc-ld/*; do
      [ -f "$f" ] && [ ! -L "$f" ] || continue
      if ${patchelf} --print-interpreter "$f" >/dev/null 2>&1; then
        ${patchelf} --set-interpreter $lib/${triple.loader} --force-rpath --set-rpath $lib:$out/rust/lib "$f"
      fi
    done
    # cc, as nixpkgs' cc-wrapper: the toolchain's headers and libraries,
    # and when linking, the store's dynamic linker and RPATH.
    for cc in cc gcc; do
      cat > $out/bin/$cc <<EOF
    #!${busybox}/bin/sh
    for a in "\$@"; do
      case \$a in -c | -S | -E | -M | -MM) exec $sysroot/usr/bin/${triple.gnu}-gcc-12 --sysroot=$sysroot "\$@" ;; esac
    done
    exec $sysroot/usr/bin/${triple.gnu}-gcc-12 --sysroot=$sysroot "\$@" \
      -Wl,-dynamic-linker=${glibc}/lib/${triple.loader} -Wl,-rpath,${glibc}/lib:${gccLib}/lib
    EOF
      chmod 555 $out/bin/$cc
    done
    for tool in ar as ld nm objcopy objdump ranlib readelf strip; do
      ln -s $sysroot/usr/bin/${triple.gnu}-$tool $out/bin/$tool
    done
    ln -s $out/rust/bin/rustc $out/bin/rustc
    ln -s $out/rust/bin/cargo $out/bin/cargo
  '';

  # nixpkgs' importCargoLock: every crate of the lock, downloaded by its
  # checksum (a fixed-output derivation each), unpacked into one vendor
  # directory with the checksum files cargo checks, the lock itself and
  # the source replacement cargo reads.
  importCargoLock = { lockFile }:
    let
      lock = lib.importTOML lockFile;
      fromRegistry = p: (p.source or "") == "registry+https://github.com/rust-lang/crates.io-index";
      packages = builtins.filter fromRegistry lock.package;
      others = builtins.filter (p: p ? source && !(fromRegistry p)) lock.package;
      crate = p: derivation rec {
        name = "${p.name}-${p.version}.crate";
        system = "builtin";
        builder = "builtin:fetchurl";
        url = "https://static.crates.io/crates/${p.name}/${name}";
        urls = [ url ];
        outputHashMode = "flat";
        outputHashAlgo = "sha256";
        outputHash = p.checksum;
        executable = false;
        unpack = false;
        preferLocalBuild = true;
      };
    in
    if others != [ ] then throw "tests/pkgs: importCargoLock vendors crates.io packages only, not ${(builtins.head others).name}"
    else runBusybox "cargo-vendor-dir" { crates = map crate packages; } ''
      mkdir -p $out/.cargo
      for c in $crates; do
        tar -xzf $c -C $out
        name=''${c#*-}
        name=''${name%.crate}
        printf '{"files":{},"package":"%s"}' "$(sha256sum $c | cut -d' ' -f1)" > $out/$name/.cargo-checksum.json
      done
      cp ${lockFile} $out/Cargo.lock
      cat > $out/.cargo/config.toml <<'EOF'
      [source.crates-io]
      replace-with = "vendored-sources"

      [source.vendored-sources]
      directory = "@vendor@"
      EOF
    '';

  buildRustPackage = { pname, version, src, cargoLock, cargoBuildFlags ? [ ], cargoTestFlags ? [ ], checkFlags ? [ ], doCheck ? true, meta ? { }, ... }:
    let
      drv = derivation {
        name = "${pname}-${version}";
        inherit system pname version src;
        builder = "${busybox}/bin/sh";
        args = [ "-eu" ./build-rust-package.sh ];
        PATH = "${toolchain}/bin:${busybox}/bin";
        cargoDeps = importCargoLock cargoLock;
        rustTarget = triple.rust;
        cargoBuildFlags = toString cargoBuildFlags;
        cargoTestFlags = toString cargoTestFlags;
        checkFlags = toString checkFlags;
        doCheck = if doCheck then "1" else "";
        # As nixpkgs' stdenv: no CA certificates.
        NIX_SSL_CERT_FILE = "/no-cert-file.crt";
        SSL_CERT_FILE = "/no-cert-file.crt";
      };
    in
    drv // { inherit meta pname version; };
in
{
  inherit buildRustPackage importCargoLock toolchain;
}
