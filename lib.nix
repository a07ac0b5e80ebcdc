# nixery's Nix library.
#
#   nixery = import ./lib.nix { helper = <the nixery binary or its derivation>; };
#   image = nixery.buildNixeryImage { name = "hello"; contents = [ pkgs.hello ]; };
#
# `helper` is either a derivation with `bin/nixery` (as the flake's
# `packages.default`) or a path to the `nixery` binary itself (a cargo
# build). The image derivation's builder is the helper: no shell, coreutils
# or jq from a package set takes part, so this file needs nothing from
# nixpkgs and works with any package set.
{
  # The nixery helper: a derivation providing bin/nixery, or a path to the binary.
  helper,
  # The Nix system images are built for, by default the evaluating machine's.
  system ? builtins.currentSystem,
}:

let
  helperExe =
    if builtins.isAttrs helper then "${helper}/bin/nixery"
    else if builtins.isPath helper || builtins.isString helper then "${helper}"
    else throw "nixery: `helper` must be a derivation with bin/nixery or a path to the nixery binary";

  # Version of the JSON contract between this file and the helper.
  specVersion = 1;

  fail = name: msg: throw "in nixery image ${name}: ${msg}";

  buildNixeryImage = {
    # Name of the image, as recorded in index.json and the docker-archive
    # (`name:tag`). Required.
    name,

    # Tag of the image. Default: the hash of the output path, as dockerTools
    # does, so that different images never claim the same tag.
    tag ? null,

    # Packages in the image. Their whole runtime closure is in the image
    # under /nix/store, and their top-level folders (bin, lib, share, etc,
    # ...) are symlinked into the image root, as a symlink join of them
    # would give. The first package listed wins a conflict (reported in the
    # build log). Default: none.
    contents ? [ ],

    # The runtime config (OCI `config`): Cmd, Entrypoint, Env, WorkingDir,
    # User, ExposedPorts, Labels, Volumes, StopSignal. ExposedPorts and
    # Volumes may be lists or attribute sets. A default PATH is added when
    # Env sets none. Unknown keys are an error. Default: {}.
    config ? { },

    # The most layers the image may have, the root layer included, so at
    # least 2. Registries and runtimes cap layers near 125; 100 leaves room
    # for images built on top of this one. Default: 100.
    maxLayers ? 100,

    # Popularity data for layering: a path to a JSON file or an attribute
    # set from package name without hash (e.g. "glibc-2.37-8") to how many
    # packages refer to it, as the original Nixery's popcount writes it and
    # `nixery popcount` computes. Popular paths get layers of their own, so
    # images share them. Default: null (layering by graph structure alone).
    popularity ? null,

    # The layering algorithm: "sharing" (a layer per store path while the
    # budget allows, then the paths whose sharing saves most; measured in
    # BENCHMARKS.md), "nixery" (the original Nixery's) or
    # "popularity-contest" (nixpkgs' buildLayeredImage). Default: "sharing".
    layering ? "sharing",

    # Creation time recorded in the config. Default: 1970-01-01T00:00:01Z,
    # so that the image is reproducible.
    created ? "1970-01-01T00:00:01Z",

    # Output format: "oci-dir" (an OCI image layout directory, for
    # `skopeo copy oci:result:TAG ...` or `podman load -i result`) or
    # "docker-archive" (a tarball for `docker load`). Either way the
    # `dockerArchive` passthru gives the tarball. Default: "oci-dir".
    format ? "oci-dir",

    # Layer compression: "gzip", which every client reads, or "zstd"
    # (smaller and much faster to pack; Docker 23+, containerd 1.5+,
    # podman 4+). Default: "gzip".
    compression ? "gzip",

    # Compression level: gzip 0 to 9, zstd 1 to 19. Default: null, which
    # means 5 for gzip and 3 for zstd.
    compressionLevel ? null,

    # Pack each layer in a derivation of its own, so that a rebuild packs
    # only the layers whose store paths changed (and images with the same
    # layers share their derivations). The layer plan is computed by a
    # first derivation and read at evaluation time, so this needs
    # import-from-derivation (allowed by default; refused where
    # allow-import-from-derivation = false, as on Hydra, and by
    # `nix flake check --no-build`). The image is the same either way.
    # Default: false.
    incremental ? false,
  }:
    let
      checked =
        if !(builtins.isString name) || name == "" then fail "<unnamed>" "`name` must be a non-empty string"
        else if tag != null && !(builtins.isString tag) then fail name "`tag` must be a string or null"
        else if !(builtins.isInt maxLayers) || maxLayers < 2 then
          fail name "`maxLayers` must be an integer of at least 2 (one layer for the root), got ${builtins.toJSON maxLayers}"
        else if !(builtins.elem format [ "oci-dir" "docker-archive" ]) then
          fail name "`format` must be \"oci-dir\" or \"docker-archive\", got ${builtins.toJSON format}"
        else if !(builtins.isList contents) then fail name "`contents` must be a list of packages"
        else if !(builtins.isAttrs config) then fail name "`config` must be an attribute set"
        else if !(builtins.elem compression [ "gzip" "zstd" ]) then
          fail name "`compression` must be \"gzip\" or \"zstd\", got ${builtins.toJSON compression}"
        else if compressionLevel != null && !(builtins.isInt compressionLevel
          && compressionLevel >= (if compression == "gzip" then 0 else 1)
          && compressionLevel <= (if compression == "gzip" then 9 else 19)) then
          fail name "`compressionLevel` must be null or an integer (gzip 0 to 9, zstd 1 to 19)"
        else if !(builtins.isBool incremental) then fail name "`incremental` must be a boolean"
        else if !(builtins.elem layering [ "sharing" "nixery" "popularity-contest" ]) then
          fail name "`layering` must be \"sharing\", \"nixery\" or \"popularity-contest\", got ${builtins.toJSON layering}"
        else true;

      spec = {
        version = specVersion;
        inherit name tag config maxLayers created format compression compressionLevel layering;
        popularity =
          if popularity == null || builtins.isAttrs popularity then popularity
          else "${popularity}";
      };

      # A derivation run by the helper, with the closure of `contents`
      # (sizes and references) written by Nix into its attributes file.
      helperDerivation = drvName: subcommand: nixery: derivation {
        name = drvName;
        inherit system nixery;
        builder = helperExe;
        args = [ subcommand ];
        __structuredAttrs = true;
        exportReferencesGraph.graph = contents;
        # The result is a pure function of the inputs.
        allowSubstitutes = false;
      };

      # Incremental builds: the plan, then one derivation per layer. Layer
      # derivations depend only on their store paths and the compression,
      # so unchanged layers are never packed again.
      # The plan names store paths; their context is given back, path by
      # path, with builtins.storePath below.
      plan = builtins.fromJSON (builtins.unsafeDiscardStringContext
        (builtins.readFile (helperDerivation "${name}-layer-plan" "plan-layers" spec)));
      layerDerivations = map (layer: derivation {
        name = "nixery-layer";
        inherit system;
        builder = helperExe;
        args = [ "pack-layer" ];
        __structuredAttrs = true;
        nixeryLayer = {
          version = specVersion;
          paths = map builtins.storePath layer.paths;
          inherit compression compressionLevel;
        };
        allowSubstitutes = false;
      }) plan.layers;

      image = helperDerivation name "build-image"
        (if incremental then spec // { prepacked = layerDerivations; } else spec);

      imageTag = if tag != null then tag else builtins.head (builtins.split "-" (baseNameOf image.outPath));

      dockerArchive =
        if format == "docker-archive" then image
        else derivation {
          name = "${name}-docker-archive.tar";
          inherit system;
          builder = helperExe;
          args = [ "docker-archive" "--oci" "${image}" "--repo-tag" "${name}:${imageTag}" "--out" (builtins.placeholder "out") ];
        };
    in
    assert checked;
    image // {
      inherit imageTag dockerArchive;
      imageName = name;
      # The image reference for `skopeo copy` (oci-dir format only).
      ociRef = "oci:${image}:${imageTag}";
    };
in
{
  inherit buildNixeryImage;
}
