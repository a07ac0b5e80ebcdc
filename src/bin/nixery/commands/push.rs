//! `nixery push`: an image that buildNixeryImage or streamNixeryImage
//! built, to a registry.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use nixery::push;
use nixery::supply_chain::cosign;
use nixery::supply_chain::key::SigningKey;

#[derive(clap::Args)]
pub struct Args {
    /// The image: the build's result (an OCI layout directory), with
    /// `:TAG` when it holds several.
    source: String,
    /// Where to: `REGISTRY/REPOSITORY[:TAG]` (tag: latest).
    dest: String,
    #[command(flatten)]
    flags: Flags,
}

/// How `nixery push` (and a `copyToRegistry` program) talks to the registry.
#[derive(clap::Args)]
pub struct Flags {
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
    /// Sign the pushed image for cosign with this key: an EC P-256 key,
    /// PKCS#8 PEM (`openssl genpkey -algorithm EC -pkeyopt
    /// ec_paramgen_curve:P-256`), or cosign's own (`cosign
    /// generate-key-pair`, its password in COSIGN_PASSWORD). The signature
    /// goes to the tag `sha256-<hex>.sig` and the SBOMs and provenance,
    /// attested, to `sha256-<hex>.att`, where `cosign verify --key` and
    /// `cosign verify-attestation --key` find them.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    push_image(&args.source, &args.dest, args.flags)
}

/// The credentials for `registry`: `--creds`, else what `podman login`
/// and `docker login` wrote.
pub fn login(creds: Option<&str>, registry: &str) -> anyhow::Result<Option<push::credentials::Login>> {
    match creds {
        Some(c) => Ok(Some(push::credentials::Login::parse(c).context("--creds is USER:PASSWORD")?)),
        None => Ok(push::credentials::find(registry)),
    }
}

/// Pushes `source` to `dest` and prints the manifest's digest.
pub fn push_image(source: &str, dest: &str, flags: Flags) -> anyhow::Result<()> {
    let dest: push::Destination = dest.parse()?;
    let login = login(flags.creds.as_deref(), &dest.registry)?;
    // The key is read first: a bad one fails before anything is pushed.
    let sign_key =
        flags.sign_key.as_deref().map(|k| SigningKey::from_file(k, std::env::var("COSIGN_PASSWORD").ok().as_deref())).transpose()?.map(std::sync::Arc::new);
    let source = push::Source::open(source)?;
    let connection = push::Connection { plain_http: flags.plain_http, ca_file: flags.ca_file, login, stall_timeout: Some(Duration::from_secs(flags.timeout)) };
    let opts = push::PushOptions { connection, mount_from: flags.mount_from, jobs: flags.jobs, sign_key };
    let report = push::push(&source, &dest, &opts)?;
    eprintln!(
        "nixery: pushed {}/{}:{}: {} blobs uploaded ({} bytes), {} mounted, {} already there",
        dest.registry, dest.repository, dest.tag, report.uploaded, report.uploaded_bytes, report.mounted, report.present
    );
    if !report.referrers.is_empty() {
        eprintln!("nixery: pushed its SBOMs and provenance as {} referrers of the image", report.referrers.len());
    }
    if let (Some(sig), Some(digest)) = (&report.signature, &report.digest) {
        eprintln!("nixery: signed it: {}/{}:{} ({sig})", dest.registry, dest.repository, cosign::signature_tag(digest));
        if let Some(att) = &report.attestations {
            eprintln!("nixery: attested its SBOMs and provenance: {}/{}:{} ({att})", dest.registry, dest.repository, cosign::attestation_tag(digest));
        }
    }
    println!("{}", report.digest.map(|d| d.to_string()).unwrap_or_default());
    Ok(())
}
