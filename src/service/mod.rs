//! The node as a service: one listener (`--listen ADDR`) serving the API ([`api`]), the event
//! stream ([`events`]), the incident page (`page.html`, compiled in) and OFREP ([`ofrep`]) on
//! axum over hyper and tokio. It is a thin adapter: requests become the owner thread's inputs
//! through [`crate::runtime::serve::Calls`], and what the owner thread publishes reaches the
//! event streams through the [`hub::Hub`]. Lanes, queues, retries, the journal and the guard
//! rails are the ones stdin uses.

pub mod api;
pub mod auth;
pub mod events;
pub mod hub;
pub mod listener;
pub mod ofrep;

use crate::exec::estate::Token;
use crate::runtime::flags::FlagsView;
use crate::runtime::serve::{Call, Calls};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;

/// The incident page: one HTML file with its CSS and JavaScript, nothing fetched elsewhere.
pub const PAGE: &str = include_str!("page.html");

/// How long a read (status, history, backups, a login) may take before it is answered 503.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What the service is started with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Who may call it.
    pub tokens: Vec<Token>,
    /// What each layer is (for `GET /v1/whoami`): `simulated`, a real system's place, or
    /// `absent`.
    pub systems: Value,
    /// The escalation ladder's settings, signals and rungs (for `GET /v1/whoami`), when the
    /// estate has a `[ladder]`.
    pub ladder: Option<Value>,
}

/// The running service. Dropping it stops it.
#[derive(Debug)]
pub struct Service {
    listener: listener::Listener,
}

impl Service {
    /// Binds `config.addr` and serves; `calls` reach the owner thread, `hub` carries what it
    /// publishes, `flags` is what OFREP serves. SIGTERM and SIGINT ask the owner thread to stop.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub fn start(
        config: Config,
        calls: Calls,
        hub: hub::Hub,
        flags: FlagsView,
    ) -> io::Result<Service> {
        let auth = auth::Auth::new(&config.tokens);
        let listener = listener::start(config.addr, "service", move |stopping| {
            stop_on_signal(calls.clone());
            let app = api::App::new(calls, auth, hub, config.systems, config.ladder, stopping);
            router(app, flags)
        })?;
        Ok(Service { listener })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Stops serving: event streams end, answers in progress finish (for up to two seconds).
    pub fn stop(self) {
        self.listener.stop();
    }
}

/// The routes, each with its limits.
pub fn router(app: api::App, flags: FlagsView) -> Router {
    let reads = Router::new()
        .route("/v1/status", get(api::status))
        .route("/v1/history", get(api::history))
        .route("/v1/backups", get(api::backups))
        .route("/v1/whoami", get(api::whoami))
        .route("/v1/session", post(api::log_in).delete(api::log_out))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            READ_TIMEOUT,
        ));
    Router::new()
        .route("/", get(page))
        .route("/v1/messages", post(api::messages))
        .route("/v1/events", get(events::events))
        .merge(reads)
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(api::MAX_BODY))
        .with_state(app)
        .merge(ofrep::routes(flags))
}

/// `GET /`: the incident page.
async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        PAGE,
    )
        .into_response()
}

/// Takes SIGTERM and SIGINT now (inside the listener's runtime, before it says it listens) and,
/// when one comes, asks the owner thread to stop.
fn stop_on_signal(calls: Calls) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("rollback-node: cannot take SIGTERM/SIGINT; they stop the node at once");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("rollback-node: stopping: running operations may finish; nothing new is taken");
        let _ = tokio::task::spawn_blocking(move || calls.call(Call::Stop)).await;
    });
}
