//! Push delivery end to end: the real `ferromq` binary delivering to real HTTP subscribers
//! on 127.0.0.1 (answering 200, 202 then acknowledging, 500, too slowly, or not listening).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{PID, Server, Start, TOKEN, free_port, qp};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The server with the default durability (`sync=always`: the SIGKILL test depends on it)
/// and a 700 ms push timeout.
async fn start(dir: &std::path::Path) -> Server {
    Start::new(dir)
        .env("FERROMQ_SYNC", "always")
        .env("FERROMQ_PUSH_TIMEOUT_MS", "700")
        .run_async()
        .await
}

/// The queue API, as async calls (the tests run inside tokio).
impl Server {
    fn queue_url(&self, path: &str) -> String {
        format!("{}{}", self.url(), qp(path))
    }
    async fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let c = reqwest::Client::new();
        let r = c
            .request(method.parse().unwrap(), self.queue_url(path))
            .header("Authorization", format!("OAuth {TOKEN}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }
    async fn post(&self, q: &str, bodies: &[&str]) -> Vec<String> {
        let msgs: Vec<Value> = bodies.iter().map(|b| json!({"body": b})).collect();
        let (s, v) = self
            .call("POST", &format!("{q}/messages"), json!({"messages": msgs}))
            .await;
        assert_eq!(s, 201, "{v}");
        v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap().to_string())
            .collect()
    }
    async fn statuses(&self, q: &str, id: &str) -> Vec<Value> {
        let (s, v) = self
            .call("GET", &format!("{q}/messages/{id}/subscribers"), json!({}))
            .await;
        assert_eq!(s, 200, "{v}");
        v["subscribers"].as_array().unwrap().clone()
    }
    /// Polls until every subscriber status of `id` is one of `want`.
    async fn wait_statuses(&self, q: &str, id: &str, want: &[&str], secs: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let st = self.statuses(q, id).await;
            if st
                .iter()
                .all(|s| want.contains(&s["status"].as_str().unwrap()))
            {
                return st;
            }
            assert!(Instant::now() < deadline, "statuses of {id}: {st:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One request as a subscriber saw it.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Copy)]
enum Mode {
    Ok,
    Accept,
    Fail,
    Slow,
    /// Answers 200 after 1.5 s.
    Pause,
    /// Fails while the flag is set.
    FailUntil,
}

#[derive(Clone)]
struct Sub {
    mode: Mode,
    hits: Arc<Mutex<Vec<Hit>>>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    /// Requests being answered now, and the most at once.
    busy: Arc<(AtomicUsize, AtomicUsize)>,
}

async fn handler(State(s): State<Sub>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    s.hits.lock().unwrap().push(Hit {
        at: Instant::now(),
        headers,
        body,
    });
    match s.mode {
        Mode::Ok => (StatusCode::OK, "ok".into()),
        Mode::Accept => (StatusCode::ACCEPTED, String::new()),
        Mode::Fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal server error.".into(),
        ),
        Mode::Slow => {
            let now = s.busy.0.fetch_add(1, Ordering::SeqCst) + 1;
            s.busy.1.fetch_max(now, Ordering::SeqCst);
            // The pusher gives up first (timeout): this future is dropped, or finishes late.
            struct Leave(Arc<(AtomicUsize, AtomicUsize)>);
            impl Drop for Leave {
                fn drop(&mut self) {
                    self.0.0.fetch_sub(1, Ordering::SeqCst);
                }
            }
            let _leave = Leave(s.busy.clone());
            tokio::time::sleep(Duration::from_secs(3)).await;
            (StatusCode::OK, "late".into())
        }
        Mode::Pause => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            (StatusCode::OK, "done".into())
        }
        Mode::FailUntil => {
            if s.healthy.load(Ordering::SeqCst) {
                (StatusCode::OK, "ok".into())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not yet".into())
            }
        }
    }
}

/// A subscriber's state and the app answering every POST with `handler`.
fn sub_app(mode: Mode) -> (Sub, axum::Router) {
    let s = Sub {
        mode,
        hits: Arc::default(),
        healthy: Arc::default(),
        busy: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(axum::routing::post(handler))
        .with_state(s.clone());
    (s, app)
}

/// Starts a subscriber; returns its URL and its hit list.
async fn subscriber(mode: Mode) -> (String, Sub) {
    let (s, app) = sub_app(mode);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, s)
}

/// Starts a subscriber over HTTPS with a certificate for `localhost` signed by nobody;
/// returns its URL, its hit list and the certificate (PEM) to trust.
async fn https_subscriber(mode: Mode) -> (String, Sub, String) {
    use tower::ServiceExt;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (s, app) = sub_app(mode);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}/hook", l.local_addr().unwrap().port());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        app.clone().oneshot(req.map(axum::body::Body::new))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (url, s, cert_pem)
}

fn hits(s: &Sub) -> Vec<Hit> {
    s.hits.lock().unwrap().clone()
}

async fn wait_hits(s: &Sub, n: usize, secs: u64) -> Vec<Hit> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let h = hits(s);
        if h.len() >= n {
            return h;
        }
        assert!(Instant::now() < deadline, "{} of {n} hits", h.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(h: &'a Hit, name: &str) -> &'a str {
    h.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multicast_delivers_with_headers_holds_202_until_acked_and_signs() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (ok_url, ok) = subscriber(Mode::Ok).await;
    let (acc_url, acc) = subscriber(Mode::Accept).await;
    let (s, v) = srv
        .call(
            "PUT",
            "mc",
            json!({"queue": {"push": {"subscribers": [
                {"name": "ok", "url": ok_url, "headers": {"Content-Type": "application/json", "X-Team": "blue"}},
                {"name": "acc", "url": acc_url}
            ], "retries": 2, "retries_delay": 3, "signing_secret": SECRET}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["queue"]["type"], "multicast");
    assert_eq!(v["queue"]["push"]["error_queue"], "");
    assert!(
        v["queue"]["push"].get("signing_secrets").is_none(),
        "secrets are never shown"
    );

    let (s, v) = srv
        .call(
            "POST",
            "mc/messages",
            json!({"messages": [{"body": "{\"n\":1}", "push_headers": {"X-Trace": "t1"}}]}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["ids"][0].as_str().unwrap().to_string();

    let h = wait_hits(&ok, 1, 10).await[0].clone();
    assert_eq!(h.body.as_ref(), b"{\"n\":1}");
    assert_eq!(header(&h, "user-agent"), "IronMQ Pusherd");
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(header(&h, "x-team"), "blue");
    assert_eq!(header(&h, "x-trace"), "t1");
    assert_eq!(header(&h, "iron-message-id"), id);
    assert_eq!(header(&h, "iron-subscriber-name"), "ok");
    assert_eq!(header(&h, "iron-reservation-id").len(), 32);
    assert_eq!(
        header(&h, "iron-subscriber-message-url"),
        format!(
            "http://127.0.0.1:{}/3/projects/{PID}/queues/mc/messages/{id}",
            srv.port
        )
    );
    // Standard Webhooks signature, checked with the reference crate.
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    wh.verify(&h.body, &h.headers).expect("valid signature");

    // The 202 subscriber holds the message reserved until it acknowledges.
    let a = wait_hits(&acc, 1, 10).await[0].clone();
    assert_eq!(header(&a, "content-type"), "text/plain; encoding=utf-8");
    let st = srv
        .wait_statuses("mc", &id, &["deleted", "reserved"], 10)
        .await;
    assert_eq!(st[0]["status"], "deleted");
    assert_eq!(st[0]["subscriber_name"], "ok");
    assert_eq!(st[0]["tries"], 1);
    assert_eq!(st[0]["status_code"], 200);
    assert!(st[0]["last_try_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(st[1]["status"], "reserved");
    let (_, info) = srv.call("GET", "mc", json!({})).await;
    assert_eq!(
        info["queue"]["size"], 1,
        "not delivered to every subscriber yet"
    );

    // A wrong reservation id is refused (403, or 401 with a token that is none); the right
    // one, without a token, acknowledges.
    let c = reqwest::Client::new();
    let ack_url = header(&a, "iron-subscriber-message-url").to_string();
    let wrong = json!({"reservation_id": "0".repeat(32), "subscriber_name": "acc"});
    let r = c.delete(&ack_url).json(&wrong).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = c
        .delete(&ack_url)
        .header("Authorization", "OAuth not-a-token")
        .json(&wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .delete(&ack_url)
        .json(&json!({"id": id, "reservation_id": header(&a, "iron-reservation-id"), "subscriber_name": "acc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let st = srv.wait_statuses("mc", &id, &["deleted"], 5).await;
    assert_eq!(st[1]["status_code"], 202);
    let (_, info) = srv.call("GET", "mc", json!({})).await;
    assert_eq!(info["queue"]["size"], 0);
    // Delivered messages stay readable by id; nothing was delivered twice.
    let (s, m) = srv
        .call("GET", &format!("mc/messages/{id}"), json!({}))
        .await;
    assert_eq!((s, m["message"]["body"].as_str()), (200, Some("{\"n\":1}")));
    // With its push statuses, as the subscribers endpoint gives them (contract §16).
    let statuses = &m["message"]["push_statuses"];
    assert_eq!(statuses[0]["subscriber_name"], "ok", "{m}");
    assert_eq!(statuses[1]["status"], "deleted", "{m}");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!((hits(&ok).len(), hits(&acc).len()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_on_schedule_then_land_in_the_error_queue() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (fail_url, fail) = subscriber(Mode::Fail).await;
    let (slow_url, slow) = subscriber(Mode::Slow).await;
    let refused = format!("http://127.0.0.1:{}/gone", free_port());
    let (s, v) = srv
        .call(
            "PUT",
            "flaky",
            json!({"queue": {"type": "multicast", "push": {"subscribers": [
                {"name": "fail", "url": fail_url},
                {"name": "slow", "url": slow_url},
                {"name": "refused", "url": refused}
            ], "retries": 1, "retries_delay": 3, "error_queue": "errs"}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The error queue does not exist before the first error.
    assert_eq!(srv.call("GET", "errs", json!({})).await.0, 404);
    let id = srv.post("flaky", &["payload"]).await.remove(0);
    let st = srv.wait_statuses("flaky", &id, &["retrying"], 5).await;
    assert!(
        st.iter()
            .all(|s| s["tries"] == 1 && s["retries_remaining"] == 1),
        "{st:?}"
    );
    assert_eq!(st[0]["status_code"], 500);
    assert_eq!(st[2]["status_code"], 0);

    let st = srv.wait_statuses("flaky", &id, &["error"], 15).await;
    assert!(
        st.iter()
            .all(|s| s["tries"] == 2 && s["retries_remaining"] == 0),
        "{st:?}"
    );
    assert!(
        st[1]["msg"].as_str().unwrap().contains("no answer"),
        "{st:?}"
    );
    let h = hits(&fail);
    assert_eq!(h.len(), 2, "retries + 1 attempts");
    let gap = h[1].at - h[0].at;
    assert!(gap >= Duration::from_millis(2600), "retried after {gap:?}");
    assert_eq!(hits(&slow).len(), 2);

    // One error message per failed subscriber, as a pull queue.
    let (s, v) = srv
        .call("POST", "errs/reservations", json!({"n": 10}))
        .await;
    assert_eq!(s, 200, "{v}");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{v}");
    let mut by_name = HashMap::new();
    for m in msgs {
        let e: Value = serde_json::from_str(m["body"].as_str().unwrap()).unwrap();
        assert_eq!(e["source_msg_id"], id.as_str());
        assert_eq!(e["body"], "payload");
        let sub = e["subscribers"][0].clone();
        by_name.insert(sub["name"].as_str().unwrap().to_string(), sub);
    }
    assert_eq!(by_name["fail"]["code"], 500);
    assert_eq!(by_name["fail"]["url"], fail_url.as_str());
    assert_eq!(by_name["fail"]["msg"], "Internal server error.");
    assert!(
        by_name["refused"]["msg"]
            .as_str()
            .unwrap()
            .contains("connect")
    );
    let (_, info) = srv.call("GET", "errs", json!({})).await;
    assert_eq!(info["queue"]["type"], "pull");
    // The original stays readable; the delivery log has both attempts per subscriber.
    assert_eq!(
        srv.call("GET", &format!("flaky/messages/{id}"), json!({}))
            .await
            .0,
        200
    );
    let (_, log) = srv
        .call("GET", &format!("flaky/messages/{id}/deliveries"), json!({}))
        .await;
    for d in log["deliveries"].as_array().unwrap() {
        assert_eq!(d["attempts"].as_array().unwrap().len(), 2, "{log}");
    }
    assert_eq!(log["deliveries"][0]["attempts"][0]["status_code"], 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_moves_to_the_next_subscriber_at_once_and_fans_out_to_queues() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (bad_url, bad) = subscriber(Mode::Fail).await;
    let (good_url, good) = subscriber(Mode::Ok).await;
    let (s, v) = srv
        .call(
            "PUT",
            "uni",
            json!({"queue": {"type": "unicast", "push": {"subscribers": [
                {"name": "bad", "url": bad_url}, {"name": "good", "url": good_url}
            ], "retries_delay": 60}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ids = srv.post("uni", &["a", "b", "c", "d"]).await;
    let got = wait_hits(&good, 4, 10).await;
    let mut bodies: Vec<_> = got.iter().map(|h| h.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, vec!["a", "b", "c", "d"]);
    assert!(hits(&bad).len() <= 4);
    // Finished messages look finished: one `deleted`; `bad`, where it was tried first,
    // is `error` (it will not be tried again); a subscriber never tried is left out.
    for id in &ids {
        let st = srv.wait_statuses("uni", id, &["deleted", "error"], 5).await;
        let deleted: Vec<_> = st.iter().filter(|s| s["status"] == "deleted").collect();
        assert_eq!(deleted.len(), 1, "{st:?}");
        assert_eq!(deleted[0]["name"], "good", "{st:?}");
        assert!(
            st.iter()
                .all(|s| s["status"] == "deleted" || (s["name"] == "bad" && s["tries"] == 1)),
            "{st:?}"
        );
    }
    let (_, info) = srv.call("GET", "uni", json!({})).await;
    assert_eq!(info["queue"]["size"], 0);

    // ironmq:///name copies into a queue of the same project, ironmq://p:t@/name into one
    // of a project named with its token, ironmq://p:t@host:port/name into another server
    // (a second ferromq here), over its API.
    let other_dir = tempfile::tempdir().unwrap();
    let other = start(other_dir.path()).await;
    let (s, v) = srv
        .call(
            "PUT",
            "fan",
            json!({"queue": {"push": {"subscribers": [
                {"name": "copy1", "url": "ironmq:///copy1"},
                {"name": "copy2", "url": format!("ironmq://{PID}:{TOKEN}@/copy2")},
                {"name": "remote", "url": format!("ironmq://{PID}:{TOKEN}@127.0.0.1:{}/copy3", other.port)},
                {"name": "badtoken", "url": format!("ironmq://{PID}:wrong-token-1@127.0.0.1:{}/copy4", other.port)}
            ], "retries": 0}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = srv.post("fan", &["fanned"]).await.remove(0);
    let st = srv
        .wait_statuses("fan", &id, &["deleted", "error"], 10)
        .await;
    assert_eq!(
        st.iter()
            .map(|s| s["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["deleted", "deleted", "deleted", "error"],
        "{st:?}"
    );
    assert_eq!(st[3]["status_code"], 401, "{st:?}");
    for (server, q) in [(&srv, "copy1"), (&srv, "copy2"), (&other, "copy3")] {
        let (_, v) = server
            .call("POST", &format!("{q}/reservations"), json!({"n": 5}))
            .await;
        assert_eq!(v["messages"][0]["body"], "fanned", "{q}: {v}");
    }
    assert_eq!(other.call("GET", "copy4", json!({})).await.0, 404);

    // Unsupported and malformed subscribers are refused and change nothing.
    for (url, want) in [
        ("ironworker://p:t@host/code", "not supported"),
        ("ironmq://p@host/q", "project:token"),
        ("ftp://x", "http://"),
    ] {
        let (s, v) = srv
            .call(
                "PUT",
                "fan",
                json!({"queue": {"push": {"subscribers": [{"name": "x", "url": url}]}}}),
            )
            .await;
        assert_eq!(s, 400, "{url}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(want), "{url}: {v}");
    }
    let (_, info) = srv.call("GET", "fan", json!({})).await;
    assert_eq!(
        info["queue"]["push"]["subscribers"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // A pull queue cannot become a push queue.
    srv.call("PUT", "pullq", json!({})).await;
    let (s, _) = srv
        .call(
            "PATCH",
            "pullq",
            json!({"queue": {"type": "multicast", "push": {"subscribers": [{"name": "a", "url": good_url}]}}}),
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_deliveries_and_retries_loses_nothing_and_keeps_retry_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = start(dir.path()).await;
    let (flaky_url, flaky) = subscriber(Mode::FailUntil).await;
    let (dead_url, dead) = subscriber(Mode::Fail).await;
    srv.call(
        "PUT",
        "durable",
        json!({"queue": {"push": {"subscribers": [{"name": "flaky", "url": flaky_url}],
               "retries": 5, "retries_delay": 3}}}),
    )
    .await;
    srv.call(
        "PUT",
        "budget",
        json!({"queue": {"push": {"subscribers": [{"name": "dead", "url": dead_url}],
               "retries": 2, "retries_delay": 3, "error_queue": "budget_errors"}}}),
    )
    .await;
    let bodies: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let mut ids = Vec::new();
    for chunk in bodies.chunks(100) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        ids.extend(srv.post("durable", &refs).await);
    }
    let budget_id = srv.post("budget", &["b"]).await.remove(0);
    // Every message has failed once (status retrying, tries 1) and the dead one too.
    wait_hits(&flaky, 300, 20).await;
    let sample = [&ids[0], &ids[150], &ids[299]];
    for id in sample {
        srv.wait_statuses("durable", id, &["retrying"], 10).await;
    }
    srv.wait_statuses("budget", &budget_id, &["retrying"], 10)
        .await;
    // Kill the server in the middle of that, restart it on the same data.
    let killed_at = Instant::now();
    let port = srv.port;
    srv.kill();
    flaky.healthy.store(true, Ordering::SeqCst);
    // The same port: the subscribers were given URLs with it.
    let srv = srv.restart_async().await;
    assert_eq!(srv.port, port);
    let before = hits(&dead).len();
    assert!(before >= 1);
    // Every message is delivered (at least once) after the restart.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, info) = srv.call("GET", "durable", json!({})).await;
        if info["queue"]["size"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still undelivered: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered: std::collections::HashSet<String> = hits(&flaky)
        .iter()
        .filter(|h| h.at > killed_at)
        .map(|h| String::from_utf8_lossy(&h.body).into_owned())
        .collect();
    for b in &bodies {
        assert!(delivered.contains(b), "{b} never reached the subscriber");
    }
    for id in sample {
        let st = srv.statuses("durable", id).await;
        assert_eq!(st[0]["status"], "deleted");
        assert_eq!(
            st[0]["tries"], 2,
            "the failed try before the kill was kept: {st:?}"
        );
    }
    // The retry budget was not reset: 3 tries in all, then the error queue.
    let st = srv
        .wait_statuses("budget", &budget_id, &["error"], 20)
        .await;
    assert_eq!(st[0]["tries"], 3, "{st:?}");
    let total = hits(&dead).len();
    assert!((3..=4).contains(&total), "{total} attempts for retries=2");
    let (_, info) = srv.call("GET", "budget_errors", json!({})).await;
    assert_eq!(info["queue"]["size"], 1, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_subscribers_rotated_secrets_and_a_dead_subscriber_does_not_hold_up_others() {
    let dir = tempfile::tempdir().unwrap();
    let (tls_url, tls_sub, ca_pem) = https_subscriber(Mode::Ok).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let srv = Start::new(dir.path())
        .env("FERROMQ_SYNC", "always")
        .env("FERROMQ_PUSH_TIMEOUT_MS", "700")
        .env("FERROMQ_PUSH_CONCURRENCY_PER_SUBSCRIBER", "2")
        .env("FERROMQ_PUSH_TLS_CA", ca.to_str().unwrap())
        .run_async()
        .await;

    // HTTPS delivery (the certificate is trusted through push_tls_ca), signed with both
    // secrets of a rotation: a receiver holding either one accepts it.
    const NEW_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let (s, v) = srv
        .call(
            "PUT",
            "secure",
            json!({"queue": {"push": {"subscribers": [{"name": "tls", "url": tls_url}],
                   "signing_secret": [SECRET, NEW_SECRET]}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["queue"]["push"]["signed"], true);
    let id = srv.post("secure", &["over tls"]).await.remove(0);
    let h = wait_hits(&tls_sub, 1, 10).await.remove(0);
    assert_eq!(h.body.as_ref(), b"over tls");
    for secret in [SECRET, NEW_SECRET] {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&h.body, &h.headers)
            .unwrap_or_else(|e| panic!("signature with {secret}: {e:?}"));
    }
    let other =
        standardwebhooks::Webhook::new("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGw=").unwrap();
    assert!(other.verify(&h.body, &h.headers).is_err());
    srv.wait_statuses("secure", &id, &["deleted"], 5).await;
    // A bad secret is refused and changes nothing.
    let (s, v) = srv
        .call(
            "PATCH",
            "secure",
            json!({"queue": {"push": {"signing_secret": "not-base64!"}}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // One subscriber that never answers in time, with a backlog, and a healthy one on
    // another queue: the healthy one gets everything at once.
    let (slow_url, slow) = subscriber(Mode::Slow).await;
    let (ok_url, ok) = subscriber(Mode::Ok).await;
    for (q, url) in [("stuck", &slow_url), ("healthy", &ok_url)] {
        let (s, v) = srv
            .call(
                "PUT",
                q,
                json!({"queue": {"push": {"subscribers": [{"name": "s", "url": url}], "retries_delay": 60}}}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let bodies: Vec<String> = (0..40).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    srv.post("stuck", &refs).await;
    let started = Instant::now();
    srv.post("healthy", &refs).await;
    wait_hits(&ok, 40, 10).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "healthy deliveries took {took:?}"
    );
    // The stuck subscriber never had more than 2 attempts in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = hits(&slow).len();
    assert!(
        (1..=2).contains(&n),
        "{n} requests to the stuck subscriber in flight at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_delivery_in_flight_finish_and_record_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut srv = Start::new(dir.path())
        .env("FERROMQ_SYNC", "always")
        .env("FERROMQ_PUSH_TIMEOUT_MS", "5000")
        .env("FERROMQ_SHUTDOWN_GRACE_MS", "4000")
        .run_async()
        .await;
    let (url, sub) = subscriber(Mode::Pause).await;
    srv.call(
        "PUT",
        "graceful",
        json!({"queue": {"push": {"subscribers": [{"name": "p", "url": url}]}}}),
    )
    .await;
    let id = srv.post("graceful", &["in flight"]).await.remove(0);
    wait_hits(&sub, 1, 10).await;
    // The attempt in flight shows as `reserved` (contract §7.2), with no try counted yet.
    let st = srv.statuses("graceful", &id).await;
    assert_eq!(
        (st[0]["status"].as_str(), st[0]["tries"].as_u64()),
        (Some("reserved"), Some(0)),
        "{st:?}"
    );
    // The subscriber is still answering: stop the server now.
    srv.sigterm();
    let status = tokio::task::block_in_place(|| srv.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "exit status {status}");
    let srv = srv.restart_async().await;
    let st = srv.statuses("graceful", &id).await;
    assert_eq!(
        (st[0]["status"].as_str(), st[0]["tries"].as_u64()),
        (Some("deleted"), Some(1)),
        "the attempt in flight finished and was recorded before exit: {st:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hits(&sub).len(), 1, "not delivered again after the restart");
}

/// Alerts fire on the server's own moves too: a reserve moving a message to the dead-letter
/// queue, and an `ironmq://` delivery into another queue.
#[tokio::test]
async fn alerts_fire_on_dead_letter_moves_and_ironmq_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let alert = |target: &str| {
        json!({"queue": {"alerts": [
            {"type": "fixed", "direction": "asc", "trigger": 1, "queue": target}
        ]}})
    };
    for (q, target) in [("dlq", "dlq-alerts"), ("fanned", "fan-alerts")] {
        let (s, v) = srv.call("PUT", q, alert(target)).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = srv
        .call(
            "PUT",
            "src",
            json!({"queue": {"dead_letter": {"queue_name": "dlq", "max_reservations": 1}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    srv.post("src", &["x"]).await;
    let (_, v) = srv.call("POST", "src/reservations", json!({})).await;
    let m = &v["messages"][0];
    let (s, _) = srv
        .call(
            "POST",
            &format!("src/messages/{}/release", m["id"].as_str().unwrap()),
            json!({"reservation_id": m["reservation_id"]}),
        )
        .await;
    assert_eq!(s, 200);
    // Reserved once already: this reserve moves it to `dlq`, whose size reaches 1.
    let (_, v) = srv.call("POST", "src/reservations", json!({})).await;
    assert_eq!(v["messages"], json!([]), "{v}");
    let (_, v) = srv.call("GET", "dlq", json!({})).await;
    assert_eq!(v["queue"]["size"], 1, "{v}");

    let (s, v) = srv
        .call(
            "PUT",
            "fan",
            json!({"queue": {"push": {"subscribers": [{"name": "f", "url": "ironmq:///fanned"}]}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = srv.post("fan", &["y"]).await.remove(0);
    srv.wait_statuses("fan", &id, &["deleted"], 10).await;

    for (target, source) in [("dlq-alerts", "dlq"), ("fan-alerts", "fanned")] {
        let (_, v) = srv
            .call("POST", &format!("{target}/reservations"), json!({"n": 10}))
            .await;
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1, "{target}: {v}");
        let alert: Value = serde_json::from_str(msgs[0]["body"].as_str().unwrap()).unwrap();
        assert_eq!(alert["source_queue"], source, "{alert}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_over_the_body_limit_is_cut_to_fit_and_the_retry_budget_holds() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (fail_url, fail) = subscriber(Mode::Fail).await;
    let (s, v) = srv
        .call(
            "PUT",
            "big",
            json!({"queue": {"push": {"subscribers": [{"name": "f", "url": fail_url}],
                "retries": 0, "error_queue": "big-err"}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Under the 256 KiB limit, but the report (the body escaped, plus the rest) is over it.
    let body = "\"q\"".repeat(87_000);
    let id = srv.post("big", &[&body]).await.remove(0);
    srv.wait_statuses("big", &id, &["error"], 10).await;
    let (s, v) = srv
        .call("POST", "big-err/reservations", json!({"n": 10}))
        .await;
    assert_eq!(s, 200, "{v}");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "one report");
    let text = msgs[0]["body"].as_str().unwrap();
    assert!(text.len() <= 256 * 1024, "{}", text.len());
    let e: Value = serde_json::from_str(text).unwrap();
    assert_eq!(e["source_msg_id"], id.as_str());
    assert_eq!(e["body_truncated"], true);
    let kept = e["body"].as_str().unwrap();
    assert!(
        kept.len() > 100_000 && body.starts_with(kept),
        "{}",
        kept.len()
    );
    // One attempt (retries 0), not a redelivery loop; the original stays readable.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hits(&fail).len(), 1);
    let (s, m) = srv
        .call("GET", &format!("big/messages/{id}"), json!({}))
        .await;
    assert_eq!(
        (s, m["message"]["body"].as_str()),
        (200, Some(body.as_str()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_links_that_would_close_a_cycle_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (ok_url, _ok) = subscriber(Mode::Ok).await;
    let push = |subs: Value, eq: &str| json!({"queue": {"push": {"subscribers": subs, "error_queue": eq}}});
    let cases = [
        // A queue fanning out to itself, or naming itself as its error queue.
        (
            "self",
            push(json!([{"name": "me", "url": "ironmq:///self"}]), ""),
        ),
        (
            "self2",
            push(json!([{"name": "s", "url": ok_url}]), "self2"),
        ),
    ];
    for (q, body) in cases {
        let (s, v) = srv.call("PUT", q, body).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["msg"].as_str().unwrap().contains("cycle"), "{v}");
        assert_eq!(
            srv.call("GET", q, json!({})).await.0,
            404,
            "nothing created"
        );
    }
    // a -> b (fan-out), then b -> a (error queue) would close a cycle; b -> c does not,
    // and neither does c fanning out to a (a chain, not a loop).
    let (s, v) = srv
        .call(
            "PUT",
            "a",
            push(json!([{"name": "s", "url": "ironmq:///b"}]), ""),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = srv
        .call("PUT", "b", push(json!([{"name": "s", "url": ok_url}]), "a"))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("b -> a -> b"),
        "the cycle is named: {v}"
    );
    let (s, v) = srv
        .call("PUT", "b", push(json!([{"name": "s", "url": ok_url}]), "c"))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = srv
        .call(
            "PUT",
            "c",
            push(json!([{"name": "s", "url": "ironmq:///d"}]), ""),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Adding a subscriber to c that leads back into a -> b -> c closes one.
    let (s, v) = srv
        .call(
            "POST",
            "c/subscribers",
            json!({"subscribers": [{"name": "back", "url": "ironmq:///a"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let (_, info) = srv.call("GET", "c", json!({})).await;
    assert_eq!(
        info["queue"]["push"]["subscribers"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "unchanged: {info}"
    );
    // An alert into a push queue that delivers back into the alerting queue loops too.
    let (s, v) = srv
        .call(
            "PUT",
            "back",
            push(json!([{"name": "s", "url": "ironmq:///src"}]), ""),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(srv.call("PUT", "src", json!({})).await.0, 200);
    let (s, v) = srv
        .call(
            "POST",
            "src/alerts",
            json!({"alerts": [{"type": "progressive", "direction": "asc", "trigger": 1, "queue": "back"}]}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("src -> back -> src"),
        "{v}"
    );
    // Alerting itself is not a loop (an alert's message fires no alerts).
    let (s, v) = srv
        .call(
            "POST",
            "src/alerts",
            json!({"alerts": [{"type": "fixed", "trigger": 1, "queue": "src"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Removal goes by name: an entry without one is refused, and changes nothing.
    let (s, v) = srv
        .call(
            "POST",
            "c/subscribers",
            json!({"subscribers": [{"name": "two", "url": ok_url, "headers": []}]}),
        )
        .await;
    assert_eq!(s, 200, "PHP's empty headers: {v}");
    let (s, v) = srv
        .call(
            "DELETE",
            "c/subscribers",
            json!({"subscribers": [{"url": ok_url}]}),
        )
        .await;
    assert_eq!(
        (s, v["msg"].as_str()),
        (400, Some("subscriber name is required"))
    );
    let (s, v) = srv
        .call(
            "DELETE",
            "c/subscribers",
            json!({"subscribers": [{"name": "two", "url": "http://elsewhere/"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, info) = srv.call("GET", "c", json!({})).await;
    assert_eq!(
        info["queue"]["push"]["subscribers"],
        json!([{"name": "s", "url": "ironmq:///d"}]),
        "{info}"
    );
    // Adding or replacing needs names too (v3; v2 subscribers had none).
    for method in ["POST", "PUT"] {
        let (s, v) = srv
            .call(
                method,
                "c/subscribers",
                json!({"subscribers": [{"url": ok_url}]}),
            )
            .await;
        assert_eq!(
            (s, v["msg"].as_str()),
            (400, Some("subscriber name is required")),
            "{method}"
        );
    }
}

/// On a multicast queue each subscriber holds its own delivery of a message: one batch
/// may acknowledge both, but not one delivery twice, nor delete the message beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_acknowledges_one_message_for_each_of_its_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (url_a, a) = subscriber(Mode::Accept).await;
    let (url_b, b) = subscriber(Mode::Accept).await;
    let (s, v) = srv
        .call(
            "PUT",
            "both",
            json!({"queue": {"type": "multicast", "push": {"subscribers": [
                {"name": "a", "url": url_a}, {"name": "b", "url": url_b}],
                "retries_delay": 60}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let id = srv.post("both", &["m"]).await.remove(0);
    let ha = wait_hits(&a, 1, 10).await.remove(0);
    let hb = wait_hits(&b, 1, 10).await.remove(0);
    srv.wait_statuses("both", &id, &["reserved", "reserved"], 5)
        .await;
    let entry = |h: &Hit, sub: &str| json!({"id": id, "reservation_id": header(h, "iron-reservation-id"), "subscriber_name": sub});
    for bad in [
        json!({"ids": [entry(&ha, "a"), entry(&ha, "a")]}),
        json!({"ids": [entry(&ha, "a"), {"id": id}]}),
    ] {
        let (s, v) = srv.call("DELETE", "both/messages", bad.clone()).await;
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let statuses = srv.statuses("both", &id).await;
    assert!(
        statuses.iter().all(|st| st["status"] == "reserved"),
        "{statuses:?}"
    );
    let (s, v) = srv
        .call(
            "DELETE",
            "both/messages",
            json!({"ids": [entry(&ha, "a"), entry(&hb, "b")]}),
        )
        .await;
    assert_eq!((s, v["msg"].as_str()), (200, Some("Deleted")), "{v}");
    srv.wait_statuses("both", &id, &["deleted"], 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_in_a_batch_delete_and_subscriber_name_on_pull_queues() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (acc_url, acc) = subscriber(Mode::Accept).await;
    let (s, v) = srv
        .call(
            "PUT",
            "held",
            json!({"queue": {"push": {"subscribers": [{"name": "acc", "url": acc_url}],
                "retries_delay": 60}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let ids = srv.post("held", &["one", "two"]).await;
    let h = wait_hits(&acc, 2, 10).await;
    srv.wait_statuses("held", &ids[0], &["reserved"], 5).await;
    srv.wait_statuses("held", &ids[1], &["reserved"], 5).await;
    let entry = |h: &Hit, rid: &str| json!({"id": header(h, "iron-message-id"), "reservation_id": rid, "subscriber_name": "acc"});
    // One stale reservation: refused, and neither is acknowledged.
    let bad = json!({"ids": [entry(&h[0], header(&h[0], "iron-reservation-id")), entry(&h[1], &"0".repeat(32))]});
    let (s, v) = srv.call("DELETE", "held/messages", bad).await;
    assert_eq!(s, 403, "{v}");
    for id in &ids {
        assert_eq!(srv.statuses("held", id).await[0]["status"], "reserved");
    }
    let good = json!({"ids": [entry(&h[0], header(&h[0], "iron-reservation-id")), entry(&h[1], header(&h[1], "iron-reservation-id"))]});
    let (s, v) = srv.call("DELETE", "held/messages", good).await;
    assert_eq!((s, v["msg"].as_str()), (200, Some("Deleted")), "{v}");
    for id in &ids {
        srv.wait_statuses("held", id, &["deleted"], 5).await;
    }

    // On a pull queue `subscriber_name` is no acknowledgement: without a token the answer
    // is the same 403 as for a wrong reservation, a missing message or a missing queue (it
    // tells nothing about what exists); with one it is an ordinary delete.
    let id = srv.post("plain", &["x"]).await.remove(0);
    let c = reqwest::Client::new();
    let url = srv.queue_url(&format!("plain/messages/{id}"));
    let gone = srv.queue_url(&format!("nothing-here/messages/{id}"));
    for u in [&url, &gone] {
        let r = c
            .delete(u)
            .json(&json!({"reservation_id": "0".repeat(32), "subscriber_name": "s"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{u}");
    }
    // Without a token the body is read only as far as an acknowledgement needs.
    let r = c
        .delete(&url)
        .json(&json!({"reservation_id": "x".repeat(8192), "subscriber_name": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let (s, v) = srv
        .call(
            "DELETE",
            &format!("plain/messages/{id}"),
            json!({"subscriber_name": "s"}),
        )
        .await;
    assert_eq!((s, v["msg"].as_str()), (200, Some("Deleted")), "{v}");
}

/// Unicast: a 202 that is never acknowledged is a failure once `retries_delay` passes, and
/// the message moves on at once to the next subscriber (not to the one that held it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicast_moves_on_from_an_unacknowledged_202() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let (acc_url, acc) = subscriber(Mode::Accept).await;
    let (ok_url, ok) = subscriber(Mode::Ok).await;
    let (s, v) = srv
        .call(
            "PUT",
            "uni202",
            json!({"queue": {"type": "unicast", "push": {"subscribers": [
                {"name": "acc", "url": acc_url}, {"name": "ok", "url": ok_url}
            ], "retries": 1, "retries_delay": 3}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let posted = Instant::now();
    let ids = srv.post("uni202", &["a", "b", "c", "d", "e", "f"]).await;
    let got = wait_hits(&ok, ids.len(), 10).await;
    let held = hits(&acc);
    assert!(!held.is_empty(), "round-robin starts some messages at acc");
    let last = got.iter().map(|h| h.at).max().unwrap() - posted;
    assert!(
        last < Duration::from_millis(5500),
        "moved on at the first hold's end, not after a second one: {last:?}"
    );
    let mut asked: Vec<&str> = held.iter().map(|h| header(h, "iron-message-id")).collect();
    asked.sort();
    let n = asked.len();
    asked.dedup();
    assert_eq!(asked.len(), n, "acc was asked once per message");
    for id in &ids {
        srv.wait_statuses("uni202", id, &["deleted", "error"], 5)
            .await;
    }
}

/// Loops the configuration cannot see (subscribers that are this server's own webhook or
/// name it by address): every push carries the path of queues its message came through,
/// and a message arriving at a queue already on it is refused. One post makes no copies
/// back into its queue, however many subscribers point back, and also when the loop passes
/// through an alert or an error queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_through_this_servers_own_address_end_at_the_first_return() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path()).await;
    let webhook = |q: &str| format!("{}/webhook?oauth={TOKEN}", srv.queue_url(q));
    let by_address = |q: &str| format!("ironmq://{PID}:{TOKEN}@127.0.0.1:{}/{q}", srv.port);
    let put = |q: &'static str, body: Value| {
        let srv = &srv;
        async move {
            let (s, v) = srv.call("PUT", q, body).await;
            assert_eq!(s, 200, "{q}: {v}");
        }
    };
    // Three subscribers, each this queue's own webhook.
    let subs: Vec<Value> = (0..3)
        .map(|i| json!({"name": format!("me{i}"), "url": webhook("wide")}))
        .collect();
    put(
        "wide",
        json!({"queue": {"push": {"subscribers": subs, "retries": 0}}}),
    )
    .await;
    // A pull queue alerting a push queue that delivers back by address.
    put("hb-b", json!({"queue": {"push": {"subscribers": [{"name": "back", "url": by_address("hb-a")}], "retries": 0}}})).await;
    put("hb-a", json!({"queue": {"alerts": [{"type": "progressive", "direction": "asc", "trigger": 1, "queue": "hb-b"}]}})).await;
    // A failing push queue whose error queue delivers back by webhook.
    put("ed-e", json!({"queue": {"push": {"subscribers": [{"name": "back", "url": webhook("ed-a")}], "retries": 0}}})).await;
    put("ed-a", json!({"queue": {"push": {"subscribers": [{"name": "dead", "url": format!("http://127.0.0.1:{}/", free_port())}], "retries": 0, "error_queue": "ed-e"}}})).await;
    for q in ["wide", "hb-a", "ed-a"] {
        srv.post(q, &["once"]).await;
    }
    let total = |q: &'static str| {
        let srv = &srv;
        async move {
            let (_, v) = srv.call("GET", q, json!({})).await;
            v["queue"]["total_messages"].as_u64().unwrap()
        }
    };
    // Until the copies stop (the error queue's report takes a failed attempt first).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = (0, 0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let now = (
            total("wide").await,
            total("hb-a").await,
            total("ed-a").await,
        );
        if now == last && total("ed-e").await > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still growing: {now:?}");
        last = now;
    }
    assert_eq!(last, (1, 1, 1), "no copy came back");
}
