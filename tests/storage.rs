//! One storage contract: the conformance suite (`nixery::storage::conformance`,
//! which the filesystem and an in-memory object store run as unit tests)
//! against the GCS backend on fake-gcs-server and the S3 backend on moto,
//! each through `storage::open` as `nixery serve` opens it, inside a
//! loopback-only network namespace.

use nixery::storage::{Backend, Settings};

use crate::support::*;

/// Opens the backend `settings` names and runs the suite on it, on a
/// multi-threaded runtime (the suite also commits from a plain thread and
/// from a current-thread runtime).
fn conformance(settings: Settings) {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let storage = nixery::storage::open(&settings, &rt).unwrap_or_else(|e| panic!("{e:?}"));
    rt.block_on(nixery::storage::conformance(&*storage));
}

#[test]
fn the_s3_backend_keeps_the_storage_contract() {
    in_loopback_netns("storage::s3_conformance_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by the_s3_backend_keeps_the_storage_contract"]
fn s3_conformance_in_netns() {
    require_loopback_netns();
    let s3 = S3::start();
    // The S3 client reads its endpoint and credentials from AWS_*, as the
    // shim's does; this process is this one test.
    for (k, v) in s3.env() {
        std::env::set_var(k, v);
    }
    conformance(Settings {
        storage_backend: Backend::S3,
        s3_bucket: Some(s3.bucket.clone()),
        blob_redirect: true,
        signed_url_expiry: 60,
        ..Default::default()
    });
}

#[test]
fn the_gcs_backend_keeps_the_storage_contract() {
    in_loopback_netns("storage::gcs_conformance_in_netns");
}

#[test]
#[ignore = "run inside a loopback-only network namespace by the_gcs_backend_keeps_the_storage_contract"]
fn gcs_conformance_in_netns() {
    require_loopback_netns();
    let gcs = Gcs::start();
    conformance(Settings {
        storage_backend: Backend::Gcs,
        gcs_bucket: Some(gcs.bucket.clone()),
        storage_emulator_host: Some(format!("127.0.0.1:{}", gcs.port)),
        blob_redirect: true,
        signed_url_expiry: 60,
        ..Default::default()
    });
}
