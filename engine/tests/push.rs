//! Push delivery state in the engine: lanes, claims, outcomes, acknowledgements, finishing,
//! and all of it surviving a reopen and log relocation.

mod common;

use common::{T0, key, open_sized};

use engine::{
    Engine, Error, ManualClock, NewMessage, PushDelivery, PushStatus, PushUpdate, QueueConfig,
    QueueKind,
};

fn open(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    open_sized(dir, clock, 1536 << 10)
}

async fn push_queue(e: &Engine, name: &str, kind: QueueKind, subs: &[&str]) {
    e.upsert_queue::<()>(&key(name), true, |_| {
        Ok(QueueConfig {
            kind,
            subscribers: subs.iter().map(|s| s.to_string()).collect(),
            ..QueueConfig::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
}

async fn post(e: &Engine, name: &str, bodies: &[&str]) -> Vec<engine::MessageId> {
    let msgs: Vec<NewMessage> = bodies
        .iter()
        .map(|b| NewMessage {
            body: b.as_bytes().into(),
            ..Default::default()
        })
        .collect();
    e.post(&key(name), &msgs, false).await.unwrap()
}

/// Claims everything due now, lane by lane.
async fn claim_all(e: &Engine, now: u64) -> Vec<PushDelivery> {
    let (lanes, _) = e.push_ready(now);
    let mut out = Vec::new();
    for l in lanes {
        out.extend(e.push_claim(&l, now, 100).await.unwrap());
    }
    out
}

fn outcome(
    d: &PushDelivery,
    status: PushStatus,
    code: u16,
    at: u64,
    due: Option<u64>,
) -> PushUpdate {
    let tries = d.state().unwrap().tries + 1;
    PushUpdate {
        subscriber: d.subscriber.clone(),
        status,
        tries,
        status_code: code,
        at_ms: at,
        latency_ms: 3,
        due_ms: due,
        reservation: (status == PushStatus::Reserved).then_some(d.reservation),
        msg: if code >= 400 {
            format!("HTTP {code}")
        } else {
            String::new()
        },
    }
}

#[tokio::test]
async fn multicast_claims_each_subscriber_once_and_finishes_when_all_are_final() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    let ids = post(&e, "m", &["one", "two"]).await;

    // Statuses exist from the moment of posting.
    let st = e.push_statuses(&key("m"), ids[0]).await.unwrap();
    assert_eq!(
        st.iter()
            .map(|s| (s.subscriber.as_str(), s.status))
            .collect::<Vec<_>>(),
        vec![("a", PushStatus::Queued), ("b", PushStatus::Queued)]
    );

    let ds = claim_all(&e, T0).await;
    assert_eq!(ds.len(), 4, "two messages x two subscribers");
    assert!(claim_all(&e, T0).await.is_empty(), "claims are exclusive");
    assert_eq!(ds[0].body, b"one");
    // While the attempts are in flight, clients see them `reserved`; the pusher still gets
    // the recorded state to decide from.
    let st = e.push_statuses(&key("m"), ids[0]).await.unwrap();
    assert!(
        st.iter()
            .all(|s| s.status == PushStatus::Reserved && s.tries == 0),
        "{st:?}"
    );
    assert_eq!(ds[0].state().unwrap().status, PushStatus::Queued);

    // a delivers both; b fails the first and delivers the second.
    for d in &ds {
        let ok = d.subscriber == "a" || d.id == ids[1];
        let up = if ok {
            outcome(d, PushStatus::Deleted, 200, T0, None)
        } else {
            outcome(d, PushStatus::Retrying, 500, T0, Some(T0 + 60_000))
        };
        assert!(e.push_complete(d, &[up]).await.unwrap());
    }
    let info = e.queue_info(&key("m")).await.unwrap();
    assert_eq!(info.size, 1, "the second message is done, the first is not");
    // Done messages stay readable with their statuses.
    assert_eq!(e.get(&key("m"), ids[1]).await.unwrap().body, b"two");
    let st = e.push_statuses(&key("m"), ids[1]).await.unwrap();
    assert!(
        st.iter()
            .all(|s| s.status == PushStatus::Deleted && s.tries == 1)
    );

    // Nothing due before the retry time; the retry survives a reopen with its tries.
    let (ready, next) = e.push_ready(T0 + 1);
    assert!(ready.is_empty());
    assert_eq!(next, Some(T0 + 60_000));
    drop(e);
    let e = open(dir.path(), &clock);
    let st = e.push_statuses(&key("m"), ids[0]).await.unwrap();
    assert_eq!(st[0].status, PushStatus::Deleted);
    assert_eq!(
        (
            st[1].status,
            st[1].tries,
            st[1].status_code,
            st[1].msg.as_str()
        ),
        (PushStatus::Retrying, 1, 500, "HTTP 500")
    );
    assert_eq!(st[1].attempts.len(), 1);
    clock.set_ms(T0 + 60_000);
    let ds = claim_all(&e, T0 + 60_000).await;
    assert_eq!(ds.len(), 1);
    assert_eq!((ds[0].subscriber.as_str(), ds[0].id), ("b", ids[0]));
    let up = outcome(&ds[0], PushStatus::Error, 503, T0 + 60_000, None);
    assert!(e.push_complete(&ds[0], &[up]).await.unwrap());
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    let st = e.push_statuses(&key("m"), ids[0]).await.unwrap();
    assert_eq!((st[1].status, st[1].tries), (PushStatus::Error, 2));
}

#[tokio::test]
async fn a_202_holds_until_acknowledged_and_a_stale_ack_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "h", QueueKind::Multicast, &["s"]).await;
    let ids = post(&e, "h", &["x"]).await;
    let d = claim_all(&e, T0).await.pop().unwrap();
    let up = outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 60_000));
    assert!(e.push_complete(&d, &[up]).await.unwrap());
    let wrong = engine::ReservationId([9; 16]);
    assert!(matches!(
        e.push_ack(&key("h"), ids[0], "s", wrong).await,
        Err(Error::ReservationMismatch(_))
    ));
    assert!(matches!(
        e.push_ack(&key("h"), ids[0], "other", d.reservation).await,
        Err(Error::ReservationMismatch(_))
    ));
    // The hold survives a reopen, then the acknowledgement finishes the message.
    drop(e);
    let e = open(dir.path(), &clock);
    let st = e.push_statuses(&key("h"), ids[0]).await.unwrap();
    assert_eq!(
        (st[0].status, st[0].reservation),
        (PushStatus::Reserved, Some(d.reservation))
    );
    e.push_ack(&key("h"), ids[0], "s", d.reservation)
        .await
        .unwrap();
    assert_eq!(e.queue_info(&key("h")).await.unwrap().size, 0);
    assert_eq!(
        e.push_statuses(&key("h"), ids[0]).await.unwrap()[0].status,
        PushStatus::Deleted
    );
    assert!(e.push_ready(T0 + 120_000).0.is_empty());
}

#[tokio::test]
async fn an_ack_during_the_attempt_wins_over_its_late_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "r", QueueKind::Multicast, &["s"]).await;
    let ids = post(&e, "r", &["x"]).await;
    let d = claim_all(&e, T0).await.pop().unwrap();
    e.push_ack(&key("r"), ids[0], "s", d.reservation)
        .await
        .unwrap();
    let up = outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 60_000));
    assert!(
        !e.push_complete(&d, &[up]).await.unwrap(),
        "the claim was settled by the ack"
    );
    assert_eq!(e.queue_info(&key("r")).await.unwrap().size, 0);
}

#[tokio::test]
async fn unicast_goes_to_one_subscriber_and_the_pusher_picks_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b", "c"]).await;
    let ids = post(&e, "u", &["x"]).await;
    let ds = claim_all(&e, T0).await;
    assert_eq!(ds.len(), 1, "one subscriber at a time");
    let d = &ds[0];
    let next = ["a", "b", "c"]
        .iter()
        .find(|s| **s != d.subscriber)
        .unwrap()
        .to_string();
    let mut fail = outcome(d, PushStatus::Retrying, 500, T0, None);
    fail.due_ms = None;
    let go_next = PushUpdate {
        subscriber: next.clone(),
        status: PushStatus::Queued,
        tries: 0,
        status_code: 0,
        at_ms: 0,
        latency_ms: 0,
        due_ms: Some(T0),
        reservation: None,
        msg: String::new(),
    };
    assert!(e.push_complete(d, &[fail, go_next]).await.unwrap());
    drop(e);
    let e = open(dir.path(), &clock);
    let ds = claim_all(&e, T0).await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].subscriber, next);
    let ok = outcome(&ds[0], PushStatus::Deleted, 200, T0, None);
    assert!(e.push_complete(&ds[0], &[ok]).await.unwrap());
    assert_eq!(e.queue_info(&key("u")).await.unwrap().size, 0);
    assert_eq!(e.get(&key("u"), ids[0]).await.unwrap().body, b"x");
    // Finished: the subscriber never tried is left out, the failed one is final.
    let statuses = e.push_statuses(&key("u"), ids[0]).await.unwrap();
    let mut seen: Vec<(String, &str)> = statuses
        .iter()
        .map(|s| (s.subscriber.to_string(), s.status.as_str()))
        .collect();
    seen.sort();
    let mut want = vec![(d.subscriber.to_string(), "error"), (next, "deleted")];
    want.sort();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn subscriber_changes_replan_pending_deliveries_and_unclaim_gives_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "c", QueueKind::Multicast, &["a"]).await;
    post(&e, "c", &["x", "y"]).await;
    let ds = claim_all(&e, T0).await;
    assert_eq!(ds.len(), 2);
    e.push_unclaim(&ds[0]);
    assert_eq!(claim_all(&e, T0).await.len(), 1, "given back, due again");
    push_queue(&e, "c", QueueKind::Multicast, &["a", "b"]).await;
    let ds = claim_all(&e, T0).await;
    assert!(ds.iter().all(|d| d.subscriber == "b") && ds.len() == 2);
    // Pull operations refuse push queues.
    assert!(matches!(
        e.reserve(&key("c"), engine::ReserveOptions::default())
            .await,
        Err(Error::NotForQueueType(_))
    ));
}

#[tokio::test]
async fn delivery_state_survives_relocation_and_segment_drops() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "k", QueueKind::Multicast, &["s"]).await;
    let keep = post(&e, "k", &["keep"]).await[0];
    let d = claim_all(&e, T0).await.pop().unwrap();
    let up = outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 1_000_000));
    assert!(e.push_complete(&d, &[up]).await.unwrap());
    // Churn through many segments with a pull queue so the first one must be reclaimed.
    churn(&e, 150).await;
    let report = e.maintain().unwrap();
    let _ = report;
    assert!(e.stats().segments <= 4, "segments: {}", e.stats().segments);
    drop(e);
    let e = open(dir.path(), &clock);
    let st = e.push_statuses(&key("k"), keep).await.unwrap();
    assert_eq!(
        (st[0].status, st[0].tries, st[0].due_ms),
        (PushStatus::Retrying, 1, Some(T0 + 1_000_000))
    );
    assert_eq!(e.get(&key("k"), keep).await.unwrap().body, b"keep");
}

/// Every push message's statuses and what is due, rendered for comparison.
async fn push_view(e: &Engine, queues: &[&str], ids: &[engine::MessageId], now: u64) -> String {
    let mut out = String::new();
    for q in queues {
        out += &format!("{q}: size {}\n", e.queue_info(&key(q)).await.unwrap().size);
        for id in ids {
            if let Ok(st) = e.push_statuses(&key(q), *id).await {
                out += &format!("{id} {st:?}\n");
            }
        }
    }
    let (ready, next) = e.push_ready(now);
    out += &format!("ready {ready:?} next {next:?}\n");
    out
}

#[tokio::test]
async fn delivery_state_survives_an_index_restart_as_it_does_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y", "z"]).await;
    let mut ids = post(&e, "m", &["m1", "m2", "m3", "m4"]).await;
    ids.extend(post(&e, "u", &["u1", "u2", "u3"]).await);
    for d in claim_all(&e, T0).await {
        let n = ids.iter().position(|id| *id == d.id).unwrap();
        let up = match (n, d.subscriber.as_str()) {
            // m1 delivered to both: finished, kept for lookups.
            (0, _) => outcome(&d, PushStatus::Deleted, 200, T0, None),
            // m2: a retrying, b held by a 202.
            (1, "a") => outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 60_000)),
            (1, _) => outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 30_000)),
            // m3: failed for good at a; b's claim is still in flight (not logged).
            (2, "a") => outcome(&d, PushStatus::Error, 503, T0, None),
            (2, _) => continue,
            // u1 delivered; u2 failed over to the next subscriber.
            (4, _) => outcome(&d, PushStatus::Deleted, 200, T0, None),
            (5, _) => outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 5_000)),
            // m4 and u3: claims in flight.
            _ => continue,
        };
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
    e.close();
    clock.set_ms(T0 + 10_000);

    let from_index = {
        let e = open(dir.path(), &clock);
        assert_opened_from_the_index_alone(&e);
        let view = push_view(&e, &["m", "u"], &ids, T0 + 10_000).await;
        // The states a reopen must keep.
        let st = e.push_statuses(&key("m"), ids[1]).await.unwrap();
        assert_eq!(
            (st[0].status, st[0].tries, st[1].status),
            (PushStatus::Retrying, 1, PushStatus::Reserved)
        );
        assert_eq!(e.get(&key("m"), ids[0]).await.unwrap().body, b"m1");
        assert_eq!(e.get(&key("u"), ids[4]).await.unwrap().body, b"u1");
        view
    };
    std::fs::remove_file(dir.path().join("index.idx")).unwrap();
    let e = open(dir.path(), &clock);
    assert_eq!(e.recovery_report().index, engine::IndexUse::Absent);
    assert_eq!(
        push_view(&e, &["m", "u"], &ids, T0 + 10_000).await,
        from_index
    );
    // Deliveries go on the same way: everything due now is claimed again.
    let due: Vec<_> = claim_all(&e, T0 + 10_000)
        .await
        .into_iter()
        .map(|d| (d.id, d.subscriber))
        .collect();
    assert!(!due.is_empty());
}

/// The open loaded the restart index and had no record after it to replay.
fn assert_opened_from_the_index_alone(e: &Engine) {
    assert!(
        matches!(e.recovery_report().index, engine::IndexUse::Loaded { .. }),
        "{:?}",
        e.recovery_report()
    );
    assert_eq!(e.recovery_report().records_replayed, 0);
}

/// Reopens `dir` by a full replay (the restart index removed).
fn reopen_by_replay(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    let _ = std::fs::remove_file(dir.join("index.idx"));
    let e = open(dir, clock);
    assert_eq!(e.recovery_report().index, engine::IndexUse::Absent);
    e
}

#[tokio::test]
async fn a_subscriber_added_later_brings_back_no_finished_message_on_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
    let id = post(&e, "m", &["old"]).await[0];
    let d = claim_all(&e, T0).await.pop().unwrap();
    let up = outcome(&d, PushStatus::Deleted, 200, T0, None);
    assert!(e.push_complete(&d, &[up]).await.unwrap());
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    assert!(
        claim_all(&e, T0).await.is_empty(),
        "b gets new messages only"
    );
    drop(e);
    // Replay knows only the latest subscribers: by them alone, "old" (delivered to a, never
    // to b) would look pending again and go to b after every crash.
    let e = reopen_by_replay(dir.path(), &clock);
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    assert!(claim_all(&e, T0).await.is_empty());
    let st = e.push_statuses(&key("m"), id).await.unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(st[0].status, PushStatus::Deleted);
}

#[tokio::test]
async fn removing_the_subscriber_a_message_waited_for_finishes_it_durably() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b", "c"]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y"]).await;
    let m = post(&e, "m", &["m1", "m2"]).await;
    let u = post(&e, "u", &["u1"]).await[0];
    for d in claim_all(&e, T0).await {
        let up = match (d.subscriber.as_str(), d.id == m[0]) {
            // m1: a delivered, b retrying, c held by a 202; m2: b retrying, a and c delivered.
            ("a" | "c", false) | ("a", true) => outcome(&d, PushStatus::Deleted, 200, T0, None),
            ("b", _) => outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 60_000)),
            ("c", true) => outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 30_000)),
            // u1 failed for good at its first subscriber and is due at the other.
            (s, _) => {
                let next = if s == "x" { "y" } else { "x" };
                let mut failover = outcome(&d, PushStatus::Retrying, 0, T0, Some(T0 + 5_000));
                failover.subscriber = next.into();
                failover.tries = 0;
                failover.at_ms = 0;
                let failed = outcome(&d, PushStatus::Error, 500, T0, None);
                assert!(e.push_complete(&d, &[failed, failover]).await.unwrap());
                continue;
            }
        };
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 2);
    assert_eq!(e.queue_info(&key("u")).await.unwrap().size, 1);
    let first_u = e.push_statuses(&key("u"), u).await.unwrap();
    let (failed, pending) = if first_u[0].status == PushStatus::Error {
        ("x", "y")
    } else {
        ("y", "x")
    };

    // b goes: m2 was waiting for b alone; m1 still waits for c's acknowledgement.
    push_queue(&e, "m", QueueKind::Multicast, &["a", "c"]).await;
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 1);
    // Its statuses: the current subscribers first, then b, which never got it: `error`.
    let st = e.push_statuses(&key("m"), m[1]).await.unwrap();
    let got: Vec<_> = st
        .iter()
        .map(|s| (s.subscriber.as_str(), s.status))
        .collect();
    assert_eq!(
        got,
        [
            ("a", PushStatus::Deleted),
            ("c", PushStatus::Deleted),
            ("b", PushStatus::Error)
        ]
    );
    // c goes too: m1 is finished.
    push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    // The unicast message's pending subscriber goes: every one left failed.
    push_queue(&e, "u", QueueKind::Unicast, &[failed]).await;
    assert_eq!(e.queue_info(&key("u")).await.unwrap().size, 0);
    let _ = pending;
    assert!(claim_all(&e, T0 + 100_000).await.is_empty());
    e.close();

    for replay in [false, true] {
        let e = if replay {
            reopen_by_replay(dir.path(), &clock)
        } else {
            open(dir.path(), &clock)
        };
        assert_eq!(
            e.queue_info(&key("m")).await.unwrap().size,
            0,
            "replay {replay}"
        );
        assert_eq!(
            e.queue_info(&key("u")).await.unwrap().size,
            0,
            "replay {replay}"
        );
        assert!(
            claim_all(&e, T0 + 100_000).await.is_empty(),
            "replay {replay}"
        );
        // b coming back later does not bring m2 back either.
        push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
        assert!(
            claim_all(&e, T0 + 100_000).await.is_empty(),
            "replay {replay}"
        );
        push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
        e.close();
    }
}

/// Unicast queue `u` of `a` and `b` with one message `x`, whose first attempt failed over
/// to the other subscriber: returns (the one that failed, the one it is due at now).
async fn unicast_failed_over(e: &Engine) -> (&'static str, &'static str) {
    push_queue(e, "u", QueueKind::Unicast, &["a", "b"]).await;
    post(e, "u", &["x"]).await;
    let d = claim_all(e, T0).await.pop().unwrap();
    let (me, next) = if d.subscriber == "a" {
        ("a", "b")
    } else {
        ("b", "a")
    };
    assert!(
        e.push_complete(&d, &unicast_failover(&d, next, T0))
            .await
            .unwrap()
    );
    (me, next)
}

/// Multicast queue `m` of `a` and `b` with one message `x`, delivered to `a` and due again
/// at `b` in 60 s: removing `b` leaves it finished.
async fn a_delivered_b_retrying(e: &Engine) {
    push_queue(e, "m", QueueKind::Multicast, &["a", "b"]).await;
    post(e, "m", &["x"]).await;
    for d in claim_all(e, T0).await {
        let up = if d.subscriber == "a" {
            outcome(&d, PushStatus::Deleted, 200, T0, None)
        } else {
            outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 60_000))
        };
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
}

/// The queue is empty, or something of it is due now or later: no message waits for ever.
async fn assert_not_stranded(e: &Engine, queue: &str) {
    let size = e.queue_info(&key(queue)).await.unwrap().size;
    let (ready, due) = e.push_ready(u64::MAX / 2);
    assert!(
        size == 0 || !ready.is_empty() || due.is_some(),
        "{queue}: message stranded, size {size} and nothing will ever be due"
    );
}

fn try_open(dir: &std::path::Path, clock: &ManualClock) -> engine::Result<Engine> {
    let mut config = engine::EngineConfig::new(dir);
    config.segment_bytes = 1536 << 10;
    config.body_bytes_max = 4096;
    Engine::open_with(
        config,
        std::sync::Arc::new(engine::OsStorage::new(dir).unwrap()),
        std::sync::Arc::new(clock.clone()),
    )
}

fn unicast_failover(d: &PushDelivery, next: &str, now: u64) -> Vec<PushUpdate> {
    let mine = outcome(d, PushStatus::Retrying, 500, now, None);
    let carry = PushUpdate {
        subscriber: next.to_string(),
        status: PushStatus::Queued,
        tries: 0,
        status_code: 0,
        at_ms: 0,
        latency_ms: 0,
        due_ms: Some(now),
        reservation: None,
        msg: String::new(),
    };
    vec![mine, carry]
}

/// Unicast: removing the subscriber that holds the message's only due delivery gives it
/// to one that is left (the remaining one's `retrying` state had no due time).
#[tokio::test]
async fn unicast_removing_the_next_subscriber_hands_the_message_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let (me, _) = unicast_failed_over(&e).await;
    // The next one goes.
    push_queue(&e, "u", QueueKind::Unicast, &[me]).await;
    assert_not_stranded(&e, "u").await;
}

/// States of subscribers removed earlier stay with a message, so there can be more than a
/// Push record holds (64): the finishing record restates one state, and a relocation
/// restates them in several records. Either way the log opens again.
#[tokio::test]
async fn more_removed_subscribers_than_a_record_holds_still_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let s: Vec<String> = (0..63).map(|i| format!("s{i}")).collect();
    let r: Vec<String> = (0..63).map(|i| format!("r{i}")).collect();
    let mut first = vec!["t"];
    first.extend(s.iter().map(String::as_str));
    let mut second = vec!["t"];
    second.extend(r.iter().map(String::as_str));
    push_queue(&e, "m", QueueKind::Multicast, &first).await;
    post(&e, "m", &["x"]).await;
    for d in claim_all(&e, T0).await {
        let up = if d.subscriber == "t" {
            outcome(&d, PushStatus::Deleted, 200, T0, None)
        } else {
            outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 600_000))
        };
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
    // s* replaced by r*: the message now waits for r*, which fail once too.
    push_queue(&e, "m", QueueKind::Multicast, &second).await;
    let ds = claim_all(&e, T0).await;
    assert_eq!(ds.len(), 63);
    for d in ds {
        let up = outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 600_000));
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
    // Only t left: finished by one record (126 states are kept).
    push_queue(&e, "m", QueueKind::Multicast, &["t"]).await;
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    // Any record after it (here a post), then a restart by full replay.
    post(&e, "m", &["after"]).await;
    drop(e);
    let _ = std::fs::remove_file(dir.path().join("index.idx"));
    let reopened = try_open(dir.path(), &clock);
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

/// Frames of a segment file: (offset, kind, payload range).
fn frames(bytes: &[u8]) -> Vec<(usize, u8, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut off = 64;
    while off + 12 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push((off, bytes[off + 8], off + 12..off + 12 + len));
        off += 12 + len;
    }
    out
}

fn last_started_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg") && common::is_started_segment(p))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// A crash that keeps a subscriber change's QueueDef but not the Push records after it that
/// finish what it leaves finished: the next open finishes them.
#[tokio::test]
async fn a_crash_between_the_def_and_its_finishing_record_is_mended_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    a_delivered_b_retrying(&e).await;
    push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    drop(e);
    // Tear the last record (the finishing Push; the QueueDef before it survives).
    let seg = last_started_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let fs = frames(&bytes);
    let (_, kind, payload) = fs.last().unwrap().clone();
    assert_eq!(kind, 12, "last record is the finishing Push");
    assert_eq!(fs[fs.len() - 2].1, 1, "the QueueDef precedes it");
    bytes[payload.start + 3] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let e = reopen_by_replay(dir.path(), &clock);
    assert_not_stranded(&e, "m").await;
}

/// A finished message's kept states come from the logged states alone: a full replay after
/// the list changed keeps the same ones as the runtime and the restart index (the order of
/// subscribers no longer listed may differ).
#[tokio::test]
async fn finished_statuses_survive_a_list_change_and_a_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let (me, next) = unicast_failed_over(&e).await;
    let id = e.peek(&key("u"), 1).await.unwrap()[0].id;
    let d = claim_all(&e, T0).await.pop().unwrap();
    assert_eq!(d.subscriber, next);
    let ok = outcome(&d, PushStatus::Deleted, 200, T0, None);
    assert!(e.push_complete(&d, &[ok]).await.unwrap());
    assert_eq!(e.queue_info(&key("u")).await.unwrap().size, 0);
    push_queue(&e, "u", QueueKind::Unicast, &[me]).await;
    let sorted = |mut v: Vec<engine::PushSubState>| {
        v.sort_by(|a, b| a.subscriber.cmp(&b.subscriber));
        assert!(v.iter().all(|s| s.status.is_terminal()), "{v:?}");
        format!("{v:?}")
    };
    let runtime = sorted(e.push_statuses(&key("u"), id).await.unwrap());
    e.close();
    let from_index = {
        let e = open(dir.path(), &clock);
        sorted(e.push_statuses(&key("u"), id).await.unwrap())
    };
    let e = reopen_by_replay(dir.path(), &clock);
    let replayed = sorted(e.push_statuses(&key("u"), id).await.unwrap());
    assert_eq!(from_index, runtime);
    assert_eq!(replayed, runtime, "full replay");
}

/// Unicast: the subscriber holding a 202 goes; the other one gets the message.
#[tokio::test]
async fn unicast_removing_a_holding_subscriber_hands_the_message_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b"]).await;
    post(&e, "u", &["x"]).await;
    let d = claim_all(&e, T0).await.pop().unwrap();
    let other = if d.subscriber == "a" { "b" } else { "a" };
    let hold = outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 30_000));
    assert!(e.push_complete(&d, &[hold]).await.unwrap());
    push_queue(&e, "u", QueueKind::Unicast, &[other]).await;
    assert_not_stranded(&e, "u").await;
}

async fn view(e: &Engine, queues: &[&str], ids: &[engine::MessageId], now: u64) -> String {
    let mut out = String::new();
    for q in queues {
        out += &format!("{q}: size {}\n", e.queue_info(&key(q)).await.unwrap().size);
        for id in ids {
            if let Ok(st) = e.push_statuses(&key(q), *id).await {
                let live = e
                    .peek(&key(q), 100)
                    .await
                    .map(|v| v.iter().any(|m| m.id == *id))
                    .unwrap_or(false);
                let st: Vec<_> = st
                    .iter()
                    .map(|s| (s.subscriber.clone(), s.status, s.tries, s.due_ms))
                    .collect();
                out += &format!("{id} live {live} {st:?}\n");
            }
        }
    }
    let (ready, next) = e.push_ready(now);
    let ready: Vec<_> = ready
        .iter()
        .map(|l| (l.key.name.clone(), l.subscriber.clone()))
        .collect();
    out += &format!("ready {ready:?} next {next:?}\n");
    out
}

/// Runtime = index restart = full replay over many interleavings (no list change after a
/// message finished, to leave the known kept-states difference aside).
#[tokio::test]
async fn interleavings_agree_between_runtime_index_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b", "c"]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y"]).await;
    let m = post(&e, "m", &["m0", "m1", "m2", "m3", "m4", "m5"]).await;
    let u = post(&e, "u", &["u0", "u1"]).await;
    let mut ids = m.clone();
    ids.extend(u.iter().copied());
    let mut held = Vec::new();
    let mut late = Vec::new();
    for d in claim_all(&e, T0).await {
        let i = ids.iter().position(|id| *id == d.id).unwrap();
        let up = match (i, d.subscriber.as_str()) {
            (0, "a") | (1, "a") | (2, _) => outcome(&d, PushStatus::Deleted, 200, T0, None),
            (0, "b") => outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 60_000)),
            (1, "b") => outcome(&d, PushStatus::Error, 500, T0, None),
            (3, "c") => outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 30_000)),
            (0, "c") | (1, "c") | (4, "c") => {
                late.push(d);
                continue;
            }
            (6, s) => {
                let next = if s == "x" { "y" } else { "x" };
                assert!(
                    e.push_complete(&d, &unicast_failover(&d, next, T0))
                        .await
                        .unwrap()
                );
                continue;
            }
            (7, _) => {
                let up = outcome(&d, PushStatus::Reserved, 202, T0, Some(T0 + 30_000));
                assert!(e.push_complete(&d, &[up]).await.unwrap());
                held.push(d);
                continue;
            }
            _ => outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 90_000)),
        };
        if i == 3 && d.subscriber == "c" {
            held.push(d.clone());
        }
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
    // c goes while in flight on m0, m1, m4 and holding m3.
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    // m1 (a deleted, b error) finished; m0 waits for b.
    // c's late outcomes: m0 delivered to c (removed), m1 gone, m4 failed.
    for d in &late {
        let up = if d.id == m[4] {
            outcome(d, PushStatus::Retrying, 500, T0, Some(T0 + 10_000))
        } else {
            outcome(d, PushStatus::Deleted, 200, T0, None)
        };
        let _ = e.push_complete(d, &[up]).await.unwrap();
    }
    // c comes back: m4 resumes at c; m3's hold by c is c's again.
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b", "c"]).await;
    // The hold on the unicast message is acknowledged; m5 is deleted by hand.
    for d in &held {
        if d.id == u[1] {
            e.push_ack(&key("u"), d.id, &d.subscriber, d.reservation)
                .await
                .unwrap();
        }
    }
    e.delete(&key("m"), m[5], None).await.unwrap();
    let now = T0 + 100_000;
    clock.set_ms(now);
    let runtime = view(&e, &["m", "u"], &ids, now).await;
    e.close();
    let from_index = {
        let e = open(dir.path(), &clock);
        assert!(matches!(
            e.recovery_report().index,
            engine::IndexUse::Loaded { .. }
        ));
        view(&e, &["m", "u"], &ids, now).await
    };
    let e = reopen_by_replay(dir.path(), &clock);
    let replayed = view(&e, &["m", "u"], &ids, now).await;
    assert_eq!(from_index, runtime, "index");
    assert_eq!(replayed, runtime, "replay");
}

/// Rewrites every Push record as a build before 2026-12-07 wrote it (bits 1-2 clear).
fn strip_decisions(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if !(p.extension().is_some_and(|x| x == "seg") && common::is_started_segment(&p)) {
            continue;
        }
        let seg = u32::from_str_radix(p.file_stem().unwrap().to_str().unwrap(), 16).unwrap();
        let seed = seg.wrapping_mul(0x9E37_79B9) ^ 0x4652_4D51;
        let mut bytes = std::fs::read(&p).unwrap();
        for (off, kind, payload) in frames(&bytes) {
            if kind != 12 {
                continue;
            }
            bytes[payload.start + 12] &= 1;
            let mut h = crc32fast::Hasher::new_with_initial(seed);
            h.update(&bytes[off + 8..payload.end]);
            let crc = h.finalize();
            bytes[off + 4..off + 8].copy_from_slice(&crc.to_le_bytes());
            n += 1;
        }
        std::fs::write(&p, bytes).unwrap();
    }
    n
}

/// Old logs: records without bit 1 replay by the rule over the latest list (as before).
#[tokio::test]
async fn old_records_replay_by_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    let m = post(&e, "m", &["m0", "m1"]).await;
    for d in claim_all(&e, T0).await {
        let up = if d.id == m[0] || d.subscriber == "a" {
            outcome(&d, PushStatus::Deleted, 200, T0, None)
        } else {
            outcome(&d, PushStatus::Retrying, 500, T0, Some(T0 + 60_000))
        };
        assert!(e.push_complete(&d, &[up]).await.unwrap());
    }
    let runtime = view(&e, &["m"], &m, T0).await;
    drop(e);
    assert!(strip_decisions(dir.path()) >= 4);
    let e = reopen_by_replay(dir.path(), &clock);
    assert_eq!(
        view(&e, &["m"], &m, T0).await,
        runtime,
        "same list: same state"
    );
}

/// Unicast: the subscriber goes while its attempt is in flight, then the attempt delivers:
/// the message was delivered, so it is finished.
#[tokio::test]
async fn unicast_delivered_by_a_removed_subscriber_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b"]).await;
    post(&e, "u", &["x"]).await;
    let d = claim_all(&e, T0).await.pop().unwrap();
    let other = if d.subscriber == "a" { "b" } else { "a" };
    push_queue(&e, "u", QueueKind::Unicast, &[other]).await;
    let ok = outcome(&d, PushStatus::Deleted, 200, T0, None);
    assert!(e.push_complete(&d, &[ok]).await.unwrap());
    assert_not_stranded(&e, "u").await;
}

/// Who is due now for message `id` (lanes claimed, then given back).
async fn due_subs(e: &Engine, now: u64) -> Vec<(engine::MessageId, String)> {
    let ds = claim_all(e, now).await;
    let out = ds.iter().map(|d| (d.id, d.subscriber.clone())).collect();
    for d in &ds {
        e.push_unclaim(d);
    }
    out
}

/// Unicast: the next subscriber goes (the message is handed to the one left) and comes
/// back: the message is due at one of them only.
#[tokio::test]
async fn unicast_remove_and_readd_leaves_one_subscriber_due() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let (me, _) = unicast_failed_over(&e).await;
    push_queue(&e, "u", QueueKind::Unicast, &[me]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b"]).await;
    let due = due_subs(&e, T0 + 1).await;
    // Full replay (same log, same latest list) for comparison.
    drop(e);
    let e = reopen_by_replay(dir.path(), &clock);
    let replayed = due_subs(&e, T0 + 1).await;
    assert_eq!(
        due.len(),
        1,
        "runtime: a unicast message due at {due:?}; replay: {replayed:?}"
    );
}

/// Replay applies every Push record under the latest subscriber list: a record that, by
/// that list, leaves nothing due must not hand the message over for good, or a later record
/// makes a second subscriber due. After a full replay one subscriber is due, as at runtime.
#[tokio::test]
async fn replay_leaves_a_unicast_message_due_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b"]).await;
    // Two messages: one of them starts (under [a, c]) on c's lane whatever the ids.
    let ids = post(&e, "u", &["x", "y"]).await;
    // Each fails at its first subscriber (due at the other), then at the other (the round
    // is over: due again at the first one after the delay).
    for _ in 0..2 {
        for d in claim_all(&e, T0).await {
            let other = if d.subscriber == "a" { "b" } else { "a" };
            let ups = if d.state().unwrap().tries == 0 && d.states.iter().all(|s| s.tries == 0) {
                unicast_failover(&d, other, T0)
            } else {
                let mine = outcome(&d, PushStatus::Retrying, 500, T0, None);
                let mut back = outcome(&d, PushStatus::Retrying, 0, 0, Some(T0 + 60_000));
                back.subscriber = other.into();
                back.tries = 1;
                vec![mine, back]
            };
            assert!(e.push_complete(&d, &ups).await.unwrap());
        }
    }
    // b goes, c comes.
    push_queue(&e, "u", QueueKind::Unicast, &["c", "a"]).await;
    let now = T0 + 60_000;
    let runtime = view(&e, &["u"], &ids, now).await;
    let runtime_due = due_subs(&e, now).await;
    e.close();
    let e = reopen_by_replay(dir.path(), &clock);
    let replayed = view(&e, &["u"], &ids, now).await;
    let replay_due = due_subs(&e, now).await;
    for id in &ids {
        let n = replay_due.iter().filter(|(i, _)| i == id).count();
        assert!(
            n <= 1,
            "message {id} due at {n} subscribers after replay: {replay_due:?}\nruntime {runtime_due:?}"
        );
    }
    assert_eq!(replayed, runtime, "replay");
}

/// The pusher gives a claim back (`push_unclaim`: error queue unreachable, ...) after its
/// subscriber was removed: the claim is cleared and the unicast message handed to the
/// subscriber left.
#[tokio::test]
async fn a_claim_given_back_by_a_removed_subscriber_hands_a_unicast_message_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b"]).await;
    post(&e, "u", &["x"]).await;
    let d = claim_all(&e, T0).await.pop().unwrap();
    let other = if d.subscriber == "a" { "b" } else { "a" };
    push_queue(&e, "u", QueueKind::Unicast, &[other]).await;
    e.push_unclaim(&d);
    let size = e.queue_info(&key("u")).await.unwrap().size;
    let (ready, due) = e.push_ready(u64::MAX / 2);
    assert!(
        size == 0 || !ready.is_empty() || due.is_some(),
        "message stranded: size {size}, nothing will ever be due"
    );
}

fn open_with_sync(dir: &std::path::Path, clock: &ManualClock, sync: engine::SyncPolicy) -> Engine {
    let mut config = engine::EngineConfig::new(dir);
    config.segment_bytes = 1536 << 10;
    config.body_bytes_max = 4096;
    config.sync = sync;
    Engine::open_with(
        config,
        std::sync::Arc::new(engine::OsStorage::new(dir).unwrap()),
        std::sync::Arc::new(clock.clone()),
    )
    .unwrap()
}

/// Every live push message of `q` and the subscribers it is due at (at any time).
async fn due_map(e: &Engine, q: &str) -> (u64, std::collections::BTreeMap<u64, Vec<String>>) {
    let size = e.queue_info(&key(q)).await.unwrap().size;
    let mut m: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for v in e.peek(&key(q), 100).await.unwrap() {
        m.insert(v.id.0, Vec::new());
    }
    for (id, s) in due_subs(e, u64::MAX / 4).await {
        if !m.contains_key(&id.0) {
            continue; // another queue's
        }
        m.entry(id.0).or_default().push(s);
    }
    (size, m)
}

/// The crash model: any prefix of the log. Cuts the log at every record boundary of a
/// history of subscriber changes, holds, acks, claims and outcomes, opens by replay and
/// checks that nothing is stranded and no unicast message is due twice.
#[tokio::test]
async fn every_prefix_of_the_log_opens_to_a_sane_push_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b", "c"]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y", "z"]).await;
    let m = post(&e, "m", &["m0", "m1", "m2", "m3"]).await;
    let u = post(&e, "u", &["u0", "u1", "u2"]).await;
    let mut late = Vec::new();
    for d in claim_all(&e, T0).await {
        let ups = match d.subscriber.as_str() {
            "a" => vec![outcome(&d, PushStatus::Deleted, 200, T0, None)],
            "b" if d.id == m[0] => vec![outcome(
                &d,
                PushStatus::Reserved,
                202,
                T0,
                Some(T0 + 30_000),
            )],
            "b" => vec![outcome(
                &d,
                PushStatus::Retrying,
                500,
                T0,
                Some(T0 + 60_000),
            )],
            "c" if d.id == m[1] => {
                late.push(d);
                continue;
            }
            "c" => vec![outcome(&d, PushStatus::Error, 500, T0, None)],
            s => {
                if d.id == u[0] {
                    vec![outcome(&d, PushStatus::Deleted, 200, T0, None)]
                } else if d.id == u[1] {
                    vec![outcome(
                        &d,
                        PushStatus::Reserved,
                        202,
                        T0,
                        Some(T0 + 30_000),
                    )]
                } else {
                    let next = match s {
                        "x" => "y",
                        "y" => "z",
                        _ => "x",
                    };
                    unicast_failover(&d, next, T0)
                }
            }
        };
        if ups[0].status == PushStatus::Reserved && d.id == m[0] {
            late.push(d.clone());
        }
        assert!(e.push_complete(&d, &ups).await.unwrap());
    }
    // c goes (m1's attempt in flight), its late outcome lands, c comes back.
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    for d in &late {
        if d.subscriber == "c" {
            let up = outcome(d, PushStatus::Deleted, 200, T0, None);
            let _ = e.push_complete(d, &[up]).await.unwrap();
        }
    }
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b", "c"]).await;
    // b acks its 202 of m0; b goes.
    for d in &late {
        if d.subscriber == "b" {
            e.push_ack(&key("m"), d.id, "b", d.reservation)
                .await
                .unwrap();
        }
    }
    push_queue(&e, "m", QueueKind::Multicast, &["a", "c"]).await;
    // Unicast: z goes.
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y"]).await;
    post(&e, "m", &["m4"]).await;
    drop(e);

    let seg = last_started_segment(dir.path());
    let full = std::fs::read(&seg).unwrap();
    let fs = frames(&full);
    let mut bad = Vec::new();
    for (i, (off, kind, _)) in fs.iter().enumerate().skip(1) {
        let cut = tempfile::tempdir().unwrap();
        for ent in std::fs::read_dir(dir.path()).unwrap() {
            let p = ent.unwrap().path();
            let name = p.file_name().unwrap();
            if name == "index.idx" || name == "LOCK" {
                continue;
            }
            std::fs::copy(&p, cut.path().join(name)).unwrap();
        }
        let mut bytes = full.clone();
        for b in &mut bytes[*off..] {
            *b = 0;
        }
        std::fs::write(cut.path().join(seg.file_name().unwrap()), &bytes).unwrap();
        let e = match try_open(cut.path(), &clock) {
            Ok(e) => e,
            Err(err) => {
                bad.push(format!(
                    "cut before record {i} (kind {kind}): open failed: {err}"
                ));
                continue;
            }
        };
        let all = [m.clone(), u.clone()].concat();
        let v1 = if e.queue_info(&key("u")).await.is_ok() {
            Some(view(&e, &["m", "u"], &all, T0).await)
        } else {
            None
        };
        for q in ["m", "u"] {
            let Ok(_) = e.queue_info(&key(q)).await else {
                continue;
            };
            let (size, map) = due_map(&e, q).await;
            if size as usize != map.len() {
                bad.push(format!(
                    "cut {i} (kind {kind}) {q}: size {size} but {} live",
                    map.len()
                ));
            }
            for (id, subs) in &map {
                if subs.is_empty() {
                    bad.push(format!("cut {i} (kind {kind}) {q}: {id} stranded"));
                }
                if q == "u" && subs.len() > 1 {
                    bad.push(format!("cut {i} (kind {kind}) {q}: {id} due at {subs:?}"));
                }
            }
        }
        // Replay again: the open's own records must agree with themselves.
        let Some(v1) = v1 else { continue };
        drop(e);
        let e = reopen_by_replay(cut.path(), &clock);
        let v2 = view(&e, &["m", "u"], &[m.clone(), u.clone()].concat(), T0).await;
        if v1 != v2 {
            bad.push(format!("cut {i} (kind {kind}): reopen differs\n{v1}\n{v2}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A crash between a def and its finishing record, mended on open, under each sync policy.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_finishing_record_is_mended_on_open_under_every_sync_policy() {
    for sync in [
        engine::SyncPolicy::Always,
        engine::SyncPolicy::IntervalMs(1000),
        engine::SyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let e = open_with_sync(dir.path(), &clock, sync);
        a_delivered_b_retrying(&e).await;
        push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
        e.close();
        let seg = last_started_segment(dir.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let fs = frames(&bytes);
        let (off, kind, _) = fs.last().unwrap().clone();
        assert_eq!(kind, 12);
        for b in &mut bytes[off..] {
            *b = 0;
        }
        std::fs::write(&seg, bytes).unwrap();
        let _ = std::fs::remove_file(dir.path().join("index.idx"));
        let t = std::time::Instant::now();
        let e = open_with_sync(dir.path(), &clock, sync);
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{sync:?}");
        assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0, "{sync:?}");
        e.close();
        // Mended durably: the next open by replay agrees.
        let e = reopen_by_replay(dir.path(), &clock);
        assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0, "{sync:?}");
    }
}

/// Posts and deletes 20 × 3 KB messages of a pull queue `rounds` times, with maintenance
/// after each: segments fill and are dropped, so live messages are relocated.
async fn churn(e: &Engine, rounds: usize) {
    let body = "z".repeat(3000);
    for _ in 0..rounds {
        let msgs: Vec<NewMessage> = (0..20)
            .map(|_| NewMessage {
                body: body.as_bytes().into(),
                ..Default::default()
            })
            .collect();
        let ids = e.post(&key("pull"), &msgs, true).await.unwrap();
        let items: Vec<engine::DeleteItem> = ids
            .iter()
            .map(|id| engine::DeleteItem {
                id: *id,
                reservation_id: None,
            })
            .collect();
        e.delete_batch(&key("pull"), &items).await.unwrap();
        e.maintain().unwrap();
    }
}

/// Runtime = index = replay after relocation drops every segment the push records were in,
/// with unicast hand-overs, holds, claims in flight and removed subscribers' states.
#[tokio::test]
async fn relocation_keeps_runtime_index_and_replay_equal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b", "c"]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y", "z"]).await;
    let m = post(&e, "m", &["m0", "m1", "m2"]).await;
    let u = post(&e, "u", &["u0", "u1", "u2", "u3"]).await;
    let mut inflight = Vec::new();
    for d in claim_all(&e, T0).await {
        let ups = match d.subscriber.as_str() {
            "a" => vec![outcome(&d, PushStatus::Deleted, 200, T0, None)],
            "b" => vec![outcome(
                &d,
                PushStatus::Reserved,
                202,
                T0,
                Some(T0 + 30_000),
            )],
            "c" if d.id == m[0] => {
                inflight.push(d);
                continue;
            }
            "c" => vec![outcome(
                &d,
                PushStatus::Retrying,
                500,
                T0,
                Some(T0 + 60_000),
            )],
            s => {
                if d.id == u[3] {
                    inflight.push(d);
                    continue;
                }
                let next = match s {
                    "x" => "y",
                    "y" => "z",
                    _ => "x",
                };
                unicast_failover(&d, next, T0)
            }
        };
        assert!(e.push_complete(&d, &ups).await.unwrap());
    }
    // Each unicast message's pending subscriber goes in turn (handed over).
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y"]).await;
    push_queue(&e, "u", QueueKind::Unicast, &["y", "x"]).await;
    churn(&e, 150).await;
    assert!(e.stats().segments <= 4, "segments: {}", e.stats().segments);
    let mut ids = m.clone();
    ids.extend(u.iter().copied());
    let now = T0 + 100_000;
    clock.set_ms(now);
    // (Claims in flight show in the runtime's statuses only: compared after the restart.)
    e.close();
    let from_index = {
        let e = open(dir.path(), &clock);
        view(&e, &["m", "u"], &ids, now).await
    };
    let e = reopen_by_replay(dir.path(), &clock);
    let replayed = view(&e, &["m", "u"], &ids, now).await;
    assert_eq!(replayed, from_index, "replay vs index");
}

/// The mend on open with a restart index loaded (the def in the tail after it).
#[tokio::test]
async fn a_lost_finishing_record_is_mended_on_open_with_an_index_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    a_delivered_b_retrying(&e).await;
    e.write_index().unwrap();
    push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
    drop(e);
    let seg = last_started_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let (off, kind, _) = frames(&bytes).last().unwrap().clone();
    assert_eq!(kind, 12);
    for b in &mut bytes[off..] {
        *b = 0;
    }
    std::fs::write(&seg, bytes).unwrap();
    let e = open(dir.path(), &clock);
    assert!(
        matches!(e.recovery_report().index, engine::IndexUse::Loaded { .. }),
        "{:?}",
        e.recovery_report().index
    );
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
    e.verify_log_before_index().unwrap();
    drop(e);
    let e = reopen_by_replay(dir.path(), &clock);
    assert_eq!(e.queue_info(&key("m")).await.unwrap().size, 0);
}

/// A delayed push message is not due before its delay, also after a subscriber change or
/// a restart (the lanes are planned again from the message's `Delayed` state).
#[tokio::test]
async fn a_delayed_push_message_stays_delayed_after_a_replan() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a"]).await;
    let msgs = vec![NewMessage {
        body: b"later".as_slice().into(),
        delay_s: 600,
        ..Default::default()
    }];
    e.post(&key("m"), &msgs, false).await.unwrap();
    assert!(
        e.push_ready(T0 + 1).0.is_empty(),
        "fresh: not due before the delay"
    );
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    let after_change = e.push_ready(T0 + 1).0.len();
    e.close();
    let e = open(dir.path(), &clock);
    let after_restart = e.push_ready(T0 + 1).0.len();
    assert_eq!((after_change, after_restart), (0, 0));
}

/// Unicast messages failed over twice, then a subscriber replaced: each message is due at
/// one subscriber, at runtime and after a full replay.
#[tokio::test]
async fn a_replaced_subscriber_leaves_each_unicast_message_due_once_after_replay() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b"]).await;
    post(&e, "u", &["x", "y"]).await;
    // Round 1: each message fails over to the other subscriber; round 2: that one fails
    // too, the message is due back at its first one in 60 s.
    for round in 0..2 {
        for d in claim_all(&e, T0).await {
            let other = if d.subscriber == "a" { "b" } else { "a" };
            let mut ups = unicast_failover(&d, other, T0);
            if round == 1 {
                ups[1].status = PushStatus::Retrying;
                ups[1].tries = 1;
                ups[1].due_ms = Some(T0 + 60_000);
            }
            assert!(e.push_complete(&d, &ups).await.unwrap());
        }
    }
    push_queue(&e, "u", QueueKind::Unicast, &["c", "a"]).await; // b replaced by c
    let runtime = due_subs(&e, T0 + 60_000).await;
    assert_eq!(runtime.len(), 2, "one subscriber per message");
    drop(e); // a crash: the tail is replayed
    let e = reopen_by_replay(dir.path(), &clock);
    let replayed = due_subs(&e, T0 + 60_000).await;
    assert_eq!(replayed.len(), 2, "replay: {replayed:?}");
}

/// Relocation restates only logged states (not a claim's or a hand-over's), so a restart
/// from the index and a full replay hand messages to the same subscribers.
#[tokio::test]
async fn relocation_restates_only_logged_states() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y", "z"]).await;
    let ids = post(&e, "u", &["u0", "u1", "u2", "u3", "u4"]).await; // u4: y, then z, then x
    for d in claim_all(&e, T0).await {
        let next = match d.subscriber.as_str() {
            "x" => "y",
            "y" => "z",
            _ => "x",
        };
        assert!(
            e.push_complete(&d, &unicast_failover(&d, next, T0))
                .await
                .unwrap()
        );
    }
    push_queue(&e, "u", QueueKind::Unicast, &["x", "y"]).await; // z goes: handed over
    push_queue(&e, "u", QueueKind::Unicast, &["y", "x"]).await;
    churn(&e, 150).await; // relocation restates the states
    e.close();
    let from_index = view(&open(dir.path(), &clock), &["u"], &ids, T0).await;
    let replayed = view(&reopen_by_replay(dir.path(), &clock), &["u"], &ids, T0).await;
    assert_eq!(replayed, from_index);
}

/// A hand-over prefers a subscriber not tried yet to the one that just failed.
#[tokio::test]
async fn a_hand_over_prefers_a_subscriber_not_tried_yet() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "u", QueueKind::Unicast, &["a", "b", "c"]).await;
    post(&e, "u", &["x"]).await;
    let d = claim_all(&e, T0).await.pop().unwrap();
    let names = ["a", "b", "c"];
    let at = names.iter().position(|n| *n == d.subscriber).unwrap();
    let (failed, next, untried) = (names[at], names[(at + 1) % 3], names[(at + 2) % 3]);
    assert!(
        e.push_complete(&d, &unicast_failover(&d, next, T0))
            .await
            .unwrap()
    );
    let left: Vec<&str> = names.iter().copied().filter(|n| *n != next).collect();
    push_queue(&e, "u", QueueKind::Unicast, &left).await;
    let due = due_subs(&e, T0 + 1).await;
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!(due[0].1, untried, "not {failed}, which just failed");
}

/// The restart index writes push states in id order whatever order they are kept in (they
/// are put in order after the state lock is released): hundreds of messages with states,
/// loaded from the index as a replay has them.
#[tokio::test]
async fn many_push_states_load_from_the_index_as_a_replay_has_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    push_queue(&e, "m", QueueKind::Multicast, &["a", "b"]).await;
    let bodies: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let mut ids = Vec::new();
    for part in bodies.chunks(100) {
        ids.extend(post(&e, "m", part).await);
    }
    let mut done = 0;
    loop {
        let claimed = claim_all(&e, T0).await;
        if claimed.is_empty() {
            break;
        }
        for d in claimed {
            let n = ids.iter().position(|id| *id == d.id).unwrap();
            // Every third message has no recorded state at `b` (its claim stays in flight).
            if n % 3 == 0 && d.subscriber == "b" {
                continue;
            }
            let due = Some(T0 + 60_000 + n as u64);
            let up = outcome(&d, PushStatus::Retrying, 500, T0, due);
            assert!(e.push_complete(&d, &[up]).await.unwrap());
            done += 1;
        }
    }
    assert_eq!(done, 500);
    e.close();
    let from_index = {
        let e = open(dir.path(), &clock);
        assert_opened_from_the_index_alone(&e);
        push_view(&e, &["m"], &ids, T0 + 1_000).await
    };
    let e = reopen_by_replay(dir.path(), &clock);
    assert_eq!(push_view(&e, &["m"], &ids, T0 + 1_000).await, from_index);
}
