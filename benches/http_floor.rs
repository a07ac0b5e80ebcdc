//! The serving benchmark's floor: the shim's HTTP stack (tokio's
//! multi-threaded runtime, axum, TCP_NODELAY) answering every GET with a
//! fixed body and the headers a manifest response has, and no registry
//! logic. `bench/serving` loads it with wrk beside the shim, so what the
//! shim adds over the stack itself shows in the same run.
//!
//! Run: `cargo bench --bench http_floor -- --port N [--body-size BYTES]`;
//! serves on 127.0.0.1 until killed.

use axum::http::{header, HeaderValue};
use axum::response::Response;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(port) = arg(&args, "--port").and_then(|p| p.parse::<u16>().ok()) else {
        // `cargo bench` runs every bench target: this one only serves.
        eprintln!("http_floor: a server for bench/serving (--port N [--body-size BYTES]); nothing to measure on its own");
        return;
    };
    let size = arg(&args, "--body-size").and_then(|s| s.parse::<usize>().ok()).unwrap_or(2048);
    let body = bytes::Bytes::from(vec![b'x'; size]);
    let digest = HeaderValue::from_static("sha256:0000000000000000000000000000000000000000000000000000000000000000");
    let etag = HeaderValue::from_static("\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"");
    let handler = move || {
        let (body, digest, etag) = (body.clone(), digest.clone(), etag.clone());
        async move {
            let mut resp = Response::new(axum::body::Body::from(body));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"));
            h.insert("docker-content-digest", digest);
            h.insert(header::ETAG, etag);
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
            h.insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
            resp
        }
    };
    let app = axum::Router::new().fallback(handler);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await.expect("serve");
    });
}
