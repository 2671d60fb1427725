//! Recovery on real files: torn tails are cut at the last whole record, any other damage is
//! `Error::Corruption` naming the file and the offset of the damaged record.

use std::path::{Path, PathBuf};

use engine::{
    CorruptionKind, Engine, EngineConfig, Error, MessageId, NewMessage, QueueKey, RecoveryMode,
};

const SEG1: &str = "0000000000000001.seg";

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::new(dir);
    c.segment_bytes = 2 << 20;
    c.body_bytes_max = 4096;
    c
}

fn tempdir() -> tempfile::TempDir {
    // tmpfs when there is one: hundreds of reopens with fsyncs.
    if Path::new("/dev/shm").is_dir()
        && let Ok(d) = tempfile::tempdir_in("/dev/shm")
    {
        return d;
    }
    tempfile::tempdir().expect("tempdir")
}

fn key() -> QueueKey {
    QueueKey::new("p", "q")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Frame starts of a segment's records and the end of the written data.
fn frames(bytes: &[u8]) -> (Vec<usize>, usize) {
    let mut off = engine::SEGMENT_HEADER_BYTES;
    let mut out = Vec::new();
    while off + 12 <= bytes.len() && bytes[off..off + 12].iter().any(|&b| b != 0) {
        out.push(off);
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        off += 12 + len;
    }
    (out, off)
}

/// Posts `n` one-message records of `len` bytes and closes. Returns the ids.
fn write_posts(dir: &Path, n: usize, len: usize) -> Vec<MessageId> {
    rt().block_on(async {
        let e = Engine::open(config(dir)).expect("open");
        let mut ids = Vec::new();
        for i in 0..n {
            let mut body = format!("msg-{i}-").into_bytes();
            body.resize(len, b'a' + (i % 26) as u8);
            ids.push(
                e.post(
                    &key(),
                    &[NewMessage {
                        body: body.into(),
                        ..Default::default()
                    }],
                    true,
                )
                .await
                .expect("post")[0],
            );
        }
        e.close();
        ids
    })
}

/// Ids present after opening `dir` with `mode`, or the open error.
fn present(dir: &Path, mode: RecoveryMode, ids: &[MessageId]) -> Result<Vec<bool>, Error> {
    rt().block_on(async {
        let mut c = config(dir);
        c.recovery = mode;
        let e = Engine::open(c)?;
        e.check_invariants();
        let mut out = Vec::new();
        for id in ids {
            out.push(match e.get(&key(), *id).await {
                Ok(_) => true,
                Err(Error::MessageNotFound) => false,
                Err(err) => panic!("get {id}: {err}"),
            });
        }
        let size = e.queue_info(&key()).await.map(|i| i.size).unwrap_or(0);
        assert_eq!(
            size,
            out.iter().filter(|&&p| p).count() as u64,
            "size matches the messages found"
        );
        e.close();
        Ok(out)
    })
}

fn seg_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Removes the restart index a clean close leaves, so the next open checks the whole log
/// (with a valid index, records before its position are not read again).
fn forget_index(dir: &Path) {
    std::fs::remove_file(dir.join("index.idx")).expect("a clean close left an index");
}

#[test]
fn torn_tails_are_cut_at_the_last_whole_record() {
    let dir = tempdir();
    let ids = write_posts(dir.path(), 8, 40);
    let path = seg_path(dir.path(), SEG1);
    let pristine = std::fs::read(&path).expect("read");
    let (starts, end) = frames(&pristine);
    // A queue definition, then one post record per message.
    assert_eq!(starts.len(), 1 + ids.len());
    let post_starts = &starts[1..];
    let from = post_starts[post_starts.len() - 2];
    let mut checked = 0;
    for cut in from..end {
        for fill in [0x00u8, 0xFF, 0x5A] {
            let mut b = pristine.clone();
            b[cut..end].fill(fill);
            std::fs::write(&path, &b).expect("write");
            let got = present(dir.path(), RecoveryMode::Strict, &ids)
                .unwrap_or_else(|e| panic!("cut at {cut} with {fill:#x}: {e}"));
            // Message i is in the record at post_starts[i]; it survives iff the record ends
            // at or before the cut.
            let want: Vec<bool> = (0..ids.len())
                .map(|i| post_starts.get(i + 1).copied().unwrap_or(end) <= cut)
                .collect();
            assert_eq!(got, want, "cut at {cut} with {fill:#x}");
            // The torn bytes were zeroed: the file now ends at the cut record.
            let after = std::fs::read(&path).expect("read");
            let kept = post_starts
                .iter()
                .copied()
                .chain([end])
                .filter(|&s| s <= cut)
                .max()
                .unwrap_or(from);
            assert!(
                after[kept..end].iter().all(|&x| x == 0),
                "cut at {cut}: the tail is zeroed"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} cuts checked");
}

#[test]
fn bit_flips_before_valid_records_are_corruption_at_the_record() {
    let dir = tempdir();
    let ids = write_posts(dir.path(), 6, 30);
    let path = seg_path(dir.path(), SEG1);
    let pristine = std::fs::read(&path).expect("read");
    let (starts, _) = frames(&pristine);
    // The record of message 2 is followed by three valid records.
    let (rec, rec_end) = (starts[3], starts[4]);
    forget_index(dir.path());
    for byte in rec..rec_end {
        let bit = byte % 8;
        let mut b = pristine.clone();
        b[byte] ^= 1 << bit;
        std::fs::write(&path, &b).expect("write");
        match present(dir.path(), RecoveryMode::Strict, &ids) {
            Err(Error::Corruption {
                path: p,
                offset,
                kind,
            }) => {
                assert_eq!(p, path, "flip at {byte}:{bit}");
                assert_eq!(offset, rec as u64, "flip at {byte}:{bit}: {kind}");
            }
            other => panic!("flip at {byte}:{bit}: expected corruption, got {other:?}"),
        }
        // The file is untouched by a refused open.
        assert_eq!(std::fs::read(&path).expect("read"), b);
    }
    // Tolerate-tail opens it, cutting at the damaged record.
    let mut b = pristine.clone();
    b[rec + 20] ^= 0x10;
    std::fs::write(&path, &b).expect("write");
    let got = present(dir.path(), RecoveryMode::TolerateTail, &ids).expect("tolerate-tail opens");
    assert_eq!(got, vec![true, true, false, false, false, false]);
    // And the cut is durable: a strict open now succeeds with the same content.
    assert_eq!(
        present(dir.path(), RecoveryMode::Strict, &ids).expect("strict reopen"),
        got
    );
}

/// Writes enough to fill `segments` segments and returns the segment file names.
fn write_segments(dir: &Path, segments: usize) -> (Vec<MessageId>, Vec<String>) {
    let ids = rt().block_on(async {
        let e = Engine::open(config(dir)).expect("open");
        let mut ids = Vec::new();
        let mut n = 0;
        while e.stats().segments < segments as u64 {
            let msgs: Vec<_> = (0..100)
                .map(|i| NewMessage {
                    body: vec![(n + i) as u8; 4000].into(),
                    ..Default::default()
                })
                .collect();
            ids.extend(e.post(&key(), &msgs, true).await.expect("post"));
            n += 1;
        }
        e.close();
        ids
    });
    let mut segs: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .filter_map(|f| f.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    segs.sort();
    assert_eq!(segs.len(), segments);
    (ids, segs)
}

#[test]
fn damage_in_a_sealed_segment_is_corruption_even_in_its_last_record() {
    let dir = tempdir();
    let (ids, segs) = write_segments(dir.path(), 2);
    let path = seg_path(dir.path(), &segs[0]);
    let pristine = std::fs::read(&path).expect("read");
    let (starts, _) = frames(&pristine);
    forget_index(dir.path());
    for &rec in [starts[1], *starts.last().expect("records")].iter() {
        for delta in [0usize, 5, 13, 200] {
            let mut b = pristine.clone();
            b[rec + delta] ^= 0x04;
            std::fs::write(&path, &b).expect("write");
            match present(dir.path(), RecoveryMode::Strict, &ids) {
                Err(Error::Corruption {
                    path: p, offset, ..
                }) => {
                    assert_eq!(
                        (p, offset),
                        (path.clone(), rec as u64),
                        "flip at {rec}+{delta}"
                    );
                }
                other => panic!("flip at {rec}+{delta}: expected corruption, got {other:?}"),
            }
            // Tolerating a torn tail does not extend to sealed segments.
            assert!(matches!(
                present(dir.path(), RecoveryMode::TolerateTail, &ids),
                Err(Error::Corruption { .. })
            ));
        }
    }
    std::fs::write(&path, &pristine).expect("write");
    assert_eq!(
        present(dir.path(), RecoveryMode::Strict, &ids).expect("pristine opens"),
        vec![true; ids.len()]
    );
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let dir = tempdir();
    let (ids, segs) = write_segments(dir.path(), 3);
    std::fs::remove_file(seg_path(dir.path(), &segs[1])).expect("remove");
    match present(dir.path(), RecoveryMode::Strict, &ids) {
        Err(Error::Corruption { path, offset, kind }) => {
            assert_eq!(
                (path, offset, kind),
                (
                    seg_path(dir.path(), &segs[2]),
                    0,
                    CorruptionKind::MissingSegment
                )
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn the_recovery_report_names_a_torn_tail_and_a_clean_close_leaves_none() {
    let dir = tempdir();
    write_posts(dir.path(), 3, 40);
    let open_report = |dir: &Path| {
        rt().block_on(async {
            let e = Engine::open(config(dir)).expect("open");
            let r = e.recovery_report();
            e.close();
            r
        })
    };
    let clean = open_report(dir.path());
    assert_eq!((clean.segments, clean.torn_tail), (1, None));
    let path = seg_path(dir.path(), SEG1);
    let mut b = std::fs::read(&path).expect("read");
    let (starts, end) = frames(&b);
    let last = *starts.last().expect("a record");
    b[last + 5..end].fill(0xFF);
    std::fs::write(&path, &b).expect("write");
    let torn = open_report(dir.path());
    assert_eq!(torn.torn_tail, Some((engine::SegmentId(1), last as u64)));
    // The tail was zeroed: the next open finds nothing to repair.
    assert_eq!(open_report(dir.path()).torn_tail, None);
}

/// The log names the next segment's file ahead of the roll to it, and the file holds zeros
/// until then: a crash before the roll leaves it unstarted. The open removes it and loses
/// nothing. A zeroed header with records after it is damage, not an unstarted segment.
#[test]
fn an_unstarted_last_segment_goes_but_a_zeroed_header_before_records_is_corruption() {
    let dir = tempdir();
    let (ids, segs) = write_segments(dir.path(), 2);
    let unstarted = seg_path(dir.path(), "0000000000000003.seg");
    std::fs::write(&unstarted, vec![0u8; 2 << 20]).expect("write");
    rt().block_on(async {
        let e = Engine::open(config(dir.path())).expect("opens");
        assert_eq!(e.recovery_report().unstarted_removed, 1);
        e.close();
    });
    assert_eq!(
        present(dir.path(), RecoveryMode::Strict, &ids).expect("opens"),
        vec![true; ids.len()]
    );
    assert!(
        !unstarted.exists(),
        "removed on open; a clean close names no segment ahead"
    );

    let last = seg_path(dir.path(), &segs[1]);
    let pristine = std::fs::read(&last).expect("read");
    let mut zeroed = pristine.clone();
    zeroed[..engine::SEGMENT_HEADER_BYTES].fill(0);
    std::fs::write(&last, &zeroed).expect("write");
    match present(dir.path(), RecoveryMode::Strict, &ids) {
        Err(Error::Corruption { path, offset, kind }) => {
            assert_eq!(
                (path, offset, kind),
                (last.clone(), 0, CorruptionKind::BadMagic)
            );
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // An operator who tolerates a torn tail cuts the last segment whole (with no restart
    // index naming it: one that does makes the open fail on a missing segment).
    forget_index(dir.path());
    rt().block_on(async {
        let mut c = config(dir.path());
        c.recovery = RecoveryMode::TolerateTail;
        let e = Engine::open(c).expect("tolerated");
        let report = e.recovery_report();
        assert_eq!(
            (report.damaged_header_cut, report.unstarted_removed),
            (Some(engine::SegmentId(2)), 0)
        );
        e.close();
    });
    let got = present(dir.path(), RecoveryMode::Strict, &ids).expect("opens");
    let kept = got.iter().take_while(|&&p| p).count();
    assert!(kept > 0 && kept < ids.len(), "{kept} of {}", ids.len());
    assert!(got[kept..].iter().all(|&p| !p), "a prefix is kept");
}
