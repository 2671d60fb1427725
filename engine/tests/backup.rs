//! Hot backup: the snapshot pin holds retention back, the cut is exactly the state at the
//! snapshot instant, and restore verifies every checksum.

mod common;

use std::path::Path;

use engine::backup::{self, BackupError, BackupPart};
use engine::{Engine, EngineConfig, NewMessage, QueueKey, ReserveOptions, SegmentId, SyncPolicy};

const SEGMENT_BYTES: u64 = 1 << 20;
const BODY_BYTES_MAX: u32 = 256;

fn open(dir: &Path) -> Engine {
    let mut c = EngineConfig::new(dir);
    c.segment_bytes = SEGMENT_BYTES;
    c.body_bytes_max = BODY_BYTES_MAX;
    c.sync = SyncPolicy::Never;
    Engine::open(c).expect("open")
}

fn key(name: &str) -> QueueKey {
    QueueKey::new("p", name)
}

fn batch(tag: usize) -> Vec<NewMessage<'static>> {
    (0..100)
        .map(|i| NewMessage {
            body: format!("{tag:06}-{i:03}-{}", "x".repeat(230))
                .into_bytes()
                .into(),
            ..Default::default()
        })
        .collect()
}

/// The started segment files (not the one named ahead of the next roll).
fn segment_files(dir: &Path) -> Vec<SegmentId> {
    let mut v: Vec<SegmentId> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| SegmentId::from_file_name(e.expect("entry").file_name().to_str()?))
        .filter(|id| common::is_started_segment(&dir.join(id.file_name())))
        .collect();
    v.sort();
    v
}

/// Fills several segments with messages and clears them, so the leading segments are dead
/// and retention may drop them; leaves one live message in `keep`.
async fn dead_segments(e: &Engine) {
    for b in 0..160 {
        e.post(&key("churn"), &batch(b), true).await.expect("post");
    }
    e.clear(&key("churn")).await.expect("clear");
    e.post(&key("keep"), &batch(999)[..1], true)
        .await
        .expect("post");
}

#[tokio::test]
async fn retention_does_not_delete_pinned_segments_until_the_snapshot_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path());
    dead_segments(&e).await;
    let before = segment_files(dir.path());
    assert!(
        before.len() >= 4,
        "the load spans several segments: {before:?}"
    );

    let snap = e.snapshot().await.expect("snapshot");
    assert_eq!(snap.header().segment_count as usize, before.len());
    let mut dropped = 0;
    for _ in 0..10 {
        dropped += e.maintain().expect("maintain").segments_dropped;
    }
    assert!(
        dropped >= 2,
        "retention gave up the dead segments: {dropped}"
    );
    // Writes go on (and are durable) while the snapshot is held.
    e.post(&key("keep"), &batch(1000), true)
        .await
        .expect("post");
    e.sync().await.expect("sync");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let during = segment_files(dir.path());
    for s in &before {
        assert!(during.contains(s), "pinned segment {s:?} was deleted");
    }

    let mut file = Vec::new();
    let n = snap.write_to(&mut file).expect("encode");
    assert_eq!(n, file.len() as u64);
    assert_eq!(n, snap.encoded_bytes());
    drop(snap);

    // Released: the held-back drops run.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = segment_files(dir.path());
        if now.len() as u64 + dropped <= during.len() as u64 {
            assert!(!now.contains(&before[0]), "{now:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dropped segments were not deleted after the pin was released: {now:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The backup taken before the drops restores the state at its cut: one message.
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("restored");
    let report = backup::restore(&mut file.as_slice(), &target).expect("restore");
    assert_eq!(segment_files(&target), before);
    let keep = report
        .inspection
        .queues
        .iter()
        .find(|q| q.name == "keep")
        .expect("queue keep");
    assert_eq!(keep.size, 1);
    let churn = report
        .inspection
        .queues
        .iter()
        .find(|q| q.name == "churn")
        .expect("queue churn");
    assert_eq!((churn.size, churn.total_messages), (0, 16_000));
    assert_eq!(report.inspection.messages, 1);
    assert_eq!(report.inspection.end, report.header.cut);
}

#[tokio::test]
async fn a_restored_backup_holds_exactly_the_state_at_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path());
    for b in 0..12 {
        e.post(&key("a"), &batch(b), true).await.expect("post");
    }
    let reserved = e
        .reserve(
            &key("a"),
            ReserveOptions {
                n: 3,
                timeout_s: 3600,
                ..Default::default()
            },
        )
        .await
        .expect("reserve");
    e.delete(&key("a"), reserved[0].id, reserved[0].reservation_id)
        .await
        .expect("delete");
    let at_cut = e.queue_info(&key("a")).await.expect("info");
    let snap = e.snapshot().await.expect("snapshot");
    // Changes after the cut are not in the backup.
    e.post(&key("a"), &batch(100), true).await.expect("post");
    e.post(&key("later"), &batch(101), true)
        .await
        .expect("post");
    e.delete(&key("a"), reserved[1].id, reserved[1].reservation_id)
        .await
        .expect("delete");
    let mut file = Vec::new();
    snap.write_to(&mut file).expect("encode");
    drop(snap);

    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("r");
    let report = backup::restore(&mut file.as_slice(), &target).expect("restore");
    assert_eq!(
        report.inspection.queues.len(),
        1,
        "queue `later` is after the cut"
    );
    let r = open(&target);
    let got = r.queue_info(&key("a")).await.expect("info");
    assert_eq!(
        (got.size, got.reserved, got.total_messages),
        (at_cut.size, at_cut.reserved, at_cut.total_messages)
    );
    assert_eq!((got.size, got.reserved), (1199, 2));
    assert!(r.get(&key("a"), reserved[0].id).await.is_err());
    let m = r
        .get(&key("a"), reserved[1].id)
        .await
        .expect("reserved message");
    assert_eq!(m.body, reserved[1].body);
    assert_eq!(m.reservation.map(|x| x.0), reserved[1].reservation_id);
    // The restored log continues: new writes after the cut land and survive a reopen.
    r.post(&key("a"), &batch(7), true).await.expect("post");
    drop(r);
    let r = open(&target);
    assert_eq!(r.queue_info(&key("a")).await.expect("info").size, 1299);
}

/// `file` (a one-segment backup) with the byte `at` of its segment data flipped and every
/// checksum recomputed to match.
fn reseal_with_damage(file: &[u8], at: usize) -> Vec<u8> {
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
    let mut f = file.to_vec();
    assert_eq!(u32_at(&f, 12), 1, "one segment");
    let entry = backup::BACKUP_HEADER_BYTES;
    let data = entry + backup::ENTRY_HEADER_BYTES;
    let len = u64::from_le_bytes(f[entry + 12..entry + 20].try_into().expect("8")) as usize;
    assert!(at < len);
    f[data + at] ^= 0x10;
    let crc = crc32fast::hash(&f[data..data + len]);
    f[data + len..data + len + 4].copy_from_slice(&crc.to_le_bytes());
    let trailer = f.len() - backup::TRAILER_BYTES;
    let crc = crc32fast::hash(&f[..trailer]);
    f[trailer + 8..trailer + 12].copy_from_slice(&crc.to_le_bytes());
    f
}

/// Restores `file` into a directory that does not exist yet, expecting a failure; returns
/// the error and what is left of the directory (`None`: it is gone, as it should be).
fn restore_err(file: &[u8]) -> (BackupError, Option<Vec<String>>) {
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("r");
    let err = backup::restore(&mut &file[..], &target).expect_err("restore must fail");
    (err, target.exists().then(|| dir_names(&target)))
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn restore_rejects_damaged_truncated_or_padded_backups_and_non_empty_dirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path());
    for b in 0..5 {
        e.post(&key("a"), &batch(b), true).await.expect("post");
    }
    let snap = e.snapshot().await.expect("snapshot");
    let mut file = Vec::new();
    snap.write_to(&mut file).expect("encode");
    let first = snap.header().first_segment();
    drop(snap);

    // A flipped bit in a segment's data.
    let mut bad = file.clone();
    bad[backup::BACKUP_HEADER_BYTES + backup::ENTRY_HEADER_BYTES + 5000] ^= 0x10;
    let (err, left) = restore_err(&bad);
    assert!(
        matches!(err, BackupError::Checksum(BackupPart::Segment(s)) if s == first),
        "{err}"
    );
    assert_eq!(
        left, None,
        "a failed restore leaves neither files nor the directory it created"
    );

    // In the header.
    let mut bad = file.clone();
    bad[20] ^= 1;
    let (err, _) = restore_err(&bad);
    assert!(
        matches!(err, BackupError::Checksum(BackupPart::Header)),
        "{err}"
    );

    // In the trailer's whole-file checksum.
    let mut bad = file.clone();
    let at = bad.len() - 7;
    bad[at] ^= 1;
    let (err, _) = restore_err(&bad);
    assert!(
        matches!(err, BackupError::Checksum(BackupPart::Trailer)),
        "{err}"
    );

    // Truncated anywhere.
    for cut in [10, 100, file.len() / 2, file.len() - 1] {
        let (err, left) = restore_err(&file[..cut]);
        assert!(matches!(err, BackupError::Truncated(_)), "{cut}: {err}");
        assert_eq!(left, None, "{cut}");
    }

    // Padded.
    let mut padded = file.clone();
    padded.push(0);
    let (err, _) = restore_err(&padded);
    assert!(matches!(err, BackupError::TrailingBytes), "{err}");

    // Not a backup.
    let (err, _) = restore_err(&[7u8; 100]);
    assert!(matches!(err, BackupError::BadMagic), "{err}");

    // A non-empty target.
    let out = tempfile::tempdir().expect("tempdir");
    std::fs::write(out.path().join("something"), b"x").expect("write");
    let err = backup::restore(&mut file.as_slice(), out.path()).expect_err("non-empty");
    assert!(matches!(err, BackupError::NotEmpty(_)), "{err}");

    // The intact file restores.
    let out = tempfile::tempdir().expect("tempdir");
    let report = backup::restore(&mut file.as_slice(), &out.path().join("ok")).expect("restore");
    assert_eq!(report.inspection.messages, 500);

    // Damage under valid checksums (a backup made from a damaged log): every checksum of
    // the file holds, the segments are written and renamed, and strict recovery refuses
    // them. That failure too takes back every file.
    let resealed = reseal_with_damage(&file, 5000);
    let (err, left) = restore_err(&resealed);
    assert!(matches!(err, BackupError::Engine(_)), "{err}");
    assert_eq!(left, None, "after a failed recovery of the restored log");

    // A failed restore into an existing empty directory leaves it empty, and a retry into
    // it with the intact file works.
    let out = tempfile::tempdir().expect("tempdir");
    let target = out.path().join("kept");
    std::fs::create_dir(&target).expect("mkdir");
    let half = file.len() / 2;
    let err = backup::restore(&mut &file[..half], &target).expect_err("truncated");
    assert!(matches!(err, BackupError::Truncated(_)), "{err}");
    assert!(target.is_dir(), "the directory it found stays");
    assert_eq!(dir_names(&target), Vec::<String>::new());
    let report = backup::restore(&mut file.as_slice(), &target).expect("retry");
    assert_eq!(report.inspection.messages, 500);
}
