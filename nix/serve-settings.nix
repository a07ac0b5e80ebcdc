# The settings of `nixery serve`, one per environment variable, for the
# NixOS module (nix/module.nix) and anything else that configures the shim
# from Nix. `kind` says how a value is written: str, path, int, port, bool,
# or list (comma-separated). `nixery serve --help` has the full text and the
# defaults; a test checks that this list names exactly its variables.
#
#   (import ./serve-settings.nix).environment { PORT = 8080; NIXERY_PLATFORMS = [ "linux/amd64" "linux/arm64" ]; }
#   => { PORT = "8080"; NIXERY_PLATFORMS = "linux/amd64,linux/arm64"; }
rec {
  variables = [
    { name = "PORT"; kind = "port"; description = "Port to listen on."; }
    { name = "NIXERY_BIND"; kind = "str"; description = "Address to listen on."; }
    { name = "NIXERY_CHANNEL"; kind = "str"; description = "A nixpkgs channel or commit to build from."; }
    { name = "NIXERY_PKGS_REPO"; kind = "str"; description = "A git repository with a package set; the image tag is the git ref."; }
    { name = "NIXERY_PKGS_PATH"; kind = "path"; description = "A local package set."; }
    { name = "NIXERY_STORAGE_BACKEND"; kind = "str"; description = "filesystem, gcs or s3."; }
    { name = "STORAGE_PATH"; kind = "path"; description = "The filesystem backend's directory."; }
    { name = "GCS_BUCKET"; kind = "str"; description = "The gcs backend's bucket."; }
    { name = "GOOGLE_APPLICATION_CREDENTIALS"; kind = "path"; description = "A service account file for gcs."; }
    { name = "STORAGE_EMULATOR_HOST"; kind = "str"; description = "A GCS emulator (host:port or URL)."; }
    { name = "GCS_SIGNING_KEY"; kind = "path"; description = "A PKCS#8 PEM key that signs GCS blob URLs."; }
    { name = "GCS_SIGNING_ACCOUNT"; kind = "str"; description = "The service account email of GCS_SIGNING_KEY."; }
    { name = "NIXERY_GCS_SIGNED_URL_BASE"; kind = "str"; description = "Scheme and host signed GCS URLs point at."; }
    { name = "NIXERY_S3_BUCKET"; kind = "str"; description = "The s3 backend's bucket (the rest from AWS_* variables)."; }
    { name = "NIXERY_BLOB_REDIRECT"; kind = "bool"; description = "Redirect blob GETs to signed bucket URLs."; }
    { name = "NIXERY_SIGNED_URL_EXPIRY"; kind = "int"; description = "Seconds a signed blob URL stays valid."; }
    { name = "NIX_TIMEOUT"; kind = "int"; description = "Seconds a nix-build may take."; }
    { name = "NIX_POPULARITY_URL"; kind = "str"; description = "Popularity data for layering (URL or path)."; }
    { name = "WEB_DIR"; kind = "path"; description = "A static site served outside /v2/."; }
    { name = "NIXERY_SHELL_PACKAGES"; kind = "list"; description = "What the shell meta-package expands to."; }
    { name = "NIXERY_BASE_PACKAGES"; kind = "list"; description = "Packages every image gets when the set has them."; }
    { name = "NIXERY_MAX_LAYERS"; kind = "int"; description = "Layers per image, root layer included."; }
    { name = "NIXERY_REVISION_TTL"; kind = "int"; description = "Seconds a resolved package-set revision is reused."; }
    { name = "NIXERY_LAYERING"; kind = "str"; description = "sharing, nixery or popularity-contest."; }
    { name = "NIXERY_COMPRESSION"; kind = "str"; description = "gzip or zstd."; }
    { name = "NIXERY_COMPRESSION_LEVEL"; kind = "int"; description = "Compression level."; }
    { name = "NIXERY_LOG_FORMAT"; kind = "str"; description = "text or json."; }
    { name = "NIXERY_MAX_BUILDS"; kind = "int"; description = "Nix builds at once."; }
    { name = "NIXERY_MAX_QUEUED_BUILDS"; kind = "int"; description = "Builds that may wait for a slot; past it, 429."; }
    { name = "NIXERY_FAILURE_TTL"; kind = "int"; description = "Seconds a failure is answered from memory."; }
    { name = "NIXERY_MAX_PACKAGES"; kind = "int"; description = "Packages one image name may ask for."; }
    { name = "NIXERY_HEADER_TIMEOUT"; kind = "int"; description = "Seconds a client has for a request's headers."; }
    { name = "NIXERY_WRITE_TIMEOUT"; kind = "int"; description = "Seconds a write to a client may stall before its connection is closed."; }
    { name = "NIXERY_IDLE_TIMEOUT"; kind = "int"; description = "Seconds a connection may stay open with no request in progress."; }
    { name = "NIXERY_MAX_CONNECTIONS"; kind = "int"; description = "Client connections open at once."; }
    { name = "NIXERY_TLS_CERT"; kind = "path"; description = "A PEM certificate chain: serve HTTPS."; }
    { name = "NIXERY_TLS_KEY"; kind = "path"; description = "The PEM key of NIXERY_TLS_CERT."; }
    { name = "NIXERY_AUTH_HTPASSWD"; kind = "path"; description = "An htpasswd file (bcrypt): basic authentication."; }
    { name = "NIXERY_AUTH_TOKENS"; kind = "path"; description = "A file of bearer tokens, one a line."; }
    { name = "NIXERY_PLATFORMS"; kind = "list"; description = "Platforms a name is built for (linux/amd64, linux/arm64)."; }
    { name = "NIXERY_SIGNING_KEY"; kind = "path"; description = "A private key (EC P-256; cosign's own with COSIGN_PASSWORD) that signs every image for cosign."; }
    { name = "NIXERY_SBOM_SUPPLIER"; kind = "str"; description = "Named as every package's supplier in the SBOMs (NixOS, or your organisation)."; }
    { name = "NIXERY_DEBUG_ERRORS"; kind = "bool"; description = "Error bodies carry Nix's logs and host paths."; }
  ];

  # One value as the shim reads it.
  render = kind: value:
    if kind == "bool" then (if value then "true" else "false")
    else if kind == "list" then builtins.concatStringsSep "," value
    else toString value;

  kinds = builtins.listToAttrs (map (v: { inherit (v) name; value = v.kind; }) variables);

  # The environment for a set of settings: unset (null) ones are left out,
  # unknown names are an error.
  environment = settings:
    builtins.mapAttrs
      (name: value:
        if kinds ? ${name} then render kinds.${name} value
        else throw "nixery: ${name} is not a setting of nixery serve (nix/serve-settings.nix lists them)")
      (builtins.removeAttrs settings (builtins.filter (n: settings.${n} == null) (builtins.attrNames settings)));
}
