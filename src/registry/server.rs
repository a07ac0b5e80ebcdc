//! Serving the router to the network: the accept loop, with what lets the
//! shim face one.
//!
//! - **Timeouts.** A client has [`ServerOptions::header_timeout`] to send a
//!   request's headers, and an idle keep-alive connection is closed after
//!   the same time (hyper starts the header timer whenever it waits for a
//!   request). A new connection has the same time for its first byte
//!   ([`FirstByteDeadline`]: hyper's timer starts only once it knows the
//!   HTTP version), and a TLS handshake too.
//! - **A connection limit** ([`ServerOptions::max_connections`], below the
//!   process's descriptor limit): past it, a new client gets `503` with the
//!   spec's `UNAVAILABLE` and `Retry-After`, and the connection is closed,
//!   so the shim never runs out of descriptors for storage and Nix.
//! - **TLS** with rustls when a certificate is given.
//! - **Graceful shutdown**: on the shutdown signal, no new connections;
//!   those open finish their requests (for at most 30 s).

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
    /// finish a TLS handshake, and the longest an HTTP/1 connection stays
    /// open with no request.
    pub header_timeout: Duration,
    /// The most connections open at once.
    pub max_connections: usize,
    /// TLS, when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
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
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert).map_err(file_error(cert))?.collect::<Result<_, _>>().map_err(file_error(cert))?;
    if certs.is_empty() {
        return Err(TlsError::File { path: cert.display().to_string(), detail: "no certificate in it".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(file_error(key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A connection that fails its reads if no byte arrives within a deadline:
/// until a client has sent something, nothing else bounds how long it may
/// hold a connection open. After the first byte it is the connection as is.
struct FirstByteDeadline<I> {
    io: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> FirstByteDeadline<I> {
    fn new(io: I, timeout: Duration) -> Self {
        FirstByteDeadline { io, deadline: Some(Box::pin(tokio::time::sleep(timeout))) }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<I> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request within the header timeout")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tls = options.tls.map(tokio_rustls::TlsAcceptor::from);
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
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let timeout = options.header_timeout;
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(FirstByteDeadline::new(tcp, timeout)), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => serve_one(&builder, FirstByteDeadline::new(stream, timeout), service, watcher).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: finishing the requests in progress");
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in progress after 30 s; stopping anyway");
    }
    Ok(())
}

async fn serve_one<I>(builder: &Builder<TokioExecutor>, io: I, service: TowerToHyperService<Router>, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service).into_owned();
    let _ = watcher.watch(conn).await;
}
