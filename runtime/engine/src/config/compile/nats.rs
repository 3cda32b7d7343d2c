//! The NATS parts of a pipeline file: `[nats]` (the connection, secrets
//! read from the environment), subjects and stream, consumer and queue
//! group names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Compiler;
use crate::config::raw::RawNats;
use crate::config::span::TomlPath;
use crate::config::{NatsConnection, defaults};

impl Compiler<'_> {
    /// A NATS subject: dot-separated tokens; `*` and a final `>` only where
    /// `wildcards` are allowed.
    pub(super) fn subject(&mut self, path: &TomlPath, subject: &str, wildcards: bool) {
        let tokens: Vec<&str> = subject.split('.').collect();
        let bad = if subject.is_empty() {
            Some("must not be empty")
        } else if subject.chars().any(char::is_whitespace) {
            Some("must not contain whitespace")
        } else if tokens.iter().any(|t| t.is_empty()) {
            Some("has an empty token (a leading, trailing or double `.`)")
        } else if tokens.iter().any(|t| t.contains(['*', '>']) && t.len() > 1) {
            Some("has `*` or `>` inside a token")
        } else if !wildcards && tokens.iter().any(|t| *t == "*" || *t == ">") {
            Some("must be a literal subject to publish to (no `*` or `>`)")
        } else if tokens[..tokens.len() - 1].contains(&">") {
            Some("may use `>` only as its last token")
        } else {
            None
        };
        if let Some(why) = bad {
            self.error(path, format!("subject {subject:?} {why}"));
        }
    }
    /// A stream, consumer or queue group name: no `.`, wildcards, whitespace or path separators.
    pub(super) fn nats_name(&mut self, path: &TomlPath, what: &str, name: &str) {
        if name.is_empty() || name.len() > 255 || name.contains(['.', '*', '>', '/', '\\']) || name.chars().any(char::is_whitespace) {
            self.error(path, format!("{what} {name:?} must be 1 to 255 characters without `.`, `*`, `>`, `/`, `\\` or whitespace"));
        }
    }
    /// `[nats]`: secrets are read from the environment now, so a missing one
    /// is reported with the rest of the file's errors.
    pub(super) fn nats(&mut self, path: &TomlPath, raw: &RawNats, base: &Path) -> NatsConnection {
        let mut conn = NatsConnection::to(defaults::NATS_URL);
        match (&raw.url, &raw.urls) {
            (Some(_), Some(_)) => self.error(&path.key("urls"), "set `url` or `urls`, not both"),
            (Some(u), None) => conn.urls = vec![u.clone()],
            (None, Some(us)) if us.is_empty() => self.error(&path.key("urls"), "needs at least one URL"),
            (None, Some(us)) => conn.urls = us.clone(),
            (None, None) => {}
        }
        for (i, u) in conn.urls.iter().enumerate() {
            let at = if raw.urls.is_some() { path.key("urls").index(i) } else { path.key("url") };
            if u.parse::<async_nats::ServerAddr>().is_err() {
                self.error(&at, format!("{u:?} is not a NATS server URL (like \"nats://127.0.0.1:4222\")"));
            }
        }
        let file = |c: &mut Self, key: &str, v: &Option<String>| -> Option<PathBuf> {
            let p = base.join(v.as_ref()?);
            if !p.is_file() {
                c.error(&path.key(key), format!("file {} does not exist", p.display()));
            }
            Some(p)
        };
        conn.name = raw.name.clone();
        conn.creds_file = file(self, "creds_file", &raw.creds_file);
        conn.nkey_seed_file = file(self, "nkey_seed_file", &raw.nkey_seed_file);
        conn.tls_ca_file = file(self, "tls_ca_file", &raw.tls_ca_file);
        let cert = file(self, "tls_cert_file", &raw.tls_cert_file);
        let key = file(self, "tls_key_file", &raw.tls_key_file);
        conn.tls_client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                self.error(&path.key("tls_cert_file"), "needs `tls_key_file` too");
                None
            }
            (None, Some(_)) => {
                self.error(&path.key("tls_key_file"), "needs `tls_cert_file` too");
                None
            }
        };
        conn.tls_required = raw.tls_required;
        let env = |c: &mut Self, key: &str, var: &Option<String>| -> Option<String> {
            let var = var.as_ref()?;
            let value = std::env::var(var).ok();
            if value.is_none() {
                c.error(&path.key(key), format!("environment variable {var} is not set"));
            }
            value
        };
        conn.token = env(self, "token_env", &raw.token_env);
        let password = env(self, "password_env", &raw.password_env);
        conn.user_password = match (&raw.user, password) {
            (Some(u), Some(p)) => Some((u.clone(), p)),
            (None, None) => None,
            (Some(_), None) if raw.password_env.is_none() => {
                self.error(&path.key("user"), "needs `password_env` too");
                None
            }
            (None, Some(_)) => {
                self.error(&path.key("password_env"), "needs `user` too");
                None
            }
            (Some(_), None) => None,
        };
        let auth = [conn.creds_file.is_some(), conn.nkey_seed_file.is_some(), conn.token.is_some(), conn.user_password.is_some()];
        if auth.iter().filter(|&&a| a).count() > 1 {
            self.error(path, "set one of creds_file, nkey_seed_file, token_env, user/password_env");
        }
        let ms = self.int(&path.key("connect_timeout_ms"), raw.connect_timeout_ms, defaults::NATS_CONNECT_TIMEOUT_MS, 1, 600_000, " ms");
        conn.connect_timeout = Duration::from_millis(ms as u64);
        conn
    }
}
