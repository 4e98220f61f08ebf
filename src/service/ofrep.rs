//! OpenFeature Remote Evaluation Protocol (OFREP) over the node's own flag state, on the
//! service's HTTP stack: under `/ofrep/v1/` on `--listen`, and alone with `--ofrep ADDR`.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}`: one flag, `{"key", "value", "reason", "variant",
//!   "metadata"}`; an unknown key is `404` with `errorCode` `FLAG_NOT_FOUND`;
//! - `POST /ofrep/v1/evaluate/flags`: every flag, `{"flags": [...]}` with an `ETag`; a request whose
//!   `If-None-Match` matches gets `304 Not Modified`;
//! - `GET /ofrep/v1/configuration`: the server's name and capabilities.
//!
//! Flags are booleans without targeting, so the evaluation context is accepted and ignored and the
//! reason is always `STATIC`, with variant `on` or `off`. A killed flag is *not* reported as
//! `DISABLED`: OpenFeature providers may answer the code default for a disabled flag, and the kill
//! switch must serve `false` whatever default an application coded. No token is asked for: an
//! application reads its flags as it would from a flag service.

use crate::runtime::flags::FlagsView;
use crate::service::listener::{self, Listener};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::io;
use std::net::SocketAddr;

/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// The OFREP routes (`/ofrep/v1/...`), over `flags`.
pub fn routes(flags: FlagsView) -> Router {
    Router::new()
        .route(
            "/ofrep/v1/evaluate/flags",
            post(bulk).fallback(not_allowed("POST")),
        )
        .route(
            "/ofrep/v1/evaluate/flags/",
            post(bulk).fallback(not_allowed("POST")),
        )
        .route(
            "/ofrep/v1/evaluate/flags/{*key}",
            post(single).fallback(not_allowed("POST")),
        )
        .route(
            "/ofrep/v1/configuration",
            get(configuration).fallback(not_allowed("GET")),
        )
        .route("/ofrep/{*rest}", axum::routing::any(not_found))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(flags)
}

/// A 405 naming the method to use.
fn not_allowed(
    allow: &'static str,
) -> impl Fn(Method, Uri) -> std::future::Ready<Response> + Clone {
    move |method: Method, uri: Uri| {
        let body = json!({
            "errorDetails": format!("{method} is not allowed on {}; use {allow}", uri.path())
        });
        std::future::ready(
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, allow)],
                Json(body),
            )
                .into_response(),
        )
    }
}

/// A 404 for a path OFREP does not have.
pub async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "errorDetails": format!("no such endpoint {}; OFREP is served under /ofrep/v1/", uri.path())
        })),
    )
        .into_response()
}

async fn single(State(flags): State<FlagsView>, Path(key): Path<String>, body: Bytes) -> Response {
    if let Err(problem) = check_body(&body) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "key": key, "errorCode": "PARSE_ERROR", "errorDetails": problem })),
        )
            .into_response();
    }
    let (flags, _) = flags.snapshot();
    match flags.get(&key) {
        Some(value) => Json(evaluation(&key, *value)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({
                "key": key,
                "errorCode": "FLAG_NOT_FOUND",
                "errorDetails": format!(
                    "flag {key:?} is not defined; the flags are: {}",
                    flags.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })),
        )
            .into_response(),
    }
}

async fn bulk(State(flags): State<FlagsView>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(problem) = check_body(&body) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "errorCode": "PARSE_ERROR", "errorDetails": problem })),
        )
            .into_response();
    }
    let (flags, etag) = flags.snapshot();
    let tag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let wanted = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if let Some(wanted) = wanted {
        let matches = wanted
            .split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == etag || t == "*");
        if matches {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
        }
    }
    let all: Vec<Value> = flags.iter().map(|(k, v)| evaluation(k, *v)).collect();
    ([(header::ETAG, tag)], Json(json!({ "flags": all }))).into_response()
}

async fn configuration() -> Json<Value> {
    Json(json!({
        "name": "rollback-node",
        "capabilities": {
            "flagEvaluation": { "supportedTypes": ["boolean"] },
            "cacheInvalidation": { "polling": { "enabled": true, "minPollingIntervalMs": 1000 } }
        }
    }))
}

/// One flag's evaluation.
fn evaluation(key: &str, value: bool) -> Value {
    json!({
        "key": key,
        "value": value,
        "reason": "STATIC",
        "variant": if value { "on" } else { "off" },
        "metadata": {},
    })
}

/// An empty body or a JSON object (whose `context`, if any, is an object).
fn check_body(body: &[u8]) -> Result<(), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    match value.get("context") {
        _ if !value.is_object() => Err("the request body is not a JSON object".into()),
        Some(context) if !context.is_object() && !context.is_null() => {
            Err("\"context\" is not an object".into())
        }
        _ => Ok(()),
    }
}

/// OFREP alone on its own listener (`--ofrep ADDR`). Dropping it stops it.
#[derive(Debug)]
pub struct OfrepServer {
    listener: Listener,
}

impl OfrepServer {
    /// Binds `addr` (port 0 picks one) and serves `flags` on a background thread.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(addr: SocketAddr, flags: FlagsView) -> io::Result<OfrepServer> {
        let router = routes(flags).fallback(not_found);
        let listener = listener::start(addr, "ofrep", move |_| router)?;
        Ok(OfrepServer { listener })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Stops serving and waits for the server's thread (open connections are closed).
    pub fn shutdown(self) {
        self.listener.stop();
    }
}
