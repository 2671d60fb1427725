//! Operations, against the real `ferromq` binary: stats, logs, configuration, declared
//! queues, health/readiness, metrics, graceful shutdown and HTTPS.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::wire::{call, call_as, parse_response, post_msgs, raw, request_text};
use common::{ADMIN, PID, Server, Start, TOKEN, qp};
use serde_json::{Value, json};

/// The server on `dir` with `env` on top of the test settings, once `GET /health` answers.
fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    Start::new(dir).envs(env).run()
}

// ---- HTTP ----

/// Posts `n` messages, `m0`, `m1`, ..., to `q`; returns their ids.
fn post(port: u16, q: &str, n: usize) -> Vec<String> {
    let bodies: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    post_msgs(port, q, &bodies)
}

fn reserve(port: u16, q: &str, n: usize) -> Vec<Value> {
    let (s, v) = call(
        port,
        "POST",
        &format!("{}/reservations", qp(q)),
        json!({ "n": n }),
    );
    assert_eq!(s, 200, "{v}");
    v["messages"].as_array().expect("messages").clone()
}

// ---- logfmt ----

/// Parses one logfmt line into key/value pairs; panics on anything malformed.
fn logfmt(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ' ' {
                break;
            }
            assert!(c > ' ' && c != '"', "bad key character {c:?} in {line:?}");
            key.push(c);
            chars.next();
        }
        assert!(!key.is_empty(), "empty key in {line:?}");
        assert_eq!(
            chars.next(),
            Some('='),
            "key {key} without a value in {line:?}"
        );
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some('"') => val.push('"'),
                        Some('\\') => val.push('\\'),
                        Some('n') => val.push('\n'),
                        Some('r') => val.push('\r'),
                        Some('t') => val.push('\t'),
                        Some('u') => {
                            let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                            let c = u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or_else(|| panic!("bad \\u escape in {line:?}"));
                            val.push(c);
                        }
                        other => panic!("bad escape {other:?} in {line:?}"),
                    },
                    Some(c) => {
                        assert!(!c.is_control(), "raw control character in {line:?}");
                        val.push(c)
                    }
                    None => panic!("unterminated quote in {line:?}"),
                }
            }
            assert!(
                matches!(chars.peek(), None | Some(' ')),
                "junk after a quoted value in {line:?}"
            );
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                assert!(c != '"' && c != '=', "unquoted {c:?} in {line:?}");
                val.push(c);
                chars.next();
            }
        }
        out.push((key, val));
    }
}

fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && t.ends_with('Z')
        && (b[19] == b'Z' || (b[19] == b'.' && digits(20..b.len() - 1)))
}

/// Every line of `text` as logfmt, each checked for `t`, `lvl` and `msg`.
fn log_lines(text: &str) -> Vec<HashMap<String, String>> {
    text.lines()
        .map(|line| {
            let kv = logfmt(line);
            let keys: Vec<&str> = kv.iter().take(3).map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["t", "lvl", "msg"], "{line}");
            let m: HashMap<String, String> = kv.into_iter().collect();
            assert!(is_rfc3339(&m["t"]), "t in {line}");
            assert!(
                ["dbug", "info", "warn", "eror", "crit"].contains(&m["lvl"].as_str()),
                "lvl in {line}"
            );
            m
        })
        .collect()
}

// ---- tests ----

/// Environment variables for one start.
type Env<'a> = Vec<(&'a str, &'a str)>;

#[test]
fn stats_count_requests_and_messages_exactly_for_an_admin_token_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path(), &[("FERROMQ_STATS_INTERVAL", "1")]);
    let p = srv.port;

    // Only an admin token, in the header or the query, may read the stats.
    for auth in [None, Some(TOKEN), Some("not-a-token")] {
        let (s, v) = call_as(p, "GET", "/3/stats", auth, Value::Null);
        assert_eq!(s, 401, "{auth:?}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let (s, v) = call_as(
        p,
        "GET",
        &format!("/3/stats?oauth={TOKEN}"),
        None,
        Value::Null,
    );
    assert_eq!((s, v["msg"].is_string()), (401, true));

    // 3 posts (10 messages), 3 reserves (4 + 4 + 2), a batch delete of 3, one 404.
    for n in [2, 3, 5] {
        post(p, "counted", n);
    }
    let mut reserved = Vec::new();
    for want in [4, 4, 2] {
        let got = reserve(p, "counted", 4);
        assert_eq!(got.len(), want);
        reserved.extend(got);
    }
    let ids: Vec<Value> = reserved[..3]
        .iter()
        .map(|m| json!({ "id": m["id"], "reservation_id": m["reservation_id"] }))
        .collect();
    let (s, v) = call(
        p,
        "DELETE",
        &format!("{}/messages", qp("counted")),
        json!({ "ids": ids }),
    );
    assert_eq!(s, 200, "{v}");
    let (s, _) = call(p, "GET", &qp("missing"), Value::Null);
    assert_eq!(s, 404);

    let sum = |h: &[Value], bucket: &str, field: &str| -> u64 {
        h.iter()
            .map(|i| i["stats"][bucket][field].as_u64().expect("count"))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let history = loop {
        let (s, v) = call_as(
            p,
            "GET",
            &format!("/3/stats?oauth={ADMIN}"),
            None,
            Value::Null,
        );
        assert_eq!(s, 200, "{v}");
        let h = v["stat_history"].as_array().expect("stat_history").clone();
        if sum(&h, "totals", "requests") >= 8 || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(sum(&history, "totals", "requests"), 8, "{history:?}");
    assert_eq!(sum(&history, "totals", "messages"), 10 + 10 + 3);
    assert_eq!(sum(&history, "reserved", "requests"), 3);
    assert_eq!(sum(&history, "reserved", "messages"), 10);
    assert!(history.len() <= 60);

    // Shape: consecutive one-second intervals, oldest first, nanosecond RFC 3339 times.
    let secs_of_day = |t: &str| -> f64 {
        let hms = &t[11..t.len() - 1];
        let mut it = hms.split(':');
        let h: f64 = it.next().and_then(|x| x.parse().ok()).expect("hours");
        let m: f64 = it.next().and_then(|x| x.parse().ok()).expect("minutes");
        let s: f64 = it.next().and_then(|x| x.parse().ok()).expect("seconds");
        h * 3600.0 + m * 60.0 + s
    };
    for (i, item) in history.iter().enumerate() {
        let start = item["start_time"].as_str().expect("start_time");
        let end = item["end_time"].as_str().expect("end_time");
        for t in [start, end] {
            assert!(is_rfc3339(t), "{t}");
            assert_eq!(t.len(), "2015-02-27T17:17:33.114776660Z".len(), "{t}");
        }
        let len = (secs_of_day(end) - secs_of_day(start)).rem_euclid(86_400.0);
        assert!((len - 1.0).abs() < 1e-6, "{start} .. {end}");
        if let Some(next) = history.get(i + 1) {
            assert_eq!(next["start_time"], item["end_time"]);
        }
        for bucket in ["reserved", "totals"] {
            let b = &item["stats"][bucket];
            let avg = b["avg_latency_ms"].as_f64().expect("avg_latency_ms");
            assert!(avg.is_finite() && avg >= 0.0, "{b}");
            if b["requests"] == 0 {
                assert_eq!(avg, 0.0);
            } else {
                assert!(avg > 0.0, "{b}");
            }
        }
    }
}

#[test]
fn every_log_line_is_logfmt_with_a_request_line_per_call_and_no_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A misspelled setting (the key is `sync`) would leave its key at the default unsaid.
    let mut srv = start(
        dir.path(),
        &[
            ("FERROMQ_LOG_REQUESTS_LEVEL", "info"),
            ("FERROMQ_SYNC_POLICY", "never"),
        ],
    );
    let p = srv.port;
    let (s, _) = call_as(
        p,
        "GET",
        &format!("/3/projects/{PID}/queues?per_page=5&oauth={TOKEN}"),
        None,
        Value::Null,
    );
    assert_eq!(s, 200);
    post(p, "log%20me", 2);
    let (s, _) = call(p, "GET", &qp("nope"), Value::Null);
    assert_eq!(s, 404);
    // SIGHUP (a closed terminal, `systemctl reload`) is logged and ignored.
    srv.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(common::health(p), "still serving after SIGHUP");
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(10)).success());

    let text = srv.log_text();
    assert!(text.contains("lvl=warn msg=\"SIGHUP ignored"), "{text}");
    let lines = log_lines(&text);
    let misspelled = lines
        .iter()
        .find(|l| l.get("var").is_some_and(|v| v == "FERROMQ_SYNC_POLICY"))
        .unwrap_or_else(|| panic!("no line on FERROMQ_SYNC_POLICY in\n{text}"));
    assert_eq!(misspelled["lvl"], "warn");
    assert!(
        misspelled["msg"].contains("did you mean FERROMQ_SYNC?"),
        "{misspelled:?}"
    );
    // The test's own variables (and the known ones) are not warned about.
    assert_eq!(
        lines.iter().filter(|l| l.contains_key("var")).count(),
        1,
        "{text}"
    );
    assert!(!text.contains(TOKEN) && !text.contains(ADMIN), "{text}");
    let lines = log_lines(&text);
    let requests: Vec<&HashMap<String, String>> =
        lines.iter().filter(|l| l["msg"] == "request").collect();
    let find = |method: &str, path: &str| {
        requests
            .iter()
            .find(|l| l["method"] == method && l["path"] == path)
            .unwrap_or_else(|| panic!("no request line for {method} {path} in\n{text}"))
    };
    let list = find(
        "GET",
        &format!("/3/projects/{PID}/queues?per_page=5&oauth=REDACTED"),
    );
    assert_eq!(
        (list["lvl"].as_str(), list["status"].as_str()),
        ("info", "200")
    );
    assert_eq!(list["project"], PID);
    assert!(!list.contains_key("queue"));
    assert!(list["duration_ms"].parse::<f64>().is_ok_and(|d| d >= 0.0));
    let posted = find("POST", &format!("{}/messages", qp("log%20me")));
    assert_eq!(posted["status"], "201");
    assert_eq!(posted["queue"], "log me");
    assert_eq!(find("GET", &qp("nope"))["status"], "404");
    // The health probes of the start are API calls too.
    assert!(requests.iter().any(|l| l["path"] == "/health"));
    assert!(lines.iter().any(|l| l["msg"] == "stopped cleanly"));
}

#[test]
fn configuration_errors_stop_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = |name: &str, v: Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, v.to_string()).expect("write config");
        path.to_string_lossy().into_owned()
    };
    let unknown = file("unknown.json", json!({ "colour": "red" }));
    let half_tls = file("tls.json", json!({ "tls_cert": "/nonexistent/cert.pem" }));
    let missing_tls = file(
        "tls2.json",
        json!({ "tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem" }),
    );
    let bad_queue = file(
        "q1.json",
        json!({ "queues": [{ "project": PID, "name": "q", "message_timeout": 999_999 }] }),
    );
    let odd_key = file(
        "q2.json",
        json!({ "queues": [{ "project": PID, "name": "q", "colour": 1 }] }),
    );
    let other_project = file(
        "q3.json",
        json!({ "queues": [{ "project": "ffffffffffffffffffffffff", "name": "q" }] }),
    );
    // A directory would be read as no file at all, dropping every setting it was meant for.
    let a_dir = dir.path().to_string_lossy().into_owned();
    let cases: Vec<(Env, Vec<&str>, &str)> = vec![
        (vec![], vec!["--config", &unknown], "colour"),
        (vec![], vec!["--config", &a_dir], "is not a file"),
        // A typo must not silence the log: refused, not taken as a filter directive.
        (
            vec![("FERROMQ_LOG_LEVEL", "warning")],
            vec![],
            "`log_level`",
        ),
        (
            vec![("FERROMQ_STATS_INTERVAL", "0")],
            vec![],
            "`stats_interval`",
        ),
        // figment names an environment key in its upper-case form.
        (
            vec![("FERROMQ_STATS_INTERVAL", "soon")],
            vec![],
            "STATS_INTERVAL",
        ),
        (
            vec![("FERROMQ_LOG_REQUESTS_LEVEL", "loud")],
            vec![],
            "`log_requests_level`",
        ),
        (vec![], vec!["--config", &half_tls], "`tls_key`"),
        (vec![], vec!["--config", &missing_tls], "`tls_cert`"),
        (
            vec![],
            vec!["--config", &bad_queue],
            "`queues[0]`: message_timeout must be",
        ),
        (vec![], vec!["--config", &odd_key], "`queues[0].colour`"),
        (vec![("FERROMQ_QUEUES", "[{")], vec![], "`queues`"),
        (
            vec![],
            vec!["--config", &other_project],
            "`queues[0].project`",
        ),
    ];
    for (env, args, key) in cases {
        let refused = Start::new(dir.path())
            .envs(&env)
            .args(&args)
            .refused_on(common::free_port());
        let text = refused.stderr;
        assert!(
            text.contains(key),
            "{env:?} {args:?}: want {key} in\n{text}"
        );
        // No credentials were made (a first start prints them once; the declared queue of
        // a missing project used to fail only after that).
        assert!(
            !refused.stdout.contains("first start"),
            "{env:?} {args:?}: {}",
            refused.stdout
        );
    }
    let (printed, mut child) = serve_printing(
        &dir.path().join("data"),
        &format!("127.0.0.1:{}", common::free_port()),
        &|t| t.contains("iron.json"),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(printed.contains("first start"), "{printed}");
}

#[test]
fn declared_queues_are_created_then_updated_and_a_type_change_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("ferromq.json");
    let write = |queues: Value| {
        std::fs::write(&cfg, json!({ "queues": queues }).to_string()).expect("write config")
    };
    let cfg_arg = cfg.to_string_lossy().into_owned();
    write(json!([
        { "project": PID, "name": "orders", "message_timeout": 30, "message_expiration": 3600,
          "dead_letter": { "queue_name": "orders-dlq", "max_reservations": 3 } },
        { "project": PID, "name": "fanout", "type": "multicast",
          "push": { "subscribers": [{ "name": "a", "url": "http://127.0.0.1:9/a" }] } },
    ]));
    let mut srv = Start::new(dir.path()).args(&["--config", &cfg_arg]).run();
    let (s, v) = call(srv.port, "GET", &qp("orders"), Value::Null);
    assert_eq!(s, 200, "{v}");
    let q = &v["queue"];
    assert_eq!(
        (&q["type"], &q["message_timeout"], &q["message_expiration"]),
        (&json!("pull"), &json!(30), &json!(3600))
    );
    assert_eq!(
        q["dead_letter"],
        json!({ "queue_name": "orders-dlq", "max_reservations": 3 })
    );
    let (s, v) = call(srv.port, "GET", &qp("fanout"), Value::Null);
    assert_eq!((s, &v["queue"]["type"]), (200, &json!("multicast")), "{v}");
    post(srv.port, "orders", 2);
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(10)).success());

    // Updated on the next start; settings left out keep their value; messages stay.
    write(json!([{ "project": PID, "name": "orders", "message_timeout": 45 }]));
    let mut srv = Start::new(dir.path()).args(&["--config", &cfg_arg]).run();
    let (s, v) = call(srv.port, "GET", &qp("orders"), Value::Null);
    assert_eq!(s, 200, "{v}");
    let q = &v["queue"];
    assert_eq!(
        (&q["message_timeout"], &q["message_expiration"], &q["size"]),
        (&json!(45), &json!(3600), &json!(2))
    );
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(10)).success());

    // Changing a declared queue's type is refused like the API refuses it.
    write(
        json!([{ "project": PID, "name": "orders", "type": "unicast",
        "push": { "subscribers": [{ "name": "s", "url": "http://127.0.0.1:9/" }] } }]),
    );
    let text = Start::new(dir.path())
        .args(&["--config", &cfg_arg])
        .refused();
    assert!(
        text.contains("`queues[0]`") && text.contains("type cannot be changed"),
        "{text}"
    );
}

#[test]
fn health_ready_and_metrics_need_no_token_and_metrics_count_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path(), &[("FERROMQ_SYNC", "always")]);
    let p = srv.port;
    assert_eq!(call_as(p, "GET", "/health", None, Value::Null).0, 200);
    let (s, v) = call_as(p, "GET", "/ready", None, Value::Null);
    assert_eq!((s, v), (200, json!({ "msg": "ready" })));

    post(p, "metered", 4);
    post(p, "metered", 3);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages", qp("metered")),
        json!({ "messages": [{ "body": "later", "delay": 600 }, { "body": "later2", "delay": 600 }] }),
    );
    assert_eq!(s, 201, "{v}");
    let got = reserve(p, "metered", 3);
    assert_eq!(got.len(), 3);
    let (s, _) = call(
        p,
        "DELETE",
        &format!(
            "{}/messages/{}",
            qp("metered"),
            got[0]["id"].as_str().expect("id")
        ),
        json!({ "reservation_id": got[0]["reservation_id"] }),
    );
    assert_eq!(s, 200);

    let (s, head, body) = raw(p, "GET", "/metrics", None, "");
    assert_eq!(s, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let mut samples: HashMap<String, f64> = HashMap::new();
    let mut types: HashMap<String, String> = HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{line}"
        );
    }
    let get = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    assert_eq!(get("ferromq_messages_posted_total"), 9.0);
    assert_eq!(get("ferromq_messages_reserved_total"), 3.0);
    assert_eq!(get("ferromq_messages_deleted_total"), 1.0);
    assert_eq!(get("ferromq_messages_expired_total"), 0.0);
    let labels = format!("{{project=\"{PID}\",queue=\"metered\"}}");
    assert_eq!(get(&format!("ferromq_queue_size{labels}")), 8.0);
    assert_eq!(get(&format!("ferromq_queue_reserved{labels}")), 2.0);
    assert_eq!(get(&format!("ferromq_queue_delayed{labels}")), 2.0);
    let posts = "method=\"POST\",route=\"/3/projects/{pid}/queues/{q}/messages\",status=\"201\"";
    assert_eq!(
        get(&format!(
            "ferromq_http_request_duration_seconds_count{{{posts}}}"
        )),
        3.0
    );
    assert_eq!(
        get(&format!(
            "ferromq_http_request_duration_seconds_bucket{{le=\"+Inf\",{posts}}}"
        )),
        3.0
    );
    // Every acknowledged write waited for an fdatasync (sync=always).
    let fsyncs = get("ferromq_fsync_duration_seconds_count");
    assert!(fsyncs >= 5.0, "{fsyncs}");
    assert_eq!(
        get("ferromq_fsync_duration_seconds_bucket{le=\"+Inf\"}"),
        fsyncs
    );
    assert_eq!(types["ferromq_fsync_duration_seconds"], "histogram");
    assert_eq!(types["ferromq_push_attempts"], "counter");
    for outcome in ["delivered", "rejected", "timeout", "error"] {
        assert_eq!(
            get(&format!(
                "ferromq_push_attempts_total{{outcome=\"{outcome}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(types["ferromq_queue_size"], "gauge");
}

#[test]
fn a_metrics_token_guards_the_metrics_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mt = "metrics-token-0123456789";
    let srv = start(dir.path(), &[("FERROMQ_METRICS_TOKEN", mt)]);
    let p = srv.port;
    let scrape = |extra: &str, query: &str| {
        let text =
            format!("GET /metrics{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
        let (s, _, body) = common::wire::send(p, &text);
        (s, body)
    };
    for (extra, query) in [
        ("", ""),
        ("Authorization: Bearer wrong-token-0123456789\r\n", ""),
        (&format!("Authorization: Bearer {TOKEN}\r\n") as &str, ""),
        (&format!("Authorization: OAuth {ADMIN}\r\n"), ""),
    ] {
        let (s, body) = scrape(extra, query);
        assert_eq!(s, 401, "{extra}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    for (extra, query) in [
        (format!("Authorization: Bearer {mt}\r\n"), String::new()),
        (format!("Authorization: OAuth {mt}\r\n"), String::new()),
        (String::new(), format!("?oauth={mt}")),
    ] {
        let (s, body) = scrape(&extra, &query);
        assert_eq!(s, 200, "{extra}{query}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
    assert_eq!(call_as(p, "GET", "/health", None, Value::Null).0, 200);
    assert_eq!(call_as(p, "GET", "/ready", None, Value::Null).0, 200);
}

#[test]
fn a_configured_project_id_that_is_not_24_hex_works_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path(), &[("FERROMQ_PROJECT_ID", "shop-1")]);
    let (s, v) = call_as(
        srv.port,
        "GET",
        "/3/projects/shop-1/queues",
        Some(TOKEN),
        Value::Null,
    );
    assert_eq!(s, 200, "{v}");
    let text = srv.log_text();
    let warned = |t: &str| {
        t.lines()
            .any(|l| l.contains("lvl=warn") && l.contains("not 24 hex digits"))
    };
    assert!(warned(&text), "{text}");
    drop(srv);
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path(), &[]);
    assert_eq!(call(srv.port, "GET", &qp("x"), Value::Null).0, 404);
    assert!(!warned(&srv.log_text()));
}

#[test]
fn metrics_of_idle_queues_follow_expiry_delays_and_ended_reservations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path(), &[]);
    let p = srv.port;
    let (s, v) = call(
        p,
        "PUT",
        &qp("short"),
        json!({ "queue": { "message_expiration": 1 } }),
    );
    assert_eq!(s, 200, "{v}");
    post(p, "short", 2);
    post(p, "held", 1);
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/reservations", qp("held")),
        json!({ "n": 1, "timeout": 1 }),
    );
    assert_eq!((s, v["messages"].as_array().map(Vec::len)), (200, Some(1)));
    let (s, v) = call(
        p,
        "POST",
        &format!("{}/messages", qp("held")),
        json!({ "messages": [{ "body": "soon", "delay": 1 }] }),
    );
    assert_eq!(s, 201, "{v}");
    // Nobody touches either queue after this: the scrape alone must see the changes.
    std::thread::sleep(Duration::from_millis(2200));
    let (s, _, body) = raw(p, "GET", "/metrics", None, "");
    assert_eq!(s, 200);
    let get = |series: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{body}"))
    };
    let of = |q: &str| format!("{{project=\"{PID}\",queue=\"{q}\"}}");
    assert_eq!(get(&format!("ferromq_queue_size{}", of("short"))), 0.0);
    assert_eq!(get("ferromq_messages_expired_total"), 2.0);
    assert_eq!(get(&format!("ferromq_queue_size{}", of("held"))), 2.0);
    assert_eq!(get(&format!("ferromq_queue_reserved{}", of("held"))), 0.0);
    assert_eq!(get(&format!("ferromq_queue_delayed{}", of("held"))), 0.0);
}

#[tokio::test]
async fn ready_is_503_until_the_state_says_ready() {
    use std::sync::atomic::Ordering;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine::Engine::open(engine::EngineConfig::new(dir.path())).expect("open");
    let (creds, _) = server::auth::Credentials::bootstrap(&engine, Some(ADMIN), None, None)
        .await
        .expect("credentials");
    let state = server::state::AppState::new(engine.clone(), creds, Duration::from_secs(60), None);
    let ready = state.ready.clone();
    let router = server::router::build(state);
    let get = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request")
    };
    let status = |r: axum::response::Response| r.status().as_u16();
    assert_eq!(
        status(router.clone().oneshot(get("/ready")).await.expect("call")),
        503
    );
    assert_eq!(
        status(router.clone().oneshot(get("/health")).await.expect("call")),
        200
    );
    ready.store(true, Ordering::Release);
    assert_eq!(
        status(router.clone().oneshot(get("/ready")).await.expect("call")),
        200
    );
    engine.close();
}

#[test]
fn sigterm_answers_long_polls_at_once_exits_zero_and_restarts_without_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("FERROMQ_SYNC", "always")];
    let mut srv = start(dir.path(), &env);
    let p = srv.port;
    let ids = post(p, "kept", 3);
    let (s, _) = call(p, "PUT", &qp("idle"), json!({}));
    assert_eq!(s, 200);
    let polls: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                let t = Instant::now();
                let (s, v) = call(
                    p,
                    "POST",
                    &format!("{}/reservations", qp("idle")),
                    json!({ "n": 1, "wait": 20 }),
                );
                (s, v, t.elapsed())
            })
        })
        .collect();
    // Let the long polls reach the engine's wait.
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    srv.sigterm();
    for h in polls {
        let (s, v, took) = h.join().expect("poll thread");
        assert_eq!((s, v), (200, json!({ "messages": [] })));
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let st = srv.wait_exit(Duration::from_secs(3));
    assert!(st.success(), "{st}\n{}", srv.log_text());
    let lines = log_lines(&srv.log_text());
    assert!(lines.iter().any(|l| l["msg"] == "stopped cleanly"));

    // The restart finds a cleanly closed log, with every message.
    let srv = start(dir.path(), &env);
    let lines = log_lines(&srv.log_text());
    let opened = lines
        .iter()
        .find(|l| l["msg"] == "log opened")
        .expect("a log opened line");
    assert_eq!(
        (opened["lvl"].as_str(), opened["torn_tail"].as_str()),
        ("info", "false")
    );
    let (s, v) = call(
        srv.port,
        "GET",
        &format!("{}/messages?n=10", qp("kept")),
        Value::Null,
    );
    assert_eq!(s, 200);
    let got: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn a_second_sigterm_during_the_grace_period_is_logged_and_the_grace_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut srv = start(dir.path(), &[("FERROMQ_SHUTDOWN_GRACE_MS", "1500")]);
    let p = srv.port;
    // A request in flight: its headers are in, its body will not come. The graceful
    // shutdown waits for it, up to the grace period.
    let mut slow = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    let head = format!(
        "POST {}/messages HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"messages\"",
        qp("slow")
    );
    slow.write_all(head.as_bytes()).expect("send the head");
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    srv.sigterm();
    std::thread::sleep(Duration::from_millis(400));
    srv.sigterm();
    let st = srv.wait_exit(Duration::from_secs(10));
    let took = t.elapsed();
    assert!(st.success(), "{st}\n{}", srv.log_text());
    // The second signal did not cut the grace short; the grace bounded the wait.
    assert!(took >= Duration::from_millis(1400), "{took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    let text = srv.log_text();
    let lines = log_lines(&text);
    let again = lines
        .iter()
        .find(|l| l["msg"].starts_with("shutdown already under way"))
        .unwrap_or_else(|| panic!("no line for the second signal in\n{text}"));
    assert_eq!(again["lvl"], "warn");
    assert!(
        lines.iter().any(|l| l["msg"] == "stopped cleanly"),
        "{text}"
    );
}

// ---- HTTPS ----

struct Tls {
    config: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn trusting(cert: &rustls::pki_types::CertificateDer<'static>) -> Tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.clone()).expect("add root");
        let provider = server::tls::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Tls {
            config: Arc::new(config),
        }
    }

    /// One request over TLS to `localhost` at `port`; `None` if the handshake fails.
    fn request(&self, port: u16, req: &str) -> Option<(u16, String, String)> {
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(self.config.clone(), name).expect("client");
        let sock = TcpStream::connect(("127.0.0.1", port)).ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(req.as_bytes()).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match tls.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                // A peer that closes without close_notify: keep what arrived.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(_) => return None,
            }
        }
        (!buf.is_empty()).then(|| parse_response(&buf))
    }
}

#[test]
fn https_listener_serves_the_api_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).expect("write cert");
    std::fs::write(&key_path, ck.signing_key.serialize_pem()).expect("write key");
    let tls = Tls::trusting(ck.cert.der());
    let health = request_text("GET", "/health", None, "", "");
    let cert_s = cert_path.to_string_lossy().into_owned();
    let key_s = key_path.to_string_lossy().into_owned();
    let srv = Start::new(dir.path())
        .envs(&[("FERROMQ_TLS_CERT", &cert_s), ("FERROMQ_TLS_KEY", &key_s)])
        .run_probed(|port| tls.request(port, &health).is_some_and(|r| r.0 == 200));
    let p = srv.port;
    let body = json!({ "messages": [{ "body": "over tls" }] }).to_string();
    let req = request_text(
        "POST",
        &format!("{}/messages", qp("secure")),
        Some(TOKEN),
        "",
        &body,
    );
    let (s, _, b) = tls.request(p, &req).expect("tls response");
    assert_eq!(s, 201, "{b}");
    let req = request_text(
        "POST",
        &format!("{}/reservations", qp("secure")),
        Some(TOKEN),
        "",
        "{}",
    );
    let (s, _, b) = tls.request(p, &req).expect("tls response");
    let v: Value = serde_json::from_str(&b).expect("json");
    assert_eq!((s, &v["messages"][0]["body"]), (200, &json!("over tls")));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut sock = TcpStream::connect(("127.0.0.1", p)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    sock.write_all(health.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let _ = sock.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // A client that does not trust the certificate is refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    assert!(
        Tls::trusting(other.cert.der())
            .request(p, &health)
            .is_none()
    );
}

// ---- failed starts ----

/// Checks that a failed start printed only logfmt (stdout and stderr), exited with `code`,
/// and logged one `crit` line whose `error` holds every one of `want`.
fn assert_failed_start(r: &common::Refused, code: i32, want: &[&str], what: &str) {
    assert_eq!(
        r.status.code(),
        Some(code),
        "{what}: exit status\n{}",
        r.stderr
    );
    assert!(
        r.stdout.is_empty(),
        "{what}: nothing on stdout: {}",
        r.stdout
    );
    assert!(!r.stderr.is_empty(), "{what}: something on stderr");
    let lines = log_lines(&r.stderr);
    let crit: Vec<_> = lines.iter().filter(|l| l["lvl"] == "crit").collect();
    assert_eq!(crit.len(), 1, "{what}: one crit line in\n{}", r.stderr);
    let error = crit[0].get("error").map(String::as_str).unwrap_or_default();
    for w in want {
        assert!(
            error.contains(w),
            "{what}: want {w:?} in the crit line's error: {}",
            r.stderr
        );
    }
    assert!(!r.stderr.contains("Error:"), "{what}: {}", r.stderr);
}

#[test]
fn a_failed_start_prints_only_logfmt_with_one_crit_line_naming_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(Env, Vec<&str>, &[&str])> = vec![
        // A bad value checked by the server, and one figment cannot even parse.
        (
            vec![("FERROMQ_SEGMENT_BYTES", "1024")],
            vec![],
            &["`segment_bytes`"],
        ),
        (
            vec![("FERROMQ_STATS_INTERVAL", "soon")],
            vec![],
            &["STATS_INTERVAL"],
        ),
        // The logger's own level, before there is a logger.
        (
            vec![("FERROMQ_LOG_LEVEL", "loud")],
            vec![],
            &["`log_level`"],
        ),
        // A bad flag value.
        (
            vec![],
            vec!["--config", "/nonexistent/ferromq.json"],
            &["`--config`", "/nonexistent/ferromq.json"],
        ),
    ];
    for (env, args, want) in cases {
        let what = format!("{env:?} {args:?}");
        let r = Start::new(dir.path())
            .envs(&env)
            .args(&args)
            .refused_on(common::free_port());
        assert_failed_start(&r, 1, want, &what);
    }

    // A data directory that cannot be one: a file stands in its way.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a directory").expect("write");
    let r = Start::new(dir.path())
        .data_dir(&blocked)
        .refused_on(common::free_port());
    assert_failed_start(&r, 1, &[&blocked.display().to_string()], "data dir");
    // The OS's reason once, not once per link of the error chain.
    assert_eq!(
        r.stderr.matches("Not a directory").count(),
        1,
        "{}",
        r.stderr
    );

    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let r = Start::new(dir.path()).refused_on(port);
    assert_failed_start(&r, 1, &[&format!("binding 127.0.0.1:{port}")], "busy port");

    // A flag clap refuses: its usage message, as the crit line's error, with clap's status.
    let r = Start::new(dir.path())
        .args(&["--no-such-flag"])
        .refused_on(common::free_port());
    assert_failed_start(&r, 2, &["--no-such-flag"], "unknown flag");
}

// ---- credentials at start ----

#[test]
fn an_admin_token_equal_to_the_project_token_stops_the_start_naming_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = Start::new(dir.path())
        .env("FERROMQ_ADMIN_TOKEN", TOKEN)
        .refused_on(common::free_port());
    assert_failed_start(
        &r,
        1,
        &["`admin_token`", "FERROMQ_ADMIN_TOKEN", "FERROMQ_TOKEN"],
        "admin token = token",
    );
    // Nothing was written: the data directory was never opened.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn a_start_without_any_admin_token_warns_how_to_create_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warned = |srv: &Server| {
        log_lines(&srv.log_text())
            .into_iter()
            .filter(|l| l["lvl"] == "warn" && l["msg"].contains("no admin token"))
            .count()
    };
    // Project credentials only: the data directory holds no admin token.
    let mut srv = Start::new(dir.path()).env("FERROMQ_ADMIN_TOKEN", "").run();
    assert_eq!(warned(&srv), 1, "{}", srv.log_text());
    let line = log_lines(&srv.log_text())
        .into_iter()
        .find(|l| l["msg"].contains("no admin token"))
        .expect("the warning");
    assert!(line["msg"].contains("FERROMQ_ADMIN_TOKEN"), "{line:?}");
    let (s, _) = call_as(srv.port, "GET", "/3/stats", Some(ADMIN), Value::Null);
    assert_eq!(s, 401, "no admin token exists");
    srv.sigterm();
    assert!(srv.wait_exit(Duration::from_secs(10)).success());

    // With one configured, it exists from then on and nothing is said.
    let srv = start(dir.path(), &[]);
    assert_eq!(warned(&srv), 0, "{}", srv.log_text());
    let (s, _) = call_as(srv.port, "GET", "/3/stats", Some(ADMIN), Value::Null);
    assert_eq!(s, 200);
}

// ---- request bodies ----

#[test]
fn a_large_body_on_a_get_is_drained_and_the_whole_answer_arrives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = start(dir.path(), &[]);
    let p = srv.port;
    post(p, "drained", 1);
    // JSON, so that a handler that did read it could; these handlers do not.
    let body = json!({ "pad": "p".repeat(100 * 1024) }).to_string();
    for i in 0..50 {
        let path = if i % 2 == 0 {
            format!("/3/projects/{PID}/queues")
        } else {
            qp("drained")
        };
        let req = request_text("GET", &path, Some(TOKEN), "", &body);
        let mut s = TcpStream::connect(("127.0.0.1", p)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        // As over a real network: the body is still arriving when the handler (which does
        // not read it) has its answer ready.
        for piece in req.as_bytes().chunks(8 * 1024) {
            s.write_all(piece)
                .unwrap_or_else(|e| panic!("round {i}, {path}: writing the request: {e}"));
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .unwrap_or_else(|e| panic!("round {i}, {path}: reading the answer: {e}"));
        let (status, head, text) = parse_response(&buf);
        assert_eq!(status, 200, "round {i}: {head}\n{text}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("content-length");
        assert_eq!(text.len(), len, "round {i}: the whole body");
        let v: Value = serde_json::from_str(&text).expect("json");
        if i % 2 == 0 {
            assert!(v["queues"].as_array().is_some_and(|q| !q.is_empty()), "{v}");
        } else {
            assert_eq!(v["queue"]["size"], 1, "{v}");
        }
    }
}

// ---- the first start ----

/// `ferromq serve` on `data` at `listen` without any configured credentials, its stdout
/// piped, until `done(what it printed so far)` holds (at most 60 s). Returns what it
/// printed and the process, still running.
fn serve_printing(
    data: &std::path::Path,
    listen: &str,
    done: &dyn Fn(&str) -> bool,
) -> (String, std::process::Child) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferromq"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args(["--listen", listen])
        .env_remove("FERROMQ_PROJECT_ID")
        .env_remove("FERROMQ_TOKEN")
        .env_remove("FERROMQ_ADMIN_TOKEN")
        .env("FERROMQ_SYNC", "never")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ferromq");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&text) && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    // Whatever was written before `done` held and is still in the pipe.
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (text, child)
}

/// The `iron.json` object a first start prints.
fn printed_iron_json(text: &str) -> Value {
    let start = text.find("iron.json:\n").expect("an iron.json block") + "iron.json:\n".len();
    let end = start + text[start..].find("\n}").expect("its end") + 2;
    serde_json::from_str(&text[start..end]).expect("iron.json parses")
}

#[test]
fn a_first_start_without_credentials_prints_them_once_with_a_working_iron_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_port();
    let iron_printed = |t: &str| t.contains("\n}");
    let (text, mut child) = serve_printing(&data, &format!("127.0.0.1:{port}"), &iron_printed);
    let iron = printed_iron_json(&text);
    assert_eq!(
        (&iron["host"], &iron["port"], &iron["scheme"]),
        (&json!("127.0.0.1"), &json!(port), &json!("http")),
        "{text}"
    );
    let (project, token) = (
        iron["project_id"].as_str().expect("project_id"),
        iron["token"].as_str().expect("token"),
    );
    let admin = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin token:"))
        .expect("the admin token line")
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::health(port) {
        assert!(Instant::now() < deadline, "no health");
        std::thread::sleep(Duration::from_millis(25));
    }
    // What it printed works: the project token posts, the admin token reads the stats.
    let path = format!("/3/projects/{project}/queues/first/messages");
    let (s, v) = call_as(
        port,
        "POST",
        &path,
        Some(token),
        json!({"messages": [{"body": "hi"}]}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        call_as(port, "GET", "/3/stats", Some(&admin), Value::Null).0,
        200
    );
    assert_eq!(
        call_as(port, "GET", "/3/stats", Some(token), Value::Null).0,
        401
    );
    let _ = child.kill();
    let _ = child.wait();
    // The next start prints nothing: the credentials exist.
    let (again, mut child) = serve_printing(&data, &format!("127.0.0.1:{port}"), &|_| {
        common::health(port)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(!again.contains("first start"), "{again}");
    assert!(!again.contains(token), "{again}");
    // An IPv6 listen address goes into `iron.json` in brackets, as URLs need it.
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let v6 = dir.path().join("data-v6");
        let port = std::net::TcpListener::bind("[::1]:0")
            .and_then(|l| l.local_addr())
            .expect("an IPv6 port")
            .port();
        let (text, mut child) = serve_printing(&v6, &format!("[::1]:{port}"), &iron_printed);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(printed_iron_json(&text)["host"], "[::1]", "{text}");
    }
}
