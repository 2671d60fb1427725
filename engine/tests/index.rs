//! The restart index on real files: a clean close leaves one and the next open replays
//! nothing; an open after more appends replays only those; maintenance writes one when the
//! log has grown; records before its position are not read; and a damaged, foreign or stale
//! index is removed and the whole log replayed, reaching the same state.

mod common;

use std::path::Path;
use std::sync::Arc;

use engine::{
    CorruptionKind, DeleteItem, Engine, EngineConfig, Error, IndexRejection, IndexUse,
    MaintainReport, ManualClock, MessageId, NewMessage, OsStorage, QueueKey, ReserveOptions,
    SegmentId,
};

const T0: u64 = 1_700_000_000_000;
const INDEX: &str = "index.idx";

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_bytes = 2 << 20;
    c.body_bytes_max = 4096;
    c
}

fn open(dir: &Path, clock: &ManualClock) -> Engine {
    Engine::open_with(
        config(dir),
        Arc::new(OsStorage::new(dir).expect("storage")),
        Arc::new(clock.clone()),
    )
    .expect("open")
}

fn tempdir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir()
        && let Ok(d) = tempfile::tempdir_in("/dev/shm")
    {
        return d;
    }
    tempfile::tempdir().expect("tempdir")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn key(name: &str) -> QueueKey {
    QueueKey::new("p", name)
}

fn msgs(n: usize, len: usize, delay_s: u32, tag: usize) -> Vec<NewMessage<'static>> {
    (0..n)
        .map(|i| NewMessage {
            body: vec![b'a' + ((tag + i) % 26) as u8; len].into(),
            delay_s,
            meta: Vec::new(),
        })
        .collect()
}

/// The started segment files (not the one named ahead of the next roll).
fn segments(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|f| f.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg") && common::is_started_segment(&dir.join(n)))
        .collect();
    v.sort();
    v
}

/// Builds a log over several segments with every kind of state: visible, delayed, reserved
/// (some touched, some released), deleted and cleared messages, two queues, metadata.
/// Returns every id posted.
async fn populate(e: &Engine, rounds: usize) -> Vec<MessageId> {
    let mut ids = Vec::new();
    for r in 0..rounds {
        let q = if r % 3 == 2 { "b" } else { "a" };
        ids.extend(e.post(&key(q), &msgs(100, 3000, 0, r), true).await.unwrap());
        ids.extend(e.post(&key(q), &msgs(3, 50, 30, r), true).await.unwrap());
        let got = e
            .reserve(
                &key(q),
                ReserveOptions {
                    n: 5,
                    timeout_s: 120,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        e.delete(&key(q), got[0].id, got[0].reservation_id)
            .await
            .unwrap();
        e.touch(&key(q), got[1].id, got[1].reservation_id.unwrap(), 300)
            .await
            .unwrap();
        e.release(&key(q), got[2].id, got[2].reservation_id.unwrap(), 20)
            .await
            .unwrap();
        let items: Vec<DeleteItem> = ids[ids.len() - 10..ids.len() - 5]
            .iter()
            .map(|&id| DeleteItem {
                id,
                reservation_id: None,
            })
            .collect();
        e.delete_batch(&key(q), &items).await.unwrap();
        e.put_meta(&format!("k{}", r % 4), Some(format!("v{r}").as_bytes()))
            .await
            .unwrap();
    }
    e.put_meta("k1", None).await.unwrap();
    ids
}

/// Everything a client can observe, rendered for comparison.
async fn observe(e: &Engine, ids: &[MessageId]) -> String {
    let mut out = String::new();
    for q in ["a", "b"] {
        let info = e.queue_info(&key(q)).await;
        out += &format!("{q}: {info:?}\n");
        let peek = e.peek(&key(q), 100).await.map(|v| {
            v.iter()
                .map(|m| (m.id, m.reserved_count))
                .collect::<Vec<_>>()
        });
        out += &format!("peek {peek:?}\n");
        for id in ids {
            match e.get(&key(q), *id).await {
                Ok(m) => {
                    out += &format!(
                        "{id} {} {} {:?} {}\n",
                        m.body.len(),
                        m.body.first().copied().unwrap_or(0),
                        m.reservation,
                        m.reserved_count
                    )
                }
                Err(Error::MessageNotFound) => {}
                Err(err) => out += &format!("{id} {err}\n"),
            }
        }
    }
    out += &format!("meta {:?}\n", e.meta_with_prefix(""));
    out
}

/// What a full replay of `dir` (without its index, on a copy) observes.
fn observe_replay(dir: &Path, clock: &ManualClock, ids: &[MessageId]) -> String {
    let copy = tempdir();
    for f in std::fs::read_dir(dir).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().into_string().unwrap();
        if name.ends_with(".seg") {
            std::fs::copy(f.path(), copy.path().join(&name)).unwrap();
        }
    }
    rt().block_on(async {
        let e = open(copy.path(), clock);
        assert_eq!(e.recovery_report().index, IndexUse::Absent);
        observe(&e, ids).await
    })
}

/// The open used the index, and the log before it checks.
fn loaded_and_intact(e: &Engine) {
    assert!(matches!(e.recovery_report().index, IndexUse::Loaded { .. }));
    let checked = e
        .verify_log_before_index()
        .expect("an intact log")
        .expect("frames");
    assert!(checked > 12, "{checked} frames checked");
    assert!(!e.is_failed());
}

#[test]
fn a_clean_close_leaves_an_index_and_the_next_open_replays_only_what_follows_it() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let ids = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let ids = populate(&e, 20).await;
        e.close();
        ids
    });
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    clock.advance_ms(5_000);
    let want = observe_replay(dir.path(), &clock, &ids);

    let (covers, more) = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        let IndexUse::Loaded { covers } = r.index else {
            panic!("the index was not used: {r:?}");
        };
        assert_eq!(
            (r.records_replayed, r.segments_scanned, r.segments),
            (0, 1, segs.len() as u64),
            "only the covered segment is scanned, from the covered position"
        );
        assert_eq!(covers.segment().0 as usize, segs.len(), "{covers:?}");
        assert_eq!(observe(&e, &ids).await, want);
        // More records after the index, then a crash (no close, no new index).
        let mut more = Vec::new();
        for i in 0..7 {
            more.extend(e.post(&key("a"), &msgs(1, 10, 0, i), true).await.unwrap());
        }
        (covers, more)
    });
    let ids: Vec<MessageId> = ids.into_iter().chain(more).collect();
    let want = observe_replay(dir.path(), &clock, &ids);
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert_eq!(r.index, IndexUse::Loaded { covers });
        assert_eq!((r.records_replayed, r.segments_scanned), (7, 1));
        assert_eq!(observe(&e, &ids).await, want);
        // Reservations come back with the same ids: the touched one still deletes.
        e.check_invariants();
    });
}

#[test]
fn an_index_open_does_not_read_the_records_before_its_position() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let ids = rt().block_on(async {
        let e = open(dir.path(), &clock);
        let ids = populate(&e, 12).await;
        e.close();
        ids
    });
    let segs = segments(dir.path());
    // Damage a record header in the first (sealed) segment: whoever reads it must fail.
    let first = dir.path().join(&segs[0]);
    let pristine = std::fs::read(&first).unwrap();
    let mut b = pristine.clone();
    b[engine::SEGMENT_HEADER_BYTES + 4] ^= 0x40;
    std::fs::write(&first, &b).unwrap();
    let index = std::fs::read(dir.path().join(INDEX)).unwrap();
    rt().block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
        assert_eq!(r.records_replayed, 0);
        assert!(e.queue_info(&key("a")).await.unwrap().size > 0);
        // The check of the skipped part (run in the background by the server) finds the
        // damage and stops the engine.
        match e.verify_log_before_index() {
            Err(Error::Corruption { path, offset, kind }) => assert_eq!(
                (path, offset, kind),
                (
                    first.clone(),
                    engine::SEGMENT_HEADER_BYTES as u64,
                    CorruptionKind::RecordChecksum
                )
            ),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(e.is_failed());
        assert!(e.post(&key("a"), &msgs(1, 10, 0, 0), true).await.is_err());
        drop(e);
    });
    // Without the index, the same open reads that record and refuses the log.
    std::fs::remove_file(dir.path().join(INDEX)).unwrap();
    match Engine::open(config(dir.path())) {
        Err(Error::Corruption { path, offset, kind }) => {
            assert_eq!(
                (path, offset, kind),
                (
                    first.clone(),
                    engine::SEGMENT_HEADER_BYTES as u64,
                    CorruptionKind::RecordChecksum
                )
            );
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
    std::fs::write(&first, &pristine).unwrap();
    std::fs::write(dir.path().join(INDEX), &index).unwrap();
    let want = observe_replay(dir.path(), &clock, &ids);
    rt().block_on(async {
        let e = open(dir.path(), &clock);
        assert_eq!(observe(&e, &ids).await, want);
        loaded_and_intact(&e);
    });
}

#[test]
fn a_damaged_or_foreign_index_is_removed_and_the_log_replayed() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let ids = rt().block_on(async {
        let e = open(dir.path(), &clock);
        let ids = populate(&e, 6).await;
        e.close();
        ids
    });
    let good = std::fs::read(dir.path().join(INDEX)).unwrap();
    // An index of another log of the same shape, begun a second later.
    let other = tempdir();
    let later = ManualClock::new(T0 + 1_000);
    rt().block_on(async {
        let e = open(other.path(), &later);
        populate(&e, 6).await;
        e.close();
    });
    let foreign = std::fs::read(other.path().join(INDEX)).unwrap();
    let want = observe_replay(dir.path(), &clock, &ids);

    let flip = |at: usize| {
        let mut b = good.clone();
        b[at] ^= 0x08;
        b
    };
    let cases: Vec<(&str, Vec<u8>, IndexRejection)> = vec![
        ("empty", Vec::new(), IndexRejection::Truncated),
        (
            "cut in the header",
            good[..40].to_vec(),
            IndexRejection::Truncated,
        ),
        (
            "cut in the body",
            good[..good.len() / 2].to_vec(),
            IndexRejection::Truncated,
        ),
        (
            "one byte short",
            good[..good.len() - 1].to_vec(),
            IndexRejection::Truncated,
        ),
        (
            "a byte too many",
            [good.as_slice(), &[0]].concat(),
            IndexRejection::Malformed,
        ),
        ("magic", flip(0), IndexRejection::BadMagic),
        ("header field", flip(20), IndexRejection::HeaderChecksum),
        ("first body byte", flip(64), IndexRejection::Checksum),
        ("middle", flip(good.len() / 2), IndexRejection::Checksum),
        ("last byte", flip(good.len() - 1), IndexRejection::Checksum),
        ("garbage", vec![0x5A; 4096], IndexRejection::BadMagic),
        ("another log's index", foreign, IndexRejection::LogMismatch),
    ];
    for (what, bytes, why) in cases {
        std::fs::write(dir.path().join(INDEX), &bytes).unwrap();
        let got = rt().block_on(async {
            let e = open(dir.path(), &clock);
            assert_eq!(e.recovery_report().index, IndexUse::Ignored(why), "{what}");
            assert!(
                !dir.path().join(INDEX).exists(),
                "{what}: an unusable index is removed at once"
            );
            assert!(e.recovery_report().records_replayed > 0, "{what}");
            observe(&e, &ids).await
            // Dropped without close: no new index.
        });
        assert_eq!(got, want, "{what}");
    }
    // The good one still works.
    std::fs::write(dir.path().join(INDEX), &good).unwrap();
    rt().block_on(async {
        let e = open(dir.path(), &clock);
        assert_eq!(observe(&e, &ids).await, want);
        loaded_and_intact(&e);
    });
}

/// Posts and deletes enough to roll segments, with maintenance after each batch.
async fn churn(e: &Engine, batches: usize) -> Vec<engine::MaintainReport> {
    let mut reports = Vec::new();
    for i in 0..batches {
        let ids = e
            .post(&key("churn"), &msgs(20, 3000, 0, i), true)
            .await
            .unwrap();
        let items: Vec<DeleteItem> = ids
            .iter()
            .map(|&id| DeleteItem {
                id,
                reservation_id: None,
            })
            .collect();
        e.delete_batch(&key("churn"), &items).await.unwrap();
        reports.push(e.maintain().unwrap());
    }
    reports
}

#[test]
fn maintenance_writes_the_index_and_an_index_older_than_retention_is_ignored() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let (ids, first_index) = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let ids = populate(&e, 3).await;
        let w = e.write_index().unwrap();
        assert!(w.written && w.messages > 0, "{w:?}");
        assert!(!e.write_index().unwrap().written, "nothing new to cover");
        let first_index = std::fs::read(dir.path().join(INDEX)).unwrap();
        // Churn: maintenance writes new indexes as the log grows, and drops segments.
        let reports = churn(&e, 150).await;
        let written: Vec<_> = reports.iter().filter_map(|r| r.index).collect();
        assert!(!written.is_empty(), "maintenance wrote an index");
        assert!(written.iter().all(|w| w.written));
        let dropped: u64 = reports.iter().map(|r| r.segments_dropped).sum();
        assert!(dropped > 0, "retention dropped segments");
        // A crash: the last index maintenance wrote, plus the log after it.
        e.post(&key("a"), &msgs(2, 10, 0, 0), true).await.unwrap();
        (ids, first_index)
    });
    let want = observe_replay(dir.path(), &clock, &ids);
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
        assert!(r.records_replayed > 0);
        assert_eq!(observe(&e, &ids).await, want);
    });
    // The first index covers a position in a segment retention has dropped since.
    std::fs::write(dir.path().join(INDEX), &first_index).unwrap();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        assert_eq!(
            e.recovery_report().index,
            IndexUse::Ignored(IndexRejection::NotInLog)
        );
        assert_eq!(observe(&e, &ids).await, want);
    });
}

#[test]
fn an_older_index_whose_position_is_still_in_the_log_is_used() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let (ids, older) = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let mut ids = populate(&e, 4).await;
        e.write_index().unwrap();
        let older = std::fs::read(dir.path().join(INDEX)).unwrap();
        ids.extend(populate(&e, 4).await);
        e.clear(&key("b")).await.unwrap();
        e.close();
        (ids, older)
    });
    let want = observe_replay(dir.path(), &clock, &ids);
    std::fs::write(dir.path().join(INDEX), &older).unwrap();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
        assert!(r.records_replayed > 4 * 7, "{r:?}");
        assert_eq!(observe(&e, &ids).await, want);
    });
}

/// A log of a few segments with live messages in each, closed (so with an index).
fn closed_log(dir: &Path) -> Vec<String> {
    rt().block_on(async {
        let e = open(dir, &ManualClock::new(T0));
        populate(&e, 24).await;
        e.close();
    });
    let segs = segments(dir);
    assert!(segs.len() >= 2, "{segs:?}");
    segs
}

/// Opening `dir` fails: the segment file `missing` is missing.
fn open_fails_missing(dir: &Path, missing: &Path) {
    match Engine::open(config(dir)) {
        Err(Error::Corruption { path, kind, .. }) => {
            assert_eq!(
                (path.as_path(), kind),
                (missing, CorruptionKind::MissingSegment)
            );
        }
        other => panic!("expected a missing segment, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn segment_files_missing_at_the_end_of_the_log_stop_the_open() {
    let dir = tempdir();
    let segs = closed_log(dir.path());
    let last = dir.path().join(segs.last().unwrap());
    let saved = std::fs::read(&last).unwrap();
    // Without its last segment, or without any, the log looks shorter than the index says.
    for remove in [vec![segs.len() - 1], (0..segs.len()).collect()] {
        let kept: Vec<Vec<u8>> = remove
            .iter()
            .map(|&i| std::fs::read(dir.path().join(&segs[i])).unwrap())
            .collect();
        for &i in &remove {
            std::fs::remove_file(dir.path().join(&segs[i])).unwrap();
        }
        open_fails_missing(dir.path(), &last);
        for (&i, bytes) in remove.iter().zip(kept) {
            std::fs::write(dir.path().join(&segs[i]), bytes).unwrap();
        }
    }
    assert_eq!(std::fs::read(&last).unwrap(), saved);
    let e = Engine::open(config(dir.path())).expect("whole again");
    assert!(matches!(e.recovery_report().index, IndexUse::Loaded { .. }));
}

/// Links `from`'s dead-letter queue to `to`, moving a message after one reservation.
async fn dead_letter_to(e: &Engine, from: &str, to: &str) {
    e.upsert_queue(&key(from), true, |_| -> Result<_, ()> {
        Ok(engine::QueueConfig {
            dead_letter: Some(engine::DeadLetter {
                queue: to.into(),
                max_reservations: 1,
            }),
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .unwrap();
}

/// Reserves and releases every message of `q` once, then reserves again: with
/// `max_reservations` 1 that moves them all to the dead-letter queue.
async fn move_all(e: &Engine, q: &str) {
    let opts = |n| ReserveOptions {
        n,
        ..Default::default()
    };
    for m in e.reserve(&key(q), opts(100)).await.unwrap() {
        e.release(&key(q), m.id, m.reservation_id.unwrap(), 0)
            .await
            .unwrap();
    }
    assert!(e.reserve(&key(q), opts(100)).await.unwrap().is_empty());
}

fn total(e: &Engine, q: &str) -> (u64, u64) {
    let info = e.queue_info_now(&key(q)).unwrap();
    (info.size, info.total_messages)
}

/// The dead-letter queue's `total_messages` counts moved messages once, however the state is
/// rebuilt: from the index (which stores the count), from the index plus a replay of moves
/// after it, and by a full replay (where a definition written after some moves carries
/// them, and the moves after it add to it).
#[test]
fn dead_letter_moves_count_once_in_the_total_after_an_index_open_and_a_full_replay() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        dead_letter_to(&e, "q", "dlq").await;
        e.post(&key("q"), &msgs(3, 10, 0, 0), true).await.unwrap();
        move_all(&e, "q").await;
        // A definition of dlq after the first moves, carrying their count.
        e.upsert_queue(&key("dlq"), false, |c| -> Result<_, ()> {
            let mut c = c.unwrap().clone();
            c.message_timeout_s = 90;
            Ok(c)
        })
        .await
        .unwrap()
        .unwrap();
        e.post(&key("q"), &msgs(2, 10, 0, 1), true).await.unwrap();
        move_all(&e, "q").await;
        e.post(&key("dlq"), &msgs(1, 10, 0, 2), true).await.unwrap();
        assert_eq!(total(&e, "dlq"), (6, 6));
        assert_eq!(total(&e, "q"), (0, 5));
        e.close();
    });
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
        assert_eq!(r.records_replayed, 0);
        assert_eq!((total(&e, "dlq"), total(&e, "q")), ((6, 6), (0, 5)));
        // Moves after the index's position, then a crash.
        e.post(&key("q"), &msgs(2, 10, 0, 3), true).await.unwrap();
        move_all(&e, "q").await;
        assert_eq!(total(&e, "dlq"), (8, 8));
    });
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
        assert!(r.records_replayed > 0, "{r:?}");
        assert_eq!((total(&e, "dlq"), total(&e, "q")), ((8, 8), (0, 7)));
        e.check_invariants();
    });
    std::fs::remove_file(dir.path().join(INDEX)).unwrap();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        assert_eq!(e.recovery_report().index, IndexUse::Absent);
        assert_eq!((total(&e, "dlq"), total(&e, "q")), ((8, 8), (0, 7)));
        e.check_invariants();
    });
}

/// Churn batches that fill a segment, and more (60 KB each in 2 MiB segments).
const BATCHES_PER_SEGMENT_MAX: usize = 100;

/// Churns until the log has rolled into its second segment (the first one kept by a live
/// message the caller posted in it).
async fn churn_into_a_second_segment(e: &Engine, dir: &Path) {
    for _ in 0..BATCHES_PER_SEGMENT_MAX {
        if segments(dir).len() >= 2 {
            break;
        }
        churn(e, 1).await;
    }
    assert_eq!(segments(dir).len(), 2);
}

/// Retention can drop the Post of a message that was moved to a dead-letter queue while
/// the Move record survives (the message itself is relocated into the dead-letter queue).
/// A full replay then finds the Move with nothing to take from the source queue; it still
/// counts, as it did live.
#[test]
fn a_dead_letter_move_whose_post_retention_dropped_still_counts_on_replay() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        dead_letter_to(&e, "q", "dlq").await;
        e.post(&key("q"), &msgs(1, 10, 0, 0), true).await.unwrap();
        // The move, and the dead-letter queue's definition, in the second segment.
        churn_into_a_second_segment(&e, dir.path()).await;
        move_all(&e, "q").await;
        assert_eq!(total(&e, "dlq"), (1, 1));
        // A live message keeps the second segment, which holds the dead-letter queue's
        // definition, in the log: dropping it would write that definition again at the tail.
        e.post(&key("keep"), &msgs(1, 10, 0, 1), true)
            .await
            .unwrap();
        // Churn until retention drops the first segment.
        let mut dropped = MaintainReport::default();
        for _ in 0..2 * BATCHES_PER_SEGMENT_MAX {
            dropped = churn(&e, 1).await.remove(0);
            if dropped.segments_dropped > 0 {
                break;
            }
        }
        assert_eq!(
            (dropped.segments_dropped, dropped.messages_relocated),
            (1, 1),
            "the first segment went, its one live message (the moved one) relocated"
        );
        assert_eq!(total(&e, "dlq"), (1, 1));
        e.close();
    });
    assert_eq!(segments(dir.path())[0], SegmentId(2).file_name());
    std::fs::remove_file(dir.path().join(INDEX)).unwrap();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        assert_eq!(e.recovery_report().index, IndexUse::Absent);
        assert_eq!((total(&e, "dlq"), total(&e, "q")), ((1, 1), (0, 1)));
        e.check_invariants();
    });
}

/// A message moved to a dead-letter queue lives on in its Post record, which names the
/// source queue. When the source queue is deleted and retention drops the segment holding
/// its definition (nobody rewrites the definition of a deleted queue) while the Post
/// survives, a full replay still finds the message in the dead-letter queue, as it was.
#[test]
fn a_moved_message_survives_a_replay_after_its_deleted_source_queue_definition_is_dropped() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let before = rt.block_on(async {
        let e = open(dir.path(), &clock);
        // The first segment holds q's definition, and a message that keeps it in the log
        // until the end.
        dead_letter_to(&e, "q", "dlq").await;
        let hold = e
            .post(&key("hold"), &msgs(1, 10, 0, 0), true)
            .await
            .unwrap();
        churn_into_a_second_segment(&e, dir.path()).await;
        // The message's Post (to q) and its move to dlq, in the second segment.
        let ids = e.post(&key("q"), &msgs(1, 10, 0, 7), true).await.unwrap();
        move_all(&e, "q").await;
        e.delete_queue(&key("q")).await.unwrap();
        let before = e.get(&key("dlq"), ids[0]).await.unwrap();
        // Enough live data that retention has no reason to relocate (3 MB; it relocates
        // only while the log is over twice the live data plus two segments).
        for i in 0..10 {
            e.post(&key("keep"), &msgs(100, 3000, 0, i), true)
                .await
                .unwrap();
        }
        let hold = DeleteItem {
            id: hold[0],
            reservation_id: None,
        };
        e.delete_batch(&key("hold"), &[hold]).await.unwrap();
        let dropped = churn(&e, 1).await.remove(0);
        assert_eq!(
            (dropped.segments_dropped, dropped.messages_relocated),
            (1, 0),
            "the first segment went; the moved message's Post, in the second, stays"
        );
        assert_eq!(total(&e, "dlq"), (1, 1));
        e.close();
        before
    });
    assert_eq!(segments(dir.path())[0], SegmentId(2).file_name());
    for replay in [false, true] {
        if replay {
            std::fs::remove_file(dir.path().join(INDEX)).unwrap();
        }
        rt.block_on(async {
            let e = open(dir.path(), &clock);
            assert_eq!(
                e.recovery_report().index == IndexUse::Absent,
                replay,
                "{:?}",
                e.recovery_report()
            );
            assert_eq!(total(&e, "dlq"), (1, 1), "replay: {replay}");
            let after = e.get(&key("dlq"), before.id).await.unwrap();
            assert_eq!(format!("{after:?}"), format!("{before:?}"));
            assert!(e.queue_info_now(&key("q")).is_err(), "q stays deleted");
            e.check_invariants();
            e.close();
        });
    }
}

/// A segment file missing at the front of the log (removed by hand, say) while the restart
/// index places live messages in it: the open stops and names the file, and changes nothing
/// (a full replay could not tell, and would lose those messages in silence). A segment that
/// retention dropped after relocating its messages is not missing.
#[test]
fn a_segment_file_missing_at_the_front_under_live_messages_stops_the_open() {
    let dir = tempdir();
    let segs = closed_log(dir.path());
    let first = dir.path().join(&segs[0]);
    let saved = std::fs::read(&first).unwrap();
    let index = std::fs::read(dir.path().join(INDEX)).unwrap();
    std::fs::remove_file(&first).unwrap();
    // At the time the log was written (by the system clock, every message would have
    // expired since, and expired ones are not missed).
    let opened = Engine::open_with(
        config(dir.path()),
        Arc::new(OsStorage::new(dir.path()).expect("storage")),
        Arc::new(ManualClock::new(T0)),
    );
    match opened {
        Err(Error::Corruption { path, kind, .. }) => {
            assert_eq!(path, first);
            assert!(
                matches!(kind, CorruptionKind::LostSegment { messages } if messages > 0),
                "{kind:?}"
            );
        }
        other => panic!("expected a lost segment, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::read(dir.path().join(INDEX)).unwrap(),
        index,
        "index kept"
    );
    std::fs::write(&first, saved).unwrap();
    let e = Engine::open(config(dir.path())).expect("whole again");
    assert!(matches!(e.recovery_report().index, IndexUse::Loaded { .. }));
}

/// An index written before retention relocated a segment's messages and dropped it: the
/// records after the index's position move them, and the open uses the index.
#[test]
fn an_index_older_than_a_relocation_is_brought_up_to_date_by_the_records_after_it() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let (ids, older) = rt.block_on(async {
        let e = open(dir.path(), &clock);
        // Live messages in the first segment, then enough churn for retention to relocate
        // them and drop it.
        let ids = populate(&e, 3).await;
        let first = segments(dir.path())[0].clone();
        // The index's position in the second segment, its messages in the first.
        churn_into_a_second_segment(&e, dir.path()).await;
        e.post(&key("a"), &msgs(1, 10, 0, 0), true).await.unwrap();
        let w = e.write_index().unwrap();
        assert!(w.written && w.covers.segment() > SegmentId(1), "{w:?}");
        let older = std::fs::read(dir.path().join(INDEX)).unwrap();
        let mut relocated = 0;
        for _ in 0..4 * BATCHES_PER_SEGMENT_MAX {
            let r = churn(&e, 1).await.remove(0);
            relocated += r.messages_relocated;
            if !segments(dir.path()).contains(&first) {
                break;
            }
        }
        assert!(
            !segments(dir.path()).contains(&first),
            "retention dropped {first}"
        );
        assert!(relocated > 0, "live messages were relocated");
        e.close();
        (ids, older)
    });
    let want = observe_replay(dir.path(), &clock, &ids);
    std::fs::write(dir.path().join(INDEX), &older).unwrap();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert_eq!(observe(&e, &ids).await, want);
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
    });
}

/// Expiry is not logged: a message that expired in a segment retention then dropped (no
/// relocation: it was gone) is still in a restart index written before the drop. A crash
/// that leaves that index must not make the open call the segment lost.
#[test]
fn an_index_older_than_an_expiry_and_a_drop_opens() {
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let (older, kept) = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let expiring = engine::QueueConfig {
            message_expiration_s: 60,
            ..Default::default()
        };
        e.upsert_queue(&key("x"), true, |_| Ok::<_, ()>(expiring.clone()))
            .await
            .unwrap()
            .unwrap();
        let first = segments(dir.path())[0].clone();
        let id = e.post(&key("x"), &msgs(1, 10, 0, 0), true).await.unwrap()[0];
        churn_into_a_second_segment(&e, dir.path()).await;
        let kept = e.post(&key("a"), &msgs(1, 10, 0, 0), true).await.unwrap()[0];
        let w = e.write_index().unwrap();
        assert!(w.written && w.covers.segment() > SegmentId(1), "{w:?}");
        let older = std::fs::read(dir.path().join(INDEX)).unwrap();
        clock.advance_ms(61_000);
        assert!(e.get(&key("x"), id).await.is_err(), "expired");
        for _ in 0..4 * BATCHES_PER_SEGMENT_MAX {
            churn(&e, 1).await;
            if !segments(dir.path()).contains(&first) {
                break;
            }
        }
        assert!(
            !segments(dir.path()).contains(&first),
            "retention dropped {first}"
        );
        e.close();
        (older, kept)
    });
    // The index a crash right after the drop would have left.
    std::fs::write(dir.path().join(INDEX), &older).unwrap();
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        assert!(
            matches!(e.recovery_report().index, IndexUse::Loaded { .. }),
            "{:?}",
            e.recovery_report()
        );
        assert_eq!(e.get(&key("a"), kept).await.unwrap().body, b"a".repeat(10));
    });
}

/// A new index is written over the one before the current (swapped aside by the last
/// write) in place, whether it is larger or smaller, so the file system allocates and frees
/// nothing in steady state; every index still loads as what it covers.
#[test]
fn each_index_is_written_over_the_one_before_last_in_place() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    const TMP: &str = "index.idx.tmp";
    let ino = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().ino();
    let ids = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let mut ids = populate(&e, 2).await;
        assert!(e.write_index().unwrap().written);
        let first = ino(INDEX);
        assert!(!dir.path().join(TMP).exists());
        ids.extend(populate(&e, 2).await);
        assert!(e.write_index().unwrap().written);
        assert_eq!(
            ino(TMP),
            first,
            "the first index was swapped aside, not removed"
        );
        // Larger than the one it overwrites.
        ids.extend(populate(&e, 4).await);
        let larger = e.write_index().unwrap();
        assert_eq!(ino(INDEX), first, "written over the first one's file");
        assert_eq!(
            std::fs::metadata(dir.path().join(INDEX)).unwrap().len(),
            larger.bytes
        );
        // Smaller than the one it overwrites.
        e.clear(&key("a")).await.unwrap();
        e.clear(&key("b")).await.unwrap();
        ids.extend(populate(&e, 1).await);
        let smaller = e.write_index().unwrap();
        assert!(smaller.bytes < larger.bytes);
        assert_eq!(
            std::fs::metadata(dir.path().join(INDEX)).unwrap().len(),
            smaller.bytes
        );
        e.close();
        ids
    });
    let want = observe_replay(dir.path(), &clock, &ids);
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        let r = e.recovery_report();
        assert!(matches!(r.index, IndexUse::Loaded { .. }), "{r:?}");
        assert_eq!(observe(&e, &ids).await, want);
        assert!(
            !dir.path().join(TMP).exists(),
            "the open removes the old one"
        );
    });
}

/// A segment retention drops becomes a later segment: its file is renamed to a spare and
/// zeroed in place (no allocation, nothing freed), and the log reopens to the same state.
#[test]
fn dropped_segments_are_reused_as_spares() {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    let dir = tempdir();
    let clock = ManualClock::new(T0);
    let rt = rt();
    let ino = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.ino());
    let ids = rt.block_on(async {
        let e = open(dir.path(), &clock);
        let ids = populate(&e, 2).await;
        // Inode -> the segment it was first seen as.
        let mut seen: HashMap<u64, String> = HashMap::new();
        let mut reused = None;
        for _ in 0..400 {
            churn(&e, 5).await;
            for name in segments(dir.path()) {
                let Ok(i) = ino(&name) else { continue };
                match seen.get(&i) {
                    Some(first) if *first != name => reused = Some((first.clone(), name)),
                    Some(_) => {}
                    None => {
                        seen.insert(i, name);
                    }
                }
            }
            if reused.is_some() {
                break;
            }
        }
        let (was, now) = reused.expect("a dropped segment's file came back as a new segment");
        assert!(was < now, "{was} -> {now}");
        e.close();
        ids
    });
    let want = observe_replay(dir.path(), &clock, &ids);
    rt.block_on(async {
        let e = open(dir.path(), &clock);
        assert!(matches!(e.recovery_report().index, IndexUse::Loaded { .. }));
        assert_eq!(observe(&e, &ids).await, want);
    });
}
