//! Where the log starts (FORMAT.md, "Where the log starts"), on real files: segment files
//! missing at the start of the log stop the open, with and without the restart index and in
//! every recovery mode; retention's own drops do not; a log written before the start was
//! recorded opens as it did and records it from then on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engine::record::{self, FrameCheck, Kind};
use engine::{
    DeleteItem, Engine, EngineConfig, Error, IndexUse, NewMessage, QueueKey, RecoveryMode,
    SegmentId,
};

const INDEX: &str = "index.idx";

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_bytes = 2 << 20;
    c.body_bytes_max = 4096;
    c
}

fn open(dir: &Path) -> Engine {
    Engine::open(config(dir)).expect("open")
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

fn msgs(n: usize, len: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|i| NewMessage {
            body: vec![b'a' + (i % 26) as u8; len],
            ..Default::default()
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<SegmentId> {
    let mut v: Vec<SegmentId> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|f| SegmentId::from_file_name(f.ok()?.file_name().to_str()?))
        .collect();
    v.sort();
    v
}

/// Every file in `dir` with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|f| {
            let f = f.expect("entry");
            let name = f.file_name().into_string().expect("utf-8 name");
            (name, std::fs::read(f.path()).expect("read"))
        })
        .collect()
}

/// The segment files and the restart index in `dir` with their bytes (not the lock file,
/// nor a preallocated spare, which holds nothing and which an open removes first).
fn log_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut f = files(dir);
    f.retain(|name, _| name.ends_with(".seg") || name.starts_with(INDEX));
    f
}

/// Posts and deletes one batch (60 KB); with `maintain`, lets retention run after it.
async fn churn(e: &Engine, maintain: bool) -> u64 {
    let ids = e.post(&key("churn"), &msgs(20, 3000), true).await.unwrap();
    let items: Vec<DeleteItem> = ids
        .iter()
        .map(|&id| DeleteItem {
            id,
            reservation_id: None,
        })
        .collect();
    e.delete_batch(&key("churn"), &items).await.unwrap();
    if maintain {
        e.maintain().unwrap().segments_dropped
    } else {
        0
    }
}

/// Churn batches that fill a segment, and more (60 KB each in 2 MiB segments).
const BATCHES_PER_SEGMENT_MAX: usize = 100;

/// A log of three segments, without retention: metadata and a queue defined only in the
/// first, and (with `live_in_first`) a message living there.
fn three_segments(dir: &Path, live_in_first: bool) {
    rt().block_on(async {
        let e = open(dir);
        e.put_meta("project/p1", Some(b"{}")).await.unwrap();
        e.upsert_queue(&key("defined"), true, |_| -> Result<_, ()> {
            Ok(Default::default())
        })
        .await
        .unwrap()
        .unwrap();
        if live_in_first {
            e.post(&key("keep"), &msgs(1, 10), true).await.unwrap();
        }
        for _ in 0..3 * BATCHES_PER_SEGMENT_MAX {
            if segments(dir).len() >= 3 {
                break;
            }
            churn(&e, false).await;
        }
        assert_eq!(segments(dir).len(), 3);
        assert_eq!(e.log_start(), SegmentId(1));
        e.close();
    });
}

/// Expects the open of `dir` in `mode` to fail because segments `start` .. `first` (not
/// included) are missing.
fn expect_missing(dir: &Path, mode: RecoveryMode, start: u32, first: u32, what: &str) {
    let mut c = config(dir);
    c.recovery = mode;
    match Engine::open(c) {
        Err(err) => {
            let text = err.to_string();
            let Error::MissingLogStart {
                dir: named,
                log_start,
                first_present,
            } = err
            else {
                panic!("{what}: expected missing segments at the start, got {text}");
            };
            assert_eq!(
                (named.as_path(), log_start, first_present),
                (dir, SegmentId(start), SegmentId(first)),
                "{what}"
            );
            for part in [
                SegmentId(start).file_name(),
                SegmentId(first - 1).file_name(),
                SegmentId(first).file_name(),
                "restore the data directory from a backup".to_string(),
            ] {
                assert!(text.contains(&part), "{what}: {part:?} not in {text:?}");
            }
        }
        Ok(_) => panic!("{what}: expected missing segments at the start, the open succeeded"),
    }
}

#[test]
fn segment_files_missing_at_the_start_stop_the_open_with_and_without_the_index() {
    for live_in_first in [false, true] {
        let dir = tempdir();
        three_segments(dir.path(), live_in_first);
        let whole = files(dir.path());
        assert!(whole.contains_key(INDEX), "a clean close leaves an index");
        for with_index in [true, false] {
            for removed in [1u32, 2] {
                let what = format!(
                    "live in first: {live_in_first}, index: {with_index}, removed: {removed}"
                );
                for n in 1..=removed {
                    std::fs::remove_file(dir.path().join(SegmentId(n).file_name())).unwrap();
                }
                if !with_index {
                    std::fs::remove_file(dir.path().join(INDEX)).unwrap();
                }
                let before = log_files(dir.path());
                for mode in [RecoveryMode::Strict, RecoveryMode::TolerateTail] {
                    expect_missing(dir.path(), mode, 1, removed + 1, &what);
                    // A refused open leaves the log and the index as it found them.
                    assert!(
                        log_files(dir.path()) == before,
                        "{what}: the open changed the directory"
                    );
                }
                for (name, bytes) in &whole {
                    std::fs::write(dir.path().join(name), bytes).unwrap();
                }
            }
        }
        // Whole again: the index is used and nothing was lost.
        rt().block_on(async {
            let e = open(dir.path());
            assert!(
                matches!(e.recovery_report().index, IndexUse::Loaded { .. }),
                "{:?}",
                e.recovery_report()
            );
            assert_eq!(e.meta("project/p1"), Some(b"{}".to_vec()));
            assert!(e.queue_info_now(&key("defined")).is_ok());
            if live_in_first {
                assert_eq!(e.queue_info_now(&key("keep")).unwrap().size, 1);
            }
        });
    }
}

/// The value of the latest log-start record in the segment files (what a replay finds).
fn recorded_start(dir: &Path) -> Option<SegmentId> {
    let mut latest = None;
    for seg in segments(dir) {
        let bytes = std::fs::read(dir.join(seg.file_name())).unwrap();
        for (at, len) in frames(&bytes, seg) {
            let p = &bytes[at + record::FRAME_HEADER_BYTES..at + record::FRAME_HEADER_BYTES + len];
            if let Ok((record::LOG_START_KEY, Some(v))) = record::get_meta(p) {
                latest = record::get_log_start(v);
            }
        }
    }
    latest
}

/// The Meta frames of a segment: (offset, payload length).
fn frames(bytes: &[u8], seg: SegmentId) -> Vec<(usize, usize)> {
    let seed = record::crc_seed(seg.0);
    let mut off = engine::SEGMENT_HEADER_BYTES;
    let mut out = Vec::new();
    while let FrameCheck::Valid { kind, len } = record::check_frame(&bytes[off..], seed, 1 << 24) {
        if kind == Kind::Meta {
            out.push((off, len));
        }
        off += record::FRAME_HEADER_BYTES + len;
    }
    out
}

#[test]
fn retention_records_the_new_start_and_the_open_accepts_its_drops() {
    let dir = tempdir();
    rt().block_on(async {
        let e = open(dir.path());
        e.put_meta("project/p1", Some(b"{}")).await.unwrap();
        let mut dropped = 0;
        for _ in 0..6 * BATCHES_PER_SEGMENT_MAX {
            dropped += churn(&e, true).await;
            if dropped >= 3 {
                break;
            }
        }
        assert!(dropped >= 3, "retention dropped segments: {dropped}");
        assert_eq!(e.log_start(), SegmentId(1 + dropped as u32));
        // Two segments left (a live message keeps the first), so that one can go missing.
        e.post(&key("keep"), &msgs(1, 10), true).await.unwrap();
        for _ in 0..2 * BATCHES_PER_SEGMENT_MAX {
            if e.stats().segments >= 2 {
                break;
            }
            churn(&e, false).await;
        }
        e.close();
    });
    let segs = segments(dir.path());
    let start = segs[0];
    assert!(start > SegmentId(1), "{segs:?}");
    assert_eq!(
        recorded_start(dir.path()),
        Some(start),
        "durable in the log"
    );
    for with_index in [true, false] {
        if !with_index {
            std::fs::remove_file(dir.path().join(INDEX)).unwrap();
        }
        let e = open(dir.path());
        assert_eq!(
            matches!(e.recovery_report().index, IndexUse::Loaded { .. }),
            with_index
        );
        assert_eq!(e.log_start(), start, "index: {with_index}");
        assert_eq!(e.meta("project/p1"), Some(b"{}".to_vec()));
        e.close();
    }
    // The first segment retention kept is as much part of the log as any.
    std::fs::remove_file(dir.path().join(start.file_name())).unwrap();
    expect_missing(
        dir.path(),
        RecoveryMode::Strict,
        start.0,
        start.0 + 1,
        "after retention",
    );
}

/// Segments that retention gave up while a backup pinned them stay on disk if the process
/// stops before the pin is released: an older prefix of the log, before its recorded start.
#[test]
fn segments_left_before_the_recorded_start_by_a_pinned_drop_open_and_go_again() {
    let dir = tempdir();
    let rt = rt();
    let left = rt.block_on(async {
        let e = open(dir.path());
        for _ in 0..3 * BATCHES_PER_SEGMENT_MAX {
            if segments(dir.path()).len() >= 3 {
                break;
            }
            churn(&e, false).await;
        }
        let snap = e.snapshot().await.expect("snapshot");
        let mut dropped = 0;
        for _ in 0..4 {
            dropped += e.maintain().unwrap().segments_dropped;
        }
        assert!(dropped >= 1, "retention gave up segments");
        let start = e.log_start();
        // The process stops with the pin held.
        drop(e);
        drop(snap);
        start
    });
    let segs = segments(dir.path());
    assert_eq!(segs[0], SegmentId(1), "the pinned segments are still there");
    assert!(left > segs[0]);
    rt.block_on(async {
        let e = open(dir.path());
        assert_eq!(e.log_start(), left, "the recorded start stays");
        e.maintain().unwrap();
        e.close();
    });
    assert_eq!(segments(dir.path())[0], left, "dropped again");
    let e = open(dir.path());
    assert_eq!(e.log_start(), left);
}

/// A Meta record of the same length that removes a key nobody set: what stands in for the
/// log-start record in a log made to look written before the start was recorded.
fn stand_in(seed: u32) -> Vec<u8> {
    let pad = "old/".to_string() + &"x".repeat(record::LOG_START_PAYLOAD_BYTES - 3 - 4);
    let mut rec = Vec::new();
    record::frame(&mut rec, seed, Kind::Meta, |b| {
        record::put_meta(b, &pad, None)
    });
    assert_eq!(
        rec.len(),
        record::FRAME_HEADER_BYTES + record::LOG_START_PAYLOAD_BYTES
    );
    rec
}

/// Rewrites every log-start record of the log in `dir` (and removes the restart index,
/// which holds it too), so that the log reads as one written by a build that did not
/// record where the log starts: same bytes otherwise, every record valid.
fn forget_start(dir: &Path) {
    for seg in segments(dir) {
        let path: PathBuf = dir.join(seg.file_name());
        let mut bytes = std::fs::read(&path).unwrap();
        let seed = record::crc_seed(seg.0);
        for (at, len) in frames(&bytes, seg) {
            let p = &bytes[at + record::FRAME_HEADER_BYTES..at + record::FRAME_HEADER_BYTES + len];
            if matches!(record::get_meta(p), Ok((record::LOG_START_KEY, _))) {
                let rec = stand_in(seed);
                bytes[at..at + rec.len()].copy_from_slice(&rec);
            }
        }
        std::fs::write(&path, &bytes).unwrap();
    }
    let _ = std::fs::remove_file(dir.join(INDEX));
    assert_eq!(recorded_start(dir), None);
}

fn copy_dir(from: &Path, to: &Path) {
    for (name, bytes) in files(from) {
        std::fs::write(to.join(name), bytes).unwrap();
    }
}

#[test]
fn a_log_that_records_no_start_opens_as_before_and_records_it_at_the_open() {
    let dir = tempdir();
    let rt = rt();
    // An old log that retention has already shortened: it begins at segment 3 or later.
    rt.block_on(async {
        let e = open(dir.path());
        e.put_meta("project/p1", Some(b"{}")).await.unwrap();
        let mut dropped = 0;
        for _ in 0..6 * BATCHES_PER_SEGMENT_MAX {
            dropped += churn(&e, true).await;
            if dropped >= 2 {
                break;
            }
        }
        // Live messages keep the segment they are in; a second segment after it.
        e.post(&key("keep"), &msgs(3, 10), true).await.unwrap();
        for _ in 0..2 * BATCHES_PER_SEGMENT_MAX {
            if e.stats().segments >= 2 {
                break;
            }
            churn(&e, false).await;
        }
        e.close();
    });
    forget_start(dir.path());
    let segs = segments(dir.path());
    assert!(segs[0] >= SegmentId(3) && segs.len() >= 2, "{segs:?}");

    // Nothing tells such a log's missing first segment from one retention dropped: it
    // opens as it always did (and records the start it finds).
    let short = tempdir();
    copy_dir(dir.path(), short.path());
    std::fs::remove_file(short.path().join(segs[0].file_name())).unwrap();
    let e = open(short.path());
    assert_eq!(e.log_start(), segs[1]);
    drop(e);

    // The whole old log opens as before, and records where it starts.
    rt.block_on(async {
        let e = open(dir.path());
        assert_eq!(e.recovery_report().index, IndexUse::Absent);
        assert_eq!(e.log_start(), segs[0]);
        assert_eq!(e.queue_info_now(&key("keep")).unwrap().size, 3);
        assert_eq!(
            e.meta_with_prefix(""),
            vec![("project/p1".to_string(), b"{}".to_vec())],
            "the engine's own key is not server metadata"
        );
        e.close();
    });
    assert_eq!(recorded_start(dir.path()), Some(segs[0]));
    // From then on its first segment is missed like any other log's.
    for with_index in [true, false] {
        let saved = files(dir.path());
        if !with_index {
            std::fs::remove_file(dir.path().join(INDEX)).unwrap();
        }
        std::fs::remove_file(dir.path().join(segs[0].file_name())).unwrap();
        expect_missing(
            dir.path(),
            RecoveryMode::Strict,
            segs[0].0,
            segs[0].0 + 1,
            &format!("recorded at the open, index: {with_index}"),
        );
        for (name, bytes) in saved {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
    }
    let e = open(dir.path());
    assert_eq!(e.queue_info_now(&key("keep")).unwrap().size, 3);
}

#[test]
fn the_engines_own_metadata_key_is_neither_writable_nor_listed() {
    let dir = tempdir();
    rt().block_on(async {
        let e = open(dir.path());
        assert!(matches!(
            e.put_meta(record::LOG_START_KEY, Some(&[9, 0, 0, 0])).await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            e.put_meta("\0anything", None).await,
            Err(Error::Invalid(_))
        ));
        e.put_meta("token/t", Some(b"1")).await.unwrap();
        assert_eq!(e.meta(record::LOG_START_KEY), None);
        assert_eq!(
            e.meta_with_prefix(""),
            vec![("token/t".to_string(), b"1".to_vec())]
        );
        assert_eq!(e.log_start(), SegmentId(1));
    });
}
