//! Raw HTTP/1.1 on a fresh 127.0.0.1 connection per request, and the JSON calls of the queue
//! API made that way (blocking).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

use super::{TOKEN, json_of, qp};

/// An HTTP/1.1 request closing its connection, `extra` being whole header lines.
pub fn request_text(
    method: &str,
    path: &str,
    auth: Option<&str>,
    extra: &str,
    body: &str,
) -> String {
    let auth = auth
        .map(|t| format!("Authorization: OAuth {t}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Splits a complete response into (status, head, body).
pub fn parse_response(buf: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_string(), body.to_string())
}

/// Sends `req` as is on a fresh connection and reads to EOF; returns (status, head, body).
pub fn send(port: u16, req: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    parse_response(&buf)
}

/// One request on a fresh connection; returns (status, head, body).
pub fn raw(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    send(port, &request_text(method, path, auth, "", body))
}

/// A JSON request body: none for `Value::Null`.
pub fn body_text(body: &Value) -> String {
    if body.is_null() {
        String::new()
    } else {
        body.to_string()
    }
}

/// One request, `extra` being whole header lines; asserts a JSON answer with a
/// `Content-Length`, returns the status and the JSON.
pub fn call_with(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    extra: &str,
    body: &str,
) -> (u16, Value) {
    let (status, head, body) = send(port, &request_text(method, path, auth, extra, body));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json\r\n"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
    (status, json_of(&body))
}

/// [`call_with`] with a JSON body (none for `Value::Null`).
pub fn call_as(
    port: u16,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Value,
) -> (u16, Value) {
    call_with(port, method, path, auth, "", &body_text(&body))
}

/// [`call_as`] with the project token.
pub fn call(port: u16, method: &str, path: &str, body: Value) -> (u16, Value) {
    call_as(port, method, path, Some(TOKEN), body)
}

/// Posts one message a body to queue `q`; returns their ids.
pub fn post_msgs(port: u16, q: &str, bodies: &[impl AsRef<str>]) -> Vec<String> {
    let msgs: Vec<Value> = bodies
        .iter()
        .map(|b| json!({ "body": b.as_ref() }))
        .collect();
    let (s, v) = call(
        port,
        "POST",
        &format!("{}/messages", qp(q)),
        json!({ "messages": msgs }),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["msg"], "Messages put on queue.");
    v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_str().expect("id").to_string())
        .collect()
}
