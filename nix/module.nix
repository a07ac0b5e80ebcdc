# A NixOS service for the registry shim: the flake's nixosModules.default.
#
#   services.nixery = {
#     enable = true;
#     settings = {
#       NIXERY_CHANNEL = "nixos-unstable";
#       NIXERY_BIND = "0.0.0.0";
#       NIXERY_PLATFORMS = [ "linux/amd64" "linux/arm64" ];
#     };
#     environmentFile = "/run/secrets/nixery";   # AWS_SECRET_ACCESS_KEY=…, COSIGN_PASSWORD=…
#     openFirewall = true;
#   };
#
# `settings` has an option for every variable of `nixery serve`
# (nix/serve-settings.nix: its names, and how values are written); unset
# ones keep the shim's defaults. Secrets go in `environmentFile`, which
# stays out of the Nix store.
#
# The service runs as a dynamic user with a state directory
# (/var/lib/nixery, the filesystem backend's default here) and builds
# through the system's Nix daemon, so the machine's nix.settings
# (substituters, trusted-public-keys, builders) apply to its builds.
{ helperFor }:

{ config, lib, pkgs, ... }:

let
  cfg = config.services.nixery;
  serveSettings = import ./serve-settings.nix;
  typeOf = kind: {
    str = lib.types.str;
    path = lib.types.either lib.types.path lib.types.str;
    int = lib.types.ints.unsigned;
    port = lib.types.port;
    bool = lib.types.bool;
    list = lib.types.listOf lib.types.str;
  }.${kind};
in
{
  options.services.nixery = {
    enable = lib.mkEnableOption "nixery, a container registry that builds images from package names with Nix";

    package = lib.mkOption {
      type = lib.types.package;
      default = helperFor pkgs;
      defaultText = lib.literalExpression "pkgs.callPackage ./nix/helper.nix { }";
      description = "The nixery package.";
    };

    settings = lib.mkOption {
      default = { };
      description = "Environment of `nixery serve`, by variable name; null keeps the shim's default.";
      type = lib.types.submodule {
        options = builtins.listToAttrs (map
          (v: {
            inherit (v) name;
            value = lib.mkOption {
              type = lib.types.nullOr (typeOf v.kind);
              default = null;
              description = v.description;
            };
          })
          serveSettings.variables);
      };
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "A file of VARIABLE=value lines (credentials), read by systemd and kept out of the store.";
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Open the shim's port in the firewall.";
    };
  };

  config = lib.mkIf cfg.enable {
    services.nixery.settings = {
      STORAGE_PATH = lib.mkDefault (if cfg.settings.NIXERY_STORAGE_BACKEND == null || cfg.settings.NIXERY_STORAGE_BACKEND == "filesystem" then "/var/lib/nixery" else null);
    };

    systemd.services.nixery = {
      description = "nixery container registry";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      # nix-build (through the daemon) and git, for NIXERY_PKGS_REPO.
      path = [ config.nix.package pkgs.git ];
      environment = serveSettings.environment cfg.settings // { NIX_REMOTE = "daemon"; };
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/nixery serve";
        DynamicUser = true;
        StateDirectory = "nixery";
        CacheDirectory = "nixery";
        Environment = [ "HOME=/var/cache/nixery" "TMPDIR=/var/cache/nixery" ];
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) cfg.environmentFile;
        Restart = "on-failure";
        # The shim stops its builds and drains connections on SIGTERM.
        KillSignal = "SIGTERM";
        TimeoutStopSec = 30;
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateDevices = true;
      };
    };

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ (if cfg.settings.PORT == null then 8080 else cfg.settings.PORT) ];
  };
}
