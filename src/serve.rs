//! `nixery serve` as a whole: its settings (every flag, each reading the
//! original Nixery's environment variable) and the wiring from them to a
//! running registry:
//!
//! ```text
//! Settings ─► package source ─► storage (storage::open) ─► popularity
//!          ─► scratch (prepare-image) ─► credentials, TLS
//!          ─► Shim ─► router ─► server (registry::server) until SIGTERM
//! ```
//!
//! The binary runs [`run`]; [`Settings`] is also what the NixOS module's
//! list of variables and docs/shim.md's table are checked against.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::nix::{PackageSource, Prepare};
use crate::packing::Compression;

/// `nixery serve` settings: every flag also reads the original Nixery's
/// environment variable (or the cloud's usual one).
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Port to listen on (0: any free port, which the log names).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "NIXERY_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// A nixpkgs channel (branch) or commit to build from, fetched as a
    /// tarball. The default when no source is given: nixos-unstable.
    #[arg(long, env = "NIXERY_CHANNEL", conflicts_with_all = ["pkgs_repo", "pkgs_path"])]
    pub channel: Option<String>,
    /// A git repository with a package set; the image tag is the git ref
    /// (`latest`: the default branch).
    #[arg(long, env = "NIXERY_PKGS_REPO", conflicts_with = "pkgs_path")]
    pub pkgs_repo: Option<String>,
    /// A local directory with a package set (a nixpkgs checkout, or any
    /// expression imported like one).
    #[arg(long, env = "NIXERY_PKGS_PATH")]
    pub pkgs_path: Option<PathBuf>,
    /// Where layers and manifests are stored.
    #[command(flatten)]
    pub storage: crate::storage::Settings,
    /// Seconds a nix-build may take before it is stopped.
    #[arg(long, env = "NIX_TIMEOUT", default_value_t = 60)]
    pub nix_timeout: u64,
    /// Popularity data for layering: an http(s):// or file:// URL, or a path.
    #[arg(long, env = "NIX_POPULARITY_URL")]
    pub popularity_url: Option<String>,
    /// A static site to serve outside /v2/ instead of the start page.
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<PathBuf>,
    /// What the `shell` meta-package expands to, comma-separated.
    #[arg(long, env = "NIXERY_SHELL_PACKAGES", value_delimiter = ',', default_value = "bashInteractive,coreutils,moreutils,nano")]
    pub shell_packages: Vec<String>,
    /// Packages every image gets when the package set has them, comma-separated.
    #[arg(long, env = "NIXERY_BASE_PACKAGES", value_delimiter = ',', default_value = "cacert,iana-etc")]
    pub base_packages: Vec<String>,
    /// The most layers an image may have, root layer included.
    #[arg(long, env = "NIXERY_MAX_LAYERS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=125))]
    pub max_layers: u64,
    /// Seconds a resolved package-set revision (a git ref's commit, a
    /// local set's content hash) is reused before it is looked up again.
    #[arg(long, env = "NIXERY_REVISION_TTL", default_value_t = 10)]
    pub revision_ttl: u64,
    /// The layering algorithm.
    #[arg(long, env = "NIXERY_LAYERING", value_enum, default_value_t = crate::layering::Algorithm::default())]
    pub layering: crate::layering::Algorithm,
    /// Layer compression (zstd: Docker 23+, containerd 1.5+, podman 4+).
    #[arg(long, env = "NIXERY_COMPRESSION", value_enum, default_value_t = Compression::Gzip)]
    pub compression: Compression,
    /// Compression level (gzip 0 to 12, default 5; zstd 1 to 19, default 3).
    #[arg(long, env = "NIXERY_COMPRESSION_LEVEL")]
    pub compression_level: Option<u32>,
    /// Log format.
    #[arg(long, env = "NIXERY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The most Nix builds at once; more wait their turn (default: the
    /// number of cores).
    #[arg(long, env = "NIXERY_MAX_BUILDS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub max_builds: Option<u64>,
    /// The most cold images that wait for a build slot; past it, a pull
    /// of another cold image is answered 429 (try again) at once.
    #[arg(long, env = "NIXERY_MAX_QUEUED_BUILDS", default_value_t = 32, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub max_queued_builds: u64,
    /// Seconds a failed image (per package-set revision and name) is
    /// answered from memory before it is built again; 0 never remembers.
    #[arg(long, env = "NIXERY_FAILURE_TTL", default_value_t = 30)]
    pub failure_ttl: u64,
    /// The most packages one image name may ask for (meta-packages
    /// expanded, base packages not counted).
    #[arg(long, env = "NIXERY_MAX_PACKAGES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_packages: u64,
    /// Seconds a client has to send a request's headers (and a TLS
    /// handshake).
    #[arg(long, env = "NIXERY_HEADER_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_timeout: u64,
    /// Seconds a write to a client may stall (the client reads nothing)
    /// before its connection is closed.
    #[arg(long, env = "NIXERY_WRITE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub write_timeout: u64,
    /// Seconds a connection may stay open with no request in progress
    /// (HTTP/1 keep-alive and HTTP/2 alike).
    #[arg(long, env = "NIXERY_IDLE_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub idle_timeout: u64,
    /// The most client connections open at once; past it, new ones get
    /// 503 (default: the open-file limit less a reserve).
    #[arg(long, env = "NIXERY_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: Option<u64>,
    /// A PEM certificate chain: serve HTTPS (with --tls-key).
    #[arg(long, env = "NIXERY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "NIXERY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// An htpasswd file with bcrypt entries (`htpasswd -B`): pulls need
    /// one of its users (HTTP basic authentication).
    #[arg(long, env = "NIXERY_AUTH_HTPASSWD")]
    pub auth_htpasswd: Option<PathBuf>,
    /// A file of static bearer tokens, one a line (`#` comments): pulls
    /// may present one as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "NIXERY_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// Platforms a name is built for, comma-separated (`linux/amd64,linux/arm64`):
    /// with two or more, a name that names no platform answers with an
    /// image index of one image per platform (`arm64/…` stays arm64 only).
    #[arg(long, env = "NIXERY_PLATFORMS", value_delimiter = ',')]
    pub platforms: Vec<String>,
    /// A private key (EC P-256: PKCS#8 PEM, or cosign's own with its
    /// password in COSIGN_PASSWORD) to sign every image built with, for
    /// cosign: `sha256-<hex>.sig` and `.att` resolve under each name.
    #[arg(long, env = "NIXERY_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Who supplies the packages, named as each package's supplier in the
    /// SBOMs (`NixOS`, or your organisation), as the library's
    /// `sbomSupplier`: NTIA's minimum elements ask for one.
    #[arg(long, env = "NIXERY_SBOM_SUPPLIER", value_name = "NAME")]
    pub sbom_supplier: Option<String>,
    /// Error bodies and the start page carry Nix's logs and host paths
    /// (for debugging; off, they say what failed and the log has the rest).
    #[arg(long, env = "NIXERY_DEBUG_ERRORS", default_value_t = false, action = clap::ArgAction::Set)]
    pub debug_errors: bool,
}

/// How the log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people (`RUST_LOG` filters).
    Text,
    /// A JSON object a line, for log collectors.
    Json,
}

/// Why the shim cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `NIXERY_SIGNING_KEY` cannot be used.
    #[error("NIXERY_SIGNING_KEY: {0}")]
    SigningKey(#[from] crate::supply_chain::key::KeyError),
    /// The runtime cannot start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// `NIXERY_PKGS_PATH` is not a directory that can be read.
    #[error("NIXERY_PKGS_PATH {path}")]
    PkgsPath {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The storage cannot be used.
    #[error(transparent)]
    Storage(#[from] crate::storage::OpenError),
    /// The popularity data cannot be loaded.
    #[error(transparent)]
    Popularity(#[from] crate::shim::PopularityError),
    /// The compression settings do not go together.
    #[error(transparent)]
    Packing(#[from] crate::packing::PackError),
    /// The scratch folder for prepare-image cannot be made.
    #[error("cannot keep scratch in {dir}")]
    Scratch {
        /// The temporary directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// prepare-image cannot be installed in its scratch folder.
    #[error("cannot write prepare-image into {dir}")]
    Prepare {
        /// The folder.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The credential files cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::registry::auth::AuthError),
    /// The certificate and key cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::registry::server::TlsError),
    /// A platform of `NIXERY_PLATFORMS` is not one.
    #[error("NIXERY_PLATFORMS: {platform:?} is not a platform such as linux/amd64 or linux/arm64")]
    Platform {
        /// What was given.
        platform: String,
        /// Why.
        #[source]
        source: crate::image::ImageError,
    },
    /// The address cannot be listened on.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The package set cannot be pinned: nothing could be built.
    #[error("cannot use the package set, {description}: {cause}{hint}")]
    Source {
        /// What the set is, and where the setting came from.
        description: String,
        /// What may be wrong with the settings (a stray variable).
        hint: String,
        /// Why, in one line (git's and Nix's messages span several).
        cause: String,
    },
    /// This program's own path cannot be found (prepare-image runs it).
    #[error("cannot find this program's path")]
    CurrentExe(#[source] std::io::Error),
}

/// Variables of this repository's scripts and tests, which share the
/// prefix and are no setting of the shim.
const OTHER_NIXERY_VARIABLES: &[&str] = &[
    "NIXERY_DEBIAN_MIRROR",
    "NIXERY_EXAMPLE_STATE",
    "NIXERY_PRINT_GOLDEN",
    "NIXERY_TESTS_HOST_ROOT",
    "NIXERY_TEST_LOOPBACK_NETNS",
    "NIXERY_TEST_WORLD",
    "NIXERY_WORLD_ROOT",
];

/// Every environment variable a setting of `nixery serve` reads.
pub fn setting_variables() -> Vec<String> {
    use clap::Args;
    Settings::augment_args(clap::Command::new("serve")).get_arguments().filter_map(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned()).collect()
}

/// An environment variable that looks like a setting and is none (most
/// often a misspelt one, which would otherwise be ignored in silence).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrayVariable {
    /// Its name.
    pub name: String,
    /// The setting's variable it is closest to, if one is close.
    pub closest: Option<String>,
}

impl std::fmt::Display for StrayVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.closest {
            Some(c) => write!(f, "{} is set, which is no setting of nixery serve: did you mean {c}?", self.name),
            None => write!(f, "{} is set, which is no setting of nixery serve (docs/shim.md lists them)", self.name),
        }
    }
}

/// The variables among `names` that look like settings and are none:
/// every `NIXERY_…` one that is not a setting (nor one of this
/// repository's scripts), and any other within two edits of a setting's
/// variable of eight or more characters (`NIX_TIMOUT`).
pub fn stray_variables(names: impl IntoIterator<Item = String>) -> Vec<StrayVariable> {
    let known = setting_variables();
    // The known variable of at least `min_len` characters closest to
    // `name`, within `most` edits.
    let closest = |name: &str, most: usize, min_len: usize| {
        crate::closest_name::closest(name, known.iter().map(String::as_str).filter(|k| k.len() >= min_len), most).map(str::to_string)
    };
    let mut stray: Vec<StrayVariable> = names
        .into_iter()
        .filter(|n| !known.contains(n) && !OTHER_NIXERY_VARIABLES.contains(&n.as_str()))
        .filter_map(|name| {
            if name.starts_with("NIXERY_") {
                let closest = closest(&name, (name.len() / 4).max(2), 0);
                Some(StrayVariable { name, closest })
            } else {
                closest(&name, 2, 8).map(|k| StrayVariable { closest: Some(k), name })
            }
        })
        .collect();
    stray.sort_by(|a, b| a.name.cmp(&b.name));
    stray
}

/// The name prefix of the shim's prepare-image folder in the temporary
/// directory ([`crate::scratch::owned`]).
pub const PREPARE_PREFIX: &str = "nixery-prepare";

/// A comma-separated list without empty items (`""` is the empty list).
fn non_empty(items: &[String]) -> Vec<String> {
    items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The package source the settings name, and a line saying what it is
/// for the start page (no host path).
fn package_source(settings: &Settings) -> Result<(PackageSource, String), ServeError> {
    Ok(match (&settings.channel, &settings.pkgs_repo, &settings.pkgs_path) {
        (_, _, Some(p)) => {
            let p = std::fs::canonicalize(p).map_err(|source| ServeError::PkgsPath { path: p.clone(), source })?;
            (PackageSource::Path(p), "a local package set".to_string())
        }
        (_, Some(r), None) => (PackageSource::Git(r.clone()), format!("the git repository {r} (the image tag is the git ref; latest is the default branch)")),
        (Some(c), None, None) => (PackageSource::Channel(c.clone()), format!("nixpkgs {c}")),
        (None, None, None) => (PackageSource::Channel("nixos-unstable".into()), "nixpkgs nixos-unstable".to_string()),
    })
}

/// Starts logging to standard error in the settings' format.
fn start_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Runs the shim the settings describe until SIGTERM or Ctrl-C, then lets
/// the requests in progress finish.
pub fn run(settings: Settings) -> Result<(), ServeError> {
    start_logging(settings.log_format);
    let stray = stray_variables(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()));
    for s in &stray {
        tracing::warn!("{s}");
    }
    let (source, source_description) = package_source(&settings)?;
    let rt = tokio::runtime::Runtime::new().map_err(ServeError::Runtime)?;
    let storage = crate::storage::open(&settings.storage, &rt)?;
    let popularity = match &settings.popularity_url {
        Some(u) => crate::shim::load_popularity(u)?,
        None => Default::default(),
    };
    let pack = crate::packing::PackOptions::new(settings.compression, settings.compression_level)?;
    let helper = std::env::current_exe().map_err(ServeError::CurrentExe)?;
    // A shim killed before it could clean up leaves its folder behind: the
    // next one removes it (and no live shim's).
    let temp = std::env::temp_dir();
    crate::scratch::remove_leftovers(&temp, PREPARE_PREFIX);
    let prepare_dir = crate::scratch::owned(&temp, PREPARE_PREFIX, None).map_err(|source| ServeError::Scratch { dir: temp.clone(), source })?;
    let prepare = Prepare::install(&prepare_dir, helper, Duration::from_secs(settings.nix_timeout))
        .map_err(|source| ServeError::Prepare { dir: prepare_dir.clone(), source })?;
    tracing::info!(containment = ?prepare.containment, "nix builds die with the shim");
    let credentials = if settings.auth_htpasswd.is_some() || settings.auth_tokens.is_some() {
        Some(Arc::new(crate::registry::auth::Credentials::load(settings.auth_htpasswd.as_deref(), settings.auth_tokens.as_deref())?))
    } else {
        None
    };
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(crate::registry::server::tls_config(cert, key)?),
        _ => None,
    };
    if credentials.is_some() && tls.is_none() && !settings.bind.is_loopback() {
        tracing::warn!("authentication without TLS on a network address: passwords and tokens cross the network in the clear");
    }
    let signing_key = match &settings.signing_key {
        Some(path) => {
            let key = crate::supply_chain::key::SigningKey::from_file(path, std::env::var("COSIGN_PASSWORD").ok().as_deref())?;
            tracing::info!(key = %path.display(), id = %crate::shim::referrers::key_id(&key), "images are signed for cosign (NIXERY_SIGNING_KEY)");
            Some(Arc::new(key))
        }
        None => None,
    };
    let platforms = non_empty(&settings.platforms)
        .into_iter()
        .map(|p| crate::image::Platform::nix_system_of(&p).map_err(|source| ServeError::Platform { platform: p.clone(), source }))
        .collect::<Result<Vec<_>, _>>()?;
    // The package set is pinned once, after the settings are checked and
    // before anything is served: a source that cannot be reached is the
    // operator's to fix, said here.
    if let Err(e) = rt.block_on(source.resolve("latest")) {
        let description = if settings.channel.is_none() && settings.pkgs_repo.is_none() && settings.pkgs_path.is_none() {
            format!("{source_description} (the default: none of NIXERY_PKGS_PATH, NIXERY_PKGS_REPO or NIXERY_CHANNEL is set)")
        } else {
            source_description.clone()
        };
        let hint = stray.iter().map(|s| format!("; {s}")).collect();
        let cause = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        return Err(ServeError::Source { description, hint, cause });
    }
    let config = crate::shim::ShimConfig {
        source,
        meta: crate::image_name::MetaPackages { shell: non_empty(&settings.shell_packages), ..Default::default() },
        base_packages: non_empty(&settings.base_packages),
        max_layers: settings.max_layers as usize,
        layering: settings.layering,
        pack,
        popularity: Arc::new(popularity),
        prepare,
        revision_ttl: Duration::from_secs(settings.revision_ttl),
        max_builds: settings.max_builds.map(|n| n as usize).unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        failure_ttl: Duration::from_secs(settings.failure_ttl),
        max_packages: settings.max_packages as usize,
        max_queued_builds: settings.max_queued_builds as usize,
        platforms,
        signing_key,
        sbom_supplier: settings.sbom_supplier.clone().filter(|s| !s.trim().is_empty()),
    };
    let max_builds = config.max_builds;
    let shim = crate::shim::Shim::new(config, storage);
    let server_options = crate::registry::server::ServerOptions {
        header_timeout: Duration::from_secs(settings.header_timeout),
        write_timeout: Duration::from_secs(settings.write_timeout),
        idle_timeout: Duration::from_secs(settings.idle_timeout),
        max_connections: settings.max_connections.map(|n| n as usize).unwrap_or_else(crate::registry::server::default_max_connections),
        tls,
        metrics: shim.metrics_handle(),
    };
    let state = Arc::new(crate::registry::AppState {
        shim,
        source_description: source_description.clone(),
        debug_errors: settings.debug_errors,
        tls: server_options.tls.is_some(),
    });
    let app = crate::registry::router(state, settings.web_dir.clone(), credentials.clone());
    let addr = std::net::SocketAddr::new(settings.bind, settings.port);

    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(
            addr = %bound,
            source = %source_description,
            tls = server_options.tls.is_some(),
            authentication = credentials.is_some(),
            max_builds,
            max_connections = server_options.max_connections,
            "nixery is serving"
        );
        let shutdown = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        crate::registry::server::serve(listener, app, server_options, shutdown).await.map_err(|source| ServeError::Listen { addr: bound, source })
    });
    let _ = std::fs::remove_dir_all(&prepare_dir);
    served
}
