//! Projects, tokens and hot backup against the real binary: the `ferromq admin`, `backup`
//! and `restore` subcommands talking to `ferromq serve` on 127.0.0.1.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN, PID, Server, Start, TOKEN, call, cli, cli_ok, client, json_of};
use serde_json::{Value, json};

/// The test server's settings: 1 KiB message bodies.
fn server(dir: &std::path::Path) -> Start {
    Start::new(dir).env("FERROMQ_BODY_BYTES_MAX", "1024")
}

fn admin_json(srv: &Server, args: &[&str]) -> Value {
    let url = srv.url();
    let mut all = vec!["admin", "--url", &url, "--token", ADMIN, "--json"];
    all.extend_from_slice(args);
    let out = cli_ok(&all);
    json_of(&out)
}

fn admin_table(srv: &Server, args: &[&str]) -> String {
    let url = srv.url();
    let mut all = vec!["admin", "--url", &url, "--token", ADMIN];
    all.extend_from_slice(args);
    cli_ok(&all)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn admin_cli_manages_projects_and_tokens_and_a_revoked_token_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).run();
    let http = client();

    // A project, by the CLI.
    let v = admin_json(&srv, &["projects", "create", "--name", "shop"]);
    let project = v["project"]["id"].as_str().expect("project id").to_string();
    assert!(is_hex(&project, 24), "{project}");
    assert_eq!(v["project"]["name"], "shop");
    let table = admin_table(&srv, &["projects", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&project))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains("shop"), "{line}");
    assert!(
        table.contains(PID),
        "the configured project is listed: {table}"
    );

    // Two tokens for it; the secret is shown once and works for the queue API.
    let v = admin_json(
        &srv,
        &["tokens", "create", "--project", &project, "--name", "w1"],
    );
    let secret = v["token"]["token"].as_str().expect("secret").to_string();
    let tid = v["token"]["id"].as_str().expect("token id").to_string();
    assert!(is_hex(&secret, 32) && is_hex(&tid, 24), "{v}");
    assert_eq!(v["token"]["project_id"], project.as_str());
    let table = admin_table(&srv, &["tokens", "create", "--project", &project]);
    let secret2 = table
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("{table}"))
        .to_string();
    let qpath = format!("/3/projects/{project}/queues/jobs/messages");
    let (s, v) = call(
        &http,
        &srv,
        "POST",
        &qpath,
        Some(&secret),
        Some(json!({"messages": [{"body": "hello"}]})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, _) = call(&http, &srv, "GET", &qpath, Some(&secret2), None);
    assert_eq!(s, 200);
    // A project token opens only its own project.
    let (s, _) = call(
        &http,
        &srv,
        "GET",
        &format!("/3/projects/{PID}/queues"),
        Some(&secret),
        None,
    );
    assert_eq!(s, 404);

    // Listing shows ids and names, never a secret.
    let v = admin_json(&srv, &["tokens", "list", "--project", &project]);
    let listed = v["tokens"].as_array().expect("tokens");
    assert_eq!(listed.len(), 2, "{v}");
    assert!(
        listed
            .iter()
            .any(|t| t["id"] == tid.as_str() && t["name"] == "w1")
    );
    let text = v.to_string() + &admin_table(&srv, &["tokens", "list"]);
    assert!(
        !text.contains(&secret) && !text.contains(&secret2),
        "{text}"
    );
    assert!(text.contains("(admin)"), "{text}");

    // Revoked: refused with the very next request.
    let out = admin_table(&srv, &["tokens", "revoke", &tid]);
    assert!(out.contains(&tid), "{out}");
    let (s, v) = call(&http, &srv, "GET", &qpath, Some(&secret), None);
    assert_eq!(s, 401, "{v}");
    assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
    let (s, _) = call(&http, &srv, "GET", &qpath, Some(&secret2), None);
    assert_eq!(s, 200);

    // A project token is not an admin token, for the HTTP API and for the CLI.
    for path in ["/3/admin/projects", "/3/admin/tokens", "/3/admin/backup"] {
        for t in [Some(TOKEN), Some(secret2.as_str()), Some("nope"), None] {
            let (s, v) = call(&http, &srv, "GET", path, t, None);
            assert_eq!(s, 401, "{path} {t:?}: {v}");
            assert!(v["msg"].is_string());
        }
    }
    let url = srv.url();
    let out = cli(&[
        "admin", "--url", &url, "--token", TOKEN, "projects", "create",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401"), "{err}");

    // Bad input: clear errors with documented statuses.
    let long = "x".repeat(256);
    let cases: Vec<(&str, String, Value, u16)> = vec![
        (
            "POST",
            "/3/admin/projects".into(),
            json!({"name": long}),
            400,
        ),
        ("POST", "/3/admin/projects".into(), json!({"name": 5}), 400),
        (
            "POST",
            "/3/admin/projects/ffffffffffffffffffffffff/tokens".into(),
            json!({}),
            404,
        ),
        (
            "GET",
            "/3/admin/projects/ffffffffffffffffffffffff/tokens".into(),
            Value::Null,
            404,
        ),
        (
            "DELETE",
            "/3/admin/tokens/ffffffffffffffffffffffff".into(),
            Value::Null,
            404,
        ),
        ("DELETE", format!("/3/admin/tokens/{tid}"), Value::Null, 404),
    ];
    for (m, path, body, want) in cases {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = call(&http, &srv, m, &path, Some(ADMIN), body);
        assert_eq!(s, want, "{m} {path}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // The last admin token cannot be revoked.
    let v = admin_json(&srv, &["tokens", "list"]);
    let admin_id = v["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .find(|t| t["admin"] == true)
        .and_then(|t| t["id"].as_str())
        .expect("admin token id")
        .to_string();
    let (s, v) = call(
        &http,
        &srv,
        "DELETE",
        &format!("/3/admin/tokens/{admin_id}"),
        Some(ADMIN),
        None,
    );
    assert_eq!(s, 409, "{v}");

    // All of it is durable.
    drop(srv);
    let srv = server(dir.path()).run();
    let (s, _) = call(&http, &srv, "GET", &qpath, Some(&secret), None);
    assert_eq!(s, 401);
    let (s, _) = call(&http, &srv, "GET", &qpath, Some(&secret2), None);
    assert_eq!(s, 200);
    let v = admin_json(&srv, &["tokens", "list", "--project", &project]);
    assert_eq!(v["tokens"].as_array().map(Vec::len), Some(1), "{v}");
    let v = admin_json(&srv, &["projects", "list"]);
    assert!(
        v["projects"]
            .as_array()
            .expect("projects")
            .iter()
            .any(|p| p["id"] == project.as_str() && p["name"] == "shop")
    );
}

/// One message as the load saw it: when its post and (maybe) its delete were sent and
/// answered.
struct Tracked {
    queue: String,
    body: String,
    post: (Instant, Instant),
    delete: Option<(Instant, Instant)>,
}

const QUEUES: usize = 3;

/// Posts batches of 10 messages and deletes the oldest 10 still live (all but one message of
/// each batch are deleted in time), on its own queue, until told to stop. Every acknowledged operation is recorded with its send and answer
/// instants.
fn load(port: u16, q: String, stop: Arc<AtomicBool>) -> Vec<(String, Tracked)> {
    let http = client();
    let base = format!("http://127.0.0.1:{port}/3/projects/{PID}/queues/{q}/messages");
    let mut done: Vec<(String, Tracked)> = Vec::new();
    let mut live: std::collections::VecDeque<usize> = Default::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let bodies: Vec<String> = (0..10)
            .map(|i| {
                n += 1;
                format!("{q}-{n}-{i}-{}", "b".repeat(600))
            })
            .collect();
        let msgs: Vec<Value> = bodies.iter().map(|b| json!({ "body": b })).collect();
        let t0 = Instant::now();
        let resp = http
            .post(&base)
            .header("Authorization", format!("OAuth {TOKEN}"))
            .json(&json!({ "messages": msgs }))
            .send()
            .expect("post");
        assert_eq!(resp.status(), 201);
        let v: Value = resp.json().expect("json");
        let t1 = Instant::now();
        for (i, (id, body)) in v["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .zip(bodies)
            .enumerate()
        {
            // One message of each batch stays for good; the others are deleted later.
            if i > 0 {
                live.push_back(done.len());
            }
            done.push((
                id.as_str().expect("id").to_string(),
                Tracked {
                    queue: q.clone(),
                    body,
                    post: (t0, t1),
                    delete: None,
                },
            ));
        }
        if live.len() > 100 {
            let idx: Vec<usize> = (0..10).filter_map(|_| live.pop_front()).collect();
            let ids: Vec<&str> = idx.iter().map(|&i| done[i].0.as_str()).collect();
            let t0 = Instant::now();
            let resp = http
                .delete(&base)
                .header("Authorization", format!("OAuth {TOKEN}"))
                .json(&json!({ "ids": ids }))
                .send()
                .expect("delete");
            assert_eq!(resp.status(), 200);
            let t1 = Instant::now();
            for i in idx {
                done[i].1.delete = Some((t0, t1));
            }
        }
    }
    done
}

/// What the restored state must say about one message, given that the cut happened at
/// some instant between `t0` (backup started) and `t1` (backup finished).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Expect {
    Present,
    Absent,
    /// An operation on it overlapped [t0, t1]: either way.
    Either,
}

fn expect(m: &Tracked, t0: Instant, t1: Instant) -> Expect {
    let (post_sent, post_acked) = m.post;
    if post_sent > t1 {
        return Expect::Absent;
    }
    if post_acked >= t0 {
        return Expect::Either;
    }
    match m.delete {
        None => Expect::Present,
        Some((_, acked)) if acked < t0 => Expect::Absent,
        Some((sent, _)) if sent > t1 => Expect::Present,
        Some(_) => Expect::Either,
    }
}

#[test]
fn backup_under_load_restores_exactly_the_acknowledged_state_at_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small segments, so the load fills several and retention drops dead ones meanwhile.
    let env = [("FERROMQ_SEGMENT_BYTES", "1048576")];
    let srv = server(dir.path()).envs(&env).run();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..QUEUES)
        .map(|i| {
            let stop = stop.clone();
            let port = srv.port;
            std::thread::spawn(move || load(port, format!("load-{i}"), stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));

    let out = tempfile::tempdir().expect("tempdir");
    let file = out.path().join("snap.fmqb");
    let url = srv.url();
    let t0 = Instant::now();
    let text = cli_ok(&[
        "backup",
        "--url",
        &url,
        "--token",
        ADMIN,
        "--output",
        file.to_str().expect("utf-8 path"),
    ]);
    let t1 = Instant::now();
    assert!(text.contains("every checksum verified"), "{text}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    for w in workers {
        tracked.extend(w.join().expect("load thread"));
    }
    let during = tracked
        .values()
        .filter(|m| m.post.1 > t0 && m.post.1 < t1)
        .count();
    eprintln!(
        "backup took {:?}; {} messages tracked, {during} posts acknowledged during the backup",
        t1 - t0,
        tracked.len()
    );
    assert!(tracked.len() > 1000, "the load ran: {}", tracked.len());
    drop(srv);

    // Restore, refusing a non-empty directory.
    let target = out.path().join("restored");
    let file_s = file.to_str().expect("utf-8 path");
    let target_s = target.to_str().expect("utf-8 path");
    let report: Value = serde_json::from_str(&cli_ok(&[
        "restore",
        "--input",
        file_s,
        "--data-dir",
        target_s,
        "--json",
    ]))
    .expect("restore report");
    let again = cli(&["restore", "--input", file_s, "--data-dir", target_s]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        report["segments"].as_u64().expect("segments") >= 2,
        "{report}"
    );

    let srv = server(out.path()).data_dir(&target).envs(&env).run();
    let http = client();
    let mut counts: HashMap<&str, (u64, u64)> = HashMap::new(); // queue → (present, either)
    let mut checked_absent = 0;
    for (id, m) in &tracked {
        let e = expect(m, t0, t1);
        if e == Expect::Absent && checked_absent >= 300 {
            continue;
        }
        let path = format!("/3/projects/{PID}/queues/{}/messages/{id}", m.queue);
        let (s, v) = call(&http, &srv, "GET", &path, Some(TOKEN), None);
        let present = match s {
            200 => {
                assert_eq!(v["message"]["body"], m.body.as_str(), "{id}");
                true
            }
            404 => false,
            other => panic!("GET {path}: {other} {v}"),
        };
        match e {
            Expect::Present => assert!(
                present,
                "message {id} acknowledged before the backup is missing"
            ),
            Expect::Absent => {
                checked_absent += 1;
                assert!(
                    !present,
                    "message {id} deleted before the backup (or posted after it) came back"
                )
            }
            Expect::Either => {}
        }
        if present {
            let c = counts.entry(m.queue.as_str()).or_default();
            if e == Expect::Present {
                c.0 += 1;
            } else {
                c.1 += 1;
            }
        }
    }
    // Nothing else is in the queues: every message in them was found among the ones that
    // may be there, so none of the unchecked "absent" ones came back.
    let mut total = 0;
    for i in 0..QUEUES {
        let q = format!("load-{i}");
        let (s, v) = call(
            &http,
            &srv,
            "GET",
            &format!("/3/projects/{PID}/queues/{q}"),
            Some(TOKEN),
            None,
        );
        assert_eq!(s, 200, "{v}");
        let (present, either) = counts.get(q.as_str()).copied().unwrap_or_default();
        assert!(present > 0, "{q} had acknowledged messages at the cut");
        assert_eq!(v["queue"]["size"], present + either, "{q}: {v}");
        let reported = report["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .find(|r| r["name"] == q.as_str())
            .unwrap_or_else(|| panic!("{q} in {report}"));
        assert_eq!(reported["size"], v["queue"]["size"], "{q}");
        total += present + either;
    }
    assert_eq!(report["messages"], total);
    // The restored server takes writes.
    let (s, _) = call(
        &http,
        &srv,
        "POST",
        &format!("/3/projects/{PID}/queues/load-0/messages"),
        Some(TOKEN),
        Some(json!({"messages": [{"body": "after restore"}]})),
    );
    assert_eq!(s, 201);
}

#[test]
fn one_backup_runs_at_a_time_and_an_abandoned_one_lets_go() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).run();
    let http = client();
    // ~24 MB of log: more than the server's chunk buffer and both socket buffers hold.
    let body = "z".repeat(1000);
    let msgs: Vec<Value> = (0..100).map(|_| json!({ "body": body })).collect();
    for _ in 0..240 {
        let (s, v) = call(
            &http,
            &srv,
            "POST",
            &format!("/3/projects/{PID}/queues/big/messages"),
            Some(TOKEN),
            Some(json!({ "messages": msgs })),
        );
        assert_eq!(s, 201, "{v}");
    }

    // A backup whose reader takes a little and then stops reading.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", srv.port)).expect("connect");
    write!(
        stalled,
        "GET /3/admin/backup HTTP/1.1\r\nHost: x\r\nAuthorization: OAuth {ADMIN}\r\n\r\n"
    )
    .expect("write");
    let mut head = [0u8; 4096];
    let n = stalled.read(&mut head).expect("read");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/octet-stream"), "{head}");

    // Meanwhile a second one is refused, and writes go on.
    let (s, v) = call(&http, &srv, "GET", "/3/admin/backup", Some(ADMIN), None);
    assert_eq!(s, 409, "{v}");
    let (s, _) = call(
        &http,
        &srv,
        "POST",
        &format!("/3/projects/{PID}/queues/big/messages"),
        Some(TOKEN),
        Some(json!({ "messages": [{"body": "during"}] })),
    );
    assert_eq!(s, 201);

    // The reader goes away: its backup ends and the next one runs to the end.
    drop(stalled);
    let out = tempfile::tempdir().expect("tempdir");
    let url = srv.url();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        let file = out.path().join(format!("b{n}"));
        let o = cli(&[
            "backup",
            "--url",
            &url,
            "--token",
            ADMIN,
            "--output",
            file.to_str().expect("utf-8 path"),
        ]);
        if o.status.success() {
            assert!(file.exists());
            assert!(!out.path().join(format!("b{n}.partial")).exists());
            break;
        }
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("409"), "{err}");
        assert!(!file.exists() && !out.path().join(format!("b{n}.partial")).exists());
        assert!(
            Instant::now() < deadline,
            "the abandoned backup was never let go"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_failed_restore_cleans_up_and_a_retry_into_the_same_directory_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = server(dir.path()).run();
    let http = client();
    let (s, v) = call(
        &http,
        &srv,
        "POST",
        &format!("/3/projects/{PID}/queues/kept/messages"),
        Some(TOKEN),
        Some(json!({"messages": [{"body": "one"}, {"body": "two"}]})),
    );
    assert_eq!(s, 201, "{v}");
    let out = tempfile::tempdir().expect("tempdir");
    let good = out.path().join("good.fmqb");
    let url = srv.url();
    cli_ok(&[
        "backup",
        "--url",
        &url,
        "--token",
        ADMIN,
        "--output",
        good.to_str().expect("utf-8 path"),
    ]);
    drop(srv);
    let bytes = std::fs::read(&good).expect("read the backup");
    let damaged = out.path().join("damaged.fmqb");
    std::fs::write(&damaged, &bytes[..bytes.len() * 2 / 3]).expect("write");

    let target = out.path().join("restored");
    let target_s = target.to_str().expect("utf-8 path");
    let restore = |file: &std::path::Path| {
        cli(&[
            "restore",
            "--input",
            file.to_str().expect("utf-8 path"),
            "--data-dir",
            target_s,
            "--json",
        ])
    };
    let failed = restore(&damaged);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(
        !target.exists(),
        "the failed restore left {:?}",
        std::fs::read_dir(&target).map(|d| d.count())
    );

    // An existing empty directory stays, empty.
    std::fs::create_dir(&target).expect("mkdir");
    let failed = restore(&damaged);
    assert!(!failed.status.success());
    let left: Vec<_> = std::fs::read_dir(&target)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "the failed restore left {left:?}");

    // The retry with the intact file, into the same directory.
    let ok = restore(&good);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let report: Value = serde_json::from_slice(&ok.stdout).expect("restore report");
    assert_eq!(report["messages"], 2, "{report}");
    // A directory that was not empty before the restore is still refused.
    let again = restore(&good);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let srv = server(out.path()).data_dir(&target).run();
    let (s, v) = call(
        &http,
        &srv,
        "GET",
        &format!("/3/projects/{PID}/queues/kept"),
        Some(TOKEN),
        None,
    );
    assert_eq!((s, &v["queue"]["size"]), (200, &json!(2)), "{v}");
}

/// A private CA and a server certificate for 127.0.0.1 signed by it, as PEM files in
/// `dir`: (ca.pem, cert.pem, key.pem).
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferromq test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p.to_string_lossy().into_owned()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", cert.pem()),
        write("key.pem", key.serialize_pem()),
    )
}

#[test]
fn the_cli_trusts_a_private_ca_with_cacert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = private_ca(dir.path());
    let ca_pem = std::fs::read(&ca).expect("read ca");
    let probe = reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("ca"))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let srv = server(dir.path())
        .envs(&[("FERROMQ_TLS_CERT", &cert), ("FERROMQ_TLS_KEY", &key)])
        .run_probed(|port| {
            probe
                .get(format!("https://127.0.0.1:{port}/health"))
                .send()
                .is_ok_and(|r| r.status() == 200)
        });
    let url = format!("https://127.0.0.1:{}", srv.port);

    // Without the CA the server's certificate is not trusted.
    let out = cli(&["admin", "--url", &url, "--token", ADMIN, "projects", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not reach the server"), "{err}");

    // With it, admin commands and a backup work over HTTPS.
    let v = json_of(&cli_ok(&[
        "admin", "--url", &url, "--token", ADMIN, "--cacert", &ca, "--json", "projects", "list",
    ]));
    let projects = v["projects"].as_array().expect("projects");
    assert!(projects.iter().any(|p| p["id"] == PID), "{v}");
    let file = dir.path().join("over-tls.fmqb");
    let text = cli_ok(&[
        "backup",
        "--url",
        &url,
        "--token",
        ADMIN,
        "--cacert",
        &ca,
        "--output",
        file.to_str().expect("utf-8 path"),
    ]);
    assert!(text.contains("every checksum verified"), "{text}");
    assert!(file.exists());

    // A file that holds no certificate is refused before any request.
    let out = cli(&[
        "admin", "--url", &url, "--token", ADMIN, "--cacert", &key, "projects", "list",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cacert"), "{err}");
}
