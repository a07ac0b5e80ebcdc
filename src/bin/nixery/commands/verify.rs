//! `nixery verify`: checks an image's cosign signatures and attestations
//! in a registry with a public key, and lists its referrers.

use std::path::PathBuf;
use std::time::Duration;

use nixery::push;
use nixery::supply_chain::key::VerifyingKey;
use nixery::supply_chain::DOCUMENTS;

#[derive(clap::Args)]
pub struct Args {
    /// The public key (`cosign.pub`, or `openssl pkey -in KEY -pubout`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// An attestation that must verify too, by cosign's name for it:
    /// spdxjson, cyclonedx or slsaprovenance1 (repeatable).
    #[arg(long = "attestation", value_name = "TYPE", value_parser = ["spdxjson", "cyclonedx", "slsaprovenance1"])]
    attestations: Vec<String>,
    /// Credentials, `USER:PASSWORD`; by default from the same files
    /// `nixery push` reads.
    #[arg(long)]
    creds: Option<String>,
    /// Plain HTTP to a registry that is not on a loopback address.
    #[arg(long)]
    plain_http: bool,
    /// A PEM file of CA certificates to trust instead of the bundled roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The image: `REGISTRY/REPOSITORY[:TAG]` or `…@sha256:HEX`.
    image: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let key = VerifyingKey::from_file(&args.key)?;
    let (dest, digest) = push::verify::parse_reference(&args.image)?;
    let login = super::push::login(args.creds.as_deref(), &dest.registry)?;
    let connection = push::Connection { plain_http: args.plain_http, ca_file: args.ca_file, login, stall_timeout: Some(Duration::from_secs(60)) };
    let found = push::verify::verify(&dest, digest.as_ref(), &connection, &key)?;
    let digest = found.digest.clone().expect("verify names the digest");
    let image = format!("{}/{}@{digest}", dest.registry, dest.repository);
    println!("{image}");
    for (artifact_type, d) in &found.referrers {
        println!("  referrer {artifact_type} {d}");
    }
    for t in &found.attestations {
        let name = DOCUMENTS.iter().find(|k| k.predicate_type == t).map_or(t.as_str(), |k| k.cosign_type);
        println!("  attestation {name} ({t}): verified");
    }
    if found.signatures == 0 {
        anyhow::bail!(
            "{image} has no signature that {} verifies: sign it with `nixery push --sign-key` (or cosign sign) and the private half of this key",
            args.key.display()
        );
    }
    println!("  signature: verified with {}", args.key.display());
    let missing: Vec<&str> = args
        .attestations
        .iter()
        .map(String::as_str)
        .filter(|want| !DOCUMENTS.iter().any(|k| k.cosign_type == *want && found.attestations.iter().any(|t| t == k.predicate_type)))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!("{image} has no {} attestation that {} verifies", missing.join(", "), args.key.display());
    }
    Ok(())
}
