//! The OFREP server: both evaluation endpoints over plain HTTP with keep-alive, 404, ETag and 304,
//! and a real OFREP client (the Python OpenFeature provider) seeing each published change on its
//! next evaluation.

#[path = "support/pyclient.rs"]
mod pyclient;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rollback_node::runtime::flags::FlagsView;
use rollback_node::service::ofrep::OfrepServer;
use serde_json::{json, Value};

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// One request on a keep-alive connection.
fn request(
    conn: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        text.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    conn.get_mut().write_all(text.as_bytes()).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':').unwrap();
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; length];
    conn.read_exact(&mut body).unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn flags(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn start(view: &FlagsView) -> (OfrepServer, BufReader<TcpStream>) {
    let server = OfrepServer::start("127.0.0.1:0".parse().unwrap(), view.clone()).unwrap();
    let conn = TcpStream::connect(server.local_addr()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (server, BufReader::new(conn))
}

#[test]
fn single_flag_evaluation_follows_each_publish_on_one_connection() {
    let view = FlagsView::new(flags(&[("new_checkout", true), ("dark_mode", false)]));
    let (_server, mut conn) = start(&view);
    let body = r#"{"context":{"targetingKey":"user-1","email":"a@example.com"}}"#;
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags/new_checkout",
        &[],
        body,
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(
        a.json(),
        json!({"key": "new_checkout", "value": true, "reason": "STATIC", "variant": "on", "metadata": {}})
    );
    assert_eq!(
        view.publish(flags(&[("new_checkout", false), ("dark_mode", false)])),
        1
    );
    // Same connection (keep-alive), no body at all this time.
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags/new_checkout",
        &[],
        "",
    );
    assert_eq!(a.json()["value"], false);
    assert_eq!(a.json()["variant"], "off");
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags/dark%5Fmode",
        &[],
        "{}",
    );
    assert_eq!(a.json()["key"], "dark_mode");
}

#[test]
fn an_unknown_flag_is_404_flag_not_found() {
    let view = FlagsView::new(flags(&[("a", true), ("b", true)]));
    let (_server, mut conn) = start(&view);
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags/nope",
        &[],
        "{}",
    );
    assert_eq!(a.status, 404);
    let j = a.json();
    assert_eq!(j["key"], "nope");
    assert_eq!(j["errorCode"], "FLAG_NOT_FOUND");
    assert!(j["errorDetails"].as_str().unwrap().contains("a, b"), "{j}");
    // The connection is still usable.
    assert_eq!(
        request(&mut conn, "POST", "/ofrep/v1/evaluate/flags/a", &[], "{}").status,
        200
    );
}

#[test]
fn bulk_evaluation_has_an_etag_and_answers_304_while_unchanged() {
    let view = FlagsView::new(flags(&[("a", true), ("b", false)]));
    let (_server, mut conn) = start(&view);
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[],
        r#"{"context":{}}"#,
    );
    assert_eq!(a.status, 200);
    let etag = a.header("etag").expect("an ETag").to_owned();
    assert_eq!(etag, view.etag());
    assert_eq!(
        a.json(),
        json!({"flags": [
            {"key": "a", "value": true, "reason": "STATIC", "variant": "on", "metadata": {}},
            {"key": "b", "value": false, "reason": "STATIC", "variant": "off", "metadata": {}},
        ]})
    );
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("If-None-Match", &etag)],
        "{}",
    );
    assert_eq!((a.status, a.body.as_str()), (304, ""));
    assert_eq!(a.header("etag"), Some(etag.as_str()));

    // Publishing the same flags keeps the version and the ETag.
    assert_eq!(view.publish(flags(&[("a", true), ("b", false)])), 0);
    assert_eq!(view.etag(), etag);
    view.publish(flags(&[("a", false), ("b", false)]));
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &[("If-None-Match", &etag)],
        "{}",
    );
    assert_eq!(a.status, 200);
    assert_ne!(a.header("etag"), Some(etag.as_str()));
    assert_eq!(a.json()["flags"][0]["value"], false);
}

#[test]
fn bad_requests_get_clear_answers() {
    let view = FlagsView::new(flags(&[("a", true)]));
    let (server, mut conn) = start(&view);
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags/a",
        &[],
        "{not json",
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["errorCode"], "PARSE_ERROR");
    let a = request(&mut conn, "GET", "/ofrep/v1/evaluate/flags/a", &[], "");
    assert_eq!((a.status, a.header("allow")), (405, Some("POST")));
    let a = request(&mut conn, "GET", "/nope", &[], "");
    assert_eq!(a.status, 404);
    let a = request(&mut conn, "GET", "/ofrep/v1/configuration", &[], "");
    assert_eq!(
        a.json()["capabilities"]["flagEvaluation"]["supportedTypes"],
        json!(["boolean"])
    );
    // Connection: close is honoured.
    let a = request(
        &mut conn,
        "POST",
        "/ofrep/v1/evaluate/flags/a",
        &[("Connection", "close")],
        "{}",
    );
    assert_eq!(a.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        conn.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
    server.shutdown();
}

/// A real OFREP client: the Python OpenFeature OFREP provider, code default `true`, sees every
/// publish on its very next evaluation.
#[test]
fn a_real_ofrep_client_sees_each_publish_on_its_next_evaluation() {
    let view = FlagsView::new(flags(&[("new_checkout", true)]));
    let server = OfrepServer::start("127.0.0.1:0".parse().unwrap(), view.clone()).unwrap();
    let url = format!("http://{}", server.local_addr());
    let mut client = pyclient::PyClient::spawn("ofrep", &url, "new_checkout", "step", 0);
    assert_eq!(client.step(), (true, "on".into(), "STATIC".into()));
    for round in 0..5 {
        view.publish(flags(&[("new_checkout", false)]));
        assert_eq!(
            client.step(),
            (false, "off".into(), "STATIC".into()),
            "round {round}"
        );
        view.publish(flags(&[("new_checkout", true)]));
        assert_eq!(
            client.step(),
            (true, "on".into(), "STATIC".into()),
            "round {round}"
        );
    }
    drop(client);
    // Unknown flag: the provider falls back to the code default, with the error code.
    let mut client = pyclient::PyClient::spawn("ofrep", &url, "nope", "step", 0);
    let (value, _, reason) = client.step();
    assert!(value);
    assert_eq!(reason, "ERROR");
}
