//! The pusher: delivers the messages of push queues to their subscribers.
//!
//! One loop asks the engine which subscribers have deliveries due (`push_ready`), claims as
//! many as the in-flight limits allow (in total, and per subscriber so that one slow or dead
//! subscriber cannot take every slot), and runs each attempt as a task. A task makes the
//! request, decides the new state (`decide`), posts to the error queue if the message failed
//! for good, and writes the new state to the log (`push_complete`) before it is done.
//! Between rounds the loop sleeps until the earliest due time or a wake-up (a post, an
//! acknowledgement, a finished attempt): no task waits per message, and no polling.

pub mod decide;
pub mod sign;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{NewMessage, PushDelivery, QueueKey};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::settings::{Extra, Push, Subscriber};
use crate::state::AppState;
use decide::{Outcome, decide};
use target::IronMqUrl;

/// Pusher settings (from the server config).
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// How long a subscriber has to answer.
    pub timeout: Duration,
    /// Attempts in flight at most, in total.
    pub concurrency: usize,
    /// Attempts in flight at most per subscriber.
    pub concurrency_per_subscriber: usize,
    /// The base of `Iron-Subscriber-Message-Url`, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// How long in-flight attempts may finish after a shutdown starts.
    pub shutdown_grace: Duration,
    /// Extra trusted root certificates (PEM) for `https://` subscribers.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Reads a PEM bundle of root certificates (at least one).
pub fn load_roots(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

type LaneKey = (u32, String);

/// How a timed-out attempt's error text starts.
const TIMEOUT_MSG: &str = "no answer within";

struct Ctx {
    st: AppState,
    client: reqwest::Client,
    config: PushConfig,
}

/// Runs until `stop` resolves, then lets in-flight attempts finish within the grace period
/// (unfinished ones are simply due again after a restart).
pub async fn run(st: AppState, config: PushConfig, stop: impl std::future::Future<Output = ()>) {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = &config.tls_ca {
        match load_roots(ca) {
            Ok(certs) => {
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            Err(e) => tracing::error!(error = %e, "push_tls_ca: extra roots not loaded"),
        }
    }
    let client = match builder
        .pool_max_idle_per_host(config.concurrency_per_subscriber.max(1))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .connect_timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the push HTTP client; push delivery is off");
            return;
        }
    };
    let engine = st.engine.clone();
    let ctx = Arc::new(Ctx { st, client, config });
    let wake = engine.push_wake();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<LaneKey>();
    let mut tasks = JoinSet::new();
    let mut per_lane: HashMap<LaneKey, usize> = HashMap::new();
    let mut inflight = 0usize;
    tokio::pin!(stop);
    loop {
        while let Ok(k) = done_rx.try_recv() {
            finished(&mut per_lane, &mut inflight, k);
        }
        while let Some(r) = tasks.try_join_next() {
            if let Err(e) = r
                && e.is_panic()
            {
                tracing::error!(error = %e, "a push attempt panicked; its slot is freed");
            }
        }
        if engine.is_failed() {
            break;
        }
        let now = crate::time::now_ms();
        let (lanes, next_due) = engine.push_ready(now);
        for lane in lanes {
            let k = (lane.queue, lane.subscriber.clone());
            let used = per_lane.get(&k).copied().unwrap_or(0);
            let free = ctx
                .config
                .concurrency
                .saturating_sub(inflight)
                .min(ctx.config.concurrency_per_subscriber.saturating_sub(used));
            if free == 0 {
                continue;
            }
            let batch = match engine.push_claim(&lane, now, free).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, queue = %lane.key.name, "claiming deliveries failed");
                    continue;
                }
            };
            // One parse of the push settings per claimed batch (they share the queue's).
            let push = batch
                .first()
                .and_then(|d| Extra::of(&d.config).push)
                .map(Arc::new);
            for d in batch {
                inflight += 1;
                *per_lane.entry(k.clone()).or_default() += 1;
                let ctx = ctx.clone();
                let tx = done_tx.clone();
                let k = k.clone();
                let push = push.clone();
                tasks.spawn(async move {
                    // Frees the slot even if the attempt panics (dropped while unwinding).
                    let _slot = Slot(tx, Some(k));
                    deliver(&ctx, d, push).await;
                });
            }
        }
        let sleep = next_due
            .map(|t| Duration::from_millis(t.saturating_sub(crate::time::now_ms()).max(1)))
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = &mut stop => break,
            _ = wake.notified() => {}
            Some(k) = done_rx.recv() => finished(&mut per_lane, &mut inflight, k),
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    if !tasks.is_empty() {
        tracing::info!(
            in_flight = tasks.len(),
            "waiting for push attempts in flight"
        );
        let deadline = tokio::time::Instant::now() + ctx.config.shutdown_grace;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        abandoned = tasks.len(),
                        "push attempts still in flight at the deadline; they are redone after restart"
                    );
                    tasks.abort_all();
                    break;
                }
            }
        }
    }
}

/// A delivery's share of the concurrency limits, given back when it is dropped.
struct Slot(mpsc::UnboundedSender<LaneKey>, Option<LaneKey>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(k) = self.1.take() {
            let _ = self.0.send(k);
        }
    }
}

fn finished(per_lane: &mut HashMap<LaneKey, usize>, inflight: &mut usize, k: LaneKey) {
    *inflight = inflight.saturating_sub(1);
    if let Some(n) = per_lane.get_mut(&k) {
        *n -= 1;
        if *n == 0 {
            per_lane.remove(&k);
        }
    }
}

/// One attempt, start to durable outcome.
async fn deliver(ctx: &Ctx, d: PushDelivery, push: Option<Arc<Push>>) {
    let engine = &ctx.st.engine;
    let Some(push) = push else {
        engine.push_unclaim(&d);
        return;
    };
    let Some(sub) = push
        .subscribers
        .iter()
        .find(|s| s.name == d.subscriber)
        .cloned()
    else {
        engine.push_unclaim(&d);
        return;
    };
    let prev = d.state().cloned();
    let expired_hold = prev
        .as_ref()
        .is_some_and(|p| p.status == engine::PushStatus::Reserved);
    let started = Instant::now();
    // An expired 202 hold is a failed try (counted when the 202 came). Unicast then moves
    // on at once to a subscriber not tried yet in this round, as for any failure, rather
    // than asking the one that held it again; the others ask again if retries remain.
    let unicast_moves_on = d.config.kind == engine::QueueKind::Unicast && d.states.len() > 1;
    let (outcome, counted) = if expired_hold
        && (unicast_moves_on || prev.as_ref().is_some_and(|p| p.tries > push.retries))
    {
        (
            Outcome::Failed {
                code: 202,
                msg: "not acknowledged within retries_delay".into(),
            },
            false,
        )
    } else {
        (attempt(ctx, &d, &push, &sub).await, true)
    };
    let latency_ms = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
    let now = crate::time::now_ms();
    let mut jitter = |ms: u64| -> u64 {
        // Up to 10 % later, so that retries of many messages do not arrive in lockstep;
        // never earlier than `retries_delay`.
        ms + rand::random_range(0..=ms / 10)
    };
    let decision = decide(&d, &push, &outcome, counted, now, latency_ms, &mut jitter);
    let label = match &outcome {
        Outcome::Delivered(_) => "delivered",
        Outcome::Held => "held",
        Outcome::Failed { code: 0, msg } if msg.starts_with(TIMEOUT_MSG) => "timeout",
        Outcome::Failed { code: 0, .. } => "error",
        Outcome::Failed { .. } => "rejected",
    };
    if counted {
        ctx.st.metrics.push_attempt(label);
    }
    tracing::debug!(
        queue = %d.key.name, id = %d.id, subscriber = %d.subscriber, outcome = label,
        latency_ms, "push attempt"
    );
    if !decision.failed_for_good.is_empty()
        && !push.error_queue.is_empty()
        && let Err(e) = post_error(ctx, &d, &push, &decision.failed_for_good).await
    {
        // The state is not recorded either: the attempt is redone (at least once), after a
        // pause so that a post that keeps failing does not spin.
        tracing::error!(queue = %d.key.name, id = %d.id, error = %e, "posting to the error queue failed");
        tokio::time::sleep(ERROR_QUEUE_RETRY).await;
        engine.push_unclaim(&d);
        return;
    }
    match engine.push_complete(&d, &decision.updates).await {
        Ok(_) => {}
        Err(e) => {
            tracing::error!(queue = %d.key.name, id = %d.id, error = %e, "recording a push outcome failed")
        }
    }
}

/// How long a delivery whose error-queue message could not be posted waits before it is
/// redone.
const ERROR_QUEUE_RETRY: Duration = Duration::from_secs(1);

/// The error-queue message for subscribers that failed for good (contract §7.3).
async fn post_error(
    ctx: &Ctx,
    d: &PushDelivery,
    push: &Push,
    failed: &[engine::PushSubState],
) -> Result<(), engine::Error> {
    let max = ctx.st.engine.config().body_bytes_max as usize;
    let key = QueueKey::new(d.key.project.clone(), push.error_queue.clone());
    // The report goes on along the message's path: an error queue it came from before is
    // a loop (through another server or this one's own address), and gets no report.
    let path = crate::hops::leaving(&d.meta, &ctx.st.server, &d.key);
    if let Some(why) = crate::hops::refusal(&path, &ctx.st.server, &key) {
        tracing::warn!(queue = %d.key.name, id = %d.id, error_queue = %key.name, reason = %why, "error-queue report not posted");
        return Ok(());
    }
    let msg = NewMessage {
        body: error_report(d, push, failed, max).into(),
        meta: crate::hops::set_in_meta(&[], &path),
        ..Default::default()
    };
    crate::alerts::post(&ctx.st, &key, &[msg]).await.map(drop)
}

/// The report of §7.3 as JSON text. When it would be over `max` bytes (the message body
/// limit: the report holds the original body, escaped), the copy of the body is cut at a
/// character boundary and `"body_truncated": true` added; the original message stays
/// readable by `source_msg_id`.
fn error_report(
    d: &PushDelivery,
    push: &Push,
    failed: &[engine::PushSubState],
    max: usize,
) -> Vec<u8> {
    let mut headers: BTreeMap<String, String> = if d.meta.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_slice(&d.meta).unwrap_or_default()
    };
    headers.retain(|k, _| !k.eq_ignore_ascii_case(crate::hops::HEADER));
    let subs: Vec<_> = failed
        .iter()
        .map(|s| json!({"name": s.subscriber, "url": push.url_of(&s.subscriber), "code": s.status_code, "msg": s.msg}))
        .collect();
    let body = String::from_utf8_lossy(&d.body);
    let mut report = json!({
        "source_msg_id": d.id.to_string(),
        "body": body,
        "headers": headers,
        "subscribers": subs,
    });
    let mut text = report.to_string();
    if text.len() > max {
        report["body_truncated"] = json!(true);
        // The longest prefix of the body (at a character boundary) whose report fits:
        // a binary search, as escaping makes the report's length uneven in the prefix's.
        let mut fits = |keep: usize| {
            report["body"] = json!(&body[..keep]);
            let t = report.to_string();
            (t.len() <= max).then_some(t)
        };
        let (mut lo, mut hi) = (0, body.len());
        text = fits(0).unwrap_or_default();
        while hi - lo > 1 {
            let mid = body.floor_char_boundary(lo + (hi - lo) / 2);
            if mid == lo {
                break;
            }
            match fits(mid) {
                Some(t) => (lo, text) = (mid, t),
                None => hi = mid,
            }
        }
        if text.is_empty() {
            // Not even an empty body fits (a small body limit and many subscribers or long
            // error texts): the rest goes too, the error texts first, down to the id alone.
            report["body"] = json!("");
            for s in report["subscribers"].as_array_mut().into_iter().flatten() {
                s["msg"] = json!("");
            }
            report["details_truncated"] = json!(true);
            text = report.to_string();
            if text.len() > max {
                text = json!({
                    "source_msg_id": d.id.to_string(), "body": "", "body_truncated": true,
                    "details_truncated": true,
                })
                .to_string();
            }
        }
    }
    text.into_bytes()
}

/// Makes one attempt to `sub`.
async fn attempt(ctx: &Ctx, d: &PushDelivery, push: &Push, sub: &Subscriber) -> Outcome {
    if target::is_ironmq(&sub.url) {
        return match IronMqUrl::parse(&sub.url) {
            Ok(u) => fan_out(ctx, d, &u).await,
            Err(e) => Outcome::Failed { code: 0, msg: e },
        };
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let set = |h: &mut BTreeMap<String, String>, k: &str, v: &str| {
        h.retain(|old, _| !old.eq_ignore_ascii_case(k));
        h.insert(k.to_string(), v.to_string());
    };
    set(&mut headers, "User-Agent", "IronMQ Pusherd");
    set(&mut headers, "Content-Type", "text/plain; encoding=utf-8");
    for (k, v) in &sub.headers {
        set(&mut headers, k, v);
    }
    if !d.meta.is_empty()
        && let Ok(h) = serde_json::from_slice::<BTreeMap<String, String>>(&d.meta)
    {
        for (k, v) in &h {
            set(&mut headers, k, v);
        }
    }
    let id = d.id.to_string();
    set(&mut headers, "Iron-Message-Id", &id);
    set(
        &mut headers,
        "Iron-Reservation-Id",
        &d.reservation.to_string(),
    );
    set(&mut headers, "Iron-Subscriber-Name", &sub.name);
    set(
        &mut headers,
        "Iron-Subscriber-Message-Url",
        &message_url(&ctx.config.base_url, &d.key, &id),
    );
    let path = crate::hops::leaving(&d.meta, &ctx.st.server, &d.key);
    set(&mut headers, crate::hops::HEADER, &path.join(","));
    let keys: Vec<Vec<u8>> = push
        .signing_secrets
        .iter()
        .filter_map(|s| crate::settings::signing_key(s))
        .collect();
    if !keys.is_empty() {
        for (k, v) in sign::headers(
            &keys,
            &format!("msg_{id}"),
            crate::time::now_ms() / 1000,
            &d.body,
        ) {
            set(&mut headers, &k, &v);
        }
    }
    let mut req = ctx
        .client
        .post(&sub.url)
        .timeout(ctx.config.timeout)
        .body(d.body.clone());
    for (k, v) in &headers {
        // As bytes: a UTF-8 value goes out as is (`check_header` let no control character in).
        req = req.header(k.as_str(), v.as_bytes());
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status();
            let code = status.as_u16();
            let text = read_some(resp).await;
            if code == 202 {
                Outcome::Held
            } else if status.is_success() {
                Outcome::Delivered(code)
            } else {
                let reason = status.canonical_reason().unwrap_or("error");
                let msg = if text.trim().is_empty() {
                    format!("{code} {reason}")
                } else {
                    text.trim().to_string()
                };
                Outcome::Failed { code, msg }
            }
        }
        Err(e) => {
            let msg = if e.is_timeout() {
                format!("{TIMEOUT_MSG} {} ms", ctx.config.timeout.as_millis())
            } else if e.is_connect() {
                format!("cannot connect: {}", root_cause(&e))
            } else {
                root_cause(&e)
            };
            Outcome::Failed { code: 0, msg }
        }
    }
}

/// The first 512 bytes of a response body (read to the end up to 64 KiB so the connection
/// can be reused).
async fn read_some(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    let mut total = 0usize;
    while let Ok(Some(chunk)) = resp.chunk().await {
        total += chunk.len();
        if out.len() < 512 {
            out.extend_from_slice(&chunk[..chunk.len().min(512 - out.len())]);
        }
        if total > 64 * 1024 {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The acknowledgement URL of a message (`Iron-Subscriber-Message-Url`).
pub fn message_url(base: &str, key: &QueueKey, id: &str) -> String {
    // Only what a path segment cannot hold is escaped: RFC 3986's unreserved characters
    // stay as they are, so `my-queue` reads `my-queue` to clients that take the queue name
    // from the URL without decoding it (Laravel's IronMQ driver does).
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string();
    format!(
        "{}/3/projects/{}/queues/{}/messages/{id}",
        base.trim_end_matches('/'),
        enc(&key.project),
        enc(&key.name)
    )
}

/// Delivery to an `ironmq://` queue.
async fn fan_out(ctx: &Ctx, d: &PushDelivery, u: &IronMqUrl) -> Outcome {
    let path = crate::hops::leaving(&d.meta, &ctx.st.server, &d.key);
    let msg = NewMessage {
        body: d.body.clone().into(),
        delay_s: 0,
        meta: crate::hops::set_in_meta(&d.meta, &path),
    };
    match (&u.credentials, &u.host) {
        (None, _) | (Some(_), None) => {
            let project = match &u.credentials {
                None => d.key.project.clone(),
                Some((project, token)) => {
                    let allowed = ctx.st.creds.lookup(token).is_some_and(|r| {
                        r.admin || r.project_id.as_deref() == Some(project.as_str())
                    });
                    if !allowed {
                        return Outcome::Failed {
                            code: 401,
                            msg: format!("the token is not valid for project {project}"),
                        };
                    }
                    project.clone()
                }
            };
            let key = QueueKey::new(project, u.queue.clone());
            if let Some(why) = crate::hops::refusal(&path, &ctx.st.server, &key) {
                return Outcome::Failed {
                    code: 400,
                    msg: why,
                };
            }
            match crate::alerts::post(&ctx.st, &key, &[msg]).await {
                Ok(_) => Outcome::Delivered(200),
                Err(e) => Outcome::Failed {
                    code: 0,
                    msg: e.to_string(),
                },
            }
        }
        (Some((project, token)), Some(_)) => {
            let url = u.post_url(project).expect("a host is set");
            let mut m = json!({"body": String::from_utf8_lossy(&d.body)});
            // The message's own push headers; the hop count goes as the request's header.
            if let Ok(mut h) = serde_json::from_slice::<BTreeMap<String, String>>(&d.meta) {
                h.retain(|k, _| !k.eq_ignore_ascii_case(crate::hops::HEADER));
                if !h.is_empty() {
                    m["push_headers"] = json!(h);
                }
            }
            let body = json!({ "messages": [m] });
            let resp = ctx
                .client
                .post(&url)
                .timeout(ctx.config.timeout)
                .header("Authorization", format!("OAuth {token}"))
                .header(crate::hops::HEADER, path.join(","))
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            match resp {
                Ok(r) if r.status().is_success() => {
                    let code = r.status().as_u16();
                    read_some(r).await;
                    Outcome::Delivered(code)
                }
                Ok(r) => {
                    let code = r.status().as_u16();
                    let text = read_some(r).await;
                    Outcome::Failed {
                        code,
                        msg: text.trim().to_string(),
                    }
                }
                Err(e) => Outcome::Failed {
                    code: 0,
                    msg: root_cause(&e),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{MessageId, PushStatus, PushSubState, QueueConfig, ReservationId};

    /// Reports of a failed delivery fit any body limit: the body is cut first (to the
    /// longest prefix that fits), then the error texts, down to the id alone.
    #[test]
    fn error_reports_are_cut_to_fit() {
        let subs = 20;
        let push = Push {
            subscribers: Vec::new(),
            retries: 0,
            retries_delay: 60,
            error_queue: "errs".into(),
            retries_backoff: String::new(),
            retries_delay_max: None,
            signing_secrets: Vec::new(),
        };
        let failed: Vec<PushSubState> = (0..subs)
            .map(|i| PushSubState {
                status: PushStatus::Error,
                msg: "\u{1}".repeat(500),
                ..PushSubState::queued(&format!("s{i}"))
            })
            .collect();
        let d = PushDelivery {
            queue: 1,
            key: QueueKey::new("p", "q"),
            config: Arc::new(QueueConfig::default()),
            id: MessageId(1_000_000_000_000_000_007),
            subscriber: "s0".into(),
            reservation: ReservationId([1; 16]),
            body: "\"x\"".repeat(1000).into_bytes(),
            meta: Vec::new(),
            states: failed.clone(),
        };
        let whole = error_report(&d, &push, &failed, usize::MAX);
        for max in [whole.len(), whole.len() - 1, whole.len() - 3000, 2_000, 100] {
            let r: serde_json::Value =
                serde_json::from_slice(&error_report(&d, &push, &failed, max)).unwrap();
            assert!(r.to_string().len() <= max, "{max}: {}", r.to_string().len());
            assert_eq!(r["source_msg_id"], "1000000000000000007");
            let body = r["body"].as_str().unwrap();
            assert!("\"x\"".repeat(1000).starts_with(body));
            assert_eq!(
                r.get("body_truncated").is_some(),
                max < whole.len(),
                "{max}"
            );
            // Cutting the body (5,000 bytes escaped) is enough down to 3,000 under the
            // whole; below that the error texts go too.
            let details_cut = max < 10_000;
            assert_eq!(r.get("details_truncated").is_some(), details_cut, "{max}");
            if !details_cut {
                assert_eq!(r["subscribers"].as_array().unwrap().len(), subs);
                assert!(
                    body.len() > 1000,
                    "the longest prefix that fits: {}",
                    body.len()
                );
            }
        }
    }

    #[test]
    fn message_urls_escape_only_what_a_path_segment_cannot_hold() {
        let key = QueueKey::new("0123456789abcdef01234567", "my-queue_v1.2~x y/z%");
        assert_eq!(
            message_url("http://127.0.0.1:8080/", &key, "42"),
            "http://127.0.0.1:8080/3/projects/0123456789abcdef01234567/queues/\
             my-queue_v1.2~x%20y%2Fz%25/messages/42"
        );
    }
}
