//! The API routes: a thin adapter. A request is authenticated, its role checked, and handed to
//! the owner thread as the same input stdin gives it (the token's name as sender); the answer
//! is the body stdin's reply would carry, byte for byte.
//!
//! - `POST /v1/messages?wait=S`: a request body; the reply body (200 for any protocol reply),
//!   or 202 `accepted` when it is still running after S seconds (30 by default);
//! - `GET /v1/status`, `GET /v1/history?limit=N`, `GET /v1/backups`: the bodies of `status_ok`,
//!   `history_ok`, `backups_ok`, without `in_reply_to`;
//! - `GET /v1/whoami`: the caller's name and role, what each layer is, and the escalation
//!   ladder's settings, signals and rungs when the estate has a `[ladder]`;
//! - `POST /v1/session` `{"token": SECRET}` logs the page in (an HttpOnly, SameSite=Strict
//!   cookie); `DELETE /v1/session` logs it out.
//!
//! No or an unknown token is 401, a role too low 403 naming the role needed; a state change the
//! cookie carries from another origin is 403. None of them reaches the owner thread.

use crate::exec::estate::Role;
use crate::runtime::serve::{Call, Calls};
use crate::runtime::session::Unanswerable;
use crate::service::auth::{self, Auth, Caller};
use crate::service::hub::Hub;
use crate::service::listener::Stopping;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The largest request body: larger ones are answered 413.
pub const MAX_BODY: usize = 1 << 20;
/// How long `POST /v1/messages` waits for a reply by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest `wait` asked for is cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(3_600);

/// What every route shares.
#[derive(Debug, Clone)]
pub struct App(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    calls: Calls,
    auth: Auth,
    hub: Hub,
    systems: Value,
    ladder: Option<Value>,
    stopping: Stopping,
}

/// A request refused before it reached the node: its status and a JSON body saying why.
#[derive(Debug)]
pub struct Refused(StatusCode, Value);

impl Refused {
    fn unauthorized(text: &str) -> Self {
        Refused(
            StatusCode::UNAUTHORIZED,
            json!({ "error": "unauthorized", "text": text }),
        )
    }

    fn bad_request(text: String) -> Self {
        Refused(
            StatusCode::BAD_REQUEST,
            json!({ "error": "bad_request", "text": text }),
        )
    }

    /// A change the session cookie carried from elsewhere than the node's own page (403).
    fn cross_origin(text: &str) -> Self {
        Refused(
            StatusCode::FORBIDDEN,
            json!({ "error": "cross_origin", "text": text }),
        )
    }

    /// The node cannot answer now (503).
    pub fn unavailable(text: String) -> Self {
        Refused(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "unavailable", "text": text }),
        )
    }

    /// The node is stopping (503).
    pub fn stopping() -> Self {
        Refused::unavailable("the node is stopping; nothing more is taken".to_owned())
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = (self.0, json_body(self.1.to_string())).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rollback-node\""),
            );
        }
        response
    }
}

/// A JSON body as a response with its content type.
fn json_body(body: String) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

impl App {
    /// The shared state of the routes: `systems` says what each layer is, `ladder` the
    /// escalation ladder's settings (both for `GET /v1/whoami`).
    pub fn new(
        calls: Calls,
        auth: Auth,
        hub: Hub,
        systems: Value,
        ladder: Option<Value>,
        stopping: Stopping,
    ) -> Self {
        App(Arc::new(Inner {
            calls,
            auth,
            hub,
            systems,
            ladder,
            stopping,
        }))
    }

    /// The publications the event streams read.
    pub fn hub(&self) -> &Hub {
        &self.0.hub
    }

    /// The listener's stopping signal.
    pub fn stopping(&self) -> Stopping {
        self.0.stopping.clone()
    }

    /// Who is calling, if they may do what needs `role`; `changes` says whether the request
    /// may change something (then a cookie must come from the page's own origin).
    ///
    /// # Errors
    /// 401 for no or an unknown token; 403 for a role too low or a cross-origin change.
    pub fn allow(&self, headers: &HeaderMap, role: Role, changes: bool) -> Result<Caller, Refused> {
        let Some(caller) = self.0.auth.identify(headers) else {
            return Err(Refused::unauthorized(
                "no token, or one this node does not know: send Authorization: Bearer SECRET (a token from the estate's [[tokens]]), or log in on the page",
            ));
        };
        if caller.role < role {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                json!({
                    "error": "forbidden",
                    "role": caller.role.to_string(),
                    "role_needed": role.to_string(),
                    "text": format!(
                        "{} is a {} token; this needs the {role} role; nothing changed",
                        caller.name, caller.role
                    ),
                }),
            ));
        }
        if changes && caller.by_cookie && !auth::same_origin(headers) {
            return Err(Refused::cross_origin(
                "a change carried by the session cookie must come from this node's own page (its Origin is not http:// and the Host it was sent to); nothing changed",
            ));
        }
        Ok(caller)
    }

    /// Hands `call` to the owner thread, waiting for room when it is busy.
    ///
    /// # Errors
    /// The node is stopping.
    pub async fn call(&self, call: Call) -> Result<(), Refused> {
        match self.0.calls.try_call(call) {
            Ok(()) => Ok(()),
            Err(None) => Err(Refused::stopping()),
            Err(Some(call)) => {
                let calls = self.0.calls.clone();
                match tokio::task::spawn_blocking(move || calls.call(call)).await {
                    Ok(true) => Ok(()),
                    _ => Err(Refused::stopping()),
                }
            }
        }
    }

    /// Asks the owner thread and waits for the answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Call) -> Result<T, Refused> {
        let (reply, answer) = oneshot::channel();
        self.call(make(reply)).await?;
        answer.await.map_err(|_| Refused::stopping())
    }
}

/// What the adapter reads of a request body before handing it over: enough for the role.
#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: Option<Value>,
    msg_id: Option<Value>,
    dry_run: Option<Value>,
}

impl Peek {
    fn of(body: &[u8]) -> Peek {
        serde_json::from_slice(body).unwrap_or(Peek {
            kind: None,
            msg_id: None,
            dry_run: None,
        })
    }
}

/// `?wait=S` of `POST /v1/messages`.
#[derive(Deserialize)]
pub struct Wait {
    wait: Option<String>,
}

fn wait_of(query: &Wait) -> Result<Duration, Refused> {
    let Some(text) = &query.wait else {
        return Ok(DEFAULT_WAIT);
    };
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => {
            Ok(Duration::from_secs_f64(s.min(MAX_WAIT.as_secs_f64())))
        }
        _ => Err(Refused::bad_request(format!(
            "wait={text} is not a number of seconds; give one such as 30 or 0.5"
        ))),
    }
}

/// `POST /v1/messages`.
pub async fn messages(
    State(app): State<App>,
    Query(query): Query<Wait>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let wait = match wait_of(&query) {
        Ok(wait) => wait,
        Err(refused) => return refused.into_response(),
    };
    let peek = Peek::of(&body);
    let kind = peek.kind.as_ref().and_then(Value::as_str);
    let dry_run = peek.dry_run == Some(Value::Bool(true));
    let needed = auth::role_needed(kind, dry_run);
    let changes = needed > Role::Viewer;
    let caller = match app.allow(&headers, needed, changes) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let (reply, answer) = oneshot::channel();
    let call = Call::Message {
        sender: caller.name,
        body: body.to_vec(),
        reply,
    };
    if let Err(refused) = app.call(call).await {
        return refused.into_response();
    }
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(Ok(body))) => json_body(body),
        Ok(Ok(Err(Unanswerable(why)))) => Refused::bad_request(why).into_response(),
        Ok(Err(_)) => Refused::stopping().into_response(),
        Err(_) => {
            let msg_id = peek.msg_id.unwrap_or(Value::Null);
            (
                StatusCode::ACCEPTED,
                json_body(format!(
                    "{{\"type\":\"accepted\",\"in_reply_to\":{msg_id},\"state\":\"running\"}}"
                )),
            )
                .into_response()
        }
    }
}

/// A body the owner thread built: a protocol error is a 400 (a request out of range) or a
/// 503 (the store or a directory cannot be read); anything else 200.
fn read_answer(body: String) -> Response {
    if body.starts_with("{\"type\":\"error\"") {
        // The encoder writes `code` right after `type` when there is no `in_reply_to`.
        let unavailable = body.starts_with("{\"type\":\"error\",\"code\":11,");
        let status = if unavailable {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        return (status, json_body(body)).into_response();
    }
    json_body(body)
}

/// `GET /v1/status`.
pub async fn status(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(refused) = app.allow(&headers, Role::Viewer, false) {
        return refused.into_response();
    }
    match app.ask(Call::Status).await {
        Ok(body) => json_body(body),
        Err(refused) => refused.into_response(),
    }
}

/// `?limit=N&after=SEQ` of `GET /v1/history`.
#[derive(Deserialize)]
pub struct Limit {
    limit: Option<String>,
    after: Option<String>,
}

/// A query parameter `name` that must be a number (`what` says which, for the 400).
fn number<N: std::str::FromStr>(
    given: Option<&str>,
    name: &str,
    what: &str,
) -> Result<Option<N>, Refused> {
    match given.map(str::parse::<N>) {
        None => Ok(None),
        Some(Ok(n)) => Ok(Some(n)),
        Some(Err(_)) => Err(Refused::bad_request(format!(
            "{name}={} is not {what}",
            given.unwrap_or_default()
        ))),
    }
}

/// `GET /v1/history`.
pub async fn history(
    State(app): State<App>,
    Query(query): Query<Limit>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = app.allow(&headers, Role::Viewer, false) {
        return refused.into_response();
    }
    let limit = match number::<u32>(
        query.limit.as_deref(),
        "limit",
        "a count; give one such as 50",
    ) {
        Ok(limit) => limit,
        Err(refused) => return refused.into_response(),
    };
    let after = match number::<u64>(
        query.after.as_deref(),
        "after",
        "a sequence number; give the seq of the last entry seen, such as 120",
    ) {
        Ok(after) => after,
        Err(refused) => return refused.into_response(),
    };
    match app
        .ask(|reply| Call::History {
            limit,
            after,
            reply,
        })
        .await
    {
        Ok(body) => read_answer(body),
        Err(refused) => refused.into_response(),
    }
}

/// `GET /v1/backups`.
pub async fn backups(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(refused) = app.allow(&headers, Role::Viewer, false) {
        return refused.into_response();
    }
    match app.ask(Call::Backups).await {
        Ok(body) => read_answer(body),
        Err(refused) => refused.into_response(),
    }
}

/// `GET /v1/whoami`.
pub async fn whoami(State(app): State<App>, headers: HeaderMap) -> Response {
    match app.allow(&headers, Role::Viewer, false) {
        Ok(caller) => {
            let mut me = json!({
                "name": caller.name,
                "role": caller.role.to_string(),
                "systems": app.0.systems,
            });
            if let Some(ladder) = &app.0.ladder {
                me["ladder"] = ladder.clone();
            }
            json_body(me.to_string())
        }
        Err(refused) => refused.into_response(),
    }
}

/// `POST /v1/session` with `{"token": SECRET}`.
#[derive(Deserialize)]
pub struct LogIn {
    token: String,
}

/// `POST /v1/session`: 204 and the cookie, or 401 and none.
pub async fn log_in(State(app): State<App>, body: Bytes) -> Response {
    let Ok(LogIn { token }) = serde_json::from_slice::<LogIn>(&body) else {
        return Refused::bad_request(
            "send {\"token\": \"SECRET\"} to log in with a token from the estate's [[tokens]]"
                .to_owned(),
        )
        .into_response();
    };
    match app.0.auth.log_in(&token) {
        Some((value, _)) => {
            let cookie = format!(
                "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                auth::COOKIE,
                auth::SESSION_LIFETIME.as_secs()
            );
            let mut response = StatusCode::NO_CONTENT.into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        None => Refused::unauthorized("that token is not known to this node").into_response(),
    }
}

/// `DELETE /v1/session`: the session ends and the cookie is cleared.
pub async fn log_out(State(app): State<App>, headers: HeaderMap) -> Response {
    if headers.get(header::COOKIE).is_some() && !auth::same_origin(&headers) {
        return Refused::cross_origin("log out from this node's own page").into_response();
    }
    app.0.auth.log_out(&headers);
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cleared = format!(
        "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        auth::COOKIE
    );
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A 404 for a path the node does not serve.
pub async fn not_found(uri: axum::http::Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        json_body(
            json!({
                "error": "not_found",
                "text": format!(
                    "no such route {}; the API is under /v1/ (messages, status, history, backups, events, session), OFREP under /ofrep/v1/, the page at /",
                    uri.path()
                ),
            })
            .to_string(),
        ),
    )
        .into_response()
}
