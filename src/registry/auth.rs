//! Access control: who may pull.
//!
//! - `NIXERY_AUTH_HTPASSWD`: an htpasswd file of bcrypt entries
//!   (`htpasswd -B`), for HTTP Basic authentication, which `docker login`,
//!   `podman login` and `skopeo --creds` speak.
//! - `NIXERY_AUTH_TOKENS`: a file of static bearer tokens, one a line
//!   (`Authorization: Bearer …`: `skopeo --registry-token`, CI scripts).
//!
//! With either set, every request needs credentials; without them the
//! answer is `401` with the spec's `UNAUTHORIZED` and a `WWW-Authenticate`
//! challenge (`Basic` when there is an htpasswd file), as the distribution
//! spec describes. Verified credentials are remembered for a few minutes
//! (bcrypt costs tens of milliseconds, and a pull is a dozen requests);
//! tokens are compared by their SHA-256, in constant time.
//!
//! Guessing is bounded: a client (an address) with [`MAX_FAILURES`] failed
//! attempts within [`FAILURE_WINDOW`] is answered `429` with
//! `Retry-After`, without a check; at most [`PASSWORD_CHECKS`] bcrypt
//! checks run at once, on threads of their own, so that a flood of logins
//! never takes the threads that read files for everyone else (past
//! [`MAX_WAITING_CHECKS`] waiting, `429` too); and an unknown user's
//! password is checked against a stand-in hash of the same cost, so that
//! the answer's time does not tell which users exist.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};

use super::errors::ErrorCode;

/// Errors loading the credential files.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the htpasswd file is not `user:bcrypt-hash`.
    #[error("{path}, line {line}: not a bcrypt htpasswd entry (user:$2y$…, as `htpasswd -B` writes)")]
    Htpasswd {
        /// The file.
        path: String,
        /// The line number.
        line: usize,
    },
    /// Neither file holds any credential.
    #[error("the credential files hold no user and no token")]
    Empty,
}

/// Failed attempts a client may make within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window failed attempts are counted in (and the `Retry-After`).
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// bcrypt checks that run at once.
pub const PASSWORD_CHECKS: usize = 4;
/// bcrypt checks that may wait for a turn; more are answered `429`.
pub const MAX_WAITING_CHECKS: usize = 64;

/// The credentials the shim accepts.
pub struct Credentials {
    /// User → bcrypt hash.
    users: HashMap<String, String>,
    /// A hash of the users' cost, checked for unknown users.
    stand_in: String,
    /// SHA-256 of each token.
    tokens: Vec<[u8; 32]>,
    /// Verified `Authorization` values (their SHA-256), for a while.
    verified: moka::sync::Cache<[u8; 32], ()>,
    /// Failed attempts per client address, counted for [`FAILURE_WINDOW`]
    /// from the first.
    failures: moka::sync::Cache<std::net::IpAddr, Arc<std::sync::atomic::AtomicU32>>,
    /// Turns for bcrypt checks.
    checks: Arc<tokio::sync::Semaphore>,
    /// Checks waiting for a turn.
    waiting: std::sync::atomic::AtomicUsize,
}

/// What a request's credentials got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// In.
    Allowed,
    /// No credentials, or wrong ones: 401.
    Refused,
    /// Too many failures from this client, or too many checks at once: 429.
    TooMany,
}

/// Counts a password check (the metrics' `auth_password_checks_total`).
pub type CheckCounter = prometheus_client::metrics::counter::Counter;

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("users", &self.users.len()).field("tokens", &self.tokens.len()).finish()
    }
}

fn read(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.display().to_string(), source })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equality in time independent of where the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Credentials {
    /// Loads an htpasswd file and a tokens file (either may be absent, not
    /// both).
    pub fn load(htpasswd: Option<&Path>, tokens: Option<&Path>) -> Result<Credentials, AuthError> {
        let mut users = HashMap::new();
        if let Some(path) = htpasswd {
            for (i, line) in read(path)?.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match line.split_once(':') {
                    Some((user, hash)) if !user.is_empty() && hash.starts_with("$2") => {
                        users.insert(user.to_string(), hash.to_string());
                    }
                    _ => return Err(AuthError::Htpasswd { path: path.display().to_string(), line: i + 1 }),
                }
            }
        }
        let mut token_hashes = Vec::new();
        if let Some(path) = tokens {
            for line in read(path)?.lines() {
                let t = line.trim();
                if !t.is_empty() && !t.starts_with('#') {
                    token_hashes.push(sha256(t.as_bytes()));
                }
            }
        }
        if users.is_empty() && token_hashes.is_empty() {
            return Err(AuthError::Empty);
        }
        // The stand-in has the cost of the users' hashes ($2y$12$…).
        let cost = users.values().filter_map(|h| h.get(4..6)?.parse::<u32>().ok()).max().unwrap_or(bcrypt::DEFAULT_COST);
        let stand_in = bcrypt::hash("nixery: no such user", cost.clamp(4, 31)).expect("bcrypt of a constant");
        let verified = moka::sync::Cache::builder().max_capacity(10_000).time_to_live(std::time::Duration::from_secs(300)).build();
        let failures = moka::sync::Cache::builder().max_capacity(100_000).time_to_live(FAILURE_WINDOW).build();
        Ok(Credentials {
            users,
            stand_in,
            tokens: token_hashes,
            verified,
            failures,
            checks: Arc::new(tokio::sync::Semaphore::new(PASSWORD_CHECKS)),
            waiting: Default::default(),
        })
    }

    /// Whether an `Authorization` header value grants access (bcrypt runs
    /// here: call it off the async workers).
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        self.check(authorization, &CheckCounter::default())
    }

    /// [`Credentials::allows`], counting bcrypt checks in `checks`.
    fn check(&self, authorization: Option<&str>, checks: &CheckCounter) -> bool {
        let Some(value) = authorization else { return false };
        let key = sha256(value.as_bytes());
        if self.verified.contains_key(&key) {
            return true;
        }
        let ok = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                let h = sha256(token.trim().as_bytes());
                self.tokens.iter().fold(false, |found, t| found | same(t, &h))
            }
            Some((scheme, encoded)) if scheme.eq_ignore_ascii_case("basic") => {
                use base64::Engine;
                let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok().and_then(|d| String::from_utf8(d).ok());
                match decoded.as_deref().and_then(|d| d.split_once(':')) {
                    Some((user, password)) => {
                        checks.inc();
                        // An unknown user costs a check all the same.
                        let (hash, known) = match self.users.get(user) {
                            Some(h) => (h.as_str(), true),
                            None => (self.stand_in.as_str(), false),
                        };
                        bcrypt::verify(password, hash).unwrap_or(false) && known
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if ok {
            self.verified.insert(key, ());
        }
        ok
    }

    /// The verdict on a request's `Authorization` from `client`: failures
    /// counted per client, bcrypt checks bounded (see the module
    /// documentation).
    pub async fn verdict(self: &Arc<Self>, authorization: Option<&str>, client: Option<std::net::IpAddr>, checks: &CheckCounter) -> Verdict {
        use std::sync::atomic::Ordering;
        let Some(value) = authorization else { return Verdict::Refused };
        if self.verified.contains_key(&sha256(value.as_bytes())) {
            return Verdict::Allowed;
        }
        let failed = client.map(|c| self.failures.get_with(c, Default::default));
        if failed.as_ref().is_some_and(|f| f.load(Ordering::Relaxed) >= MAX_FAILURES) {
            return Verdict::TooMany;
        }
        // A turn for the check, or 429 when too many wait for one.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_CHECKS {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Verdict::TooMany;
        }
        let permit = self.checks.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(permit) = permit else { return Verdict::Refused };
        let this = self.clone();
        let value = value.to_string();
        let checks = checks.clone();
        // bcrypt is deliberately slow: off the async workers, holding a turn.
        let ok = tokio::task::spawn_blocking(move || {
            let ok = this.check(Some(&value), &checks);
            drop(permit);
            ok
        })
        .await
        .unwrap_or(false);
        if ok {
            return Verdict::Allowed;
        }
        if let Some(f) = failed {
            f.fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Refused
    }

    /// The challenge of a `401`.
    fn challenge(&self) -> HeaderValue {
        if self.users.is_empty() {
            HeaderValue::from_static("Bearer realm=\"nixery\"")
        } else {
            HeaderValue::from_static("Basic realm=\"nixery\"")
        }
    }
}

/// The client's address, which the server puts on every request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// What the middleware needs: the credentials, and the metrics it counts in.
#[derive(Clone, Debug)]
pub struct Gate {
    /// The credentials.
    pub credentials: Arc<Credentials>,
    /// The shim's metrics.
    pub metrics: Arc<crate::shim::metrics::Metrics>,
}

/// The middleware: lets a request through with credentials, answers `401`
/// without, and `429` to a client that failed too often.
pub async fn require(State(gate): State<Gate>, request: Request, next: Next) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0.ip());
    let verdict = gate.credentials.verdict(authorization, client, &gate.metrics.auth_password_checks).await;
    let mut resp = match verdict {
        Verdict::Allowed => return next.run(request).await,
        Verdict::Refused => {
            gate.metrics.refused("credentials");
            let mut resp = ErrorCode::Unauthorized.plain().into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, gate.credentials.challenge());
            resp
        }
        Verdict::TooMany => {
            gate.metrics.refused("rate");
            ErrorCode::TooManyRequests
                .plain()
                .message("too many failed logins from this address; try again later")
                .retry_after(FAILURE_WINDOW.as_secs())
                .into_response()
        }
    };
    resp.headers_mut().insert("Docker-Distribution-API-Version", HeaderValue::from_static("registry/2.0"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn htpasswd_users_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("# users\nalice:{}\n", bcrypt::hash("secret", 4).unwrap())).unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "ci-token-1\n\n# a comment\n").unwrap();
        let c = Credentials::load(Some(&htpasswd), Some(&tokens)).unwrap();
        assert!(c.allows(Some(&basic("alice", "secret"))));
        assert!(c.allows(Some(&basic("alice", "secret"))), "and again, from the cache");
        assert!(!c.allows(Some(&basic("alice", "wrong"))));
        assert!(!c.allows(Some(&basic("bob", "secret"))));
        assert!(c.allows(Some("Bearer ci-token-1")));
        assert!(!c.allows(Some("Bearer ci-token-2")));
        assert!(!c.allows(Some("Bearer")));
        assert!(!c.allows(Some("Basic !!!")));
        assert!(!c.allows(None));
        assert_eq!(c.challenge(), "Basic realm=\"nixery\"");
        assert_eq!(Credentials::load(None, Some(&tokens)).unwrap().challenge(), "Bearer realm=\"nixery\"");
    }

    #[test]
    fn bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("htpasswd");
        std::fs::write(&f, "alice:{SHA}notbcrypt\n").unwrap();
        assert!(matches!(Credentials::load(Some(&f), None), Err(AuthError::Htpasswd { line: 1, .. })));
        std::fs::write(&f, "# nobody\n").unwrap();
        assert!(matches!(Credentials::load(Some(&f), None), Err(AuthError::Empty)));
        assert!(matches!(Credentials::load(Some(&dir.path().join("missing")), None), Err(AuthError::Read { .. })));
    }
}
