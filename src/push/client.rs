//! A registry client for pushing, as the distribution spec describes it:
//! the `/v2/` probe and its `WWW-Authenticate` challenge (basic, or a
//! bearer token from the challenge's realm), blob existence by `HEAD`,
//! cross-repository mounts, monolithic uploads (`POST` then `PUT
//! ?digest=`), and the manifest.

use std::io::Read;
use std::time::Duration;

use super::credentials::Login;
use super::PushError;
use crate::digest::Digest;

/// Where to push: `REGISTRY/REPOSITORY:TAG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `host[:port]`.
    pub registry: String,
    /// The repository, `a/b`.
    pub repository: String,
    /// The tag.
    pub tag: String,
}

impl std::str::FromStr for Destination {
    type Err = PushError;
    fn from_str(s: &str) -> Result<Destination, PushError> {
        let bad = || PushError::Destination(s.to_string());
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let (registry, rest) = s.split_once('/').ok_or_else(bad)?;
        if registry.is_empty() || !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
            return Err(bad());
        }
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[last_slash..].find(':') {
            Some(i) => (&rest[..last_slash + i], &rest[last_slash + i + 1..]),
            None => (rest, "latest"),
        };
        if !crate::image_name::valid_repository_name(repository) || !crate::image_name::valid_tag(tag) {
            return Err(bad());
        }
        Ok(Destination { registry: registry.to_string(), repository: repository.to_string(), tag: tag.to_string() })
    }
}

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Plain HTTP to any host (loopback hosts always get plain HTTP, as
    /// docker does).
    pub plain_http: bool,
    /// A PEM file of CA certificates to trust instead of the bundled roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// The login, if any.
    pub login: Option<Login>,
    /// How long a request may stall (nothing sent or received), and wait
    /// for a response; `None`: [`STALL_TIMEOUT`].
    pub stall_timeout: Option<Duration>,
}

/// Whether `registry` (`host[:port]`) is a loopback address.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => registry.rsplit_once(':').map_or(registry, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client for one repository of one registry, authenticated.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    repository: String,
    authorization: Option<String>,
    /// What the token asks to do in the repository: `pull,push`, or
    /// `pull` for a client that only reads ([`Client::connect_to_read`]).
    actions: &'static str,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("repository", &self.repository).finish()
    }
}

/// A response's status and headers, read without its body.
struct Reply {
    status: u16,
    location: Option<String>,
    challenge: Option<String>,
    digest: Option<String>,
    subject: Option<String>,
    body: String,
}

fn reply(resp: ureq::http::Response<ureq::Body>) -> Reply {
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (status, location, challenge, digest) = (resp.status().as_u16(), header("location"), header("www-authenticate"), header("docker-content-digest"));
    let subject = header("oci-subject");
    let mut body = Vec::new();
    let _ = resp.into_body().into_reader().take(64 * 1024).read_to_end(&mut body);
    Reply { status, location, challenge, digest, subject, body: String::from_utf8_lossy(&body).into_owned() }
}

/// What a registry said, made safe to print on a terminal: control
/// characters (escape sequences that could clear the screen or fake a
/// line, carriage returns, newlines) shown as `\u{…}` or a space, and cut
/// to a few hundred characters.
pub fn printable(text: &str) -> String {
    const MAX: usize = 512;
    let mut out = String::new();
    for c in text.trim().chars() {
        match c {
            '\n' | '\t' => out.push(' '),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
        if out.len() >= MAX {
            out.push('…');
            break;
        }
    }
    out
}

/// `scheme://host[:port]` of a URL, lower-cased, the port made explicit.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?.rsplit('@').next()?.to_ascii_lowercase();
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.split_once(']').is_some_and(|(_, after)| after.starts_with(':')),
        None => authority.contains(':'),
    };
    let default = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    Some(if has_port { format!("{scheme}://{authority}") } else { format!("{scheme}://{authority}:{default}") })
}

/// How long a request may take, phase by phase: connecting, a stalled read
/// or write, the response's headers and (small) body, each at most this
/// (`--timeout`), the response twice it. A registry that never answers,
/// or drips, fails the push instead of hanging it.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long sending a body of `size` bytes may take: two minutes, and a
/// second for every 64 KiB.
fn send_body_timeout(size: u64) -> Duration {
    Duration::from_secs(120 + size / (64 * 1024))
}

/// How many times a request is tried when the registry is unreachable or
/// answers 429 or a 5xx, and the first pause between tries (doubled each
/// time, or the registry's Retry-After, at most [`MAX_PAUSE`]).
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Whether a push error is worth another try: the connection failed or
/// timed out, or the registry was busy or failing.
pub fn is_transient(e: &PushError) -> bool {
    match e {
        PushError::Http { .. } => true,
        PushError::Registry { status, .. } => *status == 429 || (500..600).contains(status) && *status != 501,
        _ => false,
    }
}

/// Runs `attempt` up to [`ATTEMPTS`] times while it fails transiently,
/// pausing between tries.
pub fn with_retries<T>(what: &str, mut attempt: impl FnMut() -> Result<T, PushError>) -> Result<T, PushError> {
    let mut pause = FIRST_PAUSE;
    for n in 1.. {
        match attempt() {
            Err(e) if n < ATTEMPTS && is_transient(&e) => {
                eprintln!("nixery: {what}: {e}; trying again in {} s", pause.as_secs());
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
            }
            result => return result,
        }
    }
    unreachable!("the loop returns")
}

/// The parameters of a `WWW-Authenticate` challenge: its scheme and
/// `key="value"` pairs.
pub fn parse_challenge(value: &str) -> (String, Vec<(String, String)>) {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        params.push((key, value.to_string()));
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_ascii_lowercase(), params)
}

impl Client {
    /// Connects to `dest`'s registry and authenticates for pushing to its
    /// repository (and pulling from `mount_from`, to mount blobs).
    pub fn connect(dest: &Destination, connection: &Connection, mount_from: Option<&str>) -> Result<Client, PushError> {
        Client::connect_for(dest, connection, mount_from, "pull,push")
    }

    /// Connects to `dest`'s registry and authenticates for reading its
    /// repository (`nixery verify`): read-only credentials do.
    pub fn connect_to_read(dest: &Destination, connection: &Connection) -> Result<Client, PushError> {
        Client::connect_for(dest, connection, None, "pull")
    }

    fn connect_for(dest: &Destination, connection: &Connection, mount_from: Option<&str>, actions: &'static str) -> Result<Client, PushError> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &connection.ca_file {
            let pem = std::fs::read(ca).map_err(|source| PushError::Io { path: ca.display().to_string(), source })?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(PushError::Tls(format!("{}: no certificate in it", ca.display())));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let stall = connection.stall_timeout.unwrap_or(STALL_TIMEOUT);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls.build())
            .timeout_connect(Some(stall))
            .timeout_per_read(Some(stall))
            .timeout_per_write(Some(stall))
            .timeout_send_request(Some(stall))
            .timeout_recv_response(Some(stall * 2))
            .timeout_recv_body(Some(stall * 2))
            .timeout_send_body(Some(send_body_timeout(64 * 1024 * 1024)))
            .build()
            .into();
        let scheme = if connection.plain_http || is_loopback(&dest.registry) { "http" } else { "https" };
        let mut client = Client { agent, base: format!("{scheme}://{}", dest.registry), repository: dest.repository.clone(), authorization: None, actions };
        let probe = with_retries(&format!("GET {}/v2/", client.base), || {
            client.call(client.agent.get(format!("{}/v2/", client.base))).and_then(|r| client.fail_transient(r))
        })?;
        match probe.status {
            200 => {}
            401 => {
                let challenge = probe.challenge.ok_or_else(|| PushError::Registry {
                    what: "GET /v2/".into(),
                    status: 401,
                    body: "401 without a WWW-Authenticate challenge".into(),
                })?;
                client.authorization = Some(client.authenticate(&challenge, connection.login.as_ref(), mount_from)?);
                let again = client.call(client.request("GET", &format!("{}/v2/", client.base)))?;
                if again.status != 200 {
                    return Err(PushError::Unauthorized {
                        registry: dest.registry.clone(),
                        detail: format!("the registry refused the credentials ({})", again.status),
                    });
                }
            }
            status => return Err(PushError::Registry { what: "GET /v2/".into(), status, body: printable(&probe.body) }),
        }
        Ok(client)
    }

    /// The `Authorization` value a challenge asks for.
    fn authenticate(&self, challenge: &str, login: Option<&Login>, mount_from: Option<&str>) -> Result<String, PushError> {
        let registry = self.base.split("://").nth(1).unwrap_or(&self.base).to_string();
        let no_login = || {
            PushError::Unauthorized {
            registry: registry.clone(),
            detail: "the registry wants credentials: give --creds USER:PASSWORD, or log in (podman login, docker login) so REGISTRY_AUTH_FILE or ~/.docker/config.json has them".into(),
        }
        };
        let (scheme, params) = parse_challenge(challenge);
        match scheme.as_str() {
            "basic" => Ok(login.ok_or_else(no_login)?.basic()),
            "bearer" => {
                let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
                let realm = param("realm").ok_or_else(|| PushError::Unauthorized {
                    registry: registry.clone(),
                    detail: format!("a bearer challenge without a realm: {}", printable(challenge)),
                })?;
                // Credentials go to the realm only as securely as to the
                // registry: never from https down to plain http.
                if self.base.starts_with("https://") && !realm.starts_with("https://") {
                    return Err(PushError::Unauthorized {
                        registry: registry.clone(),
                        detail: format!("the registry asks for a token from {}, which is not https: the credentials would cross the network in the clear, so they are not sent", printable(&realm)),
                    });
                }
                let mut scopes = vec![format!("repository:{}:{}", self.repository, self.actions)];
                if let Some(from) = mount_from {
                    scopes.push(format!("repository:{from}:pull"));
                }
                let mut req = self.agent.get(&realm);
                if let Some(service) = param("service") {
                    req = req.query("service", service);
                }
                for s in &scopes {
                    req = req.query("scope", s);
                }
                if let Some(l) = login {
                    req = req.header("Authorization", l.basic());
                }
                let resp = self.call(req)?;
                if resp.status != 200 {
                    return Err(match login {
                        None => no_login(),
                        Some(_) => PushError::Unauthorized {
                            registry,
                            detail: format!("the token endpoint refused the credentials ({}): {}", resp.status, printable(&resp.body)),
                        },
                    });
                }
                let doc: serde_json::Value = serde_json::from_str(&resp.body)
                    .map_err(|e| PushError::Unauthorized { registry: registry.clone(), detail: format!("the token endpoint's answer is not JSON: {e}") })?;
                let token = doc
                    .get("token")
                    .or_else(|| doc.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| PushError::Unauthorized { registry, detail: "the token endpoint gave no token".into() })?;
                Ok(format!("Bearer {token}"))
            }
            other => Err(PushError::Unauthorized { registry, detail: format!("unsupported authentication scheme {other:?}") }),
        }
    }

    /// `req` to `url` with the credentials the challenge gave, if any, and
    /// only when `url` is the registry's own (scheme, host and port): an
    /// upload location elsewhere gets none, as with go-containerregistry.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>, url: &str) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) if origin(url).is_some() && origin(url) == origin(&self.base) => req.header("Authorization", a),
            _ => req,
        }
    }

    /// A HEAD or GET request.
    fn request(&self, method: &str, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.authorized(if method == "HEAD" { self.agent.head(url) } else { self.agent.get(url) }, url)
    }

    /// A PUT or POST request.
    fn with_body(&self, method: &str, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        self.authorized(if method == "PUT" { self.agent.put(url) } else { self.agent.post(url) }, url)
    }

    fn call(&self, req: ureq::RequestBuilder<ureq::typestate::WithoutBody>) -> Result<Reply, PushError> {
        req.call().map(reply).map_err(|e| self.http_error(e))
    }

    fn http_error(&self, e: ureq::Error) -> PushError {
        PushError::Http { base: self.base.clone(), detail: printable(&e.to_string()) }
    }

    /// A reply that asks to be tried again later (429, a 5xx) as an error
    /// [`with_retries`] retries; any other as it is.
    fn fail_transient(&self, r: Reply) -> Result<Reply, PushError> {
        if r.status == 429 || (500..600).contains(&r.status) && r.status != 501 {
            return Err(PushError::Registry { what: format!("{} answered", self.base), status: r.status, body: printable(&r.body) });
        }
        Ok(r)
    }

    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    fn expect(&self, what: String, reply: Reply, ok: &[u16]) -> Result<Reply, PushError> {
        if ok.contains(&reply.status) {
            return Ok(reply);
        }
        if reply.status == 401 || reply.status == 403 {
            let registry = self.base.split("://").nth(1).unwrap_or(&self.base).to_string();
            return Err(PushError::Unauthorized { registry, detail: format!("{what}: {} {}", reply.status, printable(&reply.body)) });
        }
        Err(PushError::Registry { what, status: reply.status, body: printable(&reply.body) })
    }

    /// Whether the repository has the blob.
    pub fn has_blob(&self, digest: &Digest) -> Result<bool, PushError> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base, self.repository);
        let r = with_retries(&format!("HEAD {url}"), || self.call(self.request("HEAD", &url)).and_then(|r| self.fail_transient(r)))?;
        match r.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => self.expect(format!("HEAD {url}"), r, &[200, 404]).map(|_| false),
        }
    }

    /// Uploads a small blob held in memory unless the repository has it.
    pub fn ensure_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<(), PushError> {
        if !self.has_blob(digest)? {
            self.upload(digest, bytes.len() as u64, &mut &bytes[..])?;
        }
        Ok(())
    }

    /// Asks the registry to mount the blob from repository `from`; false
    /// when it would rather have it uploaded.
    pub fn mount(&self, digest: &Digest, from: &str) -> Result<bool, PushError> {
        let url = format!("{}/v2/{}/blobs/uploads/?mount={digest}&from={from}", self.base, self.repository);
        let r = with_retries(&format!("POST {url}"), || {
            let req = self.with_body("POST", &url).header("Content-Length", "0");
            req.send_empty().map(reply).map_err(|e| self.http_error(e)).and_then(|r| self.fail_transient(r))
        })?;
        Ok(self.expect(format!("POST {url}"), r, &[201, 202])?.status == 201)
    }

    /// Uploads a blob of `size` bytes read from `body`, in one request (a
    /// caller retries with a fresh body: [`with_retries`]).
    pub fn upload(&self, digest: &Digest, size: u64, body: &mut dyn Read) -> Result<(), PushError> {
        let start = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        let r = self.with_body("POST", &start).header("Content-Length", "0").send_empty().map(reply).map_err(|e| self.http_error(e))?;
        let r = self.fail_transient(r)?;
        let r = self.expect(format!("POST {start}"), r, &[202])?;
        let location =
            r.location.ok_or_else(|| PushError::Registry { what: format!("POST {start}"), status: 202, body: "no Location for the upload".into() })?;
        let mut url = self.absolute(&location);
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={digest}"));
        let mut req = self.with_body("PUT", &url).header("Content-Type", "application/octet-stream").header("Content-Length", size.to_string());
        req = req.config().timeout_send_body(Some(send_body_timeout(size))).build();
        let r = req.send(ureq::SendBody::from_reader(body)).map(reply).map_err(|e| self.http_error(e))?;
        let r = self.fail_transient(r)?;
        self.expect(format!("PUT blob {digest}"), r, &[201]).map(|_| ())
    }

    /// Puts the manifest under `reference`; returns the digest the
    /// registry reports (or the manifest's own).
    pub fn put_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<Digest, PushError> {
        self.put_manifest_acked(reference, media_type, bytes).map(|(d, _)| d)
    }

    /// The manifest under `reference` (its bytes), or None when the
    /// registry has none there.
    pub fn get_manifest(&self, reference: &str, accept: &str) -> Result<Option<Vec<u8>>, PushError> {
        self.get_document(&format!("manifests/{reference}"), accept)
    }

    /// The document at `/v2/<repository>/<what>` (a manifest, a blob) as
    /// raw bytes, at most [`crate::image::layout::MAX_DOCUMENT`] of them;
    /// None on 404. The caller checks them against their digest.
    pub fn get_document(&self, what: &str, accept: &str) -> Result<Option<Vec<u8>>, PushError> {
        let url = format!("{}/v2/{}/{what}", self.base, self.repository);
        let max = crate::image::layout::MAX_DOCUMENT;
        with_retries(&format!("GET {url}"), || {
            // Blobs are often served from elsewhere (a 307 to object
            // storage): followed a few times, the credentials kept to the
            // registry's own origin.
            let mut at = url.clone();
            let mut resp = self.request("GET", &at).header("Accept", accept).call().map_err(|e| self.http_error(e))?;
            for _ in 0..3 {
                let Some(next) = resp.headers().get("location").and_then(|v| v.to_str().ok()).filter(|_| resp.status().is_redirection()) else { break };
                at = self.absolute(next);
                resp = self.request("GET", &at).header("Accept", accept).call().map_err(|e| self.http_error(e))?;
            }
            if resp.status() != 200 {
                return self.fail_transient(reply(resp)).and_then(|r| match r.status {
                    404 => Ok(None),
                    _ => self.expect(format!("GET {url}"), r, &[200]).map(|_| None),
                });
            }
            let mut bytes = Vec::new();
            resp.into_body()
                .into_reader()
                .take(max + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| PushError::Http { base: self.base.clone(), detail: printable(&e.to_string()) })?;
            if bytes.len() as u64 > max {
                return Err(PushError::Registry { what: format!("GET {url}"), status: 200, body: format!("more than {max} bytes: not a document") });
            }
            Ok(Some(bytes))
        })
    }

    /// Puts a manifest as [`Client::put_manifest`] does; also says whether
    /// the registry acknowledged its `subject` (`OCI-Subject`: it keeps
    /// the referrers API).
    pub fn put_manifest_acked(&self, reference: &str, media_type: &str, bytes: &[u8]) -> Result<(Digest, bool), PushError> {
        let url = format!("{}/v2/{}/manifests/{reference}", self.base, self.repository);
        let r = with_retries(&format!("PUT {url}"), || {
            self.with_body("PUT", &url)
                .header("Content-Type", media_type)
                .send(bytes)
                .map(reply)
                .map_err(|e| self.http_error(e))
                .and_then(|r| self.fail_transient(r))
        })?;
        let r = self.expect(format!("PUT {url}"), r, &[201])?;
        let own = Digest::of(bytes);
        let acked = r.subject.is_some();
        match r.digest.and_then(|d| d.parse::<Digest>().ok()) {
            Some(d) if d != own => Err(PushError::Registry {
                what: format!("PUT {url}"),
                status: 201,
                body: format!("the registry reports the digest {d}, the manifest's is {own}"),
            }),
            _ => Ok((own, acked)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let d: Destination = "127.0.0.1:5000/acme/app:v1".parse().unwrap();
        assert_eq!((d.registry.as_str(), d.repository.as_str(), d.tag.as_str()), ("127.0.0.1:5000", "acme/app", "v1"));
        let d: Destination = "ghcr.io/acme/app".parse().unwrap();
        assert_eq!(d.tag, "latest");
        assert_eq!("docker://localhost/x:y".parse::<Destination>().unwrap().registry, "localhost");
        for bad in ["app:v1", "acme/app", "ghcr.io/Acme/app", "ghcr.io/app:-x", "ghcr.io/"] {
            assert!(bad.parse::<Destination>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_and_challenges() {
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost") && is_loopback("[::1]:5000"));
        assert!(!is_loopback("ghcr.io") && !is_loopback("10.0.0.1:5000"));
        let (scheme, params) = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#);
        assert_eq!(scheme, "bearer");
        assert_eq!(params[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(params[2], ("scope".into(), "repository:a/b:pull,push".into()));
        assert_eq!(parse_challenge("Basic realm=\"Registry Realm\"").0, "basic");
    }
}
