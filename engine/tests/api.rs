//! The engine's public API, call by call, on a real directory.

mod common;

use common::{T0, key, open_sized};

use engine::{
    DeadLetter, DeleteItem, Engine, EngineConfig, Error, ManualClock, NewMessage, QueueConfig,
    QueueInfo, QueueKey, QueueKind, ReserveOptions,
    record::{self, FrameCheck, Kind},
};

fn open(dir: &std::path::Path, clock: &ManualClock) -> Engine {
    open_sized(dir, clock, 2 << 20)
}

fn msg(body: &str) -> NewMessage<'_> {
    NewMessage {
        body: body.as_bytes().into(),
        ..Default::default()
    }
}

/// How many segment files are in `dir`.
fn segment_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}

fn reserve(n: usize) -> ReserveOptions {
    ReserveOptions {
        n,
        ..Default::default()
    }
}

#[tokio::test]
async fn post_reserve_delete_in_fifo_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let ids = e
        .post(&key("q"), &[msg("a"), msg("b"), msg("c")], true)
        .await
        .unwrap();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.to_string().len() == 19));
    let got = e.reserve(&key("q"), reserve(2)).await.unwrap();
    assert_eq!(
        got.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        vec![b"a", b"b"]
    );
    assert_eq!(got[0].reserved_count, 1);
    let info = e.queue_info(&key("q")).await.unwrap();
    assert_eq!((info.size, info.reserved, info.total_messages), (3, 2, 3));
    e.delete(&key("q"), got[0].id, got[0].reservation_id)
        .await
        .unwrap();
    drop(e);

    let e = open(dir.path(), &clock);
    let info = e.queue_info(&key("q")).await.unwrap();
    assert_eq!((info.size, info.reserved, info.total_messages), (2, 1, 3));
    // "b" is still reserved with the same id after the restart.
    let b = e.get(&key("q"), got[1].id).await.unwrap();
    assert_eq!(b.reservation.map(|r| r.0), got[1].reservation_id);
    let next = e.reserve(&key("q"), reserve(5)).await.unwrap();
    assert_eq!(
        next.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        vec![b"c"]
    );
    // After the timeout "b" comes back at the head.
    clock.advance_ms(61_000);
    let again = e.reserve(&key("q"), reserve(5)).await.unwrap();
    assert_eq!(
        again.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        vec![b"b", b"c"]
    );
    assert_eq!(again[0].reserved_count, 2);
    e.check_invariants();
}

#[tokio::test]
async fn stale_reservations_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    e.post(&key("q"), &[msg("a")], true).await.unwrap();
    let m = e
        .reserve(
            &key("q"),
            ReserveOptions {
                timeout_s: 5,
                ..reserve(1)
            },
        )
        .await
        .unwrap()
        .remove(0);
    let rid = m.reservation_id.unwrap();
    assert!(matches!(
        e.delete(&key("q"), m.id, None).await,
        Err(Error::ReservationRequired(_))
    ));
    let (rid2, _) = e.touch(&key("q"), m.id, rid, 0).await.unwrap();
    assert_ne!(rid, rid2);
    assert!(matches!(
        e.delete(&key("q"), m.id, Some(rid)).await,
        Err(Error::ReservationMismatch(_))
    ));
    assert!(matches!(
        e.release(&key("q"), m.id, rid, 0).await,
        Err(Error::ReservationMismatch(_))
    ));
    e.release(&key("q"), m.id, rid2, 10).await.unwrap();
    assert!(
        e.reserve(&key("q"), reserve(1)).await.unwrap().is_empty(),
        "released with delay"
    );
    clock.advance_ms(10_001);
    let m2 = e.reserve(&key("q"), reserve(1)).await.unwrap().remove(0);
    // touch counts as a reservation (dead-letter rules), so: reserve, touch, reserve = 3.
    assert_eq!(m2.reserved_count, 3);
    // A batch with one bad entry deletes nothing.
    let bad = [
        DeleteItem {
            id: m2.id,
            reservation_id: m2.reservation_id,
        },
        DeleteItem {
            id: engine::MessageId(1),
            reservation_id: None,
        },
    ];
    assert!(matches!(
        e.delete_batch(&key("q"), &bad).await,
        Err(Error::MessageNotFound)
    ));
    assert_eq!(e.queue_info(&key("q")).await.unwrap().size, 1);
    e.delete_batch(&key("q"), &bad[..1]).await.unwrap();
    assert_eq!(e.queue_info(&key("q")).await.unwrap().size, 0);
    e.check_invariants();
}

#[tokio::test]
async fn delayed_posts_peek_clear_and_pop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    e.post(
        &key("q"),
        &[
            NewMessage {
                delay_s: 5,
                ..msg("later")
            },
            msg("now"),
        ],
        true,
    )
    .await
    .unwrap();
    let peeked = e.peek(&key("q"), 10).await.unwrap();
    assert_eq!(
        peeked.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        vec![b"now"]
    );
    assert_eq!(peeked[0].reserved_count, 0);
    clock.advance_ms(5_000);
    let popped = e
        .reserve(
            &key("q"),
            ReserveOptions {
                delete: true,
                ..reserve(10)
            },
        )
        .await
        .unwrap();
    assert_eq!(
        popped.iter().map(|m| m.body.as_slice()).collect::<Vec<_>>(),
        vec![&b"later"[..], &b"now"[..]]
    );
    // A pop counts as a reservation in its reply.
    assert!(popped.iter().all(|m| m.reserved_count == 1));
    assert_eq!(e.queue_info(&key("q")).await.unwrap().size, 0);
    assert!(matches!(
        e.get(&key("q"), popped[0].id).await,
        Err(Error::MessageNotFound)
    ));
    e.post(&key("q"), &[msg("x"), msg("y")], false)
        .await
        .unwrap();
    e.reserve(&key("q"), reserve(1)).await.unwrap();
    e.clear(&key("q")).await.unwrap();
    let info = e.queue_info(&key("q")).await.unwrap();
    assert_eq!((info.size, info.reserved, info.total_messages), (0, 0, 4));
    assert!(matches!(
        e.post(&key("missing"), &[msg("x")], false).await,
        Err(Error::QueueNotFound)
    ));
}

#[tokio::test]
async fn dead_letter_moves_on_reserve_after_max_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    e.upsert_queue(&key("q"), true, |_| -> Result<_, ()> {
        Ok(QueueConfig {
            dead_letter: Some(DeadLetter {
                queue: "dlq".into(),
                max_reservations: 2,
            }),
            ..QueueConfig::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let id = e.post(&key("q"), &[msg("poison")], false).await.unwrap()[0];
    for _ in 0..2 {
        let m = e.reserve(&key("q"), reserve(1)).await.unwrap().remove(0);
        e.release(&key("q"), m.id, m.reservation_id.unwrap(), 0)
            .await
            .unwrap();
    }
    assert!(e.reserve(&key("q"), reserve(1)).await.unwrap().is_empty());
    let moved = e.get(&key("dlq"), id).await.unwrap();
    assert_eq!(
        (moved.body.as_slice(), moved.reserved_count),
        (&b"poison"[..], 2)
    );
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(e.queue_info(&key("q")).await.unwrap().size, 0);
    assert_eq!(e.queue_info(&key("dlq")).await.unwrap().size, 1);
    e.check_invariants();
}

#[tokio::test]
async fn sizes_for_alert_checks_are_given_for_queues_with_extras_only_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    e.post(&key("plain"), &[msg("a")], true).await.unwrap();
    e.post(&key("dlq"), &[msg("b"), msg("c")], true)
        .await
        .unwrap();
    assert_eq!(e.size_if_extra(&key("plain")), None);
    assert_eq!(e.size_if_extra(&key("missing")), None);
    e.upsert_queue(&key("dlq"), false, |c| -> Result<_, ()> {
        Ok(QueueConfig {
            extra: b"{\"alerts\":[]}".to_vec(),
            ..c.cloned().unwrap_or_default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    e.upsert_queue(&key("plain"), false, |c| -> Result<_, ()> {
        Ok(QueueConfig {
            dead_letter: Some(DeadLetter {
                queue: "dlq".into(),
                max_reservations: 3,
            }),
            ..c.cloned().unwrap_or_default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    let check = |e: &Engine| {
        assert_eq!(e.size_if_extra(&key("dlq")), Some(2));
        assert_eq!(e.size_if_extra(&key("plain")), None);
        assert_eq!(e.dead_letter_size(&key("plain")), Some((key("dlq"), 2)));
        assert_eq!(e.dead_letter_size(&key("dlq")), None);
    };
    check(&e);
    drop(e);
    let e = open(dir.path(), &clock);
    check(&e);
    // Written to the restart index on close, then loaded from it.
    e.close();
    e.write_index().unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    check(&e);
}

/// Appends, to the log in `dir` of a closed engine, a QueueDef record (FORMAT.md, kind 1)
/// that links queue `number` (`name` of project p, default settings) to the dead-letter
/// queue `dlq` without any check: what a build that did not refuse such links could have
/// written.
fn append_unchecked_link(dir: &std::path::Path, number: u32, name: &str, dlq: &str) {
    let mut segs: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|f| f.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    segs.sort();
    let last = segs.pop().expect("a segment");
    let seg = u32::from_str_radix(last.trim_end_matches(".seg"), 16).unwrap();
    let path = dir.join(&last);
    let mut bytes = std::fs::read(&path).unwrap();
    let seed = record::crc_seed(seg);
    let mut end = engine::SEGMENT_HEADER_BYTES;
    while let FrameCheck::Valid { len, .. } = record::check_frame(&bytes[end..], seed, 1 << 24) {
        end += record::FRAME_HEADER_BYTES + len;
    }
    let str16 = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u16).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    let defaults = QueueConfig::default();
    let mut rec = Vec::new();
    record::frame(&mut rec, seed, Kind::QueueDef, |b| {
        b.extend_from_slice(&number.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes()); // total_messages
        str16(b, "p");
        str16(b, name);
        b.extend_from_slice(&defaults.message_timeout_s.to_le_bytes());
        b.extend_from_slice(&defaults.message_expiration_s.to_le_bytes());
        b.push(0); // pull
        b.push(1); // has_dlq
        b.extend_from_slice(&1u32.to_le_bytes()); // max_reservations
        str16(b, dlq);
        b.extend_from_slice(&0u32.to_le_bytes()); // extra: none
    });
    bytes[end..end + rec.len()].copy_from_slice(&rec);
    std::fs::write(&path, &bytes).unwrap();
}

/// Creates queue `name` with default settings and returns its number.
async fn create(e: &Engine, name: &str) -> u32 {
    e.upsert_queue(&key(name), true, |_| -> Result<_, ()> {
        Ok(QueueConfig::default())
    })
    .await
    .unwrap()
    .unwrap()
    .number
}

/// A message moved into the queue it came from (a dead-letter queue set to itself, which
/// the engine refuses now but a log written before could hold) takes its own place: the
/// size stays right, live and after a replay.
#[tokio::test]
async fn a_move_into_the_same_queue_keeps_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let number = create(&e, "self").await;
    drop(e);
    append_unchecked_link(dir.path(), number, "self", "self");
    let e = open(dir.path(), &clock);
    assert_eq!(dead_letter_of(&e, "self").as_deref(), Some("self"));
    e.post(&key("self"), &[msg("a"), msg("b")], false)
        .await
        .unwrap();
    for _ in 0..2 {
        let m = e.reserve(&key("self"), reserve(1)).await.unwrap().remove(0);
        e.release(&key("self"), m.id, m.reservation_id.unwrap(), 0)
            .await
            .unwrap();
    }
    for _ in 0..5 {
        e.reserve(&key("self"), reserve(1)).await.unwrap();
    }
    assert_eq!(e.queue_info(&key("self")).await.unwrap().size, 2);
    e.check_invariants();
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(e.queue_info(&key("self")).await.unwrap().size, 2);
    e.check_invariants();
}

/// A cycle in a log written before links were checked opens as it is; updates that leave
/// its links alone still work, and so does a new link into it (which closes no cycle of
/// its own), while a link that closes another cycle through it is refused.
#[tokio::test]
async fn a_cycle_already_in_the_log_is_kept_and_bounds_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let a = create(&e, "a").await;
    link(&e, "b", "a").await.unwrap();
    drop(e);
    append_unchecked_link(dir.path(), a, "a", "b");
    let e = open(dir.path(), &clock);
    assert_eq!(dead_letter_of(&e, "a").as_deref(), Some("b"));
    e.upsert_queue(&key("a"), false, |c| -> Result<_, ()> {
        let mut c = c.unwrap().clone();
        c.message_timeout_s = 90;
        Ok(c)
    })
    .await
    .unwrap()
    .unwrap();
    link(&e, "c", "a").await.unwrap();
    assert_eq!(cycle_of(link(&e, "b", "c").await), ["b", "c", "a", "b"]);
    assert_eq!(dead_letter_of(&e, "b").as_deref(), Some("a"));
}

/// Sets `name`'s dead-letter queue to `to` (creating `name` if missing).
async fn link(e: &Engine, name: &str, to: &str) -> Result<QueueInfo, Error> {
    e.upsert_queue(&key(name), true, |c| -> Result<_, ()> {
        Ok(QueueConfig {
            dead_letter: Some(DeadLetter {
                queue: to.into(),
                max_reservations: 1,
            }),
            ..c.cloned().unwrap_or_default()
        })
    })
    .await
    .map(|r| r.expect("the closure accepts"))
}

fn cycle_of(r: Result<QueueInfo, Error>) -> Vec<String> {
    match r {
        Err(Error::DeadLetterCycle(path)) => path,
        other => panic!("not refused as a cycle: {other:?}"),
    }
}

fn dead_letter_of(e: &Engine, name: &str) -> Option<String> {
    let info = e.queue_info_now(&key(name)).expect("queue");
    info.config.dead_letter.map(|d| d.queue)
}

#[tokio::test]
async fn dead_letter_links_that_close_a_cycle_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    link(&e, "a", "b").await.unwrap();
    // b is created without a link first, then refused the link back to a.
    e.post(&key("b"), &[msg("x")], true).await.unwrap();
    let err = link(&e, "b", "a").await;
    let msg = err.as_ref().map(|_| ()).unwrap_err().to_string();
    assert_eq!(
        msg,
        "dead_letter queue_name \"a\" would make a dead-letter cycle: b -> a -> b"
    );
    assert_eq!(cycle_of(err), ["b", "a", "b"]);
    assert_eq!(
        dead_letter_of(&e, "b"),
        None,
        "the refused update changed nothing"
    );
    // A refused create creates nothing.
    link(&e, "c", "a").await.unwrap();
    assert_eq!(cycle_of(link(&e, "b", "c").await), ["b", "c", "a", "b"]);
    assert_eq!(cycle_of(link(&e, "new", "new").await), ["new", "new"]);
    assert!(matches!(
        e.queue_info(&key("new")).await,
        Err(Error::QueueNotFound)
    ));
    // A chain, and a link to a missing queue (created by the first move, without a link),
    // are fine.
    link(&e, "b", "d").await.unwrap();
    link(&e, "d", "missing").await.unwrap();
    // A queue deleted and created again is checked like any other.
    e.delete_queue(&key("b")).await.unwrap();
    link(&e, "d", "a").await.unwrap();
    assert_eq!(cycle_of(link(&e, "b", "d").await), ["b", "d", "a", "b"]);
    // Settings other than the link still change.
    e.upsert_queue(&key("a"), false, |c| -> Result<_, ()> {
        let mut c = c.unwrap().clone();
        c.message_timeout_s = 90;
        Ok(c)
    })
    .await
    .unwrap()
    .unwrap();
    // The same names in another project are other queues.
    let other = QueueKey::new("other", "b");
    e.upsert_queue(&other, true, |_| -> Result<_, ()> {
        Ok(QueueConfig {
            dead_letter: Some(DeadLetter {
                queue: "a".into(),
                max_reservations: 1,
            }),
            ..QueueConfig::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(dead_letter_of(&e, "a").as_deref(), Some("b"));
    assert_eq!(dead_letter_of(&e, "d").as_deref(), Some("a"));
    assert!(matches!(
        e.queue_info(&key("b")).await,
        Err(Error::QueueNotFound)
    ));
}

/// Two updates racing to link a and b to each other: the check runs under the state lock,
/// so exactly one of them wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_links_cannot_close_a_cycle_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = std::sync::Arc::new(open(dir.path(), &clock));
    for round in 0..20 {
        let (a, b) = (format!("a{round}"), format!("b{round}"));
        let (ea, eb) = (e.clone(), e.clone());
        let (a2, b2) = (a.clone(), b.clone());
        let ta = tokio::spawn(async move { link(&ea, &a2, &b2).await.is_ok() });
        let tb = tokio::spawn(async move { link(&eb, &b, &a).await.is_ok() });
        let won = [ta.await.unwrap(), tb.await.unwrap()];
        assert_eq!(
            won.iter().filter(|w| **w).count(),
            1,
            "round {round}: {won:?}"
        );
    }
}

/// A message moved to the dead-letter queue counts in its `total_messages` (messages ever
/// posted there), live and after a replay; the source queue's count is unchanged.
#[tokio::test]
async fn a_dead_letter_move_counts_in_the_dead_letter_queue_total() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    link(&e, "q", "dlq").await.unwrap();
    e.post(&key("q"), &[msg("a"), msg("b")], false)
        .await
        .unwrap();
    for m in e.reserve(&key("q"), reserve(2)).await.unwrap() {
        e.release(&key("q"), m.id, m.reservation_id.unwrap(), 0)
            .await
            .unwrap();
    }
    assert!(e.reserve(&key("q"), reserve(2)).await.unwrap().is_empty());
    e.post(&key("dlq"), &[msg("direct")], false).await.unwrap();
    let totals = |e: &Engine| {
        let (q, d) = (
            e.queue_info_now(&key("q")).unwrap(),
            e.queue_info_now(&key("dlq")).unwrap(),
        );
        (q.size, q.total_messages, d.size, d.total_messages)
    };
    assert_eq!(totals(&e), (0, 2, 3, 3));
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(totals(&e), (0, 2, 3, 3));
    e.check_invariants();
}

#[tokio::test]
async fn queue_type_is_fixed_and_list_is_ordered_with_prefix_and_previous() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    for name in ["b", "a", "ab", "abc", "c"] {
        e.post(&key(name), &[msg("x")], true).await.unwrap();
    }
    e.post(&QueueKey::new("other", "a"), &[msg("x")], true)
        .await
        .unwrap();
    assert_eq!(
        e.list_queues("p", "", None, 30).await.unwrap(),
        vec!["a", "ab", "abc", "b", "c"]
    );
    assert_eq!(
        e.list_queues("p", "ab", None, 30).await.unwrap(),
        vec!["ab", "abc"]
    );
    assert_eq!(
        e.list_queues("p", "", Some("ab"), 2).await.unwrap(),
        vec!["abc", "b"]
    );
    assert_eq!(
        e.list_queues("p", "", Some("aa"), 1).await.unwrap(),
        vec!["ab"]
    );
    let r = e
        .upsert_queue(&key("a"), false, |c| -> Result<_, ()> {
            Ok(QueueConfig {
                kind: QueueKind::Multicast,
                ..c.unwrap().clone()
            })
        })
        .await;
    assert!(matches!(r, Err(Error::WrongQueueType(_))));
    e.delete_queue(&key("a")).await.unwrap();
    assert!(matches!(
        e.queue_info(&key("a")).await,
        Err(Error::QueueNotFound)
    ));
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(
        e.list_queues("p", "", None, 30).await.unwrap(),
        vec!["ab", "abc", "b", "c"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_post_and_times_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.post(&key("q"), &[msg("seed")], true).await.unwrap();
    e.reserve(
        &key("q"),
        ReserveOptions {
            delete: true,
            ..reserve(1)
        },
    )
    .await
    .unwrap();
    let t = std::time::Instant::now();
    let none = e
        .reserve(
            &key("q"),
            ReserveOptions {
                wait_ms: 300,
                ..reserve(1)
            },
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    let e2 = e.clone();
    let waiter = tokio::spawn(async move {
        e2.reserve(
            &key("q"),
            ReserveOptions {
                wait_ms: 10_000,
                ..reserve(1)
            },
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    e.post(&key("q"), &[msg("wake")], false).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got[0].body, b"wake");
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
}

#[tokio::test]
async fn limits_are_enforced_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let big = NewMessage {
        body: vec![b'x'; 4097].into(),
        ..Default::default()
    };
    assert!(matches!(
        e.post(&key("q"), &[big], true).await,
        Err(Error::BodyTooLarge {
            len: 4097,
            max: 4096
        })
    ));
    let many: Vec<_> = (0..101).map(|_| msg("x")).collect();
    assert!(matches!(
        e.post(&key("q"), &many, true).await,
        Err(Error::LimitExceeded { .. })
    ));
    assert!(
        matches!(e.queue_info(&key("q")).await, Err(Error::QueueNotFound)),
        "a refused post creates nothing"
    );
    e.post(&key("q"), &[msg("x")], true).await.unwrap();
    assert!(matches!(
        e.reserve(&key("q"), reserve(101)).await,
        Err(Error::LimitExceeded { .. })
    ));
    assert!(matches!(
        e.reserve(&key("q"), reserve(0)).await,
        Err(Error::LimitExceeded { .. })
    ));
}

#[tokio::test]
async fn segments_roll_and_space_is_reclaimed_under_post_delete() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let body = "x".repeat(1000);
    // A long-lived message in the first segment forces relocation.
    e.post(&key("keep"), &[msg("keeper")], true).await.unwrap();
    for _ in 0..100 {
        let batch: Vec<_> = (0..50).map(|_| msg(&body)).collect();
        e.post(&key("q"), &batch, true).await.unwrap();
        let got = e
            .reserve(
                &key("q"),
                ReserveOptions {
                    delete: true,
                    ..reserve(50)
                },
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 50);
        e.maintain().unwrap();
    }
    e.sync().await.unwrap();
    let segs = segment_files(dir.path());
    assert!(segs <= 4, "{segs} segments left for ~0 live data");
    drop(e);
    let e = open(dir.path(), &clock);
    let kept = e.reserve(&key("keep"), reserve(1)).await.unwrap();
    assert_eq!(kept[0].body, b"keeper");
    assert_eq!(e.queue_info(&key("q")).await.unwrap().total_messages, 5000);
    e.check_invariants();
}

/// Retention moves every kind of live message out of the oldest segments: one still in
/// the queue it was posted to, delayed ones (their delays kept), and dead-lettered ones,
/// which live in another queue than the one their post names, including one whose source
/// queue names another dead-letter queue since.
#[tokio::test]
async fn retention_relocates_delayed_and_dead_lettered_messages() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let dead_letter_to = |to: &'static str| {
        move |_: Option<&QueueConfig>| -> Result<_, ()> {
            Ok(QueueConfig {
                dead_letter: Some(DeadLetter {
                    queue: to.into(),
                    max_reservations: 1,
                }),
                ..QueueConfig::default()
            })
        }
    };
    e.upsert_queue(&key("src"), true, dead_letter_to("dlq"))
        .await
        .unwrap()
        .unwrap();
    e.upsert_queue(&key("old"), true, dead_letter_to("was-dlq"))
        .await
        .unwrap()
        .unwrap();
    let keeper = e.post(&key("keep"), &[msg("keeper")], true).await.unwrap()[0];
    let delayed: Vec<NewMessage<'_>> = (0..50)
        .map(|_| NewMessage {
            delay_s: 3_600,
            ..msg("later")
        })
        .collect();
    e.post(&key("later"), &delayed, true).await.unwrap();
    let poison = e.post(&key("src"), &[msg("poison")], true).await.unwrap()[0];
    let stale = e.post(&key("old"), &[msg("stale")], true).await.unwrap()[0];
    for q in ["src", "old"] {
        let m = e.reserve(&key(q), reserve(1)).await.unwrap().remove(0);
        e.release(&key(q), m.id, m.reservation_id.unwrap(), 0)
            .await
            .unwrap();
        assert!(e.reserve(&key(q), reserve(1)).await.unwrap().is_empty());
    }
    // "was-dlq" is no dead-letter queue any more: its message is found all the same.
    e.upsert_queue(&key("old"), false, |_| Ok::<_, ()>(QueueConfig::default()))
        .await
        .unwrap()
        .unwrap();
    let body = "x".repeat(1000);
    let mut relocated = 0;
    for _ in 0..100 {
        let batch: Vec<_> = (0..50).map(|_| msg(&body)).collect();
        e.post(&key("q"), &batch, true).await.unwrap();
        let opts = ReserveOptions {
            delete: true,
            ..reserve(50)
        };
        assert_eq!(e.reserve(&key("q"), opts).await.unwrap().len(), 50);
        relocated += e.maintain().unwrap().messages_relocated;
    }
    assert!(relocated >= 53, "{relocated} relocated");
    e.sync().await.unwrap();
    let segs = segment_files(dir.path());
    assert!(segs <= 4, "{segs} segments left for ~0 live data");
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(e.get(&key("keep"), keeper).await.unwrap().body, b"keeper");
    assert_eq!(e.get(&key("dlq"), poison).await.unwrap().body, b"poison");
    assert_eq!(e.get(&key("was-dlq"), stale).await.unwrap().body, b"stale");
    assert!(
        e.reserve(&key("later"), reserve(100))
            .await
            .unwrap()
            .is_empty()
    );
    clock.advance_ms(3_600_000);
    assert_eq!(
        e.reserve(&key("later"), reserve(100)).await.unwrap().len(),
        50
    );
    e.check_invariants();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waiting_answers_long_polls_at_once_and_writes_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.upsert_queue(&key("q"), true, |_| Ok::<_, Error>(QueueConfig::default()))
        .await
        .unwrap()
        .unwrap();
    let long_poll = ReserveOptions {
        wait_ms: 20_000,
        ..reserve(1)
    };
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let e = e.clone();
            tokio::spawn(async move { e.reserve(&key("q"), long_poll).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    e.stop_waiting();
    for w in waiters {
        assert!(w.await.unwrap().unwrap().is_empty());
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
    // A long poll started afterwards does not wait either; writes still go through.
    let t = std::time::Instant::now();
    assert!(e.reserve(&key("q"), long_poll).await.unwrap().is_empty());
    assert!(t.elapsed() < std::time::Duration::from_secs(1));
    e.post(&key("q"), &[msg("late")], false).await.unwrap();
    assert_eq!(
        e.reserve(&key("q"), long_poll).await.unwrap()[0].body,
        b"late"
    );
}

#[tokio::test]
async fn message_counters_count_posts_reserves_deletes_clears_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let ids = e
        .post(&key("q"), &[msg("a"), msg("b"), msg("c"), msg("d")], true)
        .await
        .unwrap();
    let got = e.reserve(&key("q"), reserve(2)).await.unwrap();
    e.delete(&key("q"), ids[0], got[0].reservation_id)
        .await
        .unwrap();
    let popped = ReserveOptions {
        delete: true,
        ..reserve(1)
    };
    assert_eq!(e.reserve(&key("q"), popped).await.unwrap().len(), 1);
    e.clear(&key("q")).await.unwrap(); // "b" (reserved) and "d".
    e.upsert_queue(&key("x"), true, expiring_in(60))
        .await
        .unwrap()
        .unwrap();
    e.post(&key("x"), &[msg("e"), msg("f")], false)
        .await
        .unwrap();
    clock.advance_ms(61_000);
    assert_eq!(e.queue_info(&key("x")).await.unwrap().size, 0);
    let s = e.stats();
    assert_eq!(
        (
            s.messages_posted,
            s.messages_reserved,
            s.messages_deleted,
            s.messages_expired
        ),
        (6, 3, 4, 2)
    );
}

fn expiring_in(s: u32) -> impl FnOnce(Option<&QueueConfig>) -> Result<QueueConfig, Error> {
    move |_| {
        Ok(QueueConfig {
            message_expiration_s: s,
            ..QueueConfig::default()
        })
    }
}

/// A queue nobody reads loses its expired messages all the same: `maintain` sweeps the
/// heads of all queues (a sweep looks at a bounded number of entries, and goes on in
/// rounds while it finds any).
#[tokio::test]
async fn maintenance_sweeps_expired_messages_of_queues_nobody_touches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    e.upsert_queue(&key("idle"), true, expiring_in(60))
        .await
        .unwrap()
        .unwrap();
    let batch: Vec<_> = (0..100).map(|_| msg("m")).collect();
    for _ in 0..300 {
        e.post(&key("idle"), &batch, false).await.unwrap();
    }
    e.post(&key("other"), &[msg("stays")], true).await.unwrap();
    let report = e.maintain().unwrap();
    assert_eq!(report.messages_expired, 0);
    clock.advance_ms(61_000);
    let report = e.maintain().unwrap();
    assert_eq!(report.messages_expired, 30_000);
    assert_eq!(e.queue_info_now(&key("idle")).unwrap().size, 0);
    assert_eq!(e.queue_info_now(&key("other")).unwrap().size, 1);
    assert_eq!(e.stats().messages_expired, 30_000);
    assert_eq!(e.maintain().unwrap().messages_expired, 0);
    e.check_invariants();
}

/// Relocation deletes an expired message instead of copying it (here behind one that has
/// not expired, where no sweep from the head reaches), and what it deletes stays gone
/// after a restart.
#[tokio::test]
async fn relocation_deletes_expired_messages_instead_of_copying_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    e.upsert_queue(&key("x"), true, expiring_in(3_600))
        .await
        .unwrap()
        .unwrap();
    let head = e.post(&key("x"), &[msg("head")], false).await.unwrap()[0];
    e.upsert_queue(&key("x"), false, expiring_in(60))
        .await
        .unwrap()
        .unwrap();
    let short: Vec<_> = (0..50).map(|_| msg("short")).collect();
    let gone = e.post(&key("x"), &short, false).await.unwrap();
    clock.advance_ms(61_000);
    let body = "x".repeat(1000);
    let (mut relocated, mut expired) = (0, 0);
    for _ in 0..100 {
        let batch: Vec<_> = (0..50).map(|_| msg(&body)).collect();
        e.post(&key("q"), &batch, true).await.unwrap();
        let opts = ReserveOptions {
            delete: true,
            ..reserve(50)
        };
        assert_eq!(e.reserve(&key("q"), opts).await.unwrap().len(), 50);
        let r = e.maintain().unwrap();
        relocated += r.messages_relocated;
        expired += r.messages_expired;
    }
    assert_eq!(expired, 50);
    assert!(relocated >= 1, "{relocated} relocated");
    assert_eq!(e.stats().messages_expired, 50);
    assert_eq!(e.queue_info_now(&key("x")).unwrap().size, 1);
    e.sync().await.unwrap();
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(e.queue_info_now(&key("x")).unwrap().size, 1);
    assert_eq!(e.get(&key("x"), head).await.unwrap().body, b"head");
    for id in gone {
        assert!(matches!(
            e.get(&key("x"), id).await,
            Err(Error::MessageNotFound)
        ));
    }
    e.check_invariants();
}

/// Clearing or deleting a queue of more entries than are walked under the state lock
/// leaves the live counts right (`check_invariants`), so retention drops the segments.
#[tokio::test]
async fn clearing_and_deleting_big_queues_free_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let body = "b".repeat(100);
    let batch: Vec<_> = (0..100).map(|_| msg(&body)).collect();
    for _ in 0..300 {
        e.post(&key("cleared"), &batch, true).await.unwrap();
        e.post(&key("deleted"), &batch, true).await.unwrap();
    }
    let keeper = e.post(&key("keep"), &[msg("keeper")], true).await.unwrap()[0];
    let before = segment_files(dir.path());
    assert!(before >= 4, "{before} segments");
    e.clear(&key("cleared")).await.unwrap();
    e.check_invariants();
    assert_eq!(e.queue_info_now(&key("cleared")).unwrap().size, 0);
    e.delete_queue(&key("deleted")).await.unwrap();
    e.check_invariants();
    assert!(matches!(
        e.queue_info_now(&key("deleted")),
        Err(Error::QueueNotFound)
    ));
    let mut dropped = 0;
    for _ in 0..10 {
        dropped += e.maintain().unwrap().segments_dropped;
    }
    assert!(
        dropped as usize >= before - 2,
        "{dropped} of {before} dropped"
    );
    e.check_invariants();
    drop(e);
    let e = open(dir.path(), &clock);
    assert_eq!(e.queue_info_now(&key("cleared")).unwrap().size, 0);
    assert_eq!(e.get(&key("keep"), keeper).await.unwrap().body, b"keeper");
    e.check_invariants();
}

/// `all_queues` reads the queues a few per hold of the state lock, in key order, each
/// settled as `queue_info` would (expired messages gone), across projects.
#[tokio::test]
async fn all_queues_lists_every_queue_in_key_order_settled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let e = open(dir.path(), &clock);
    let mut want = Vec::new();
    for project in ["p2", "p1"] {
        for i in (0..25).rev() {
            let k = QueueKey::new(project, format!("q{i:02}"));
            let expiring = i % 5 == 0;
            let secs = if expiring { 60 } else { 3_600 };
            e.upsert_queue(&k, true, expiring_in(secs))
                .await
                .unwrap()
                .unwrap();
            e.post(&k, &[msg("a"), msg("b")], false).await.unwrap();
            want.push((
                project.to_string(),
                k.name.clone(),
                if expiring { 0 } else { 2 },
            ));
        }
    }
    want.sort();
    clock.advance_ms(61_000);
    let got: Vec<_> = e
        .all_queues()
        .into_iter()
        .map(|q| (q.project, q.name, q.size))
        .collect();
    assert_eq!(got, want);
    assert_eq!(e.stats().messages_expired, 20);
    e.check_invariants();
}

/// A roll names the new segment as it is appended; the writer maps the segment only when
/// it writes the roll, after syncing the segment it seals. A long poll woken by the post
/// that rolled takes locations in a segment with no mapping yet: it must wait for the roll
/// like any read, not fail (the session-13 build answered it with an error, after logging
/// the reservation). A slow disk (every sync 20 ms) holds that window open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_woken_by_the_post_that_rolls_the_log_reads_it() {
    use engine::testing::SimStorage;
    use std::sync::Arc;
    use std::time::Duration;
    let storage = SimStorage::new();
    let clock = ManualClock::new(T0);
    let mut config = EngineConfig::new("/sim");
    config.segment_bytes = 1536 << 10;
    config.body_bytes_max = 4096;
    let e = Engine::open_with(config, Arc::new(storage.clone()), Arc::new(clock.clone()));
    let e = Arc::new(e.unwrap());
    let q = key("roll");
    e.upsert_queue::<()>(&q, true, |_| Ok(QueueConfig::default()))
        .await
        .unwrap()
        .unwrap();
    storage.set_sync_delay(Duration::from_millis(20));
    let segments = || {
        let names = storage.file_names();
        names.iter().filter(|n| n.ends_with(".seg")).count()
    };
    let (first, body) = (segments(), "x".repeat(4000));
    let batch: Vec<NewMessage> = (0..100).map(|_| msg(&body)).collect();
    for round in 0..12 {
        let waiter = {
            let (e, q) = (e.clone(), q.clone());
            let opts = ReserveOptions {
                n: 100,
                wait_ms: 5000,
                ..Default::default()
            };
            tokio::spawn(async move { e.reserve(&q, opts).await })
        };
        // Asleep on the queue before the post wakes it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let ids = e.post(&q, &batch, false).await.unwrap();
        let got = waiter.await.unwrap();
        let got = got.unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
        let items: Vec<DeleteItem> = got.iter().map(DeleteItem::of).collect();
        e.delete_batch(&q, &items).await.unwrap();
    }
    assert!(segments() >= first + 2, "the log rolled during the rounds");
}
