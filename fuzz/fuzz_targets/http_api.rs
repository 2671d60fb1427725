//! Requests built from arbitrary bytes, through the server's router (auth, extractors, JSON
//! parsing, every handler) onto an engine on simulated storage: never a panic, never a 5xx
//! (bad input is a 4xx with a JSON `msg`). Time is tokio's paused clock, so a long poll
//! ends at once instead of holding the fuzzer.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use engine::testing::SimStorage;
use engine::{Engine, EngineConfig, ManualClock, SyncPolicy};
use http_body_util::BodyExt;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const PID: &str = "0123456789abcdef01234567";
const TOKEN: &str = "fuzz-project-token";
const ADMIN: &str = "fuzz-admin-token";

struct World {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    /// Requests served; the world starts afresh every [`FRESH_EVERY`] (what the queues
    /// hold grows, and slows the runs, otherwise).
    served: u32,
}

const FRESH_EVERY: u32 = 5_000;

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn new_world() -> World {
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        let app = rt.block_on(async {
            let mut config = EngineConfig::new("/sim");
            config.sync = SyncPolicy::Never;
            config.segment_bytes = 8 << 20;
            config.body_bytes_max = 4096;
            let engine = Engine::open_with(
                config,
                Arc::new(SimStorage::new()),
                Arc::new(ManualClock::new(1_700_000_000_000)),
            )
            .expect("open");
            let (creds, _) =
                server::auth::Credentials::bootstrap(&engine, Some(ADMIN), Some(PID), Some(TOKEN))
                    .await
                    .expect("credentials");
            let state = server::state::AppState::new(engine, creds, Duration::from_secs(60), None);
            server::router::build(state)
        });
        World { rt, app, served: 0 }
    }
}

#[derive(Arbitrary, Debug)]
struct Req<'a> {
    method: u8,
    project: u8,
    queue: u8,
    tail: u8,
    id: &'a str,
    query: &'a str,
    auth: u8,
    body: &'a [u8],
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
const QUEUES: [&str; 4] = ["q1", "q2", "dlq", "push"];

fn path(r: &Req<'_>) -> String {
    let pid = match r.project % 4 {
        0 => "ffffffffffffffffffffffff",
        _ => PID,
    };
    let q = QUEUES[r.queue as usize % QUEUES.len()];
    let base = format!("/3/projects/{pid}/queues/{q}");
    let id = r.id;
    match r.tail % 16 {
        0 => format!("/3/projects/{pid}/queues"),
        1 | 2 => base,
        3 | 4 | 5 => format!("{base}/messages"),
        6 | 7 => format!("{base}/reservations"),
        8 => format!("{base}/messages/{id}"),
        9 => format!("{base}/messages/{id}/touch"),
        10 => format!("{base}/messages/{id}/release"),
        11 => format!("{base}/messages/{id}/subscribers"),
        12 => format!("{base}/subscribers"),
        13 => format!("{base}/alerts"),
        14 => format!("{base}/webhook"),
        _ => format!("/{id}"),
    }
}

fuzz_target!(|r: Req<'_>| {
    WORLD.with_borrow_mut(|w| {
        if w.as_ref().is_none_or(|w| w.served >= FRESH_EVERY) {
            *w = Some(new_world());
        }
        let w = w.as_mut().expect("a world");
        w.served += 1;
        check(w, &r);
    });
});

fn check(w: &World, r: &Req<'_>) {
    let uri = format!("{}?{}", path(r), r.query);
    let mut b = Request::builder()
        .method(METHODS[r.method as usize % METHODS.len()])
        .uri(uri.as_str())
        .header("Content-Type", "application/json");
    match r.auth % 8 {
        0 => {}
        1 => b = b.header("Authorization", format!("OAuth {ADMIN}")),
        2 => b = b.header("Authorization", "OAuth wrong"),
        _ => b = b.header("Authorization", format!("OAuth {TOKEN}")),
    }
    let Ok(req) = b.body(Body::from(r.body.to_vec())) else {
        return; // not a request http can even represent (a bad URI)
    };
    let (status, body) = w.rt.block_on(async {
        let resp = w.app.clone().oneshot(req).await.expect("infallible");
        // What `http.rs` does to every answer of the router (axum's rejections are text).
        let resp = server::http::ensure_json(resp);
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    });
    assert!(
        !status.is_server_error(),
        "{status} for {uri}: {}",
        String::from_utf8_lossy(&body)
    );
    if status.is_client_error() {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "no msg: {v}"
        );
    }
}
