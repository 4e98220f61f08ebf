//! One HTTP listener on its own thread and tokio runtime: hyper's HTTP/1.1 connections over an
//! axum router, with the limits a network listener needs — a bounded number of connections
//! (more are closed at once), a time-out for a client that never finishes its headers, and a
//! graceful stop that ends event streams and lets answers in progress finish.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 4_096;
/// How long a client may take to send a request's headers (a first request, or the next one on
/// a kept-alive connection) before its connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stop waits for answers in progress.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Tells event streams that the listener is stopping: `true` once it is.
pub type Stopping = watch::Receiver<bool>;

/// A running listener. Dropping it stops it.
#[derive(Debug)]
pub struct Listener {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `addr` now (so a taken address is an error at start) and serves the router that
/// `make` builds — inside the listener's runtime, so it may spawn tasks — on a thread named
/// `name`. `make` is handed the stopping signal for streams that never end by themselves.
///
/// # Errors
/// The address cannot be bound, or the thread or runtime cannot start.
pub fn start(
    addr: SocketAddr,
    name: &str,
    make: impl FnOnce(Stopping) -> Router + Send + 'static,
) -> io::Result<Listener> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("{name}-http"))
        .enable_all()
        .build()?;
    let (stop, stopping) = watch::channel(false);
    let (ready, made) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("{name}-listener"))
        .spawn(move || {
            runtime.block_on(async move {
                let router = make(stopping.clone());
                let _ = ready.send(());
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(listener) => accept(listener, router, stopping).await,
                    Err(e) => eprintln!("rollback-node: the {addr} listener cannot start: {e}"),
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
    // Once `make` is done (its signal handlers, say, are in place), connections are served.
    if made.recv().is_err() {
        return Err(io::Error::other(
            "the listener's thread stopped while starting",
        ));
    }
    Ok(Listener {
        addr,
        stop,
        thread: Some(thread),
    })
}

async fn accept(listener: tokio::net::TcpListener, router: Router, mut stopping: Stopping) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors, say: let some close before accepting again.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(true);
                let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = connection.await;
                    drop(permit);
                });
            }
            _ = stopping.wait_for(|stop| *stop) => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(STOP_GRACE) => {}
    }
}

impl Listener {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends event streams, lets answers in progress finish (for up to two
    /// seconds) and waits for the thread.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop_now();
    }
}
