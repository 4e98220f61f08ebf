//! The live event stream, `GET /v1/events`: server-sent events `status` (at connect, and after
//! every change or progress step the owner thread publishes, at most ten a second) and `entry`
//! (each operation that ends, once durable; `id:` its sequence number, so a reconnecting client's
//! `Last-Event-ID` replays what it missed). Heartbeat comments keep proxies from closing an idle
//! stream. Each client has a bounded buffer of its own: a client that does not keep up is
//! dropped, and the node never waits for one.

use crate::runtime::serve::Call;
use crate::service::api::{App, Refused};
use crate::service::hub::Ended;
use crate::service::listener::Stopping;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// Events buffered for one client before it counts as not keeping up (and is dropped).
pub const CLIENT_BUFFER: usize = 1_024;
/// How often an idle stream carries a heartbeat comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// At most this many entries are replayed after `Last-Event-ID` (the rest are in `history`).
const REPLAYED: u32 = 1_000;

fn status_event(body: &str) -> Event {
    Event::default().event("status").data(body)
}

fn entry_event(seq: u64, json: &str) -> Event {
    Event::default()
        .event("entry")
        .id(seq.to_string())
        .data(json)
}

/// `GET /v1/events` (a viewer's right).
pub async fn events(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(refused) = app.allow(&headers, crate::exec::estate::Role::Viewer, false) {
        return refused.into_response();
    }
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut status = app.hub().status();
    let mut entries = app.hub().entries();
    let replayed = match after {
        Some(after) => {
            let (reply, answer) = oneshot::channel();
            let call = Call::After {
                after,
                limit: REPLAYED,
                reply,
            };
            if let Err(refused) = app.call(call).await {
                return refused.into_response();
            }
            match answer.await {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) => {
                    return Refused::unavailable(format!("the audit trail cannot be read: {e}"))
                        .into_response()
                }
                Err(_) => return Refused::stopping().into_response(),
            }
        }
        None => Vec::new(),
    };
    let (tx, rx) = mpsc::channel::<Event>(CLIENT_BUFFER);
    let stopping = app.stopping();
    tokio::spawn(async move {
        let now = status.borrow_and_update().clone();
        if !now.is_empty() && tx.try_send(status_event(&now)).is_err() {
            return;
        }
        let mut seen = HashSet::new();
        for entry in &replayed {
            seen.insert(entry.seq);
            if tx
                .try_send(entry_event(entry.seq, &entry.to_json_line()))
                .is_err()
            {
                return;
            }
        }
        drop(replayed);
        forward(&tx, &mut status, &mut entries, &seen, stopping).await;
    });
    let stream = ReceiverStream::new(rx).map(Ok::<Event, Infallible>);
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // A stream that ends (the client did not keep up, or the node stops) closes its connection.
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// Forwards what is published to one client until it stops keeping up, goes away, or the node
/// stops.
async fn forward(
    tx: &mpsc::Sender<Event>,
    status: &mut watch::Receiver<Arc<str>>,
    entries: &mut broadcast::Receiver<Arc<Ended>>,
    seen: &HashSet<u64>,
    mut stopping: Stopping,
) {
    loop {
        let event = tokio::select! {
            changed = status.changed() => match changed {
                Ok(()) => status_event(&status.borrow_and_update().clone()),
                Err(_) => return,
            },
            entry = entries.recv() => match entry {
                Ok(entry) if seen.contains(&entry.seq) => continue,
                Ok(entry) => entry_event(entry.seq, &entry.json),
                // Lagged: the client missed entries while it did not read; it is dropped, and
                // reconnects with Last-Event-ID.
                Err(_) => return,
            },
            _ = stopping.wait_for(|stop| *stop) => return,
            () = tx.closed() => return,
        };
        if tx.try_send(event).is_err() {
            return;
        }
    }
}
