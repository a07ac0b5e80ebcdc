//! The `nixery` command: the helper that `buildNixeryImage` derivations run
//! as their builder, and the tool users run by hand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use nixery::graph::{ClosureGraph, Popularity};
use nixery::{builder, image, layering};

#[derive(Parser)]
#[command(name = "nixery", version, about = "Container images from Nix")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the layer plan for a closure graph, as JSON.
    ///
    /// The graph is the JSON Nix writes for `exportReferencesGraph` under
    /// `__structuredAttrs` (`{"graph": [{"path", "narSize", "references"}…],
    /// "exportReferencesGraph": {"graph": [roots…]}}`).
    Layers {
        /// The closure graph file.
        #[arg(long)]
        graph: PathBuf,
        /// Popularity data: a JSON object from package name to count.
        #[arg(long)]
        popularity: Option<PathBuf>,
        /// The most layers the plan may have.
        #[arg(long, default_value_t = 100)]
        max_layers: usize,
        /// The layering algorithm: sharing, nixery or popularity-contest.
        #[arg(long, default_value_t = layering::Algorithm::default())]
        algorithm: layering::Algorithm,
    },
    /// Pack the layers of a plan (as `nixery layers` prints it) into
    /// `OUT/<digest>` gzip tar blobs, in parallel; prints each layer's
    /// digest, diff_id and sizes as JSON.
    Pack {
        /// The layer plan.
        #[arg(long)]
        plan: PathBuf,
        /// The directory for the blobs.
        #[arg(long)]
        out: PathBuf,
        /// Layer compression: gzip or zstd.
        #[arg(long, default_value = "gzip")]
        compression: nixery::packing::Compression,
        /// Compression level (gzip 0 to 12, default 5; zstd 1 to 19, default 3).
        #[arg(long)]
        level: Option<u32>,
        /// Where store paths are read from: `/`, or a chroot store's root.
        #[arg(long, default_value = "/")]
        store_root: PathBuf,
    },
    /// Build an image from a derivation's attributes (the builder entry
    /// point of `buildNixeryImage`).
    BuildImage {
        /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`, or
        /// `.attrs.json` in the build directory.
        #[arg(long)]
        attrs: Option<PathBuf>,
    },
    /// Plan an image's layers from a derivation's attributes (the first
    /// stage of `buildNixeryImage { incremental = true; }`).
    PlanLayers {
        /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`.
        #[arg(long)]
        attrs: Option<PathBuf>,
    },
    /// Pack one layer from a derivation's attributes (the second stage of
    /// `buildNixeryImage { incremental = true; }`).
    PackLayer {
        /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`.
        #[arg(long)]
        attrs: Option<PathBuf>,
    },
    /// Pack an explicit layer (`buildNixeryImage { layers = [ … ]; }`)
    /// from a derivation's attributes.
    PackGroup {
        /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`.
        #[arg(long)]
        attrs: Option<PathBuf>,
    },
    /// Run the registry shim: a pull-only registry that builds images on
    /// demand from their names (`docker pull HOST/shell/hello`).
    Serve(Box<ServeArgs>),
    /// Write the closure graph of prepare-image's derivation (its builder
    /// entry point; reads the attributes like build-image).
    WriteGraph {
        /// The attributes file; by default `$NIX_ATTRS_JSON_FILE`.
        #[arg(long)]
        attrs: Option<PathBuf>,
    },
    /// Compute popularity data, as the original Nixery's popcount: for each
    /// package name, how many packages have it in their runtime closure.
    /// Prints `{"glibc-2.37-8": 12345, ...}`.
    Popcount {
        /// A package set (a nixpkgs checkout, or any expression imported
        /// like one): its top-level packages that are in the local store
        /// are counted.
        #[arg(long, group = "input")]
        package_set: Option<PathBuf>,
        /// The system to evaluate the package set for.
        #[arg(long, default_value = "x86_64-linux")]
        system: String,
        /// Store paths with their references, as `nix path-info --json -r`
        /// prints them (a list, or an object keyed by path); every path
        /// counts as a package.
        #[arg(long, group = "input")]
        path_info: Option<PathBuf>,
        /// A closure graph as `exportReferencesGraph` writes it; every path
        /// counts as a package.
        #[arg(long, group = "input")]
        graph: Option<PathBuf>,
    },
    /// Push an image that buildNixeryImage or streamNixeryImage built to a
    /// registry: only the blobs it does not have, in parallel, the
    /// manifest last. Prints the manifest's digest.
    Push {
        /// The image: the build's result (an OCI layout directory), with
        /// `:TAG` when it holds several.
        source: String,
        /// Where to: `REGISTRY/REPOSITORY[:TAG]` (tag: latest).
        dest: String,
        #[command(flatten)]
        flags: PushFlags,
    },
    /// Write an OCI layout whose entry is an image index of several images
    /// (one per platform; the builder of buildNixeryIndex).
    BuildIndex {
        /// The name recorded in index.json.
        #[arg(long)]
        name: String,
        /// The tag of the index.
        #[arg(long)]
        tag: String,
        /// The output directory.
        #[arg(long)]
        out: PathBuf,
        /// The images: OCI layouts of one image each.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Load an image that buildNixeryImage or streamNixeryImage built
    /// into podman or docker (through `podman load` / `docker load`), a
    /// docker-archive file, or an OCI layout directory; a stream image's
    /// layers are packed on the fly.
    Load {
        /// The image: the build's result, with `:TAG` when it holds several.
        source: String,
        /// `podman`, `docker`, `docker-archive:FILE` or `oci:DIR[:TAG]`.
        target: String,
    },
    /// Write a program that pushes or loads an image (the
    /// `copyToRegistry`, `copyToPodman` and `copyToDockerDaemon` passthru
    /// of buildNixeryImage and streamNixeryImage): `OUT/bin/NAME`, run by
    /// this helper as its interpreter, so it needs no shell.
    WriteScript {
        /// `push`, or `load` (with --default-dest as the target).
        #[arg(long, default_value = "push", value_parser = ["push", "load"])]
        action: String,
        /// The output directory.
        #[arg(long)]
        out: PathBuf,
        /// The program's name under `bin/`.
        #[arg(long)]
        name: String,
        /// This helper's path in the store (the interpreter).
        #[arg(long)]
        helper: PathBuf,
        /// The image (a build result).
        #[arg(long)]
        image: String,
        /// The destination used when the program is given none.
        #[arg(long)]
        default_dest: Option<String>,
    },
    /// Run a program `write-script` wrote (its interpreter line names this
    /// subcommand): `nixery push IMAGE [DEST] [flags]`.
    #[command(hide = true, disable_help_flag = true, disable_version_flag = true)]
    RunScript {
        /// The program.
        script: PathBuf,
        /// Its arguments: a destination and `nixery push` flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Convert an OCI image layout directory into a docker-archive tarball.
    DockerArchive {
        /// The OCI layout directory.
        #[arg(long)]
        oci: PathBuf,
        /// The `name:tag` recorded in the archive.
        #[arg(long)]
        repo_tag: String,
        /// Where to write the tarball.
        #[arg(long)]
        out: PathBuf,
    },
}

/// How `nixery push` (and a `copyToRegistry` program) talks to the registry.
#[derive(clap::Args)]
struct PushFlags {
    /// Credentials, `USER:PASSWORD`; by default from
    /// `REGISTRY_AUTH_FILE`, the containers auth file, or
    /// `~/.docker/config.json`.
    #[arg(long)]
    creds: Option<String>,
    /// A repository of the same registry that has some of the blobs:
    /// they are mounted from it instead of uploaded.
    #[arg(long)]
    mount_from: Option<String>,
    /// Plain HTTP to a registry that is not on a loopback address
    /// (loopback addresses always get plain HTTP, as with docker).
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CA certificates to trust instead of the bundled roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Uploads at once.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    /// Seconds a request may stall (nothing sent or received) before it
    /// fails; a failed request is tried three times in all.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

/// The command line of a `copyToRegistry` program: `copy-to-registry
/// [DEST] [FLAGS]`.
#[derive(Parser)]
struct PushProgram {
    /// Where to: `REGISTRY/REPOSITORY[:TAG]` (tag: latest); by default the
    /// image's own name, when it names a registry.
    dest: Option<String>,
    #[command(flatten)]
    flags: PushFlags,
}

/// The command line of a `copyToPodman` or `copyToDockerDaemon` program.
#[derive(Parser)]
struct LoadProgram {
    /// `podman`, `docker`, `docker-archive:FILE` or `oci:DIR[:TAG]`; by
    /// default the program's own.
    target: Option<String>,
}

/// `nixery serve` settings: every flag also reads the original Nixery's
/// environment variable.
#[derive(clap::Args)]
struct ServeArgs {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, env = "NIXERY_BIND", default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// A nixpkgs channel (branch) or commit to build from, fetched as a
    /// tarball. The default when no source is given: nixos-unstable.
    #[arg(long, env = "NIXERY_CHANNEL", conflicts_with_all = ["pkgs_repo", "pkgs_path"])]
    channel: Option<String>,
    /// A git repository with a package set; the image tag is the git ref
    /// (`latest`: the default branch).
    #[arg(long, env = "NIXERY_PKGS_REPO", conflicts_with = "pkgs_path")]
    pkgs_repo: Option<String>,
    /// A local directory with a package set (a nixpkgs checkout, or any
    /// expression imported like one).
    #[arg(long, env = "NIXERY_PKGS_PATH")]
    pkgs_path: Option<PathBuf>,
    /// Where layers and manifests are stored: `filesystem`, `gcs` or `s3`.
    #[arg(long, env = "NIXERY_STORAGE_BACKEND", default_value = "filesystem", value_parser = ["filesystem", "gcs", "s3"])]
    storage_backend: String,
    /// The storage directory of the filesystem backend.
    #[arg(long, env = "STORAGE_PATH")]
    storage_path: Option<PathBuf>,
    /// The bucket of the gcs backend.
    #[arg(long, env = "GCS_BUCKET")]
    gcs_bucket: Option<String>,
    /// Service account credentials of the gcs backend (else Application
    /// Default Credentials: the metadata server on Google's machines).
    #[arg(long, env = "GOOGLE_APPLICATION_CREDENTIALS")]
    google_application_credentials: Option<PathBuf>,
    /// A GCS emulator (host:port or URL) for the gcs backend; no tokens are
    /// asked for.
    #[arg(long, env = "STORAGE_EMULATOR_HOST")]
    storage_emulator_host: Option<String>,
    /// A PEM file (PKCS#8) with the private key that signs blob URLs of
    /// the gcs backend (with --gcs-signing-account).
    #[arg(long, env = "GCS_SIGNING_KEY", requires = "gcs_signing_account")]
    gcs_signing_key: Option<PathBuf>,
    /// The email of the service account whose key GCS_SIGNING_KEY is.
    #[arg(long, env = "GCS_SIGNING_ACCOUNT", requires = "gcs_signing_key")]
    gcs_signing_account: Option<String>,
    /// Scheme and host that signed GCS URLs point at (a bucket-bound
    /// hostname or a proxy); by default the endpoint's.
    #[arg(long, env = "NIXERY_GCS_SIGNED_URL_BASE")]
    gcs_signed_url_base: Option<String>,
    /// The bucket of the s3 backend (credentials, region and endpoint come
    /// from the AWS_* variables).
    #[arg(long, env = "NIXERY_S3_BUCKET")]
    s3_bucket: Option<String>,
    /// With gcs or s3: redirect blob GETs to signed URLs of the bucket
    /// (true), or stream blobs through the shim (false).
    #[arg(long, env = "NIXERY_BLOB_REDIRECT", default_value_t = true, action = clap::ArgAction::Set)]
    blob_redirect: bool,
    /// Seconds a signed blob URL stays valid.
    #[arg(long, env = "NIXERY_SIGNED_URL_EXPIRY", default_value_t = nixery::storage::object::SIGNED_URL_LIFETIME.as_secs(), value_parser = clap::value_parser!(u64).range(1..=604_800))]
    signed_url_expiry: u64,
    /// Seconds a nix-build may take before it is stopped.
    #[arg(long, env = "NIX_TIMEOUT", default_value_t = 60)]
    nix_timeout: u64,
    /// Popularity data for layering: an http(s):// or file:// URL, or a path.
    #[arg(long, env = "NIX_POPULARITY_URL")]
    popularity_url: Option<String>,
    /// A static site to serve outside /v2/ instead of the start page.
    #[arg(long, env = "WEB_DIR")]
    web_dir: Option<PathBuf>,
    /// What the `shell` meta-package expands to, comma-separated.
    #[arg(long, env = "NIXERY_SHELL_PACKAGES", value_delimiter = ',', default_value = "bashInteractive,coreutils,moreutils,nano")]
    shell_packages: Vec<String>,
    /// Packages every image gets when the package set has them, comma-separated.
    #[arg(long, env = "NIXERY_BASE_PACKAGES", value_delimiter = ',', default_value = "cacert,iana-etc")]
    base_packages: Vec<String>,
    /// The most layers an image may have, root layer included.
    #[arg(long, env = "NIXERY_MAX_LAYERS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=125))]
    max_layers: u64,
    /// Seconds a resolved package-set revision (a git ref's commit, a
    /// local set's content hash) is reused before it is looked up again.
    #[arg(long, env = "NIXERY_REVISION_TTL", default_value_t = 10)]
    revision_ttl: u64,
    /// The layering algorithm: sharing, nixery or popularity-contest.
    #[arg(long, env = "NIXERY_LAYERING", default_value_t = nixery::layering::Algorithm::default())]
    layering: nixery::layering::Algorithm,
    /// Layer compression: gzip or zstd (Docker 23+, containerd 1.5+, podman 4+).
    #[arg(long, env = "NIXERY_COMPRESSION", default_value = "gzip")]
    compression: nixery::packing::Compression,
    /// Compression level (gzip 0 to 12, default 5; zstd 1 to 19, default 3).
    #[arg(long, env = "NIXERY_COMPRESSION_LEVEL")]
    compression_level: Option<u32>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "NIXERY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// The most Nix builds at once; more wait their turn (default: the
    /// number of cores).
    #[arg(long, env = "NIXERY_MAX_BUILDS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_builds: Option<u64>,
    /// The most cold images that wait for a build slot; past it, a pull
    /// of another cold image is answered 429 (try again) at once.
    #[arg(long, env = "NIXERY_MAX_QUEUED_BUILDS", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    max_queued_builds: u64,
    /// Seconds a failed image (per package-set revision and name) is
    /// answered from memory before it is built again; 0 never remembers.
    #[arg(long, env = "NIXERY_FAILURE_TTL", default_value_t = 30)]
    failure_ttl: u64,
    /// The most packages one image name may ask for (meta-packages
    /// expanded, base packages not counted).
    #[arg(long, env = "NIXERY_MAX_PACKAGES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_packages: u64,
    /// Seconds a client has to send a request's headers (and a TLS
    /// handshake); an idle connection is closed after the same time.
    #[arg(long, env = "NIXERY_HEADER_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    header_timeout: u64,
    /// Seconds a write to a client may stall (the client reads nothing)
    /// before its connection is closed.
    #[arg(long, env = "NIXERY_WRITE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    write_timeout: u64,
    /// Seconds a connection may stay open with no request in progress
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    #[arg(long, env = "NIXERY_IDLE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout: u64,
    /// The most client connections open at once; past it, new ones get
    /// 503 (default: the open-file limit less a reserve).
    #[arg(long, env = "NIXERY_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_connections: Option<u64>,
    /// A PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "NIXERY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "NIXERY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// An htpasswd file with bcrypt entries (`htpasswd -B`): pulls need
    /// one of its users (HTTP basic authentication).
    #[arg(long, env = "NIXERY_AUTH_HTPASSWD")]
    auth_htpasswd: Option<PathBuf>,
    /// A file of static bearer tokens, one a line (`#` comments): pulls
    /// may present one as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "NIXERY_AUTH_TOKENS")]
    auth_tokens: Option<PathBuf>,
    /// Platforms a name is built for, comma-separated (`linux/amd64,linux/arm64`):
    /// with two or more, a name that names no platform answers with an
    /// image index of one image per platform (`arm64/…` stays arm64 only).
    #[arg(long, env = "NIXERY_PLATFORMS", value_delimiter = ',')]
    platforms: Vec<String>,
    /// Error bodies and the start page carry Nix's logs and host paths
    /// (for debugging; off, they say what failed and the log has the rest).
    #[arg(long, env = "NIXERY_DEBUG_ERRORS", default_value_t = false, action = clap::ArgAction::Set)]
    debug_errors: bool,
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use nixery::nix::{PackageSource, Prepare};
    use std::sync::Arc;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    if args.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let (source, source_description) = match (&args.channel, &args.pkgs_repo, &args.pkgs_path) {
        (_, _, Some(p)) => {
            let p = std::fs::canonicalize(p).with_context(|| format!("NIXERY_PKGS_PATH {}", p.display()))?;
            // The start page names no host path.
            let d = "a local package set".to_string();
            (PackageSource::Path(p), d)
        }
        (_, Some(r), None) => (PackageSource::Git(r.clone()), format!("the git repository {r} (the image tag is the git ref; latest is the default branch)")),
        (Some(c), None, None) => (PackageSource::Channel(c.clone()), format!("nixpkgs {c}")),
        (None, None, None) => (PackageSource::Channel("nixos-unstable".into()), "nixpkgs nixos-unstable".to_string()),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let redirect = args.blob_redirect.then(|| std::time::Duration::from_secs(args.signed_url_expiry));
    let storage: Arc<dyn nixery::storage::Storage> = match args.storage_backend.as_str() {
        "filesystem" => {
            let path = args.storage_path.as_ref().context("the filesystem storage backend needs STORAGE_PATH (--storage-path)")?;
            Arc::new(nixery::storage::filesystem::FilesystemStorage::open(path)?)
        }
        "gcs" => {
            let bucket = args.gcs_bucket.as_deref().context("the gcs storage backend needs GCS_BUCKET (--gcs-bucket)")?;
            let config = nixery::storage::gcs::GcsConfig {
                bucket: bucket.to_string(),
                emulator_host: args.storage_emulator_host.clone(),
                credentials: args.google_application_credentials.clone(),
                signing_key: args.gcs_signing_key.clone(),
                signing_account: args.gcs_signing_account.clone(),
                signed_url_base: args.gcs_signed_url_base.clone(),
            };
            let gcs = rt.block_on(nixery::storage::gcs::GcsBucket::connect(&config)).with_context(|| format!("cannot use the GCS bucket {bucket}"))?;
            let storage = nixery::storage::object::ObjectStorage::new("gcs", Arc::new(gcs), redirect, rt.handle().clone());
            rt.block_on(storage.check()).with_context(|| format!("cannot use the GCS bucket {bucket}"))?;
            Arc::new(storage)
        }
        "s3" => {
            let bucket = args.s3_bucket.as_deref().context("the s3 storage backend needs NIXERY_S3_BUCKET (--s3-bucket)")?;
            let s3 = nixery::storage::s3::StoreBucket::s3(bucket).with_context(|| format!("cannot use the S3 bucket {bucket}"))?;
            let storage = nixery::storage::object::ObjectStorage::new("s3", Arc::new(s3), redirect, rt.handle().clone());
            rt.block_on(storage.check()).with_context(|| format!("cannot use the S3 bucket {bucket}"))?;
            Arc::new(storage)
        }
        other => anyhow::bail!("unknown NIXERY_STORAGE_BACKEND {other:?} (expected filesystem, gcs or s3)"),
    };
    // Fail now, not on the first pull, when the storage is out of reach.
    rt.block_on(storage.get_meta("startup-check")).with_context(|| format!("cannot reach the {} storage", storage.name()))?;
    let popularity = match &args.popularity_url {
        Some(u) => nixery::shim::load_popularity(u)?,
        None => Default::default(),
    };
    let pack = nixery::packing::PackOptions::new(args.compression, args.compression_level)?;
    let helper = std::env::current_exe().context("cannot find this program's path")?;
    // A shim killed before it could clean up leaves its folder behind: the
    // next one removes it (and no live shim's).
    let temp = std::env::temp_dir();
    nixery::scratch::remove_leftovers(&temp, PREPARE_PREFIX);
    let prepare_dir = nixery::scratch::owned(&temp, PREPARE_PREFIX, None).with_context(|| format!("cannot keep scratch in {}", temp.display()))?;
    let prepare = Prepare::install(&prepare_dir, helper, std::time::Duration::from_secs(args.nix_timeout))
        .with_context(|| format!("cannot write {}", prepare_dir.display()))?;
    tracing::info!(containment = ?prepare.containment, "nix builds die with the shim");
    let credentials = if args.auth_htpasswd.is_some() || args.auth_tokens.is_some() {
        Some(Arc::new(nixery::registry::auth::Credentials::load(args.auth_htpasswd.as_deref(), args.auth_tokens.as_deref())?))
    } else {
        None
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(nixery::registry::server::tls_config(cert, key)?),
        _ => None,
    };
    if credentials.is_some() && tls.is_none() && !args.bind.is_loopback() {
        tracing::warn!("authentication without TLS on a network address: passwords and tokens cross the network in the clear");
    }
    let config = nixery::shim::ShimConfig {
        source,
        meta: nixery::image_name::MetaPackages { shell: non_empty(&args.shell_packages), ..Default::default() },
        base_packages: non_empty(&args.base_packages),
        max_layers: args.max_layers as usize,
        layering: args.layering,
        pack,
        popularity: Arc::new(popularity),
        prepare,
        revision_ttl: std::time::Duration::from_secs(args.revision_ttl),
        max_builds: args.max_builds.map(|n| n as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        failure_ttl: std::time::Duration::from_secs(args.failure_ttl),
        max_packages: args.max_packages as usize,
        max_queued_builds: args.max_queued_builds as usize,
        platforms: non_empty(&args.platforms)
            .iter()
            .map(|p| {
                nixery::image::Platform::nix_system_of(p)
                    .with_context(|| format!("NIXERY_PLATFORMS: {p:?} is not a platform such as linux/amd64 or linux/arm64"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let config_max_builds = config.max_builds;
    let shim = nixery::shim::Shim::new(config, storage);
    let server_options = nixery::registry::server::ServerOptions {
        header_timeout: std::time::Duration::from_secs(args.header_timeout),
        write_timeout: std::time::Duration::from_secs(args.write_timeout),
        idle_timeout: std::time::Duration::from_secs(args.idle_timeout),
        max_connections: args.max_connections.map(|n| n as usize).unwrap_or_else(nixery::registry::server::default_max_connections),
        tls,
        metrics: shim.metrics_handle(),
    };
    let state = Arc::new(nixery::registry::AppState { shim, source_description: source_description.clone(), debug_errors: args.debug_errors });
    let app = nixery::registry::router(state, args.web_dir.clone(), credentials.clone());
    let addr = std::net::SocketAddr::new(args.bind, args.port);

    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(
            %addr,
            source = %source_description,
            tls = server_options.tls.is_some(),
            authentication = credentials.is_some(),
            max_builds = config_max_builds,
            max_connections = server_options.max_connections,
            "nixery is serving"
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        nixery::registry::server::serve(listener, app, server_options, shutdown).await?;
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&prepare_dir);
    Ok(())
}

/// The name prefix of the shim's prepare-image folder in the temporary
/// directory ([`nixery::scratch::owned`]).
const PREPARE_PREFIX: &str = "nixery-prepare";

/// A comma-separated list without empty items (`""` is the empty list).
fn non_empty(items: &[String]) -> Vec<String> {
    items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Parses `nix path-info --json` output: a list of `{path, references}`
/// (Nix before 2.19) or an object from path to `{references}`.
fn path_info_references(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, Vec<String>>> {
    #[derive(serde::Deserialize)]
    struct Info {
        path: Option<String>,
        #[serde(default)]
        references: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<Info>),
        Map(std::collections::BTreeMap<String, Info>),
    }
    let doc: Doc = serde_json::from_str(text).context("not the JSON of nix path-info --json")?;
    Ok(match doc {
        Doc::List(v) => v.into_iter().map(|i| i.path.map(|p| (p, i.references)).context("a path-info entry has no \"path\"")).collect::<anyhow::Result<_>>()?,
        Doc::Map(m) => m.into_iter().map(|(p, i)| (p, i.references)).collect(),
    })
}

/// `nixery push SOURCE DEST`.
fn push(source: &str, dest: &str, flags: PushFlags) -> anyhow::Result<()> {
    use nixery::push;
    let dest: push::Destination = dest.parse()?;
    let login = match flags.creds {
        Some(c) => Some(push::credentials::Login::parse(&c).context("--creds is USER:PASSWORD")?),
        None => push::credentials::find(&dest.registry),
    };
    let source = push::Source::open(source)?;
    let connection =
        push::Connection { plain_http: flags.plain_http, ca_file: flags.ca_file, login, stall_timeout: Some(std::time::Duration::from_secs(flags.timeout)) };
    let opts = push::PushOptions { connection, mount_from: flags.mount_from, jobs: flags.jobs };
    let report = push::push(&source, &dest, &opts)?;
    eprintln!(
        "nixery: pushed {}/{}:{}: {} blobs uploaded ({} bytes), {} mounted, {} already there",
        dest.registry, dest.repository, dest.tag, report.uploaded, report.uploaded_bytes, report.mounted, report.present
    );
    println!("{}", report.digest.map(|d| d.to_string()).unwrap_or_default());
    Ok(())
}

/// Runs a program `write-script` wrote, with its own name and command
/// line: `copy-to-registry [DEST] [FLAGS]`, `copy-to-podman [TARGET]`.
fn run_script(script: &std::path::Path, args: Vec<String>) -> anyhow::Result<()> {
    use clap::{CommandFactory, FromArgMatches};
    let text = read(&script.to_path_buf())?;
    let doc: serde_json::Value =
        serde_json::from_str(text.lines().nth(1).unwrap_or("")).with_context(|| format!("{} is not a program write-script wrote", script.display()))?;
    let image = doc["image"].as_str().context("the program names no image")?;
    let default_dest = doc["defaultDest"].as_str();
    let name = script.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "copy".into());
    let argv = std::iter::once(name.clone()).chain(args);
    if doc["action"].as_str() == Some("load") {
        let command = LoadProgram::command().bin_name(name).about(format!("Load {image} into podman or docker (nixery load)"));
        let program = LoadProgram::from_arg_matches(&command.try_get_matches_from(argv).unwrap_or_else(|e| e.exit()))?;
        let target = program.target.or(default_dest.map(str::to_string)).context("give the target: podman, docker, docker-archive:FILE or oci:DIR[:TAG]")?;
        let target: nixery::push::load::Target = target.parse()?;
        let source = nixery::push::Source::open(image)?;
        return Ok(nixery::push::load::load(&source, &target)?);
    }
    let command = PushProgram::command().bin_name(name).about(format!("Push {image} to a registry (nixery push)"));
    let program = PushProgram::from_arg_matches(&command.try_get_matches_from(argv).unwrap_or_else(|e| e.exit()))?;
    let dest =
        program.dest.or(default_dest.map(str::to_string)).context("give the destination: REGISTRY/REPOSITORY[:TAG] (the image's name names no registry)")?;
    push(image, &dest, program.flags)
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Layers { graph, popularity, max_layers, algorithm } => {
            let g = ClosureGraph::from_json(&read(&graph)?).with_context(|| graph.display().to_string())?;
            let pop = match &popularity {
                Some(p) => Popularity::from_json(&read(p)?).with_context(|| p.display().to_string())?,
                None => Popularity::default(),
            };
            let plan = layering::plan_with(&g, &pop, max_layers, algorithm)?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        Command::Pack { plan, out, compression, level, store_root } => {
            use nixery::packing::{self, LayerContent, PackOptions};
            let plan: layering::LayerPlan = serde_json::from_str(&read(&plan)?).with_context(|| format!("{} is not a layer plan", plan.display()))?;
            let opts = PackOptions::new(compression, level)?;
            let contents: Vec<LayerContent> =
                plan.layers.into_iter().map(|l| LayerContent { store_root: store_root.clone(), ..LayerContent::store_paths(l.paths) }).collect();
            let packed = packing::run_parallel(contents, packing::producers(opts), |c| packing::pack_to_dir(&c, &out, opts))
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            println!("{}", serde_json::to_string_pretty(&packed)?);
        }
        Command::BuildImage { attrs } => {
            let attrs = attrs.unwrap_or_else(builder::default_attrs_path);
            builder::build_from_attrs(&attrs)?;
        }
        Command::Serve(args) => serve(*args)?,
        Command::PlanLayers { attrs } => builder::plan_from_attrs(&attrs.unwrap_or_else(builder::default_attrs_path))?,
        Command::PackLayer { attrs } => builder::pack_layer_from_attrs(&attrs.unwrap_or_else(builder::default_attrs_path))?,
        Command::PackGroup { attrs } => builder::pack_group_from_attrs(&attrs.unwrap_or_else(builder::default_attrs_path))?,
        Command::WriteGraph { attrs } => builder::write_graph_from_attrs(&attrs.unwrap_or_else(builder::default_attrs_path))?,
        Command::Popcount { package_set, system, path_info, graph } => {
            let pop = match (package_set, path_info, graph) {
                (Some(dir), _, _) => {
                    let dir = std::fs::canonicalize(&dir).with_context(|| format!("package set {}", dir.display()))?;
                    let outputs = nixery::nix::popcount::top_level_outputs(&dir, &system)?;
                    let (refs, missing) = nixery::nix::popcount::local_closure_references(&outputs)?;
                    if !missing.is_empty() {
                        eprintln!(
                            "nixery: {} of {} packages are not in the store and are not counted (build or substitute them first)",
                            missing.len(),
                            outputs.len()
                        );
                    }
                    nixery::graph::popcount(&refs, Some(&outputs))
                }
                (None, Some(file), _) => nixery::graph::popcount(&path_info_references(&read(&file)?).with_context(|| file.display().to_string())?, None),
                (None, None, Some(file)) => {
                    let g = ClosureGraph::from_json(&read(&file)?).with_context(|| file.display().to_string())?;
                    let refs = g.paths.into_values().map(|p| (p.path, p.references)).collect();
                    nixery::graph::popcount(&refs, None)
                }
                (None, None, None) => anyhow::bail!("popcount needs --package-set, --path-info or --graph"),
            };
            println!("{}", serde_json::to_string_pretty(&pop.0)?);
        }
        Command::Push { source, dest, flags } => push(&source, &dest, flags)?,
        Command::BuildIndex { name, tag, out, images } => {
            let digest = image::write_index_layout(&images, &name, &tag, &out)?;
            eprintln!("nixery: wrote index {name}:{tag} ({digest}) of {} images to {}", images.len(), out.display());
        }
        Command::Load { source, target } => {
            let target: nixery::push::load::Target = target.parse()?;
            let source = nixery::push::Source::open(&source)?;
            nixery::push::load::load(&source, &target)?;
        }
        Command::WriteScript { action, out, name, helper, image, default_dest } => {
            let bin = out.join("bin");
            std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
            let path = bin.join(&name);
            let doc = serde_json::json!({ "action": action, "image": image, "defaultDest": default_dest });
            std::fs::write(&path, format!("#!{} run-script\n{doc}\n", helper.display())).with_context(|| format!("cannot write {}", path.display()))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).with_context(|| path.display().to_string())?;
        }
        Command::RunScript { script, args } => run_script(&script, args)?,
        Command::DockerArchive { oci, repo_tag, out } => {
            let layout = image::read_oci_layout(&oci)?;
            image::write_docker_archive(&layout, &repo_tag, &out)?;
        }
    }
    Ok(())
}

/// An error and its causes, each said once: many errors (ours wrapping
/// an I/O error, a library's) repeat their cause's words in their own
/// message, and a cause already said is not said again.
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixery: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}
