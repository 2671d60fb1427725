//! Generated requests against the real server (the test matrix's R8/R9 in small): random
//! methods, paths, queries, auth, content types and JSON bodies built from the contract's
//! field names and edge values. For every answer:
//!
//! - never a 5xx, and the server stays up;
//! - a JSON body with `Content-Type: application/json` and a `Content-Length`;
//! - an error (4xx) carries a non-empty string `msg`;
//! - a failed request changes nothing: the queue it names reads the same before and after,
//!   and so does the list of queues.
//!
//! `FERROMQ_FUZZ_CASES` sets the number of requests (default 1500; nightly runs use more).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use common::{ADMIN, PID, Server, Start, TOKEN, json_of};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};

/// Queues the generated requests name. Asynchronous effects (push deliveries, fan-out,
/// error queues, alerts) are pointed at `SINK`, which is never compared, so a queue
/// compared before and after a request changes only through that request.
const QUEUES: [&str; 3] = ["fz-a", "fz-b", "fz%20c"];
const SINK: &str = "fz-sink";

/// Integers and numbers at and around the contract's limits. No small positive values:
/// a `wait`, `delay`, `timeout` or `expires_in` of a few seconds would make state change
/// on its own while the test runs (and a long `wait` would hold a request open).
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(31)),
        Just(json!(60)),
        Just(json!(100)),
        Just(json!(101)),
        Just(json!(1000)),
        Just(json!(86400)),
        Just(json!(86401)),
        Just(json!(604800)),
        Just(json!(604801)),
        Just(json!(2147483648i64)),
        Just(json!(9007199254740993i64)),
        Just(json!(i64::MIN)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!(-0.0)),
        Just(json!(1e300)),
    ]
}

fn string() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("")),
        Just(json!("x")),
        Just(json!("pull")),
        Just(json!("multicast")),
        Just(json!("unicast")),
        Just(json!("fixed")),
        Just(json!("progressive")),
        Just(json!("asc")),
        Just(json!("desc")),
        Just(json!(SINK)),
        Just(json!("http://127.0.0.1:1/push")),
        Just(json!(format!("ironmq:///{SINK}"))),
        Just(json!("ironmq://bad host/q")),
        Just(json!("ftp://x/y")),
        Just(json!("\u{0}\u{ffff}é")),
        Just(json!("x".repeat(300))),
        Just(json!("123")),
        Just(json!("-5")),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => number(),
        4 => string(),
        1 => Just(Value::Null),
        1 => Just(json!(true)),
        1 => Just(json!(false)),
    ]
}

/// The field names of the contract's request bodies (and some that are not).
const KEYS: &[&str] = &[
    "messages",
    "body",
    "delay",
    "timeout",
    "expires_in",
    "push_headers",
    "ids",
    "id",
    "reservation_id",
    "subscriber_name",
    "n",
    "wait",
    "delete",
    "queue",
    "message_timeout",
    "message_expiration",
    "type",
    "push",
    "subscribers",
    "retries",
    "retries_delay",
    "error_queue",
    "rate_limit",
    "dead_letter",
    "max_reservations",
    "queue_name",
    "alerts",
    "name",
    "url",
    "headers",
    "trigger",
    "direction",
    "snooze",
    "per_page",
    "previous",
    "prefix",
    "oauth",
    "unknown_key",
];

/// JSON values of any shape, objects keyed by the contract's field names.
fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.into(), v)).collect())),
        ]
    })
}

/// A message as clients post it, with some fields wrong.
fn message() -> impl Strategy<Value = Value> {
    (
        prop_oneof![3 => Just(json!("hello")), 1 => scalar()],
        prop::option::of(number()),
        prop::option::of(number()),
        prop::option::of(value()),
    )
        .prop_map(|(body, delay, expires_in, headers)| {
            let mut m = Map::new();
            m.insert("body".into(), body);
            if let Some(d) = delay {
                m.insert("delay".into(), d);
            }
            if let Some(e) = expires_in {
                m.insert("expires_in".into(), e);
            }
            if let Some(h) = headers {
                m.insert("push_headers".into(), h);
            }
            Value::Object(m)
        })
}

/// A message id or reservation id: one the server gave out earlier (by index into what was
/// harvested), or a made-up one.
#[derive(Clone, Debug)]
enum Id {
    Seen(usize),
    Made(&'static str),
}

fn id() -> impl Strategy<Value = Id> {
    prop_oneof![
        3 => any::<usize>().prop_map(Id::Seen),
        1 => prop::sample::select(vec!["", "0", "zz", "00000000000000000000000000000000", "1e3"])
            .prop_map(Id::Made),
    ]
}

/// Bodies shaped like the requests of each endpoint, then anything at all.
#[derive(Clone, Debug)]
enum Body {
    None,
    Raw(&'static str),
    Json(Value),
    Post(Vec<Value>),
    Delete(Vec<(Id, Option<Id>)>),
    Reservation(Option<Id>, Map<String, Value>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        1 => Just(Body::None),
        1 => prop::sample::select(vec!["", "{", "[]", "null", "{\"messages\":", "\"x\"", "{}x", "\u{feff}{}"])
            .prop_map(Body::Raw),
        4 => value().prop_map(Body::Json),
        3 => prop::collection::vec(message(), 0..4).prop_map(Body::Post),
        2 => prop::collection::vec((id(), prop::option::of(id())), 0..4).prop_map(Body::Delete),
        2 => (prop::option::of(id()), prop::collection::vec((prop::sample::select(KEYS), scalar()), 0..3))
            .prop_map(|(r, kv)| Body::Reservation(r, kv.into_iter().map(|(k, v)| (k.into(), v)).collect())),
    ]
}

/// The path after `/3/projects/{pid}/queues/{q}`.
#[derive(Clone, Debug)]
enum Tail {
    Queue,
    Messages,
    Message(Id),
    Touch(Id),
    Release(Id),
    PushStatuses(Id),
    Reservations,
    Webhook,
    Subscribers,
    Alerts,
    Alert(&'static str),
}

fn tail() -> impl Strategy<Value = Tail> {
    prop_oneof![
        3 => Just(Tail::Queue),
        4 => Just(Tail::Messages),
        2 => id().prop_map(Tail::Message),
        2 => id().prop_map(Tail::Touch),
        2 => id().prop_map(Tail::Release),
        1 => id().prop_map(Tail::PushStatuses),
        3 => Just(Tail::Reservations),
        1 => Just(Tail::Webhook),
        2 => Just(Tail::Subscribers),
        2 => Just(Tail::Alerts),
        1 => prop::sample::select(vec!["x", "", "0123456789abcdef01234567"]).prop_map(Tail::Alert),
    ]
}

#[derive(Clone, Debug)]
enum Target {
    /// A queue path: (project id, queue index or a made-up name, what follows).
    Queue(&'static str, Result<usize, &'static str>, Tail),
    List(&'static str),
    Other(&'static str),
}

fn target() -> impl Strategy<Value = Target> {
    let pid = prop_oneof![
        8 => Just(PID),
        1 => Just("ffffffffffffffffffffffff"),
        1 => Just("not-hex"),
    ];
    let queue = prop_oneof![
        6 => (0..QUEUES.len()).prop_map(Ok),
        1 => prop::sample::select(vec!["missing", "%2F", "a%00b", ".."]).prop_map(Err),
    ];
    prop_oneof![
        12 => (pid.clone(), queue, tail()).prop_map(|(p, q, t)| Target::Queue(p, q, t)),
        1 => pid.prop_map(Target::List),
        1 => prop::sample::select(vec![
            "/3/stats", "/health", "/ready", "/version", "/3/projects", "/3/admin/projects",
            "/3/admin/tokens", "/3", "/", "/3/projects//queues", "/metrics",
        ])
        .prop_map(Target::Other),
    ]
}

/// The method: most often one the target takes (picked by index), else any.
#[derive(Clone, Debug)]
enum Method {
    Fit(usize),
    Any(&'static str),
}

#[derive(Clone, Debug)]
struct Req {
    method: Method,
    method_override: Option<&'static str>,
    target: Target,
    query: &'static str,
    auth: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Body,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop_oneof![
            6 => any::<usize>().prop_map(Method::Fit),
            1 => prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
                .prop_map(Method::Any),
        ],
        prop::option::weighted(
            0.1,
            prop::sample::select(vec!["DELETE", "PATCH", "PUT", "GET", "BREW"]),
        ),
        target(),
        prop::sample::select(vec![
            "",
            "",
            "",
            "?n=2",
            "?n=0",
            "?n=101",
            "?n=x",
            "?wait=0",
            "?wait=31",
            "?per_page=1",
            "?per_page=101",
            "?previous=fz-a",
            "?prefix=fz",
            "?timeout=x",
            "?delete=true",
        ]),
        prop_oneof![
            16 => Just(Some(TOKEN)),
            1 => Just(None),
            1 => Just(Some("wrong-token")),
            1 => Just(Some(ADMIN)),
        ],
        prop_oneof![
            8 => Just(Some("application/json")),
            1 => Just(None),
            1 => Just(Some("text/plain")),
            1 => Just(Some("application/json; charset=utf-8")),
        ],
        body(),
    )
        .prop_map(
            |(method, method_override, target, query, auth, content_type, body)| Req {
                method,
                method_override,
                target,
                query,
                auth,
                content_type,
                body,
            },
        )
}

/// What the server handed out so far, for requests to refer to.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    reservations: Vec<String>,
}

impl Seen {
    fn id(&self, id: &Id) -> String {
        match id {
            Id::Made(s) => s.to_string(),
            Id::Seen(i) if self.ids.is_empty() => format!("{i:x}"),
            Id::Seen(i) => self.ids[i % self.ids.len()].clone(),
        }
    }

    fn reservation(&self, id: &Id) -> String {
        match id {
            Id::Made(s) => s.to_string(),
            Id::Seen(i) if self.reservations.is_empty() => format!("{i:x}"),
            Id::Seen(i) => self.reservations[i % self.reservations.len()].clone(),
        }
    }

    fn harvest(&mut self, v: &Value) {
        if let Some(ids) = v["ids"].as_array() {
            self.ids
                .extend(ids.iter().filter_map(|i| i.as_str().map(String::from)));
        }
        for m in v["messages"].as_array().into_iter().flatten() {
            if let Some(i) = m["id"].as_str() {
                self.ids.push(i.into());
            }
            if let Some(r) = m["reservation_id"].as_str() {
                self.reservations.push(r.into());
            }
        }
        if let Some(r) = v["reservation_id"].as_str() {
            self.reservations.push(r.into());
        }
        for list in [&mut self.ids, &mut self.reservations] {
            if list.len() > 200 {
                list.drain(..100);
            }
        }
    }
}

/// The methods a target takes.
fn methods(t: &Target) -> &'static [&'static str] {
    match t {
        Target::Other(_) | Target::List(_) => &["GET"],
        Target::Queue(_, _, tail) => match tail {
            Tail::Queue => &["GET", "PUT", "PATCH", "DELETE"],
            Tail::Messages => &["POST", "GET", "DELETE"],
            Tail::Message(_) => &["GET", "DELETE"],
            Tail::Touch(_) | Tail::Release(_) | Tail::Reservations | Tail::Webhook => &["POST"],
            Tail::PushStatuses(_) => &["GET"],
            Tail::Subscribers => &["POST", "PUT", "DELETE"],
            Tail::Alerts => &["POST", "PUT", "PATCH", "DELETE"],
            Tail::Alert(_) => &["DELETE"],
        },
    }
}

/// The request's path and the queue it names (when it is one of [`QUEUES`] of the test
/// project), so that queue can be compared before and after.
fn path_of(req: &Req, seen: &Seen) -> (String, Option<&'static str>) {
    match &req.target {
        Target::Other(p) => (p.to_string(), None),
        Target::List(pid) => (format!("/3/projects/{pid}/queues"), None),
        Target::Queue(pid, q, t) => {
            let name = match q {
                Ok(i) => QUEUES[*i],
                Err(s) => s,
            };
            let base = format!("/3/projects/{pid}/queues/{name}");
            let path = match t {
                Tail::Queue => base,
                Tail::Messages => format!("{base}/messages"),
                Tail::Message(i) => format!("{base}/messages/{}", seen.id(i)),
                Tail::Touch(i) => format!("{base}/messages/{}/touch", seen.id(i)),
                Tail::Release(i) => format!("{base}/messages/{}/release", seen.id(i)),
                Tail::PushStatuses(i) => format!("{base}/messages/{}/subscribers", seen.id(i)),
                Tail::Reservations => format!("{base}/reservations"),
                Tail::Webhook => format!("{base}/webhook"),
                Tail::Subscribers => format!("{base}/subscribers"),
                Tail::Alerts => format!("{base}/alerts"),
                Tail::Alert(a) => format!("{base}/alerts/{a}"),
            };
            let compared = (*pid == PID && q.is_ok()).then_some(name);
            (path, compared)
        }
    }
}

fn body_text(body: &Body, seen: &Seen) -> String {
    match body {
        Body::None => String::new(),
        Body::Raw(s) => s.to_string(),
        Body::Json(v) => {
            let mut v = v.clone();
            tame(&mut v);
            v.to_string()
        }
        Body::Post(msgs) => {
            let mut v = json!({ "messages": msgs });
            tame(&mut v);
            v.to_string()
        }
        Body::Delete(entries) => {
            let ids: Vec<Value> = entries
                .iter()
                .map(|(i, r)| match r {
                    Some(r) => json!({ "id": seen.id(i), "reservation_id": seen.reservation(r) }),
                    None => json!({ "id": seen.id(i) }),
                })
                .collect();
            json!({ "ids": ids }).to_string()
        }
        Body::Reservation(r, extra) => {
            let mut m = extra.clone();
            if let Some(r) = r {
                m.insert("reservation_id".into(), json!(seen.reservation(r)));
            }
            let mut v = Value::Object(m);
            tame(&mut v);
            v.to_string()
        }
    }
}

/// Keys whose small positive values would make state change on its own during the run
/// (expiry, delays, reservation timeouts): such values are raised to two hours.
const TIMED: &[&str] = &[
    "expires_in",
    "message_expiration",
    "delay",
    "timeout",
    "message_timeout",
    "retries_delay",
    "snooze",
];

fn tame(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if TIMED.contains(&k.as_str()) && x.as_f64().is_some_and(|n| n > 0.0 && n < 7200.0)
                {
                    *x = json!(7200);
                }
                tame(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(tame),
        _ => {}
    }
}

/// Sends one request on a fresh connection; returns (status, head, body).
fn send(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, String, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("no answer in 20 s to {method} {path} {body}: {e}"));
    common::wire::parse_response(&buf)
}

fn get(port: u16, path: &str) -> (u16, String) {
    let (s, _, b) = send(
        port,
        "GET",
        path,
        &format!("Authorization: OAuth {TOKEN}\r\n"),
        "",
    );
    (s, b)
}

/// What a failed request must leave as it was: the queue's definition and counters, and
/// the names of the project's queues. A push queue's size changes as deliveries end, so
/// only a pull queue's size is compared.
fn snapshot(port: u16, queue: &str) -> (u16, Value, Value) {
    let (s, info) = get(port, &format!("/3/projects/{PID}/queues/{queue}"));
    let mut info = json_of(&info);
    if info["queue"]["type"] != "pull"
        && let Some(q) = info["queue"].as_object_mut()
    {
        q.remove("size");
    }
    // Which of the generated queues exist (others come and go on their own: error queues
    // and fan-out targets are created when a delivery reaches them).
    let (_, list) = get(port, &format!("/3/projects/{PID}/queues?per_page=100"));
    let ours: Vec<Value> = json_of(&list)["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|q| QUEUES.iter().any(|n| n.replace("%20", " ") == q["name"]))
        .cloned()
        .collect();
    (s, info, Value::Array(ours))
}

/// Answers by status code, to show (and check) that the requests reach past validation.
type Tally = std::collections::BTreeMap<u16, usize>;

fn check(port: u16, req: &Req, seen: &mut Seen, tally: &mut Tally) -> Result<(), TestCaseError> {
    let (path, compared) = path_of(req, seen);
    let path = format!("{path}{}", req.query);
    let body = body_text(&req.body, seen);
    let mut headers = String::new();
    if let Some(t) = req.auth {
        headers.push_str(&format!("Authorization: OAuth {t}\r\n"));
    }
    if let Some(c) = req.content_type {
        headers.push_str(&format!("Content-Type: {c}\r\n"));
    }
    if let Some(m) = req.method_override {
        headers.push_str(&format!("X-HTTP-Method-Override: {m}\r\n"));
    }
    let method = match req.method {
        Method::Any(m) => m,
        Method::Fit(i) => {
            let fit = methods(&req.target);
            fit[i % fit.len()]
        }
    };
    let before = compared.map(|q| snapshot(port, q));
    let (status, head, text) = send(port, method, &path, &headers, &body);
    *tally.entry(status).or_default() += 1;
    let what = format!("{method} {path} {body:?} -> {status} {text}");
    prop_assert!(status < 500, "5xx: {what}");
    if path.starts_with("/metrics") && status == 200 {
        return Ok(()); // Prometheus text, not JSON
    }
    let head = head.to_ascii_lowercase();
    prop_assert!(
        head.contains("content-type: application/json"),
        "not JSON: {what}\n{head}"
    );
    prop_assert!(head.contains("content-length: "), "no length: {what}");
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("bad JSON ({e}): {what}")))?;
    if status >= 400 {
        prop_assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without msg: {what}"
        );
        if let (Some(q), Some(before)) = (compared, before) {
            let after = snapshot(port, q);
            prop_assert_eq!(&before, &after, "a failed request changed {}: {}", q, what);
        }
    } else {
        seen.harvest(&v);
    }
    Ok(())
}

#[test]
fn generated_requests_get_json_answers_no_5xx_and_failures_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv: Server = Start::new(dir.path()).run();
    let port = srv.port;
    // Something to work on from the first case: messages in each queue.
    for q in QUEUES {
        let (s, _, b) = send(
            port,
            "POST",
            &format!("/3/projects/{PID}/queues/{q}/messages"),
            &format!("Authorization: OAuth {TOKEN}\r\nContent-Type: application/json\r\n"),
            &json!({ "messages": [{ "body": "a" }, { "body": "b" }, { "body": "c" }] }).to_string(),
        );
        assert_eq!(s, 201, "{b}");
    }
    let cases = std::env::var("FERROMQ_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1500);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = Mutex::new(Seen::default());
    let tally = Mutex::new(Tally::new());
    let result = runner.run(&request(), |req| {
        check(
            port,
            &req,
            &mut seen.lock().expect("seen"),
            &mut tally.lock().expect("tally"),
        )
    });
    let tally = tally.into_inner().expect("tally");
    eprintln!("answers by status: {tally:?}");
    let log = srv.log_text();
    if let Err(e) = result {
        panic!("{e}\n\nserver log (tail):\n{}", tail_of(&log, 40));
    }
    assert!(common::health(port), "the server stopped answering");
    for bad in ["lvl=crit", "lvl=error", "panicked"] {
        assert!(
            !log.contains(bad),
            "the server logged {bad}:\n{}",
            tail_of(&log, 40)
        );
    }
    assert!(json_of(&get(port, "/health").1).is_object());
    // The generator must reach past validation: a good share of the requests succeed.
    let total: usize = tally.values().sum();
    let ok: usize = tally.range(200..300).map(|(_, n)| n).sum();
    assert!(ok * 10 >= total, "only {ok} of {total} requests succeeded");
}

fn tail_of(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
