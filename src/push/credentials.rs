//! Registry credentials where the ecosystem keeps them: `--creds`, then
//! `REGISTRY_AUTH_FILE`, the containers auth file
//! (`$XDG_RUNTIME_DIR/containers/auth.json`), and Docker's
//! `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`): their `auths`
//! map a registry to a base64 `user:password`.

use std::path::{Path, PathBuf};

use base64::Engine;

/// A user and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user.
    pub user: String,
    /// The password (or identity token).
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).field("password", &"…").finish()
    }
}

impl Login {
    /// Parses `user:password`.
    pub fn parse(creds: &str) -> Option<Login> {
        let (user, password) = creds.split_once(':')?;
        (!user.is_empty()).then(|| Login { user: user.to_string(), password: password.to_string() })
    }

    /// The `Authorization` value for HTTP basic authentication.
    pub fn basic(&self) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", self.user, self.password)))
    }
}

/// The auth files to look in, in order.
fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(f));
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        files.push(Path::new(&run).join("containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => files.push(Path::new(&d).join("config.json")),
        None => {
            if let Some(home) = std::env::var_os("HOME") {
                files.push(Path::new(&home).join(".docker/config.json"));
            }
        }
    }
    files
}

/// The login for `registry` (`host[:port]`) in the auth files, if any.
pub fn find(registry: &str) -> Option<Login> {
    auth_files().iter().find_map(|f| in_file(f, registry))
}

/// The login for `registry` in one auth file.
pub fn in_file(file: &Path, registry: &str) -> Option<Login> {
    let text = std::fs::read_to_string(file).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = doc.get("auths")?.as_object()?;
    let key_host = |k: &str| -> String {
        let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_string()
    };
    let entry = auths.iter().find(|(k, _)| key_host(k) == registry)?.1;
    let encoded = entry.get("auth")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
    Login::parse(&String::from_utf8(decoded).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_and_containers_auth_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:pa:ss");
        std::fs::write(
            &f,
            format!(r#"{{"auths":{{"https://registry.example/v1/":{{"auth":"x"}},"127.0.0.1:5000":{{"auth":"{auth}"}},"ghcr.io":{{"auth":"{auth}"}}}}}}"#),
        )
        .unwrap();
        assert_eq!(in_file(&f, "127.0.0.1:5000"), Some(Login { user: "ci".into(), password: "pa:ss".into() }));
        assert_eq!(in_file(&f, "ghcr.io").unwrap().user, "ci");
        assert_eq!(in_file(&f, "registry.example"), None, "an entry that does not decode is none");
        assert_eq!(in_file(&f, "quay.io"), None);
        assert_eq!(Login::parse("u:p").unwrap().basic(), "Basic dTpw");
        assert_eq!(Login::parse("nocolon"), None);
    }
}
