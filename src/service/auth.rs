//! Who is calling, and whether they may: the estate's `[[tokens]]` (a name, a role, the SHA-256
//! of the secret), bearer tokens, the page's session cookie, the role each request needs, and
//! the same-origin rule for state changes a cookie carries.
//!
//! Secrets are never kept: a presented secret is hashed and compared with every known hash in
//! constant time; a session cookie's value is random and only its hash is kept.

use crate::exec::estate::{Role, Token};
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The page's session cookie.
pub const COOKIE: &str = "rollback_session";
/// How long a page session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// How many page sessions are kept at once (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// Someone the node knows: the name their requests are sent as, and their role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: the sender of its requests.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Whether the page's cookie (not a bearer token) authenticated it.
    pub by_cookie: bool,
}

/// A known token: its name, role and secret's hash.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The tokens and the page's sessions.
#[derive(Debug)]
pub struct Auth {
    known: Vec<Known>,
    sessions: Mutex<HashMap<[u8; 32], (usize, Instant)>>,
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Auth {
    /// From the estate's tokens (their hashes were checked when the estate was read).
    pub fn new(tokens: &[Token]) -> Self {
        let known = tokens
            .iter()
            .filter_map(|t| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&t.sha256, &mut hash).ok()?;
                Some(Known {
                    name: t.name.clone(),
                    role: t.role,
                    hash,
                })
            })
            .collect();
        Auth {
            known,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The token whose secret this is: every known hash is compared, in constant time.
    fn find(&self, secret: &str) -> Option<usize> {
        let hash = sha256(secret.as_bytes());
        let mut found = None;
        for (index, known) in self.known.iter().enumerate() {
            if bool::from(known.hash.ct_eq(&hash)) {
                found = Some(index);
            }
        }
        found
    }

    fn caller(&self, index: usize, by_cookie: bool) -> Caller {
        let known = &self.known[index];
        Caller {
            name: known.name.clone(),
            role: known.role,
            by_cookie,
        }
    }

    /// Who sent a request with these headers: a bearer token first, else the session cookie.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Caller> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let secret = value.to_str().ok()?.strip_prefix("Bearer ")?.trim();
            return self.find(secret).map(|i| self.caller(i, false));
        }
        let cookie = cookie(headers)?;
        let key = sha256(cookie.as_bytes());
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let (index, since) = *sessions.get(&key)?;
        if since.elapsed() > SESSION_LIFETIME {
            sessions.remove(&key);
            return None;
        }
        Some(self.caller(index, true))
    }

    /// Logs in with a secret: the new session's cookie value, or `None` for an unknown secret.
    pub fn log_in(&self, secret: &str) -> Option<(String, Caller)> {
        let index = self.find(secret)?;
        let value = random_secret().ok()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, (_, since)| since.elapsed() <= SESSION_LIFETIME);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (_, s))| *s)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(sha256(value.as_bytes()), (index, Instant::now()));
        Some((value, self.caller(index, true)))
    }

    /// Ends the session these headers carry, if any.
    pub fn log_out(&self, headers: &HeaderMap) {
        if let Some(cookie) = cookie(headers) {
            let key = sha256(cookie.as_bytes());
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

/// The session cookie's value in these headers.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE).then(|| value.to_owned())
        })
}

/// Whether a request carried by the cookie comes from the page itself: its `Origin` is
/// `http://` + the `Host` it was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin.strip_prefix("http://") == Some(host),
        _ => false,
    }
}

/// 32 bytes from the operating system's random source, as 64 hex digits.
///
/// # Errors
/// The random source cannot be read.
pub fn random_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// The role a request body needs: a query (and a type the node does not know, which is
/// answered 10 for anyone) a viewer; a flag or traffic change, or any dry run, an operator; a
/// schema change, a restore, a forced version, `init` and an approval an admin.
pub fn role_needed(kind: Option<&str>, dry_run: bool) -> Role {
    match kind {
        Some("disable_feature" | "enable_feature" | "switch_traffic") => Role::Operator,
        Some("init") => Role::Admin,
        Some("rollback" | "migrate" | "restore" | "force_version" | "approve_rung") => {
            if dry_run {
                Role::Operator
            } else {
                Role::Admin
            }
        }
        _ => Role::Viewer,
    }
}

/// The message types only a viewer's role is needed for: the queries.
pub const QUERIES: [&str; 3] = ["status", "history", "backups"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::transitions::Request;

    #[test]
    fn every_message_type_has_a_role_on_purpose() {
        for kind in Request::TYPES {
            let needed = role_needed(Some(kind), false);
            assert_eq!(
                needed == Role::Viewer,
                QUERIES.contains(kind),
                "{kind} needs {needed}: give it a role in role_needed"
            );
        }
        assert_eq!(role_needed(Some("no_such_type"), false), Role::Viewer);
        assert_eq!(role_needed(Some("rollback"), true), Role::Operator);
        assert_eq!(role_needed(Some("init"), true), Role::Admin);
    }

    #[test]
    fn a_secret_is_found_by_its_hash_only() {
        let token = Token {
            name: "alice".into(),
            role: Role::Operator,
            sha256: hex::encode(sha256(b"s3cret")),
        };
        let auth = Auth::new(&[token]);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(
            auth.identify(&headers).map(|c| c.name),
            Some("alice".into())
        );
        headers.insert(header::AUTHORIZATION, "Bearer s3cre".parse().unwrap());
        assert_eq!(auth.identify(&headers), None);
        let (cookie_value, caller) = auth.log_in("s3cret").unwrap();
        assert!(caller.by_cookie);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={cookie_value}").parse().unwrap(),
        );
        assert_eq!(
            auth.identify(&headers).map(|c| c.role),
            Some(Role::Operator)
        );
        auth.log_out(&headers);
        assert_eq!(auth.identify(&headers), None);
        assert!(auth.log_in("wrong").is_none());
    }

    #[test]
    fn same_origin_is_http_and_the_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
    }
}
