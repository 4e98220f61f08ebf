//! An OpenFeature Remote Evaluation Protocol (OFREP) server over the node's own flag state.
//!
//! `--ofrep ADDR` serves, from a [`FlagsView`] that the node [publishes](FlagsView::publish) to
//! after each durable change:
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
//! switch must serve `false` whatever default an application coded.
//!
//! A small HTTP/1.1 server on std threads: one thread per connection (at most
//! [`MAX_CONNECTIONS`]), keep-alive, `Content-Length` bodies up to 64 KiB.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

/// Connections served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;

/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;

/// The largest request line plus headers.
const MAX_HEAD: usize = 16 * 1024;

/// How long an idle keep-alive connection is kept.
const IDLE: Duration = Duration::from_secs(30);

/// How often idle connections look at the stop flag.
const TICK: Duration = Duration::from_millis(200);

/// The node's flags as the OFREP server sees them: a cheap, shared handle. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct FlagsView {
    inner: Arc<RwLock<Snapshot>>,
}

#[derive(Debug, Default)]
struct Snapshot {
    flags: Arc<BTreeMap<String, bool>>,
    version: u64,
    etag: String,
}

impl FlagsView {
    /// A view holding `flags` at version 0.
    pub fn new(flags: BTreeMap<String, bool>) -> Self {
        let view = FlagsView::default();
        view.publish(flags);
        view
    }

    /// Replaces the flags (call after each durable change). Returns the version: it goes up by
    /// one when the flags differ from the previous ones, and stays otherwise.
    pub fn publish(&self, flags: BTreeMap<String, bool>) -> u64 {
        let mut snapshot = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if *snapshot.flags == flags && !snapshot.etag.is_empty() {
            return snapshot.version;
        }
        if !snapshot.etag.is_empty() {
            snapshot.version += 1;
        }
        snapshot.etag = etag(&flags);
        snapshot.flags = Arc::new(flags);
        snapshot.version
    }

    /// The flags now and their version.
    pub fn get(&self) -> (Arc<BTreeMap<String, bool>>, u64) {
        let snapshot = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (snapshot.flags.clone(), snapshot.version)
    }

    /// The bulk response's `ETag` now (quoted). It depends only on the flags, so it survives a
    /// restart of the node.
    pub fn etag(&self) -> String {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .etag
            .clone()
    }

    fn snapshot(&self) -> (Arc<BTreeMap<String, bool>>, String) {
        let snapshot = self.inner.read().unwrap_or_else(|p| p.into_inner());
        (snapshot.flags.clone(), snapshot.etag.clone())
    }
}

/// A quoted FNV-1a hash of the flags.
fn etag(flags: &BTreeMap<String, bool>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in flags {
        for byte in key.bytes().chain([0, u8::from(*value), 0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("\"{hash:016x}\"")
}

/// The running server. Dropping it stops it.
#[derive(Debug)]
pub struct OfrepServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl OfrepServer {
    /// Binds `addr` (port 0 picks one) and serves `flags` on a background thread.
    pub fn start(addr: SocketAddr, flags: FlagsView) -> io::Result<OfrepServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let flag = stop.clone();
        let accept = std::thread::Builder::new()
            .name("ofrep-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        open.fetch_sub(1, Ordering::SeqCst);
                        let _ = conn.shutdown(Shutdown::Both);
                        continue;
                    }
                    let (flags, stop, count) = (flags.clone(), flag.clone(), open.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("ofrep-conn".into())
                            .spawn(move || {
                                let _ = serve(conn, &flags, &stop);
                                count.fetch_sub(1, Ordering::SeqCst);
                            });
                    if spawned.is_err() {
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })?;
        Ok(OfrepServer {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The address served (with the port chosen if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and makes open connections close within a fraction of a second.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl Drop for OfrepServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
    if_none_match: Option<String>,
    body: Vec<u8>,
}

/// Why a request could not be read.
enum ReadError {
    /// The connection closed or went idle: just close.
    Closed,
    /// A malformed request: answer this status and close.
    Bad(u16, &'static str),
}

fn serve(conn: TcpStream, flags: &FlagsView, stop: &AtomicBool) -> io::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(TICK))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        match read_request(&mut reader, stop) {
            Ok(request) => {
                let (status, headers, body) = respond(&request, flags);
                write_response(&mut writer, status, &headers, &body, request.keep_alive)?;
                if !request.keep_alive {
                    break;
                }
            }
            Err(ReadError::Closed) => break,
            Err(ReadError::Bad(status, why)) => {
                let body = json!({ "errorDetails": why }).to_string().into_bytes();
                write_response(&mut writer, status, &[], &body, false)?;
                break;
            }
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
    Ok(())
}

/// Reads one line, waiting through read timeouts until `IDLE` (only before the first byte of a
/// request) or the stop flag.
fn read_line(
    reader: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
    stop: &AtomicBool,
    idle_ok: bool,
) -> Result<(), ReadError> {
    let mut waited = Duration::ZERO;
    loop {
        match reader.read_until(b'\n', line) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(_) if line.ends_with(b"\n") => return Ok(()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                waited += TICK;
                if stop.load(Ordering::SeqCst) || waited >= IDLE || (!idle_ok && waited >= IDLE / 3)
                {
                    return Err(ReadError::Closed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(ReadError::Closed),
        }
        if line.len() > MAX_HEAD {
            return Err(ReadError::Bad(431, "request head too large"));
        }
    }
}

fn read_request(
    reader: &mut BufReader<TcpStream>,
    stop: &AtomicBool,
) -> Result<Request, ReadError> {
    let mut line = Vec::new();
    // Tolerate blank lines between requests.
    while line.is_empty() || line == b"\r\n" || line == b"\n" {
        line.clear();
        read_line(reader, &mut line, stop, true)?;
    }
    let request_line = String::from_utf8_lossy(&line).trim_end().to_owned();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(505, "only HTTP/1.x is served"));
    }
    let mut keep_alive = version != "HTTP/1.0";
    let mut length = 0usize;
    let mut if_none_match = None;
    let mut head = line.len();
    loop {
        line.clear();
        read_line(reader, &mut line, stop, false)?;
        head += line.len();
        if head > MAX_HEAD {
            return Err(ReadError::Bad(431, "request head too large"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            return Err(ReadError::Bad(400, "malformed header"));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = value
                    .parse()
                    .map_err(|_| ReadError::Bad(400, "bad Content-Length"))?;
            }
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(ReadError::Bad(
                    501,
                    "chunked request bodies are not supported; send Content-Length",
                ));
            }
            "connection" => {
                let value = value.to_ascii_lowercase();
                if value.contains("close") {
                    keep_alive = false;
                } else if value.contains("keep-alive") {
                    keep_alive = true;
                }
            }
            "if-none-match" => if_none_match = Some(value.to_owned()),
            _ => {}
        }
    }
    if length > MAX_BODY {
        return Err(ReadError::Bad(413, "request body too large"));
    }
    let mut body = vec![0; length];
    let mut read = 0;
    let mut waited = Duration::ZERO;
    while read < length {
        match reader.read(&mut body[read..]) {
            Ok(0) => return Err(ReadError::Closed),
            Ok(n) => read += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                waited += TICK;
                if stop.load(Ordering::SeqCst) || waited >= IDLE / 3 {
                    return Err(ReadError::Closed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadError::Closed),
        }
    }
    Ok(Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or("").to_owned(),
        keep_alive,
        if_none_match,
        body,
    })
}

type Response = (u16, Vec<(&'static str, String)>, Vec<u8>);

fn json_response(status: u16, body: Value) -> Response {
    (status, Vec::new(), body.to_string().into_bytes())
}

fn respond(request: &Request, flags: &FlagsView) -> Response {
    const SINGLE: &str = "/ofrep/v1/evaluate/flags/";
    const BULK: &str = "/ofrep/v1/evaluate/flags";
    const CONFIGURATION: &str = "/ofrep/v1/configuration";
    let path = request.path.as_str();
    let method = request.method.as_str();
    let allowed = |allow: &str| {
        (
            405,
            vec![("Allow", allow.to_owned())],
            json!({ "errorDetails": format!("{method} is not allowed on {path}; use {allow}") })
                .to_string()
                .into_bytes(),
        )
    };
    if let Some(key) = path.strip_prefix(SINGLE) {
        if method != "POST" {
            return allowed("POST");
        }
        let key = percent_decode(key);
        if let Err(problem) = check_body(&request.body) {
            return json_response(
                400,
                json!({ "key": key, "errorCode": "PARSE_ERROR", "errorDetails": problem }),
            );
        }
        let (flags, _) = flags.snapshot();
        return match flags.get(&key) {
            Some(value) => json_response(200, evaluation(&key, *value)),
            None => json_response(
                404,
                json!({
                    "key": key,
                    "errorCode": "FLAG_NOT_FOUND",
                    "errorDetails": format!(
                        "flag {key:?} is not defined; the flags are: {}",
                        flags.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                }),
            ),
        };
    }
    if path == BULK || path == "/ofrep/v1/evaluate/flags/" {
        if method != "POST" {
            return allowed("POST");
        }
        if let Err(problem) = check_body(&request.body) {
            return json_response(
                400,
                json!({ "errorCode": "PARSE_ERROR", "errorDetails": problem }),
            );
        }
        let (flags, etag) = flags.snapshot();
        let headers = vec![("ETag", etag.clone())];
        if let Some(wanted) = &request.if_none_match {
            let matches = wanted
                .split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*");
            if matches {
                return (304, headers, Vec::new());
            }
        }
        let all: Vec<Value> = flags.iter().map(|(k, v)| evaluation(k, *v)).collect();
        return (
            200,
            headers,
            json!({ "flags": all }).to_string().into_bytes(),
        );
    }
    if path == CONFIGURATION {
        if method != "GET" {
            return allowed("GET");
        }
        return json_response(
            200,
            json!({
                "name": "rollback-node",
                "capabilities": {
                    "flagEvaluation": { "supportedTypes": ["boolean"] },
                    "cacheInvalidation": { "polling": { "enabled": true, "minPollingIntervalMs": 1000 } }
                }
            }),
        );
    }
    json_response(
        404,
        json!({ "errorDetails": format!("no such endpoint {path}; OFREP is served under /ofrep/v1/") }),
    )
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

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(hex, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_response(
    writer: &mut TcpStream,
    status: u16,
    headers: &[(&'static str, String)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if status != 304 {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    writer.write_all(&out)
}
