//! Serving the router to the network: the accept loop, with what lets the
//! shim face one. Every connection is bounded in time and every resource
//! it holds is given back:
//!
//! - **Headers and first byte.** A client has
//!   [`ServerOptions::header_timeout`] to send a request's headers; a new
//!   connection has the same time for its first byte (hyper's timer starts
//!   only once it knows the HTTP version), and a TLS handshake too.
//! - **Stalled writes.** A client that stops reading a response (a blob it
//!   asked for) has [`ServerOptions::write_timeout`] before the connection
//!   is closed, freeing the buffers and the slot it held.
//! - **Idle connections.** A connection with no request in progress for
//!   [`ServerOptions::idle_timeout`] is closed, HTTP/1 keep-alive and
//!   HTTP/2 alike (an HTTP/2 client that answers pings is idle all the
//!   same). A request is in progress until its response body is sent.
//! - **A connection limit** ([`ServerOptions::max_connections`], below the
//!   process's descriptor limit): past it, a new client gets `503` with the
//!   spec's `UNAVAILABLE` and `Retry-After`, and the connection is closed,
//!   so the shim never runs out of descriptors for storage and Nix.
//! - **TLS** with rustls when a certificate is given.
//! - **Graceful shutdown**: on the shutdown signal, no new connections;
//!   those open finish their requests (for at most 30 s).
//!
//! Each request carries its client's address ([`super::auth::ClientAddr`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the accept loop treats connections.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The longest a client may take to send a request's headers, or to
    /// finish a TLS handshake.
    pub header_timeout: Duration,
    /// The longest a write to a client may stall (the client reads
    /// nothing) before the connection is closed.
    pub write_timeout: Duration,
    /// The longest a connection stays open with no request in progress.
    pub idle_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
    /// TLS, when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Where connections are counted.
    pub metrics: Arc<crate::shim::metrics::Metrics>,
}

/// The connection limit a process can afford: its open-file limit, less a
/// reserve for storage files, Nix's pipes and the listener.
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1024);
    (limit.saturating_sub(128) as usize).clamp(16, 65_536)
}

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file cannot be read or parsed.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the certificate and key.
    #[error("the TLS certificate and key do not go together: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS server config from PEM files: the certificate chain and its key.
pub fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file_error = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |e: rustls::pki_types::pem::Error| TlsError::File { path, detail: e.to_string() }
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).map_err(file_error(cert))?.collect::<Result<_, _>>().map_err(file_error(cert))?;
    if certs.is_empty() {
        return Err(TlsError::File { path: cert.display().to_string(), detail: "no certificate in it".into() });
    }
    if let Some(warning) = validity_warning(&certs[0], std::time::SystemTime::now()) {
        tracing::warn!(certificate = %cert.display(), "{warning}");
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(file_error(key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What is wrong with when a certificate is valid, at `now`: expired, not
/// valid yet, or expiring within two weeks. Clients refuse it in the first
/// two cases: the operator is told at start.
pub fn validity_warning(cert: &[u8], now: std::time::SystemTime) -> Option<String> {
    use x509_cert::der::Decode;
    let cert = match x509_cert::Certificate::from_der(cert) {
        Ok(c) => c,
        Err(e) => return Some(format!("the TLS certificate cannot be read to check its dates: {e}")),
    };
    let validity = &cert.tbs_certificate.validity;
    let (from, until) = (validity.not_before.to_system_time(), validity.not_after.to_system_time());
    let date = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    if now > until {
        Some(format!("the TLS certificate expired on {}: clients will refuse it; renew it (NIXERY_TLS_CERT)", date(until)))
    } else if now < from {
        Some(format!("the TLS certificate is not valid until {}: clients will refuse it until then (is this machine's clock right?)", date(from)))
    } else if until.duration_since(now).unwrap_or_default() < Duration::from_secs(14 * 24 * 3600) {
        Some(format!("the TLS certificate expires on {}: renew it soon (NIXERY_TLS_CERT)", date(until)))
    } else {
        None
    }
}

/// Why the shim closed a connection (for the metrics).
#[derive(Debug, Default)]
struct CloseReason(std::sync::Mutex<Option<&'static str>>);

impl CloseReason {
    fn set(&self, reason: &'static str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(reason);
    }
    fn get(&self) -> Option<&'static str> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection with deadlines: its reads fail if no byte arrives within
/// the first-byte deadline (until a client has sent something, nothing
/// else bounds how long it may hold a connection open), and a write fails
/// once it has stalled (the client reads nothing) for the write timeout.
struct Watched<I> {
    io: I,
    first_byte: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    write_timeout: Duration,
    stall: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    reason: Arc<CloseReason>,
}

impl<I> Watched<I> {
    fn new(io: I, first_byte: Duration, write_timeout: Duration, reason: Arc<CloseReason>) -> Self {
        Watched { io, first_byte: Some(Box::pin(tokio::time::sleep(first_byte))), write_timeout, stall: None, reason }
    }

    /// A write that made no progress: fails once the stall outlasts the
    /// write timeout.
    fn stalled<T>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        let timeout = self.write_timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.reason.set("write_stalled");
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client stopped reading")));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.first_byte = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this.first_byte.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    this.reason.set("first_byte");
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request within the header timeout")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.io).poll_write(cx, buf) {
            std::task::Poll::Pending => self.stalled(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match std::pin::Pin::new(&mut self.io).poll_flush(cx) {
            std::task::Poll::Pending => self.stalled(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            std::task::Poll::Pending => self.stalled(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What a connection is doing: requests in progress (until their
/// response bodies are sent) and since when it has had none.
#[derive(Debug)]
struct Requests {
    in_progress: std::sync::atomic::AtomicUsize,
    idle_since: std::sync::Mutex<tokio::time::Instant>,
}

impl Requests {
    fn new() -> Arc<Requests> {
        Arc::new(Requests { in_progress: Default::default(), idle_since: std::sync::Mutex::new(tokio::time::Instant::now()) })
    }

    /// How long it has been idle, or `None` while a request is in progress.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_progress.load(std::sync::atomic::Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.idle_since.lock().unwrap_or_else(|e| e.into_inner()).elapsed())
    }
}

/// A request in progress; when its response body is dropped (sent, or the
/// connection gone), the connection's idle time starts again.
struct InProgress(Arc<Requests>);

impl InProgress {
    fn begin(requests: &Arc<Requests>) -> InProgress {
        requests.in_progress.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InProgress(requests.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        self.0.in_progress.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A response body that keeps its request in progress while it lives.
struct TrackedBody {
    inner: axum::body::Body,
    _request: InProgress,
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The router as one connection serves it: each request carries the
/// client's address and counts as in progress until its body is sent.
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    peer: std::net::SocketAddr,
    requests: Arc<Requests>,
}

pin_project_lite::pin_project! {
    /// The router's answer, its body made a [`TrackedBody`] (no boxing: the
    /// warm path pays for none).
    struct TrackedResponse {
        #[pin]
        inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
        request: Option<InProgress>,
    }
}

impl Future for TrackedResponse {
    type Output = Result<axum::http::Response<TrackedBody>, std::convert::Infallible>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let request = this.request.take().expect("polled after completion");
        std::task::Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, _request: request })))
    }
}

impl tower::Service<axum::http::Request<hyper::body::Incoming>> for ConnectionService {
    type Response = axum::http::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = TrackedResponse;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        // A Router is always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: axum::http::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(super::auth::ClientAddr(self.peer));
        let in_progress = InProgress::begin(&self.requests);
        let inner = tower::Service::call(&mut self.app, request.map(axum::body::Body::new));
        TrackedResponse { inner, request: Some(in_progress) }
    }
}

/// The body of the answer past the connection limit.
const BUSY_BODY: &str = "{\"errors\":[{\"code\":\"UNAVAILABLE\",\"message\":\"too many connections; try again in a moment\"}]}";

/// The answer past the connection limit, written by hand (the connection is
/// not served by hyper).
fn busy_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\nRetry-After: 1\r\nConnection: close\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Length: {}\r\n\r\n{BUSY_BODY}",
        BUSY_BODY.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, app: Router, options: ServerOptions, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(options.header_timeout);
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle: a response's headers and body would otherwise wait on
        // the client's delayed ACK (about 40 ms a request).
        let _ = tcp.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = options.max_connections, "connection limit reached: answering 503");
            let tls = tls.is_some();
            tokio::spawn(async move {
                let mut tcp = tcp;
                if !tls {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&busy_response())).await;
                }
                let _ = tcp.shutdown().await;
            });
            continue;
        };
        let builder = builder.clone();
        let options = options.clone();
        let tls = tls.clone();
        let mut stopping = stopping.clone();
        let app = app.clone();
        tokio::spawn(async move {
            options.metrics.connections_open.inc();
            let reason = Arc::new(CloseReason::default());
            let requests = Requests::new();
            let service = TowerToHyperService::new(ConnectionService { app, peer, requests: requests.clone() });
            let first_byte = options.header_timeout;
            match tls {
                None => {
                    let io = Watched::new(tcp, first_byte, options.write_timeout, reason.clone());
                    serve_one(&builder, io, service, &requests, &options, &reason, &mut stopping).await;
                }
                Some(acceptor) => match tokio::time::timeout(first_byte, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let io = Watched::new(stream, first_byte, options.write_timeout, reason.clone());
                        serve_one(&builder, io, service, &requests, &options, &reason, &mut stopping).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        reason.set("first_byte");
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
            }
            if let Some(r) = reason.get() {
                options.metrics.closed(r);
            }
            options.metrics.connections_open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing the requests in progress");
    let _ = stop.send(true);
    // Every connection gives its slot back when it ends.
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(Duration::from_secs(30), slots.acquire_many(all)).await.is_err() {
        tracing::warn!("requests still in progress after 30 s; stopping anyway");
    }
    Ok(())
}

/// Serves one connection until it ends: closed by the client, by a
/// deadline of its IO, for idleness (no request in progress for the idle
/// timeout), or by the shutdown (after its requests finish).
async fn serve_one<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    service: TowerToHyperService<ConnectionService>,
    requests: &Requests,
    options: &ServerOptions,
    reason: &CloseReason,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = options.idle_timeout;
    let mut closing = false;
    loop {
        let check = requests.idle_for().map_or(idle, |spent| idle.saturating_sub(spent)).max(Duration::from_millis(100));
        tokio::select! {
            _ = conn.as_mut() => return,
            changed = stopping.changed(), if !closing => {
                if changed.is_err() || *stopping.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            () = tokio::time::sleep(check), if !closing => {
                if requests.idle_for().is_some_and(|spent| spent >= idle) {
                    reason.set("idle");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
