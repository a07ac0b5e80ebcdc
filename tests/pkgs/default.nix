# A small package set that stands in for nixpkgs in nixery's tests and
# examples, imported like nixpkgs:
#
#   pkgs = import ./tests/pkgs { };
#
# Every package is a real program with a real dependency graph, built from
# files of the host (a Debian machine; scripts/setup installs them):
#
#   busybox          Debian's static busybox, and the builder of every
#                    derivation here
#   glibc            the host's C library and ELF interpreter
#   hello, jq        dynamically linked programs whose interpreter and
#                    libraries are store paths (patched with patchelf):
#                    hello -> glibc; jq -> libjq -> oniguruma -> glibc
#   bashInteractive, coreutils, moreutils, nano
#                    what the original Nixery's `shell` meta-package names,
#                    built on busybox
#   cacert, iana-etc the usual base packages
#   nix              Debian's Nix 2.8, for the shim's own container image
#   bigdata          a package over 100 MB, for size thresholds
#
# Host files are imported by content (builtins.path), so store paths change
# exactly when the host's files do; the derivations' builder is the
# imported busybox, so builds are deterministic.
#
# `nonce`, when given, goes into every derivation, so that none of the
# packages is built yet (benchmarks use it to time real builds).
#
# `hostRoot` is where the host's files are read: `/`, or a copy of them in
# the store (a flake input), which is what pure evaluation allows. For
# another system than the machine's (`system = "aarch64-linux"` on an
# x86_64 machine), the default is the root of that system's Debian
# programs that scripts/setup downloads; the kernel runs them (and the
# builds, busybox being the builder) through qemu.
#
# In the Debian 13 world that scripts/world enters, this machine's root is
# at /run/host and NIXERY_TESTS_HOST_ROOT says so: both worlds then import
# the same files and get the same store paths (pure evaluation reads no
# variables, and passes `hostRoot`).
{ system ? builtins.currentSystem, nonce ? null, hostRoot ? null }:

let
  machineRoot = let r = builtins.getEnv "NIXERY_TESTS_HOST_ROOT"; in if r == "" then /. else /. + r;
  foreignRoots = { "aarch64-linux" = machineRoot + "/opt/nixery-tools/arm64-root"; };
  root =
    if hostRoot != null then hostRoot
    else if system == builtins.currentSystem then machineRoot
    else foreignRoots.${system} or (throw "tests/pkgs: no root of ${system} programs known; pass hostRoot");

  host = {
    "x86_64-linux" = { triple = "x86_64-linux-gnu"; loader = "ld-linux-x86-64.so.2"; };
    "aarch64-linux" = { triple = "aarch64-linux-gnu"; loader = "ld-linux-aarch64.so.1"; };
  }.${system} or (throw "tests/pkgs: no host library layout known for system ${system}");

  hasPrefix = pre: s: builtins.substring 0 (builtins.stringLength pre) s == pre;

  # The top-level files of `dir` whose names start with one of `prefixes`
  # (so `libjq.so.1` brings its symlink and the file it points to).
  hostFiles = name: dir: prefixes: builtins.path {
    inherit name;
    path = dir;
    filter = p: type: builtins.dirOf p == toString dir && builtins.any (pre: hasPrefix pre (baseNameOf p)) prefixes;
  };

  fromHost = p:
    if builtins.pathExists (root + p) then root + p
    else throw "tests/pkgs: ${toString (root + p)} is missing (scripts/setup downloads the ${system} programs)";
  libDir = fromHost "/usr/lib/${host.triple}";
  binDir = fromHost "/usr/bin";

  bootstrap = hostFiles "bootstrap-busybox" binDir [ "busybox" ];

  # A derivation whose builder is busybox's sh running `script`, with
  # busybox's applets on PATH.
  runBusybox = name: attrs: script: derivation ({
    inherit name system;
    builder = "${busybox}/bin/sh";
    args = [ "-euc" script ];
    PATH = "${busybox}/bin";
  } // attrs // nonceAttr);

  nonceAttr = if nonce == null then { } else { inherit nonce; };

  busybox = derivation (nonceAttr // {
    name = "busybox-static";
    inherit system;
    builder = "${bootstrap}/busybox";
    args = [ "sh" "-euc" ''
      bb=${bootstrap}/busybox
      $bb mkdir -p $out/bin
      $bb cp $bb $out/bin/busybox
      for applet in $($bb --list); do
        [ "$applet" = busybox ] || $bb ln -s busybox $out/bin/$applet
      done
    '' ];
  });

  hostGlibc = hostFiles "host-glibc" libDir [
    host.loader "libc.so.6" "libm.so.6" "libpthread.so.0" "libdl.so.2" "librt.so.1" "libresolv.so.2"
  ];
  hostPatchelf = hostFiles "host-patchelf" binDir [ "patchelf" ];
  hostPatchelfLibs = hostFiles "host-patchelf-libs" libDir [ "libstdc++.so.6" "libgcc_s.so.1" ];

  glibc = runBusybox "glibc-2.36" { } ''
    mkdir -p $out/lib
    cp -L ${hostGlibc}/* $out/lib/
    chmod 555 $out/lib/*
  '';

  # Debian's patchelf, run through the store's ELF interpreter.
  patchelf = "${glibc}/lib/${host.loader} --library-path ${glibc}/lib:${hostPatchelfLibs} ${hostPatchelf}/patchelf";

  # Copies host files into $out/<dir> and points them at store paths:
  # programs get the store's interpreter, everything gets an RPATH.
  patched = { name, files, dir, rpath, program ? false }: runBusybox name { } ''
    mkdir -p $out/${dir}
    for f in ${builtins.concatStringsSep " " files}; do
      cp -L "$f" $out/${dir}/
    done
    chmod u+w $out/${dir}/*
    for f in $out/${dir}/*; do
      ${if program then "${patchelf} --set-interpreter ${glibc}/lib/${host.loader} \"$f\"" else ""}
      ${patchelf} --set-rpath ${builtins.concatStringsSep ":" (map (p: "${p}/lib") rpath)} "$f"
    done
    chmod 555 $out/${dir}/*
  '';

  # With the attributes and meta nixpkgs gives its packages (what SBOMs
  # read), outside the derivation as there.
  hello = patched {
    name = "hello-2.10";
    files = [ "${hostFiles "host-hello" binDir [ "hello" ]}/hello" ];
    dir = "bin";
    rpath = [ glibc ];
    program = true;
  } // {
    pname = "hello";
    version = "2.10";
    meta = {
      description = "Program that produces a familiar, friendly greeting";
      homepage = "https://www.gnu.org/software/hello/manual/";
      license = { spdxId = "GPL-3.0-or-later"; shortName = "gpl3Plus"; free = true; };
    };
  };

  oniguruma = patched {
    name = "oniguruma-6.9.8";
    files = [ "${hostFiles "host-oniguruma" libDir [ "libonig.so.5" ]}/libonig.so.5" ];
    dir = "lib";
    rpath = [ glibc ];
  };

  libjq = patched {
    name = "libjq-1.6";
    files = [ "${hostFiles "host-libjq" libDir [ "libjq.so.1" ]}/libjq.so.1" ];
    dir = "lib";
    rpath = [ oniguruma glibc ];
  };

  jq = patched {
    name = "jq-1.6";
    files = [ "${hostFiles "host-jq" binDir [ "jq" ]}/jq" ];
    dir = "bin";
    rpath = [ libjq oniguruma glibc ];
    program = true;
  };

  # Nix itself (Debian's nix-bin, 2.8): what the registry shim's container
  # image runs its builds with. One program for every nix-* command, and
  # every library it loads but glibc's, each pointed at the others.
  nix = let
    nixLibs = hostFiles "host-nix-libs" (fromHost "/usr/lib/nix") [ "libnix" ];
    libs = hostFiles "host-nix-deps" libDir [
      "libhistory.so.8" "libreadline.so.8" "libgc.so.1" "libstdc++.so.6" "libgcc_s.so.1" "libtinfo.so.6"
      "libboost_context.so.1.74.0" "libsqlite3.so.0" "libcurl-gnutls.so.4" "libsodium.so.23" "libseccomp.so.2"
      "libcrypto.so.3" "libbrotlienc.so.1" "libbrotlidec.so.1" "libbrotlicommon.so.1" "libarchive.so.13"
      "libcpuid.so.16" "libbsd.so.0" "libnghttp2.so.14" "libidn2.so.0" "librtmp.so.1" "libssh2.so.1" "libpsl.so.5"
      "libnettle.so.8" "libhogweed.so.6" "libgnutls.so.30" "libgssapi_krb5.so.2" "libldap-2.5.so.0"
      "liblber-2.5.so.0" "libzstd.so.1" "libz.so.1" "libacl.so.1" "liblzma.so.5" "liblz4.so.1" "libbz2.so.1.0"
      "libxml2.so.2" "libmd.so.0" "libunistring.so.2" "libgmp.so.10" "libp11-kit.so.0" "libtasn1.so.6"
      "libkrb5.so.3" "libk5crypto.so.3" "libcom_err.so.2" "libkrb5support.so.0" "libsasl2.so.2"
      "libicuuc.so.72" "libicudata.so.72" "libffi.so.8" "libkeyutils.so.1"
    ];
    program = hostFiles "host-nix" binDir [ "nix" ];
  in runBusybox "nix-2.8.0" { } ''
    mkdir -p $out/bin $out/lib
    for f in ${nixLibs}/* ${libs}/*; do
      [ -f "$f" ] && cp -L "$f" $out/lib/
    done
    cp -L ${program}/nix $out/bin/nix
    chmod u+w $out/bin/nix $out/lib/*
    ${patchelf} --set-interpreter ${glibc}/lib/${host.loader} $out/bin/nix
    for f in $out/bin/nix $out/lib/*; do
      ${patchelf} --set-rpath $out/lib:${glibc}/lib "$f"
    done
    chmod 555 $out/bin/nix $out/lib/*
    for c in nix-build nix-store nix-instantiate nix-env nix-hash nix-channel nix-collect-garbage nix-copy-closure nix-daemon; do
      ln -s nix $out/bin/$c
    done
    # Debian's Nix runs its build hook from /usr/libexec/nix/build-remote
    # (nixpkgs' Nix from its own store path): an image root that links
    # this package's usr has it there.
    mkdir -p $out/usr/libexec/nix
    ln -s $out/bin/nix $out/usr/libexec/nix/build-remote
  '';

  # Links to busybox applets under the names a package would provide.
  applets = name: names: runBusybox name { } ''
    mkdir -p $out/bin
    for a in ${builtins.concatStringsSep " " names}; do
      ln -s ${busybox}/bin/busybox $out/bin/$a
    done
  '';

  bashInteractive = runBusybox "bash-interactive-5.2" { } ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\nexec ${busybox}/bin/sh "$@"\n' > $out/bin/bash
    chmod 555 $out/bin/bash
    ln -s ${busybox}/bin/sh $out/bin/sh
  '';

  coreutils = applets "coreutils-9.1" [
    "basename" "cat" "chmod" "chown" "cp" "cut" "date" "dd" "df" "dirname" "du" "echo" "env" "false"
    "head" "id" "ln" "ls" "mkdir" "mktemp" "mv" "nproc" "printf" "pwd" "readlink" "realpath" "rm"
    "rmdir" "seq" "sha256sum" "sleep" "sort" "stat" "tail" "tee" "test" "touch" "tr" "true" "uname"
    "uniq" "wc" "whoami" "yes"
  ];

  moreutils = runBusybox "moreutils-0.67" { } ''
    mkdir -p $out/bin
    ln -s ${busybox}/bin/busybox $out/bin/ts
    cat > $out/bin/sponge <<'EOF'
    #!${busybox}/bin/sh
    # sponge FILE: soak up standard input, then write it to FILE.
    tmp=$(${busybox}/bin/mktemp)
    ${busybox}/bin/cat > "$tmp"
    if [ $# -eq 0 ]; then ${busybox}/bin/cat "$tmp"; else ${busybox}/bin/cat "$tmp" > "$1"; fi
    ${busybox}/bin/rm -f "$tmp"
    EOF
    chmod 555 $out/bin/sponge
  '';

  nano = runBusybox "nano-7.2" { } ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\nexec ${busybox}/bin/vi "$@"\n' > $out/bin/nano
    chmod 555 $out/bin/nano
  '';

  cacert = runBusybox "nss-cacert-3.87" { } ''
    mkdir -p $out/etc/ssl/certs
    cp ${builtins.path { name = "host-ca-bundle"; path = fromHost "/etc/ssl/certs/ca-certificates.crt"; }} $out/etc/ssl/certs/ca-bundle.crt
    ln -s ca-bundle.crt $out/etc/ssl/certs/ca-certificates.crt
  '';

  iana-etc = runBusybox "iana-etc-20230316" { } ''
    mkdir -p $out/etc
    cp ${builtins.path { name = "host-services"; path = fromHost "/etc/services"; }} $out/etc/services
    cp ${builtins.path { name = "host-protocols"; path = fromHost "/etc/protocols"; }} $out/etc/protocols
  '';

  # 110 MB of data: over the 100 MB threshold at which a path gets a layer
  # of its own. Repetitive, so it packs quickly.
  bigdata = runBusybox "bigdata-1.0" { } ''
    mkdir -p $out/share/bigdata
    dd if=/dev/zero of=$out/share/bigdata/blob bs=1M count=110 2>/dev/null
    echo "a package over 100 MB" > $out/share/bigdata/README
  '';

  # Small programs under the kinds of names the registry shim must find:
  # a nested set, an attribute with upper-case letters, one that starts
  # with a digit.
  script = name: text: runBusybox name { } ''
    mkdir -p $out/bin
    printf '#!${busybox}/bin/sh\n%s\n' ${builtins.toJSON text} > $out/bin/${builtins.head (builtins.split "-[0-9]" name)}
    chmod 555 $out/bin/*
  '';

  # What nixpkgs gives nixery's Nix files beside packages (nix/helper.nix
  # is called with `lib` and `rustPlatform`): lib.nix and rust.nix.
  lib = import ./lib.nix;
  rust = import ./rust.nix { inherit system root lib busybox glibc patchelf runBusybox; };

  self = {
  inherit busybox glibc hello oniguruma libjq jq bashInteractive coreutils moreutils nano cacert iana-etc bigdata nix;

  inherit lib;
  callPackage = lib.callPackageWith self;
  buildPackages = self;
  stdenv = { buildPlatform.system = system; hostPlatform.system = system; };
  rustPlatform = { inherit (rust) buildRustPackage importCargoLock; };

  xorg = { xev = script "xev-1.2.5" "echo xev: no display here"; };
  haskellPackages = { stylish-haskell = script "stylish-haskell-0.14" "echo stylish-haskell"; };
  _1password = script "1password-8.10" "echo 1password";

  # Packages that never build, for the shim's error paths: one fails at
  # once, one is still building when any sensible timeout ends.
  broken = runBusybox "broken-1.0" { } ''
    echo "broken-1.0: this package always fails to build" >&2
    exit 1
  '';
  # What nixpkgs answers for a package it refuses to evaluate (marked
  # broken, unfree or insecure): a throw.
  refused = throw "Package 'refused-1.0' has an unfree license ('unfree'), refusing to evaluate.";
  slow = runBusybox "slow-1.0" { } ''
    echo "slow-1.0: building for a long time" >&2
    sleep 30
    exit 1
  '';
};
in
self
