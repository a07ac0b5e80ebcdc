//! A registry that misbehaves on purpose, for `nixery push`'s tests: an
//! HTTP/1.1 server (plain or TLS) on loopback that records every request
//! and answers what the test's handler says, one request per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `GET`, `PUT`…
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// How many body bytes came.
    pub body_len: usize,
}

impl Seen {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// What to answer: a status, headers and a body; `None` answers nothing
/// at all (the connection is held open, silent, until the client leaves).
pub type Answer = Option<(u16, Vec<(String, String)>, Vec<u8>)>;

/// A running hostile registry, stopped with the test process.
pub struct Hostile {
    /// `host:port`.
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hostile {
    /// Starts one on `ip` (any 127.x address), answering with `handler`;
    /// with `tls` (a certificate and its key, PEM), over TLS.
    pub fn start(ip: &str, tls: Option<(&std::path::Path, &std::path::Path)>, handler: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler = Arc::new(handler);
        let config = tls.map(|(cert, key)| {
            use rustls::pki_types::pem::PemObject;
            let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
                rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
            Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap(),
            )
        });
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, handler, config) = (recorded.clone(), handler.clone(), config.clone());
                std::thread::spawn(move || match config {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        serve(rustls::StreamOwned::new(conn, stream), &seen, &*handler);
                    }
                    None => serve(stream, &seen, &*handler),
                });
            }
        });
        Hostile { addr, seen }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(mut stream: impl Read + Write, seen: &Mutex<Vec<Seen>>, handler: &(dyn Fn(&Seen) -> Answer + Send + Sync)) {
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let length: usize = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    let body_len = if reader.read_exact(&mut body).is_ok() { length } else { 0 };
    let request = Seen { method, target, headers, body_len };
    seen.lock().unwrap().push(request.clone());
    let Some((status, headers, body)) = handler(&request) else {
        // Silent: hold the connection until the client gives up.
        let mut sink = [0u8; 1024];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
        return;
    };
    let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// A connection that is kept, for `TcpStream`'s peer in tests.
pub fn connect(addr: &str) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

/// A small image as an OCI layout in `dir`: a config and one layer whose
/// blob is `layer` (bytes), named `name:v1`. Returns the layer's digest.
pub fn tiny_layout(dir: &std::path::Path, layer: &[u8]) -> nixery::digest::Digest {
    use nixery::digest::Digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> Digest {
        let d = Digest::of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let layer_digest = put(layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
    }))
    .unwrap();
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }],
    }))
    .unwrap();
    let manifest_digest = put(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
            "annotations": { "org.opencontainers.image.ref.name": "v1", "io.containerd.image.name": "tiny:v1" },
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layer_digest
}
