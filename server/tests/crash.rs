//! `kill -9` of the real server under HTTP load: every post answered 201 is there after the
//! restart unless its delete was answered (or still in flight), and no message whose delete
//! was answered 200 comes back: no 2xx goes out before its change has left the process.
//! (A process kill keeps what reached the page cache; that the 2xx also waits for the
//! fdatasync is checked by the engine's simulated power cuts, `engine/tests/`.)

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{PID, Server, Start, TOKEN, qp};
use serde_json::{Value, json};

const PRODUCERS: usize = 3;
/// Kill-and-restart rounds: 2 in the test suite; `FERROMQ_CRASH_ROUNDS` for long runs
/// (`scripts/crash-soak.sh`).
fn rounds() -> usize {
    std::env::var("FERROMQ_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
}

#[derive(Default)]
struct Acked {
    /// Posted and answered 201: id → body.
    posted: Vec<(String, String)>,
    /// Delete sent, answer not seen (may or may not have happened).
    deleting: HashSet<String>,
    /// Delete answered 200.
    deleted: HashSet<String>,
}

/// One request; `None` when the server is gone (connection refused or reset mid-request).
fn send(
    http: &reqwest::blocking::Client,
    port: u16,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Option<(u16, Value)> {
    let resp = http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("Authorization", format!("OAuth {TOKEN}"))
        .json(&body)
        .send()
        .ok()?;
    let status = resp.status().as_u16();
    let v = resp.json().ok()?;
    Some((status, v))
}

fn producer(port: u16, t: usize, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let http = common::client();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let bodies: Vec<String> = (0..5).map(|k| format!("p{t}-{i}-{k}")).collect();
        let msgs: Vec<Value> = bodies.iter().map(|b| json!({ "body": b })).collect();
        let path = format!("{}/messages", qp("crash"));
        let Some((s, v)) = send(
            &http,
            port,
            reqwest::Method::POST,
            &path,
            json!({ "messages": msgs }),
        ) else {
            return;
        };
        assert_eq!(s, 201, "{v}");
        let ids = v["ids"].as_array().expect("ids");
        let mut a = acked.lock().unwrap();
        for (id, b) in ids.iter().zip(bodies) {
            a.posted.push((id.as_str().expect("id").to_string(), b));
        }
        i += 1;
    }
}

fn consumer(port: u16, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let http = common::client();
    while !stop.load(Ordering::Relaxed) {
        let path = format!("{}/reservations", qp("crash"));
        let Some((s, v)) = send(
            &http,
            port,
            reqwest::Method::POST,
            &path,
            json!({ "n": 5, "timeout": 30 }),
        ) else {
            return;
        };
        assert_eq!(s, 200, "{v}");
        let msgs = v["messages"].as_array().expect("messages").clone();
        if msgs.is_empty() {
            continue;
        }
        let ids: Vec<Value> = msgs
            .iter()
            .map(|m| json!({ "id": m["id"], "reservation_id": m["reservation_id"] }))
            .collect();
        let names: Vec<String> = msgs
            .iter()
            .map(|m| m["id"].as_str().expect("id").to_string())
            .collect();
        acked.lock().unwrap().deleting.extend(names.iter().cloned());
        let path = format!("{}/messages", qp("crash"));
        let Some((s, v)) = send(
            &http,
            port,
            reqwest::Method::DELETE,
            &path,
            json!({ "ids": ids }),
        ) else {
            return;
        };
        assert_eq!(s, 200, "{v}");
        let mut a = acked.lock().unwrap();
        for n in names {
            a.deleting.remove(&n);
            a.deleted.insert(n);
        }
    }
}

/// 300–800 ms, different on each run.
fn random_delay() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    Duration::from_millis(300 + u64::from(nanos % 500))
}

/// Loads the server until a SIGKILL at a random moment; returns what was acknowledged.
fn load_and_kill(srv: &mut Server) -> Acked {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let port = srv.port;
    let mut threads: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || producer(port, t, stop, acked))
        })
        .collect();
    let (s2, a2) = (stop.clone(), acked.clone());
    threads.push(std::thread::spawn(move || consumer(port, s2, a2)));
    std::thread::sleep(random_delay());
    srv.kill();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("load thread");
    }
    Arc::try_unwrap(acked)
        .ok()
        .expect("threads joined")
        .into_inner()
        .unwrap()
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_post_and_resurrects_no_acknowledged_delete() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Start::new(dir.path()).env("FERROMQ_SYNC", "always").run();
    let http = common::client();
    // The queue exists before the consumer's first reserve (a post would create it too late).
    let (s, v) = common::call(
        &http,
        &srv,
        "PUT",
        &qp("crash"),
        Some(TOKEN),
        Some(json!({})),
    );
    assert_eq!(s, 200, "{v}");
    let mut all = Acked::default();
    for round in 0..rounds() {
        let a = load_and_kill(&mut srv);
        assert!(
            !a.posted.is_empty(),
            "round {round}: no post was acknowledged before the kill"
        );
        all.posted.extend(a.posted);
        // A delete left in flight by an earlier round stays undecided.
        all.deleting.extend(a.deleting);
        all.deleted.extend(a.deleted);
        srv = srv.restart();
        let started = Instant::now();
        let (mut present, mut gone) = (0, 0);
        for (id, body) in &all.posted {
            let path = format!("{}/messages/{id}", qp("crash"));
            let (s, v) = common::call(&http, &srv, "GET", &path, Some(TOKEN), None);
            if all.deleted.contains(id) {
                assert_eq!(
                    s, 404,
                    "round {round}: acknowledged delete of {id} undone: {v}"
                );
                gone += 1;
            } else if all.deleting.contains(id) {
                assert!(s == 200 || s == 404, "round {round}: {id}: {s} {v}");
            } else {
                assert_eq!(s, 200, "round {round}: acknowledged post {id} lost: {v}");
                assert_eq!(v["message"]["body"], json!(body), "round {round}: {id}");
                present += 1;
            }
        }
        let (_, info) = common::call(&http, &srv, "GET", &qp("crash"), Some(TOKEN), None);
        let size = info["queue"]["size"].as_u64().expect("size");
        assert!(
            size >= present,
            "round {round}: size {size} < {present} acknowledged posts present"
        );
        eprintln!(
            "round {round}: {} posts acknowledged, {present} present, {gone} deleted, {} deletes \
             undecided; checked in {:?} (project {PID})",
            all.posted.len(),
            all.deleting.len(),
            started.elapsed()
        );
    }
    assert!(
        !all.deleted.is_empty(),
        "no delete was acknowledged in any round"
    );
}
