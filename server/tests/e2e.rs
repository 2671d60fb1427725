//! End-to-end tests: start the real `ferromq` binary and drive it over HTTP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::wire::{call, call_as, call_with, parse_response, post_msgs};
use common::{ADMIN, PID, Server, Start, TOKEN, json_of, qp};
use serde_json::{Value, json};

fn start(dir: &std::path::Path) -> Server {
    start_env(dir, &[])
}

/// The server with a 1 s header-read timeout and 1 KiB message bodies, `env` on top.
fn start_env(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    Start::new(dir)
        .env("FERROMQ_HEADER_READ_TIMEOUT_MS", "1000")
        .env("FERROMQ_BODY_BYTES_MAX", "1024")
        .envs(env)
        .run()
}

#[test]
fn full_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path());
    let p = srv.port;

    // Auth.
    let (s, v) = call_with(p, "GET", &format!("/3/projects/{PID}/queues"), None, "", "");
    assert_eq!((s, v["msg"].is_string()), (401, true));
    let (s, _) = call_with(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues"),
        Some("wrong-token"),
        "",
        "",
    );
    assert_eq!(s, 401);
    let (s, v) = call_with(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues?oauth={TOKEN}"),
        None,
        "",
        "",
    );
    assert_eq!((s, v), (200, json!({"queues": []})));
    let (s, _) = call_with(
        p,
        "GET",
        "/3/projects/ffffffffffffffffffffffff/queues",
        Some(TOKEN),
        "",
        "",
    );
    assert_eq!(s, 404);
    let (s, _) = call_with(
        p,
        "GET",
        "/3/projects/ffffffffffffffffffffffff/queues",
        Some(ADMIN),
        "",
        "",
    );
    // The admin token reaches every project there is, and creates none.
    assert_eq!(s, 404);
    let (s, _) = call_with(
        p,
        "POST",
        "/3/projects/ffffffffffffffffffffffff/queues/orphan/messages",
        Some(ADMIN),
        "",
        r#"{"messages":[{"body":"x"}]}"#,
    );
    assert_eq!(s, 404);
    let (s, _) = call_with(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues"),
        Some(ADMIN),
        "",
        "",
    );
    assert_eq!(s, 200);

    // Queue CRUD.
    let (s, v) = call(
        p,
        "PUT",
        &qp("a%20b+c"),
        json!({"queue": {"message_timeout": 30}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["queue"]["name"], "a b+c");
    assert_eq!(v["queue"]["message_timeout"], 30);
    assert_eq!(v["queue"]["project_id"], PID);
    assert_eq!(v["queue"]["id"].as_str().map(str::len), Some(24));
    let (s, v) = call(
        p,
        "PATCH",
        &qp("a%20b+c"),
        json!({"queue": {"message_expiration": 404, "size": 9}}),
    );
    assert_eq!((s, &v["queue"]["message_expiration"]), (200, &json!(404)));
    let (s, v) = call(p, "PATCH", &qp("missing"), json!({}));
    assert_eq!((s, &v["msg"]), (404, &json!("Queue not found")));
    let (s, v) = call(p, "GET", &qp("a%20b+c"), Value::Null);
    assert_eq!(
        (s, &v["queue"]["size"], &v["queue"]["type"]),
        (200, &json!(0), &json!("pull"))
    );
    let (s, v) = call(
        p,
        "PUT",
        &qp("push1"),
        json!({"queue": {"push": {"subscribers": [{"name": "s", "url": "http://h/x"}]}}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["queue"]["type"], "multicast");
    assert_eq!(
        v["queue"]["push"],
        json!({"subscribers": [{"name": "s", "url": "http://h/x"}], "retries": 3, "retries_delay": 60, "error_queue": ""})
    );
    let (s, v) = call(p, "PATCH", &qp("push1"), json!({"queue": {"type": "pull"}}));
    assert_eq!(s, 403, "{v}");
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/subscribers", qp("push1")),
        json!({"subscribers": [{"name": "s"}]}),
    );
    assert_eq!(
        (s, &v["msg"]),
        (400, &json!("Push queues must have at least one subscriber"))
    );
    // A request the queue's type does not take: 400 (the docs keep 403 for stale
    // reservations and type changes).
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("push1")),
        json!({}),
    );
    assert_eq!(
        (s, &v["msg"]),
        (400, &json!("messages on a push queue cannot be reserved"))
    );
    for n in ["l1", "l2", "l3", "m1"] {
        assert_eq!(call(p, "PUT", &qp(n), Value::Null).0, 200);
    }
    let (_, v) = call(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues?per_page=2&prefix=l&page=3"),
        Value::Null,
    );
    assert_eq!(v, json!({"queues": [{"name": "l1"}, {"name": "l2"}]}));
    let (_, v) = call(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues?per_page=2&prefix=l&prev=l2"),
        Value::Null,
    );
    assert_eq!(v, json!({"queues": [{"name": "l3"}]}));
    // A per_page past 64 bits is over 100 like any other (capped), not malformed; a peek's
    // `n` that large is out of range, and says so.
    let (s, v) = call(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues?per_page=1000000000000000000000&prefix=l"),
        Value::Null,
    );
    assert_eq!((s, v["queues"].as_array().map(Vec::len)), (200, Some(3)));
    let (s, v) = call(
        p,
        "GET",
        &format!("{}/messages?n=1000000000000000000000", qp("l1")),
        Value::Null,
    );
    assert_eq!(s, 400, "{v}");
    assert!(!v["msg"].as_str().unwrap().contains("integer"), "{v}");
    let (s, v) = call(p, "DELETE", &qp("l3"), Value::Null);
    assert_eq!((s, &v["msg"]), (200, &json!("Deleted")));
    assert_eq!(call(p, "GET", &qp("l3"), Value::Null).0, 404);
    // Method override.
    let (s, v) = call_with(
        p,
        "POST",
        &qp("l2"),
        Some(TOKEN),
        "X-HTTP-Method-Override: DELETE\r\n",
        "",
    );
    assert_eq!((s, &v["msg"]), (200, &json!("Deleted")));

    // Messages: FIFO, reserve, delete, touch, release, peek, get.
    let ids = post_msgs(p, "work", &["one", "two", "three"]);
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| i.len() == 19));
    let (_, v) = call(
        p,
        "GET",
        &format!("{}/messages?n=10", qp("work")),
        Value::Null,
    );
    let bodies: Vec<&str> = v["messages"]
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["body"].as_str().expect("b"))
        .collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("work")),
        json!({"n": 2, "oauth": "x"}),
    );
    assert_eq!(s, 200);
    let r = v["messages"].as_array().expect("msgs").clone();
    assert_eq!(
        (r[0]["body"].as_str(), r[1]["body"].as_str()),
        (Some("one"), Some("two"))
    );
    assert_eq!(r[0]["reserved_count"], 1);
    let rid0 = r[0]["reservation_id"].as_str().expect("rid").to_string();
    let rid1 = r[1]["reservation_id"].as_str().expect("rid").to_string();
    assert_eq!(rid0.len(), 32);
    let (_, v) = call(p, "GET", &qp("work"), Value::Null);
    assert_eq!(
        (
            v["queue"]["size"].as_u64(),
            v["queue"]["total_messages"].as_u64()
        ),
        (Some(3), Some(3))
    );
    // Reserved without reservation id -> 403; touch gives a new id; old one is stale.
    let (s, _) = call(
        p,
        "DELETE",
        &format!("{}/messages/{}", qp("work"), ids[0]),
        json!({"reservation_id": ""}),
    );
    assert_eq!(s, 403);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages/{}/touch", qp("work"), ids[0]),
        json!({"reservation_id": rid0}),
    );
    assert_eq!((s, &v["msg"]), (200, &json!("Touched")));
    let new_rid = v["reservation_id"].as_str().expect("rid").to_string();
    assert_ne!(new_rid, rid0);
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/messages/{}", qp("work"), ids[0]),
        json!({"reservation_id": rid0}),
    );
    assert_eq!(s, 403);
    assert!(
        v["msg"]
            .as_str()
            .expect("msg")
            .contains("Reservation timed out")
    );
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/messages/{}", qp("work"), ids[0]),
        json!({"reservation_id": new_rid}),
    );
    assert_eq!((s, &v["msg"]), (200, &json!("Deleted")));
    let (s, v) = call(
        p,
        "GET",
        &format!("{}/messages/{}", qp("work"), ids[0]),
        Value::Null,
    );
    assert_eq!((s, &v["msg"]), (404, &json!("Message not found")));
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages/{}/release", qp("work"), ids[1]),
        json!({"reservation_id": rid1}),
    );
    assert_eq!((s, &v["msg"]), (200, &json!("Released")));
    let (s, v) = call(
        p,
        "GET",
        &format!("{}/messages/{}", qp("work"), ids[1]),
        Value::Null,
    );
    assert_eq!(
        (s, &v["message"]["body"], &v["message"]["reserved_count"]),
        (200, &json!("two"), &json!(1))
    );
    // Batch delete with bare ids and objects.
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/messages", qp("work")),
        json!({"ids": [ids[1], {"id": ids[2]}]}),
    );
    assert_eq!((s, &v["msg"]), (200, &json!("Deleted")), "{v}");
    let (_, v) = call(p, "GET", &qp("work"), Value::Null);
    assert_eq!(v["queue"]["size"], 0);
    // Clear.
    post_msgs(p, "work", &["x", "y"]);
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/messages", qp("work")),
        json!({"oauth": TOKEN}),
    );
    assert_eq!((s, &v["msg"]), (200, &json!("Cleared")));
    let (_, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("work")),
        json!({}),
    );
    assert_eq!(v, json!({"messages": []}));
    // Errors.
    let (s, _) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("nope")),
        json!({}),
    );
    assert_eq!(s, 404);
    let (s, v) = call_with(
        p,
        "POST",
        &format!("{}/messages", qp("work")),
        Some(TOKEN),
        "",
        "{not json",
    );
    assert_eq!(s, 400);
    assert!(v["msg"].as_str().expect("msg").starts_with("Invalid JSON"));
    let big = format!(
        "{{\"messages\":[{{\"body\":\"{}\"}}]}}",
        "x".repeat(200_000)
    );
    let (s, v) = call_with(
        p,
        "POST",
        &format!("{}/messages", qp("work")),
        Some(TOKEN),
        "",
        &big,
    );
    assert_eq!((s, v["msg"].is_string()), (413, true));
    let (s, _) = call(
        p,
        "POST",
        &format!("{}/messages", qp("work")),
        json!({"messages": [{"body": "d", "delay": 604801}]}),
    );
    assert_eq!(s, 400);
    let (s, _) = call(
        p,
        "POST",
        &format!("{}/messages", qp("work")),
        json!({"messages": [{"body": "d", "push_headers": {"Content-Type": "x"}}]}),
    );
    assert_eq!(s, 400);
    // Push headers and subscriber headers must be valid HTTP; target queues valid names.
    for h in [
        json!({"X Custom": "v"}),
        json!({"X-Custom": "a\r\nInjected: 1"}),
    ] {
        let (s, v) = call(
            p,
            "POST",
            &format!("{}/messages", qp("work")),
            json!({"messages": [{"body": "d", "push_headers": h}]}),
        );
        assert_eq!((s, v["msg"].is_string()), (400, true), "{h}: {v}");
    }
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages", qp("utf8-headers")),
        json!({"messages": [{"body": "d", "push_headers": {"X-Name": "Zoë"}}]}),
    );
    assert_eq!(s, 201, "{v}");
    let long = "q".repeat(300);
    for body in [
        json!({"queue": {"type": "multicast", "push": {"subscribers": [
            {"name": "s", "url": "http://127.0.0.1:9/", "headers": {"Bad Name": "x"}}]}}}),
        json!({"queue": {"type": "multicast", "push": {"error_queue": long,
            "subscribers": [{"name": "s", "url": "http://127.0.0.1:9/"}]}}}),
        json!({"queue": {"alerts": [{"type": "fixed", "trigger": 1, "queue": long}]}}),
        json!({"queue": {"dead_letter": {"queue_name": long}}}),
        json!({"queue": {"dead_letter": {"queue_name": "checked-settings"}}}),
    ] {
        let (s, v) = call(p, "PUT", &qp("checked-settings"), body.clone());
        assert_eq!((s, v["msg"].is_string()), (400, true), "{body}: {v}");
    }
    assert_eq!(call(p, "GET", &qp("checked-settings"), Value::Null).0, 404);

    // A body must be a string; a wait beyond 30 s is out of range (nothing is posted).
    for bad in [json!(5), json!({"a": 1}), json!(true), json!(["x"])] {
        let (s, v) = call(
            p,
            "POST",
            &format!("{}/messages", qp("work")),
            json!({"messages": [{"body": "fine"}, {"body": bad}]}),
        );
        assert_eq!(
            (s, v["msg"].as_str()),
            (400, Some("message body must be a string"))
        );
    }
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("work")),
        json!({"wait": 31}),
    );
    assert_eq!(
        (s, v["msg"].as_str()),
        (400, Some("wait must be between 0 and 30"))
    );
    // A pop is a reservation: the first one reports reserved_count 1.
    call(
        p,
        "POST",
        &format!("{}/messages", qp("pop")),
        json!({"messages": [{"body": "p"}]}),
    );
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("pop")),
        json!({"delete": true}),
    );
    assert_eq!((s, &v["messages"][0]["reserved_count"]), (200, &json!(1)));
    let (s, _) = call(
        p,
        "PATCH",
        &format!("/3/projects/{PID}/queues"),
        Value::Null,
    );
    assert_eq!(s, 405);

    // Long poll: returns early on post, and empty at its deadline.
    let t = Instant::now();
    let (_, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("lp")),
        json!({"wait": 1}),
    );
    assert_eq!(v["msg"], "Queue not found");
    post_msgs(p, "lp", &["seed"]);
    call(p, "DELETE", &format!("{}/messages", qp("lp")), json!({}));
    let (_, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("lp")),
        json!({"wait": 1}),
    );
    assert_eq!(v, json!({"messages": []}));
    assert!(t.elapsed() >= Duration::from_millis(900));
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        post_msgs(p, "lp", &["late"]);
    });
    let t = Instant::now();
    let (_, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("lp")),
        json!({"wait": 10}),
    );
    assert_eq!(v["messages"][0]["body"], "late");
    assert!(t.elapsed() < Duration::from_secs(5));
    poster.join().expect("poster");

    // Slowloris: an incomplete request head is cut after the 1 s header-read timeout.
    let mut s = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "connection was not closed"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));

    // A body that stops arriving is given up after the same 1 s: a JSON 408, the
    // connection closed, nothing posted.
    let mut s = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let path = format!("{}/messages", qp("stalled"));
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\""
        )
        .as_bytes(),
    )
    .expect("write");
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let waited = t.elapsed();
    let (status, _, body) = parse_response(&buf);
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&buf));
    assert!(json_of(&body)["msg"].is_string(), "{body}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(call(p, "GET", &qp("stalled"), Value::Null).0, 404);

    // A long poll whose client has gone stops waiting: a message posted after it is not
    // reserved for nobody.
    call(p, "PUT", &qp("abandoned"), json!({}));
    let mut s = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let body = r#"{"wait": 5}"#;
    s.write_all(
        common::wire::request_text(
            "POST",
            &format!("{}/reservations", qp("abandoned")),
            Some(TOKEN),
            "",
            body,
        )
        .as_bytes(),
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    post_msgs(p, "abandoned", &["for a live consumer"]);
    let (_, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("abandoned")),
        json!({}),
    );
    assert_eq!(v["messages"][0]["body"], "for a live consumer", "{v}");

    // A delayed release wakes a waiting long poll when the delay is over (not at its wait).
    post_msgs(p, "rel", &["again"]);
    let (_, v) = call(p, "POST", &format!("{}/reservations", qp("rel")), json!({}));
    let (id, rid) = (
        v["messages"][0]["id"].as_str().unwrap().to_string(),
        v["messages"][0]["reservation_id"].clone(),
    );
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let (_, v) = call(
            p,
            "POST",
            &format!("{}/reservations", qp("rel")),
            json!({"wait": 10}),
        );
        (t.elapsed(), v)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages/{id}/release", qp("rel")),
        json!({"reservation_id": rid, "delay": 1}),
    );
    assert_eq!(s, 200, "{v}");
    let (waited, v) = waiter.join().expect("waiter");
    assert_eq!(v["messages"][0]["body"], "again", "{v}");
    assert!(waited < Duration::from_secs(4), "woken after {waited:?}");

    // Two long polls, one message: the first takes it for 1 s; the second, asleep since
    // before that reservation existed, gets it when the reservation ends (not at its wait).
    let poll = move || {
        std::thread::spawn(move || {
            let t = Instant::now();
            let (_, v) = call(
                p,
                "POST",
                &format!("{}/reservations", qp("lp2")),
                json!({"n": 1, "timeout": 1, "wait": 10}),
            );
            (t.elapsed(), v)
        })
    };
    call(p, "PUT", &qp("lp2"), json!({}));
    let (a, b) = (poll(), poll());
    std::thread::sleep(Duration::from_millis(300));
    post_msgs(p, "lp2", &["shared"]);
    let (mut got, mut times) = (Vec::new(), Vec::new());
    for w in [a, b] {
        let (waited, v) = w.join().expect("poller");
        got.push(v["messages"][0]["reserved_count"].as_u64());
        times.push(waited);
    }
    got.sort();
    assert_eq!(got, [Some(1), Some(2)], "each poll got it once: {got:?}");
    let last = times.iter().max().unwrap();
    assert!(
        *last < Duration::from_secs(4),
        "second poll woken after {last:?}"
    );

    // A request head over header_bytes_max (64 KiB by default) is a JSON 431; one just under
    // it is served.
    for (pad, want) in [(60_000, 200), (70_000, 431)] {
        let req = format!(
            "GET /3/projects/{PID}/queues HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth {TOKEN}\r\n\
             X-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(pad)
        );
        let (status, head, body) = common::wire::send(p, &req);
        assert_eq!(status, want, "{head}{body}");
        if want == 431 {
            assert!(head.contains("application/json"), "{head}");
            assert!(
                json_of(&body)["msg"].as_str().unwrap().contains("65536"),
                "{body}"
            );
        }
    }

    // Restart keeps messages.
    post_msgs(p, "durable", &["keep me"]);
    drop(srv);
    let srv = start(dir.path());
    let (_, v) = call(
        srv.port,
        "GET",
        &format!("{}/messages", qp("durable")),
        Value::Null,
    );
    assert_eq!(v["messages"][0]["body"], "keep me");
}

/// Sends one keep-alive request on `s` and reads its complete response head and body.
fn request_on(s: &mut TcpStream, path: &str) -> Option<String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    response_on(s)
}

/// Reads one complete response (head and `Content-Length` body) from `s`.
fn response_on(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len: usize = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return Some(text);
            }
        }
    }
}

#[test]
fn expect_100_continue_gets_the_body_or_an_answer_that_says_the_connection_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path());
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = r#"{"messages":[{"body":"after 100"}]}"#;
    let path = format!("{}/messages", qp("cont"));
    let head = |auth: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
    };
    // With a token (.NET sends every POST so): 100 Continue, the body, then 201 on a
    // connection that stays open.
    let auth = format!("Authorization: OAuth {TOKEN}\r\n");
    s.write_all(head(&auth).as_bytes()).expect("write");
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).expect("read");
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(body.as_bytes()).expect("write");
    let resp = response_on(&mut s).expect("answer");
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    // Refused before the body is asked for: the answer says that the connection closes
    // (RFC 9110 §10.1.1), and it does.
    s.write_all(head("").as_bytes()).expect("write");
    let resp = response_on(&mut s).expect("answer");
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close\r\n"),
        "{resp}"
    );
    assert!(resp.contains(r#""msg""#), "{resp}");
    let mut rest = Vec::new();
    let after = s.read_to_end(&mut rest).map(|_| rest.len()).unwrap_or(0);
    assert_eq!(after, 0, "closed after the answer");
    let (_, v) = call(srv.port, "GET", &qp("cont"), Value::Null);
    assert_eq!(v["queue"]["size"], 1, "{v}");
}

#[test]
fn connection_cap_and_idle_keep_alive_timeout_are_enforced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start_env(
        dir.path(),
        &[
            ("FERROMQ_CONNECTIONS_MAX", "3"),
            ("FERROMQ_KEEP_ALIVE_TIMEOUT_MS", "1500"),
            // hyper also applies the header-read timeout to the wait for the next request on
            // a kept-alive connection; keep it out of the way of the idle timeout measured.
            ("FERROMQ_HEADER_READ_TIMEOUT_MS", "10000"),
        ],
    );
    let p = srv.port;
    // The start-up probe used one slot; give the server a moment to release it.
    std::thread::sleep(Duration::from_millis(200));
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", p)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let r = request_on(&mut s, "/health").expect("served under the cap");
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            s
        })
        .collect();
    // A fourth connection is not served while three are open.
    let mut extra = TcpStream::connect(("127.0.0.1", p)).expect("connect (kernel backlog)");
    extra
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    assert_eq!(
        request_on(&mut extra, "/health"),
        None,
        "served over the connection cap"
    );
    // Closing one lets it through.
    drop(held.pop());
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut got = String::new();
    let mut b = [0u8; 1024];
    let t = Instant::now();
    while !got.contains("\r\n\r\n") && t.elapsed() < Duration::from_secs(5) {
        match extra.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&b[..n])),
        }
    }
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "queued connection not served: {got:?}"
    );
    // An idle keep-alive connection is closed after the idle timeout (1.5 s), counted from
    // its last request.
    drop(held);
    drop(extra);
    std::thread::sleep(Duration::from_millis(200));
    let mut idle = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(6)))
        .expect("timeout");
    let r = request_on(&mut idle, "/health").expect("served");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let t = Instant::now();
    let mut sink = Vec::new();
    let _ = idle.read_to_end(&mut sink);
    let waited = t.elapsed();
    assert!(sink.is_empty(), "unexpected bytes on an idle connection");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "idle connection closed after {waited:?}"
    );
    drop(srv);
}

/// `size` and `total_messages` of queue `q`.
fn counts(p: u16, q: &str) -> (u64, u64) {
    let (s, v) = call(p, "GET", &qp(q), Value::Null);
    assert_eq!(s, 200, "{q}: {v}");
    let n = |f: &str| v["queue"][f].as_u64().unwrap_or_else(|| panic!("{f}: {v}"));
    (n("size"), n("total_messages"))
}

/// Reserves every message of `q` once and releases it, then reserves again: with
/// `max_reservations` 1 that reserve moves them all to the dead-letter queue.
fn dead_letter_all(p: u16, q: &str) {
    let reserve = || {
        call(
            p,
            "POST",
            &format!("{}/reservations", qp(q)),
            json!({"n": 100}),
        )
    };
    let (s, v) = reserve();
    assert_eq!(s, 200, "{v}");
    for m in v["messages"].as_array().expect("messages") {
        let path = format!("{}/messages/{}/release", qp(q), m["id"].as_str().unwrap());
        let (s, v) = call(
            p,
            "POST",
            &path,
            json!({"reservation_id": m["reservation_id"]}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = reserve();
    assert_eq!((s, &v["messages"]), (200, &json!([])), "{v}");
}

/// Messages moved to a dead-letter queue count in its `total_messages`, and the count is the
/// same after a clean restart (the restart index), after a kill (the index plus the log after
/// it) and after a full replay of the log (no index).
#[test]
fn dead_letter_moves_count_in_total_messages_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = start(dir.path());
    let p = srv.port;
    let (s, v) = call(
        p,
        "PUT",
        &qp("src"),
        json!({"queue": {"dead_letter": {"queue_name": "src-dlq", "max_reservations": 1}}}),
    );
    assert_eq!(s, 200, "{v}");
    post_msgs(p, "src", &["a", "b", "c"]);
    dead_letter_all(p, "src");
    assert_eq!(counts(p, "src-dlq"), (3, 3));
    post_msgs(p, "src-dlq", &["direct"]);
    assert_eq!((counts(p, "src"), counts(p, "src-dlq")), ((0, 3), (4, 4)));

    // A clean stop writes the restart index; the next start loads it.
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(10)).success());
    let mut srv = srv.restart();
    let p = srv.port;
    assert!(srv.log_text().contains("restart index loaded"));
    assert_eq!((counts(p, "src"), counts(p, "src-dlq")), ((0, 3), (4, 4)));

    // Moves after the index, then a kill: the index plus a replay of the moves.
    post_msgs(p, "src", &["d"]);
    dead_letter_all(p, "src");
    assert_eq!(counts(p, "src-dlq"), (5, 5));
    srv.kill();
    let mut srv = srv.restart();
    let p = srv.port;
    assert!(srv.log_text().contains("restart index loaded"));
    assert_eq!((counts(p, "src"), counts(p, "src-dlq")), ((0, 4), (5, 5)));

    // No index: the whole log replayed.
    srv.kill();
    std::fs::remove_file(dir.path().join("data/index.idx")).expect("the index");
    let srv = srv.restart();
    let p = srv.port;
    assert!(srv.log_text().contains("no restart index"));
    assert_eq!((counts(p, "src"), counts(p, "src-dlq")), ((0, 4), (5, 5)));
}

/// A dead-letter link that would close a cycle (A -> B -> A, or longer) is refused by every
/// path that sets one, and the refused request changes nothing.
#[test]
fn dead_letter_cycles_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path());
    let p = srv.port;
    let dl =
        |to: &str| json!({"queue": {"dead_letter": {"queue_name": to, "max_reservations": 1}}});
    let refused = |method: &str, q: &str, to: &str| {
        let (s, v) = call(p, method, &qp(q), dl(to));
        assert_eq!(s, 400, "{method} {q} -> {to}: {v}");
        v["msg"].as_str().expect("msg").to_string()
    };
    assert_eq!(call(p, "PUT", &qp("a"), dl("b")).0, 200);
    // Create (PUT) of b linking back: refused, and b is not created.
    assert_eq!(
        refused("PUT", "b", "a"),
        r#"dead_letter queue_name "a" would make a dead-letter cycle: b -> a -> b"#
    );
    // b exists (created as a's dead-letter queue), without a dead-letter queue of its own.
    let (s, v) = call(p, "GET", &qp("b"), Value::Null);
    assert_eq!((s, v["queue"].get("dead_letter")), (200, None), "{v}");
    // Update (PATCH, and PUT on an existing queue) of b: refused, b unchanged.
    assert_eq!(call(p, "PUT", &qp("b"), json!({})).0, 200);
    refused("PATCH", "b", "a");
    refused("PUT", "b", "a");
    let (_, v) = call(p, "GET", &qp("b"), Value::Null);
    assert_eq!(v["queue"].get("dead_letter"), None, "{v}");
    // A longer cycle.
    assert_eq!(call(p, "PUT", &qp("c"), dl("a")).0, 200);
    assert_eq!(
        refused("PATCH", "b", "c"),
        r#"dead_letter queue_name "c" would make a dead-letter cycle: b -> c -> a -> b"#
    );
    // A queue naming itself keeps its own message.
    assert_eq!(
        refused("PATCH", "a", "a"),
        "a queue cannot be its own dead_letter queue"
    );
    // Deleted and created again: still checked.
    assert_eq!(call(p, "DELETE", &qp("b"), Value::Null).0, 200);
    refused("PUT", "b", "c");
    // A chain is fine; removing a link lets the other direction be set.
    assert_eq!(call(p, "PUT", &qp("b"), dl("d")).0, 200);
    let (s, v) = call(
        p,
        "PATCH",
        &qp("a"),
        json!({"queue": {"dead_letter": {"queue_name": ""}}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(call(p, "PATCH", &qp("b"), dl("c")).0, 200);
    assert_eq!(call(p, "PATCH", &qp("a"), dl("b")).0, 400);
}

/// Queues declared in the configuration file may not close a dead-letter cycle, among
/// themselves (refused when the configuration is read, before anything is applied) or
/// through a queue that already exists (refused when applied): the server does not start.
#[test]
fn declared_queues_that_close_a_dead_letter_cycle_stop_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ferromq.json");
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let write = |queues: Value| {
        std::fs::write(&cfg, json!({ "queues": queues }).to_string()).expect("write config")
    };
    let decl = |name: &str, to: &str| json!({"project": PID, "name": name, "dead_letter": {"queue_name": to}});
    write(json!([decl("x", "y"), decl("y", "x")]));
    let text = Start::new(dir.path())
        .args(&["--config", &cfg_arg])
        .refused();
    assert!(
        text.contains("`queues[0].dead_letter`")
            && text.contains(r#"would make a dead-letter cycle: x -> y -> x"#),
        "{text}"
    );

    let srv = start(dir.path());
    assert_eq!(
        call(
            srv.port,
            "PUT",
            &qp("x"),
            json!({"queue": {"dead_letter": {"queue_name": "y"}}})
        )
        .0,
        200
    );
    drop(srv);
    write(json!([decl("y", "x")]));
    let text = Start::new(dir.path())
        .args(&["--config", &cfg_arg])
        .refused();
    assert!(
        text.contains("`queues[0].dead_letter`")
            && text.contains(r#"would make a dead-letter cycle: y -> x -> y"#),
        "{text}"
    );
    // y is x's dead-letter queue (created with it), unchanged by the refused start.
    let srv = start(dir.path());
    let (s, v) = call(srv.port, "GET", &qp("y"), Value::Null);
    assert_eq!((s, v["queue"].get("dead_letter")), (200, None), "{v}");
}

/// Requests shaped by clients other than the two run in the test suite: PHP's empty
/// options (`[]`), Go field names (`N`, `Ids`); and what the docs promise about dead-letter
/// queues and expiry that the common paths do not show.
#[test]
fn client_quirks_dead_letter_creation_and_expiry_behind_a_reservation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path());
    let p = srv.port;

    // PHP: json_encode(array()) is `[]`, and every body carries `oauth`.
    let (s, v) = call(p, "PUT", &qp("php"), json!({"queue": [], "oauth": TOKEN}));
    assert_eq!((s, v["queue"]["type"].as_str()), (200, Some("pull")), "{v}");
    let (s, v) = call(
        p,
        "PATCH",
        &qp("php"),
        json!({"queue": {"dead_letter": [], "message_timeout": 90}, "oauth": TOKEN}),
    );
    assert_eq!(
        (s, v["queue"]["message_timeout"].as_u64()),
        (200, Some(90)),
        "{v}"
    );
    let (s, v) = call(
        p,
        "PUT",
        &qp("php-push"),
        json!({"queue": {"push": {"subscribers": [{"name": "s", "url": "http://127.0.0.1:1/x", "headers": []}]}}}),
    );
    assert_eq!(s, 200, "{v}");

    // JavaScript and Python write half an emoji (a string cut between the halves of a UTF-16
    // pair) as a lone `\ud83d` escape: valid JSON, stored as U+FFFD as Go's decoder makes it.
    let (s, v) = call_with(
        p,
        "POST",
        &format!("{}/messages", qp("cut")),
        Some(TOKEN),
        "",
        r#"{"messages":[{"body":"cut: \ud83d"},{"body":"\ud83d\ude00"}]}"#,
    );
    assert_eq!(s, 201, "{v}");
    let bodies: Vec<Value> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let path = format!("{}/messages/{}", qp("cut"), id.as_str().unwrap());
            call(p, "GET", &path, Value::Null).1["message"]["body"].clone()
        })
        .collect();
    assert_eq!(bodies, [json!("cut: \u{fffd}"), json!("😀")]);

    // Ruby's `Queue#add_alerts` sends PATCH to `/alerts`, its alerts wrapped in `queue`.
    let (s, v) = call(
        p,
        "PATCH",
        &format!("{}/alerts", qp("php")),
        json!({"queue": {"alerts": [{"type": "fixed", "trigger": 3, "queue": "php-alerts"}]}}),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(p, "GET", &qp("php"), Value::Null);
    assert_eq!(v["queue"]["alerts"][0]["trigger"], 3, "{v}");

    // Headers that frame the push request are the server's, not the subscriber's or the
    // message's.
    let (s, v) = call(
        p,
        "PUT",
        &qp("framed"),
        json!({"queue": {"push": {"subscribers": [{"name": "s", "url": "http://127.0.0.1:1/x", "headers": {"Content-Length": "0"}}]}}}),
    );
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages", qp("framed")),
        json!({"messages": [{"body": "x", "push_headers": {"Transfer-Encoding": "chunked"}}]}),
    );
    assert_eq!(s, 400, "{v}");

    // Go field names: `N` counts, and `Ids` is a batch delete, never a clear.
    let ids = post_msgs(p, "go", &["a", "b", "c"]);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("go")),
        json!({"N": 2}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "{v}");
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/messages", qp("go")),
        json!({"Ids": [{"Id": ids[2]}]}),
    );
    assert_eq!((s, v["msg"].as_str()), (200, Some("Deleted")), "{v}");
    let (_, v) = call(p, "GET", &qp("go"), Value::Null);
    assert_eq!(v["queue"]["size"], 2, "only the named message went: {v}");

    // .NET sends a reserve's `wait` in the query string, `n` and `timeout` in the body: the
    // options are read from either, the body winning where both give one.
    assert_eq!(call(p, "PUT", &qp("net"), Value::Null).0, 200);
    let path = format!("{}/reservations?wait=1&n=5", qp("net"));
    let t0 = Instant::now();
    let (s, v) = call(p, "POST", &path, json!({"n": 1}));
    assert_eq!((s, &v["messages"]), (200, &json!([])), "{v}");
    assert!(t0.elapsed() >= Duration::from_millis(900), "it waited");
    post_msgs(p, "net", &["a", "b", "c"]);
    let (_, v) = call(p, "POST", &path, json!({"n": 1}));
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = call(p, "POST", &path, Value::Null);
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "{v}");
    for bad in ["wait=x", "wait=31", "delete=1"] {
        let path = format!("{}/reservations?{bad}", qp("net"));
        let (s, v) = call(p, "POST", &path, Value::Null);
        assert_eq!(s, 400, "{bad}: {v}");
    }

    // A dead-letter queue exists as soon as it is configured (dlq doc: auto-created with
    // default pull settings), so its consumers can start first.
    let (s, v) = call(
        p,
        "PUT",
        &qp("work"),
        json!({"queue": {"dead_letter": {"queue_name": "work-dlq", "max_reservations": 3}}}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(p, "GET", &qp("work-dlq"), Value::Null);
    assert_eq!((s, v["queue"]["type"].as_str()), (200, Some("pull")), "{v}");
    assert_eq!(v["queue"]["size"], 0);

    // Expiry is not held up by a reserved message ahead: the expired one behind it is gone
    // from `size` and from lookups by id.
    let (s, _) = call(
        p,
        "PUT",
        &qp("exp"),
        json!({"queue": {"message_expiration": 1}}),
    );
    assert_eq!(s, 200);
    let ids = post_msgs(p, "exp", &["head", "behind"]);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("exp")),
        json!({"n": 1, "timeout": 60}),
    );
    assert_eq!(
        (s, v["messages"][0]["id"].as_str()),
        (200, Some(ids[0].as_str()))
    );
    std::thread::sleep(Duration::from_millis(2100));
    let (s, v) = call(
        p,
        "GET",
        &format!("{}/messages/{}", qp("exp"), ids[1]),
        Value::Null,
    );
    assert_eq!(s, 404, "an expired message is not found: {v}");
    let (_, v) = call(p, "GET", &qp("exp"), Value::Null);
    assert_eq!(v["queue"]["size"], 1, "only the reserved one is left: {v}");
    let (s, _) = call(
        p,
        "DELETE",
        &format!("{}/messages/{}", qp("exp"), ids[1]),
        json!({}),
    );
    assert_eq!(s, 404);
}

/// A reservation id that is not 32 hex digits matches no reservation, but what is missing
/// is said first: 404 for the queue, then for the message, and only then the 403 of a wrong
/// reservation. A token that is no token gets 401 even where a push acknowledgement would
/// pass without one.
#[test]
fn malformed_reservation_ids_are_wrong_reservations_checked_after_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path());
    let p = srv.port;
    let ids = post_msgs(p, "rq", &["a", "b"]);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("rq")),
        json!({"n": 1}),
    );
    assert_eq!(s, 200, "{v}");
    let reserved = v["messages"][0]["id"].as_str().expect("id").to_string();
    assert_eq!(reserved, ids[0]);
    let missing_id = "1000000000000000001";
    for bad in ["abc", "def456", "x", &"g".repeat(32)] {
        let rid = json!({ "reservation_id": bad });
        for (method, suffix) in [("POST", "/release"), ("POST", "/touch"), ("DELETE", "")] {
            let on = |q: &str, id: &str| {
                call(
                    p,
                    method,
                    &format!("{}/messages/{id}{suffix}", qp(q)),
                    rid.clone(),
                )
            };
            let (s, v) = on("no-such-queue", &ids[0]);
            assert_eq!(
                (s, v["msg"].as_str()),
                (404, Some("Queue not found")),
                "{bad} {method}{suffix}"
            );
            let (s, v) = on("rq", missing_id);
            assert_eq!(
                (s, v["msg"].as_str()),
                (404, Some("Message not found")),
                "{bad} {method}{suffix}"
            );
            let (s, v) = on("rq", &reserved);
            assert_eq!(s, 403, "{bad} {method}{suffix}: {v}");
            assert!(
                v["msg"]
                    .as_str()
                    .expect("msg")
                    .contains("Reservation timed out"),
                "{v}"
            );
        }
        let (s, v) = call(
            p,
            "DELETE",
            &format!("{}/messages", qp("no-such-queue")),
            json!({"ids": [{"id": ids[1], "reservation_id": bad}]}),
        );
        assert_eq!(
            (s, v["msg"].as_str()),
            (404, Some("Queue not found")),
            "{v}"
        );
        let (s, v) = call(
            p,
            "DELETE",
            &format!("{}/messages", qp("rq")),
            json!({"ids": [{"id": reserved, "reservation_id": bad}]}),
        );
        assert_eq!(s, 403, "{v}");
    }
    // Nothing above changed anything.
    let (_, v) = call(p, "GET", &qp("rq"), Value::Null);
    assert_eq!(v["queue"]["size"], 2, "{v}");

    // A push acknowledgement passes without a token; one that fails is a 403 without a
    // token and a 401 with a token that is none.
    let path = format!("{}/messages/{}", qp("rq"), ids[1]);
    let ack = json!({"reservation_id": "0".repeat(32), "subscriber_name": "s"});
    let (s, _) = call_as(p, "DELETE", &path, None, ack.clone());
    assert_eq!(s, 403);
    let (s, v) = call_as(p, "DELETE", &path, Some("not-a-token"), ack);
    assert_eq!(
        (s, v["msg"].as_str()),
        (401, Some("Invalid or missing token")),
        "{v}"
    );
    let (_, v) = call(p, "GET", &qp("rq"), Value::Null);
    assert_eq!(v["queue"]["size"], 2, "{v}");
}

/// JSON fields of the wrong type are 400 and change nothing (contract §11.1: "wrong
/// types"); `null` and `""` are unset (§15.6), and a number written with a zero fraction
/// is that number (JSON has one number type).
#[test]
fn wrong_json_types_are_400_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path());
    let p = srv.port;
    let (s, _) = call(
        p,
        "PUT",
        &qp("typed"),
        json!({"queue": {"message_timeout": 90}}),
    );
    assert_eq!(s, 200);
    post_msgs(p, "typed", &["a"]);

    for (method, path, body) in [
        (
            "PATCH",
            qp("typed"),
            json!({"queue": {"message_timeout": "60"}}),
        ),
        (
            "PATCH",
            qp("typed"),
            json!({"queue": {"message_expiration": true}}),
        ),
        (
            "PUT",
            qp("typed2"),
            json!({"queue": {"message_timeout": "60"}}),
        ),
        (
            "POST",
            format!("{}/messages", qp("typed")),
            json!({"messages": [{"body": "b", "delay": "5"}]}),
        ),
        (
            "POST",
            format!("{}/reservations", qp("typed")),
            json!({"n": "1"}),
        ),
        (
            "POST",
            format!("{}/reservations", qp("typed")),
            json!({"delete": 1}),
        ),
        (
            "POST",
            format!("{}/reservations", qp("typed")),
            json!({"delete": "true"}),
        ),
        (
            "POST",
            format!("{}/reservations", qp("typed")),
            json!({"n": 1.5}),
        ),
    ] {
        let (s, v) = call(p, method, &path, body.clone());
        assert_eq!(s, 400, "{method} {path} {body}: {v}");
        assert!(
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("Invalid JSON")),
            "{v}"
        );
    }
    // Nothing changed: the queue's settings, its one message (still unreserved), and no
    // queue made by the refused PUT.
    let (_, v) = call(p, "GET", &qp("typed"), json!({}));
    assert_eq!(
        (
            v["queue"]["message_timeout"].as_u64(),
            v["queue"]["size"].as_u64()
        ),
        (Some(90), Some(1)),
        "{v}"
    );
    let (s, _) = call(p, "GET", &qp("typed2"), json!({}));
    assert_eq!(s, 404);

    // Unset and integral forms are taken.
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("typed")),
        json!({"n": 1.0, "timeout": "", "wait": null, "delete": ""}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["messages"][0]["reservation_id"].is_string(), "{v}");
}
