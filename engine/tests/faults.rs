//! Fault injection: the Nth write / fdatasync / create-or-rename fails during a workload.
//! Every call either succeeds (and its effect is in the durable image) or fails; after the
//! first failure every call fails; the durable image and crash images reopen consistently
//! with every acknowledged operation. Never a false ack.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use engine::testing::{FaultOp, SimStorage};
use engine::{
    DeleteItem, Engine, EngineConfig, Error, ManualClock, MessageId, NewMessage, QueueKey,
    ReserveOptions,
};

const T0: u64 = 1_700_000_000_000;
const ROUNDS: usize = 24;

fn config() -> EngineConfig {
    let mut c = EngineConfig::new("/sim");
    c.segment_bytes = 2 << 20;
    c.body_bytes_max = 4096;
    c
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn open(storage: &SimStorage, clock: &ManualClock) -> engine::Result<Engine> {
    Engine::open_with(config(), Arc::new(storage.clone()), Arc::new(clock.clone()))
}

fn key() -> QueueKey {
    QueueKey::new("p", "q")
}

#[derive(Default)]
struct Acked {
    posted: BTreeMap<MessageId, Vec<u8>>,
    deleted: BTreeSet<MessageId>,
    /// Calls made after the first failure (all must have failed).
    calls_after_failure: usize,
    first_failure: Option<String>,
}

impl Acked {
    /// Records a call's outcome; returns the value if it succeeded.
    fn note<T>(&mut self, r: engine::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                assert!(
                    self.first_failure.is_none(),
                    "a call succeeded after a failure: {:?}",
                    self.first_failure
                );
                Some(v)
            }
            Err(e) => {
                if self.first_failure.is_some() {
                    self.calls_after_failure += 1;
                    assert!(
                        matches!(e, Error::Failed(_)),
                        "after a failure every call is Failed, got {e}"
                    );
                } else {
                    assert!(
                        matches!(e, Error::Failed(_) | Error::Io { .. }),
                        "unexpected error {e}"
                    );
                    self.first_failure = Some(e.to_string());
                }
                None
            }
        }
    }
}

fn body(round: usize, i: usize, len: usize) -> Vec<u8> {
    let mut b = format!("r{round}-m{i}-").into_bytes();
    b.resize(len, (round * 7 + i) as u8);
    b
}

/// Posts, reserves and deletes; every 4th round a bulk post that fills segments.
async fn workload(e: &Engine, acked: &mut Acked) {
    for round in 0..ROUNDS {
        let msgs: Vec<NewMessage> = if round % 4 == 3 {
            (0..100)
                .map(|i| NewMessage {
                    body: body(round, i, 4000).into(),
                    ..Default::default()
                })
                .collect()
        } else {
            (0..3)
                .map(|i| NewMessage {
                    body: body(round, i, 100).into(),
                    ..Default::default()
                })
                .collect()
        };
        if let Some(ids) = acked.note(e.post(&key(), &msgs, true).await) {
            for (id, m) in ids.into_iter().zip(msgs) {
                acked.posted.insert(id, m.body.into_owned());
            }
        }
        let opts = ReserveOptions {
            n: 2,
            ..Default::default()
        };
        if let Some(got) = acked.note(e.reserve(&key(), opts).await) {
            for m in &got {
                assert_eq!(Some(&m.body), acked.posted.get(&m.id), "reserved body");
            }
            if let Some(m) = got.first()
                && acked
                    .note(e.delete(&key(), m.id, m.reservation_id).await)
                    .is_some()
            {
                acked.deleted.insert(m.id);
            }
        }
        let popped = acked.note(
            e.reserve(
                &key(),
                ReserveOptions {
                    n: 1,
                    delete: true,
                    ..Default::default()
                },
            )
            .await,
        );
        if let Some(got) = popped {
            acked.deleted.extend(got.iter().map(|m| m.id));
        }
    }
}

/// Reopens `image` and checks it against the acknowledged operations.
async fn verify(image: &SimStorage, clock: &ManualClock, acked: &Acked, what: &str) {
    let e = open(image, clock).unwrap_or_else(|err| panic!("{what}: reopen failed: {err}"));
    e.check_invariants();
    match e.queue_info(&key()).await {
        Ok(info) => {
            // The unacknowledged post, if any, may have landed too.
            assert!(
                info.total_messages >= acked.posted.len() as u64,
                "{what}: total_messages"
            );
        }
        Err(Error::QueueNotFound) => assert!(acked.posted.is_empty(), "{what}: the queue is gone"),
        Err(err) => panic!("{what}: {err}"),
    }
    let mut missing = 0;
    for (id, b) in &acked.posted {
        let got = e.get(&key(), *id).await;
        if acked.deleted.contains(id) {
            assert!(
                matches!(got, Err(Error::MessageNotFound)),
                "{what}: acked delete of {id} was lost"
            );
        } else {
            match got {
                Ok(v) => assert_eq!(&v.body, b, "{what}: body of {id}"),
                // The one call that failed (a delete or a popping reserve of one message) may
                // have reached the disk before its fsync failed. Nothing after it is written.
                Err(Error::MessageNotFound) => missing += 1,
                Err(err) => panic!("{what}: get {id}: {err}"),
            }
        }
    }
    assert!(
        missing <= 1 && (missing == 0 || acked.first_failure.is_some()),
        "{what}: {missing} acked posts lost"
    );
    e.close();
}

/// How many operations of each kind a clean run makes after open.
fn clean_counts() -> (u64, u64, u64) {
    let rt = rt();
    rt.block_on(async {
        let storage = SimStorage::new();
        let clock = ManualClock::new(T0);
        let e = open(&storage, &clock).expect("open");
        let before = storage.op_counts();
        let mut acked = Acked::default();
        workload(&e, &mut acked).await;
        assert!(acked.first_failure.is_none());
        assert_eq!(acked.posted.len(), ROUNDS / 4 * 100 + ROUNDS * 3 / 4 * 3);
        let after = storage.op_counts();
        e.close();
        verify(&storage.durable_image(), &clock, &acked, "clean").await;
        (after.0 - before.0, after.1 - before.1, after.2 - before.2)
    })
}

fn run_fault(op: FaultOp, n: u64) -> bool {
    let rt = rt();
    rt.block_on(async {
        let storage = SimStorage::new();
        let clock = ManualClock::new(T0);
        let e = open(&storage, &clock).expect("open");
        storage.fail_nth(op, n);
        let mut acked = Acked::default();
        workload(&e, &mut acked).await;
        let failed = acked.first_failure.is_some();
        if failed {
            assert!(
                e.is_failed(),
                "{op:?} #{n}: a failed call leaves the engine stopped"
            );
            let again = e
                .post(
                    &key(),
                    &[NewMessage {
                        body: b"x".as_slice().into(),
                        ..Default::default()
                    }],
                    true,
                )
                .await;
            assert!(
                matches!(again, Err(Error::Failed(_))),
                "{op:?} #{n}: a post after the failure"
            );
        }
        let fired = storage.faults_fired() > 0;
        let what = format!("{op:?} #{n}");
        storage.clear_faults();
        // The durable image (no unsynced write kept) and torn crash images.
        verify(
            &storage.durable_image(),
            &clock,
            &acked,
            &format!("{what} durable"),
        )
        .await;
        for seed in 0..3 {
            verify(
                &storage.crash_image(seed * 7919 + n),
                &clock,
                &acked,
                &format!("{what} crash {seed}"),
            )
            .await;
        }
        drop(e);
        fired
    })
}

fn sweep(op: FaultOp, total: u64) {
    assert!(total > 0, "{op:?}: the clean run made no such operation");
    // Every point at the start, then a stride: keeps the run short in debug builds.
    let points: Vec<u64> = (1..=total.min(40)).chain((41..=total).step_by(5)).collect();
    let mut fired = 0;
    for &n in &points {
        fired += run_fault(op, n) as usize;
    }
    // Background allocation makes counts vary a little, but most points must be reached.
    assert!(
        fired + 1 >= points.len() * 8 / 10,
        "{op:?}: only {fired} of {} faults fired",
        points.len()
    );
}

#[test]
fn every_failed_write_stops_the_engine_without_false_acks() {
    let (writes, _, _) = clean_counts();
    sweep(FaultOp::Write, writes);
}

#[test]
fn every_failed_fsync_stops_the_engine_without_false_acks() {
    let (_, syncs, _) = clean_counts();
    sweep(FaultOp::Sync, syncs);
}

#[test]
fn failed_creates_and_renames_stop_the_engine_without_false_acks() {
    let (_, _, metas) = clean_counts();
    sweep(FaultOp::Meta, metas);
}

#[test]
fn a_failed_write_is_never_acknowledged() {
    let rt = rt();
    rt.block_on(async {
        let storage = SimStorage::new();
        let clock = ManualClock::new(T0);
        let e = open(&storage, &clock).expect("open");
        let msg = [NewMessage {
            body: b"kept".as_slice().into(),
            ..Default::default()
        }];
        let kept = e.post(&key(), &msg, true).await.expect("post")[0];
        // The allocator's spare is made and named (its sync would take the fault).
        assert!(wait_for_file(&storage, "0000000000000002.seg"));
        storage.fail_nth(FaultOp::Sync, 1);
        let lost = [NewMessage {
            body: b"lost".as_slice().into(),
            ..Default::default()
        }];
        assert!(matches!(
            e.post(&key(), &lost, true).await,
            Err(Error::Failed(_))
        ));
        assert!(matches!(
            e.post(&key(), &msg, true).await,
            Err(Error::Failed(_))
        ));
        assert!(matches!(
            e.reserve(&key(), ReserveOptions::default()).await,
            Err(Error::Failed(_))
        ));
        assert!(e.is_failed());
        let image = storage.durable_image();
        drop(e);
        let e = open(&image, &clock).expect("reopen");
        let info = e.queue_info(&key()).await.expect("info");
        assert_eq!(
            (info.size, info.total_messages),
            (1, 1),
            "only the acknowledged post survives"
        );
        assert_eq!(e.get(&key(), kept).await.expect("get").body, b"kept");
        e.check_invariants();
    });
}

/// Under `SyncPolicy::Never`, retention writes the definitions and metadata of the segment
/// it drops again at the tail, where they are only written to the OS. The segment must not
/// be deleted before they are synced: a power cut right after the deletion would otherwise
/// lose the queue and the metadata with the segment that held them.
#[test]
fn retention_under_sync_never_syncs_what_it_rewrote_before_deleting_a_segment() {
    let storage = SimStorage::new();
    let clock = ManualClock::new(T0);
    let rt = rt();
    rt.block_on(async {
        let mut c = config();
        c.sync = engine::SyncPolicy::Never;
        let e =
            Engine::open_with(c, Arc::new(storage.clone()), Arc::new(clock.clone())).expect("open");
        // Segment 1: the queue's definition and a metadata key, nothing live.
        e.upsert_queue(&key(), true, |_| -> Result<_, ()> {
            Ok(engine::QueueConfig::default())
        })
        .await
        .unwrap()
        .unwrap();
        e.put_meta("project/p", Some(b"{}")).await.unwrap();
        let churn = QueueKey::new("p", "churn");
        let mut dropped = 0;
        for i in 0..400 {
            let msgs: Vec<NewMessage> = (0..20)
                .map(|_| NewMessage {
                    body: vec![b'a' + (i % 26) as u8; 3000].into(),
                    delay_s: 0,
                    meta: Vec::new(),
                })
                .collect();
            let ids = e.post(&churn, &msgs, true).await.unwrap();
            let items: Vec<engine::DeleteItem> = ids
                .iter()
                .map(|&id| engine::DeleteItem {
                    id,
                    reservation_id: None,
                })
                .collect();
            e.delete_batch(&churn, &items).await.unwrap();
            dropped += e.maintain().unwrap().segments_dropped;
            if dropped > 0 {
                break;
            }
        }
        assert!(dropped > 0, "retention dropped the first segment");
        // Let the writer thread run the deletion, then cut the power.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while storage
            .contents(&engine::SegmentId(1).file_name())
            .is_some()
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            storage
                .contents(&engine::SegmentId(1).file_name())
                .is_none(),
            "segment 1 deleted"
        );
        let image = storage.durable_image();
        drop(e);
        let e = open(&image, &clock).expect("reopen");
        assert!(e.queue_info_now(&key()).is_ok(), "the queue survived");
        assert_eq!(e.meta("project/p").as_deref(), Some(&b"{}"[..]));
    });
}

/// Under `SyncPolicy::Never` the log starts write-back of the active segment as it fills,
/// so that a roll's fdatasync does not write out a whole segment while commits wait; and
/// it does so on its writer thread, never on a caller's (an inline commit runs on an async
/// task's thread, which must not block on the device). Under `Always` every group is
/// synced anyway, and there is no write-back to start.
#[test]
fn write_back_is_started_as_segments_fill_on_the_writer_thread_only() {
    for policy in [engine::SyncPolicy::Never, engine::SyncPolicy::Always] {
        let storage = SimStorage::new();
        let clock = ManualClock::new(T0);
        let rt = rt();
        rt.block_on(async {
            let mut c = config();
            c.segment_bytes = 32 << 20;
            c.sync = policy;
            let e = Engine::open_with(c, Arc::new(storage.clone()), Arc::new(clock.clone()))
                .expect("open");
            let q = QueueKey::new("p", "fill");
            // 12 MiB, in posts that each commit inline when the log is idle.
            for i in 0..200 {
                let msgs: Vec<NewMessage> = (0..16)
                    .map(|_| NewMessage {
                        body: vec![b'a' + (i % 26) as u8; 4000].into(),
                        delay_s: 0,
                        meta: Vec::new(),
                    })
                    .collect();
                e.post(&q, &msgs, true).await.unwrap();
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while policy == engine::SyncPolicy::Never
                && storage.write_back_threads().is_empty()
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let threads = storage.write_back_threads();
            if policy == engine::SyncPolicy::Never {
                // One call may cover several inline commits' worth: the writer thread runs
                // when it is scheduled.
                assert!(!threads.is_empty(), "{threads:?}");
                assert!(
                    threads.iter().all(|t| t == "ferromq-log-writer"),
                    "{threads:?}"
                );
            } else {
                assert!(threads.is_empty(), "{threads:?}");
            }
            e.close();
        });
    }
}

/// The allocator names the next segment's file ahead of the roll to it, so that the roll
/// only writes: no rename and no directory sync while commits wait. Shown by a rename or
/// create that fails once the name is taken: the roll goes through (the allocator's own
/// next spare is what fails, which stops nothing). A crash before the roll leaves the
/// named file unstarted, and the image reopens as if it were not there.
#[test]
fn the_next_segment_is_named_ahead_and_the_roll_renames_nothing() {
    let storage = SimStorage::new();
    let clock = ManualClock::new(T0);
    let rt = rt();
    rt.block_on(async {
        let e = open(&storage, &clock).expect("open");
        let next = "0000000000000002.seg".to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !storage.file_names().contains(&next) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            storage.file_names().contains(&next),
            "{:?}",
            storage.file_names()
        );

        let image = storage.crash_image(1);
        let reopened = open(&image, &clock).expect("an unstarted segment reopens");
        assert_eq!(reopened.stats().segments, 1);
        reopened.close();

        storage.fail_nth(FaultOp::Meta, 1);
        let mut acked = Acked::default();
        // 3 MiB: past the first segment's 2 MiB.
        for i in 0..48 {
            let msgs: Vec<NewMessage> = (0..16)
                .map(|j| NewMessage {
                    body: body(i, j, 4000).into(),
                    ..Default::default()
                })
                .collect();
            let ids = e
                .post(&key(), &msgs, true)
                .await
                .expect("post across the roll");
            for (id, m) in ids.into_iter().zip(msgs) {
                acked.posted.insert(id, m.body.into_owned());
            }
        }
        assert!(e.stats().segments >= 2, "rolled");
        assert!(!e.is_failed());
        storage.clear_faults();
        verify(&storage.durable_image(), &clock, &acked, "durable").await;
        for seed in 0..3 {
            verify(&storage.crash_image(seed), &clock, &acked, "crash").await;
        }
        e.close();
    });
}

fn open_as(
    storage: &SimStorage,
    sync: engine::SyncPolicy,
    recovery: engine::RecoveryMode,
) -> engine::Result<Engine> {
    let mut c = config();
    c.sync = sync;
    c.recovery = recovery;
    Engine::open_with(c, Arc::new(storage.clone()), Arc::new(ManualClock::new(T0)))
}

fn batch_of(i: usize) -> Vec<NewMessage<'static>> {
    (0..16)
        .map(|j| NewMessage {
            body: body(i, j, 4000).into(),
            ..Default::default()
        })
        .collect()
}

/// Waits (up to 10 s) until `name` exists.
fn wait_for_file(storage: &SimStorage, name: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !storage.file_names().iter().any(|n| n == name) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

/// Under `Never` and `IntervalMs` nothing syncs the new segment for a long while after a
/// roll. Its header is synced at the roll all the same: the next file may be named only
/// after it (two unstarted files at the end would make the first one damage), and a
/// restart index, which covers written records under these policies, must not name a
/// segment whose header a power cut could take.
#[test]
fn after_a_roll_under_never_and_interval_a_power_cut_image_opens() {
    use engine::{RecoveryMode, SyncPolicy};
    for policy in [SyncPolicy::Never, SyncPolicy::IntervalMs(10_000)] {
        let storage = SimStorage::new();
        let e = open_as(&storage, policy, RecoveryMode::Strict).expect("open");
        rt().block_on(async {
            let mut i = 0;
            while e.stats().segments < 2 {
                e.post(&key(), &batch_of(i), true).await.expect("post");
                i += 1;
            }
            for k in 0..3 {
                e.post(&key(), &batch_of(1000 + k), true)
                    .await
                    .expect("post");
            }
        });
        assert!(
            wait_for_file(&storage, "0000000000000003.seg"),
            "{policy:?}: the next file is named once the roll's header is synced: {:?}",
            storage.file_names()
        );
        for mode in [RecoveryMode::Strict, RecoveryMode::TolerateTail] {
            let r = open_as(&storage.durable_image(), policy, mode);
            assert!(r.is_ok(), "{policy:?} {mode:?}: {:?}", r.err());
        }
        // A clean close writes an index covering segment 2 (not synced under `Never`).
        e.close();
        let r = open_as(&storage.durable_image(), policy, RecoveryMode::Strict);
        assert!(r.is_ok(), "{policy:?} after close: {:?}", r.err());
    }
}

/// The roll writes the new segment's header and first records into a file already named:
/// a crash can tear that write inside the header. Such a file is unstarted, not damage.
#[test]
fn a_torn_header_of_the_segment_rolled_to_is_an_unstarted_segment() {
    use engine::{RecoveryMode, SyncPolicy};
    let seg2 = "0000000000000002.seg";
    for _attempt in 0..5 {
        let storage = SimStorage::new();
        let e = open_as(&storage, SyncPolicy::Always, RecoveryMode::Strict).expect("open");
        // The queue first: its definition and the first post may commit apart.
        rt().block_on(e.post(&key(), &batch_of(0), true))
            .expect("post");
        assert!(wait_for_file(&storage, seg2));
        // Fail the commit's sync that would cover the roll's write: the header stays
        // unsynced, and the images below tear it at chosen bytes.
        let failed_at_roll = rt().block_on(async {
            for i in 1.. {
                storage.fail_nth(FaultOp::Sync, 2);
                match e.post(&key(), &batch_of(i), true).await {
                    Ok(_) if e.stats().segments < 2 => storage.clear_faults(),
                    Ok(_) => return false,
                    Err(_) => return true,
                }
            }
            unreachable!()
        });
        storage.clear_faults();
        if !failed_at_roll || e.stats().segments < 2 {
            continue;
        }
        let live = storage.contents(seg2).expect("segment 2");
        let durable = storage.durable_contents(seg2).expect("segment 2");
        assert!(
            durable[..64].iter().all(|b| *b == 0),
            "the header is unsynced"
        );
        assert!(live[..64].iter().any(|b| *b != 0), "the header is written");
        for torn in [0usize, 8, 30, 63, 64, 100] {
            let image = storage.durable_image();
            let mut bytes = durable.clone();
            bytes[..torn].copy_from_slice(&live[..torn]);
            image.put_file(seg2, bytes);
            for mode in [RecoveryMode::Strict, RecoveryMode::TolerateTail] {
                let r = open_as(&image, SyncPolicy::Always, mode);
                assert!(r.is_ok(), "torn at {torn}, {mode:?}: {:?}", r.err());
            }
        }
        return;
    }
    panic!("the fault never hit the sync of the roll's commit");
}

/// A failed open changes nothing: an unstarted-looking last segment (tolerated: a lost
/// header block over valid records) is removed only by an open that succeeds.
#[test]
fn a_failed_open_removes_no_segment() {
    use engine::{RecoveryMode, Storage, SyncPolicy};
    let storage = SimStorage::new();
    let e = open_as(&storage, SyncPolicy::Always, RecoveryMode::Strict).expect("open");
    rt().block_on(async {
        let mut i = 0;
        while e.stats().segments < 3 {
            e.post(&key(), &batch_of(i), true).await.expect("post");
            i += 1;
        }
    });
    e.close();
    let _ = storage.remove("index.idx");
    let mut one = storage.contents("0000000000000001.seg").expect("segment 1");
    one[64 + 20] ^= 0xff;
    storage.put_file("0000000000000001.seg", one);
    let mut three = storage.contents("0000000000000003.seg").expect("segment 3");
    three[..64].fill(0);
    storage.put_file("0000000000000003.seg", three);
    let r = open_as(&storage, SyncPolicy::Always, RecoveryMode::TolerateTail);
    assert!(matches!(r, Err(Error::Corruption { .. })), "{:?}", r.err());
    assert!(
        storage
            .file_names()
            .iter()
            .any(|n| n == "0000000000000003.seg"),
        "{:?}",
        storage.file_names()
    );
}

/// A batch of 100 messages of `body_bytes` (plus a tag that makes each one unique).
fn tagged_batch(tag: usize, body_bytes: usize) -> Vec<NewMessage<'static>> {
    (0..100)
        .map(|i| NewMessage {
            body: format!("{tag:05}-{i:03}-{}", "x".repeat(body_bytes))
                .into_bytes()
                .into(),
            ..Default::default()
        })
        .collect()
}

/// Polls `f` every 5 ms until it holds; fails the test after 10 s.
fn wait_for(what: &str, f: &dyn Fn() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed().as_secs() < 10, "waited 10 s for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Fills the disk as it happens for real: the spare for segment 2 is made (and named for
/// it) and the reserve after it, then the disk fills up, posts roll into segment 2, the
/// allocator finds no room for the next spare, and posts go on until one is refused.
/// Returns the messages acknowledged and the next batch tag.
async fn post_until_the_full_disk_refuses(
    e: &Engine,
    storage: &SimStorage,
    body_bytes: usize,
) -> (usize, usize) {
    let mut posted = 0usize;
    let mut tag = 0;
    let batch = |tag| tagged_batch(tag, body_bytes);
    posted += e.post(&key(), &batch(tag), true).await.expect("post").len();
    tag += 1;
    wait_for("the first spare", &|| {
        storage.file_names().iter().any(|n| n.ends_with("2.seg"))
    });
    wait_for("the reserve", &|| e.stats().reserve_segment);
    storage.set_full(true);
    while e.stats().segments < 2 {
        posted += e.post(&key(), &batch(tag), true).await.expect("post").len();
        tag += 1;
    }
    wait_for("the allocator to find the disk full", &|| {
        e.storage_full().is_some()
    });
    let refused = loop {
        match e.post(&key(), &batch(tag), true).await {
            Ok(ids) => posted += ids.len(),
            Err(err) => break err,
        }
        tag += 1;
    };
    assert!(matches!(refused, Error::StorageFull(_)), "{refused}");
    assert!(e.stats().storage_full);
    assert_eq!(e.stats().segments, 2, "refused before the roll");
    (posted, tag)
}

/// After a full disk: posts resume (each must succeed) until the log has two segments
/// again, batches tagged from `tag` on. Returns the messages acknowledged.
async fn post_until_a_second_segment(e: &Engine, body_bytes: usize, mut tag: usize) -> usize {
    let mut after = 0;
    while e.stats().segments < 2 {
        after += e
            .post(&key(), &tagged_batch(tag, body_bytes), true)
            .await
            .expect("posts resume")
            .len();
        tag += 1;
    }
    after
}

/// One consumer's turn as clients take it: reserve 100, then delete them by id. Returns how
/// many it consumed (0 once the queue is empty).
async fn reserve_and_delete_100(e: &Engine) -> usize {
    let got = e
        .reserve(
            &key(),
            ReserveOptions {
                n: 100,
                ..Default::default()
            },
        )
        .await
        .expect("reserve on the full disk");
    let items: Vec<DeleteItem> = got.iter().map(DeleteItem::of).collect();
    if !items.is_empty() {
        e.delete_batch(&key(), &items)
            .await
            .expect("delete on the full disk");
    }
    items.len()
}

/// Reopens the engine on a disk no longer full: the queue holds `size` messages.
fn reopen_holding(storage: &SimStorage, clock: &ManualClock, size: usize) -> Engine {
    storage.set_full(false);
    let e = open(storage, clock).expect("reopen");
    assert_eq!(e.queue_info_now(&key()).unwrap().size as usize, size);
    e
}

/// A full disk: the log rolls into the spare made before, the allocator cannot make the
/// next one, and posts are refused (`StorageFull`, nothing stored) before the active
/// segment's last eighth, which stays for reservations and deletes. Once consumers have
/// emptied the oldest segment, retention drops it and the allocator reuses its file (no
/// new space): posts go on by themselves, past the next roll. Failed spares leave no file.
#[test]
fn a_full_disk_refuses_posts_keeps_consumers_going_and_recovers_by_itself() {
    let storage = SimStorage::new();
    let clock = ManualClock::new(T0);
    let e = open(&storage, &clock).expect("open");
    let batch = |tag| tagged_batch(tag, 1000);
    let spare_files = || {
        storage
            .file_names()
            .into_iter()
            .filter(|n| n.starts_with("spare-"))
            .count()
    };
    rt().block_on(async {
        let (posted, tag) = post_until_the_full_disk_refuses(&e, &storage, 1000).await;
        let size = e.queue_info_now(&key()).unwrap().size;
        assert_eq!(size as usize, posted, "a refused post stores nothing");
        assert!(e.post(&key(), &batch(tag), true).await.is_err());
        let other = QueueKey::new("p", "made-by-a-refused-post");
        assert!(matches!(
            e.post(&other, &batch(tag), true).await,
            Err(Error::StorageFull(_))
        ));
        assert!(
            e.queue_info_now(&other).is_err(),
            "no queue made for a refused post"
        );
        assert_eq!(
            spare_files(),
            1,
            "failed spares are removed; the reserve stays"
        );
        assert!(e.stats().reserve_segment);
        // Consumers drain the queue in the room kept for them, all but the oldest message,
        // which stays reserved (retention relocates it: it fits in the room).
        let kept = e
            .reserve(&key(), ReserveOptions::default())
            .await
            .expect("reserve");
        assert_eq!(kept.len(), 1);
        let mut consumed = 1;
        loop {
            let opts = ReserveOptions {
                n: 100,
                delete: true,
                ..Default::default()
            };
            let got = e
                .reserve(&key(), opts)
                .await
                .expect("reserve in the kept room");
            if got.is_empty() {
                break;
            }
            consumed += got.len();
        }
        assert_eq!(consumed, posted);
        // Retention drops segment 1; its file becomes the next spare without new space.
        let report = e.maintain().expect("maintain");
        assert_eq!((report.segments_dropped, report.messages_relocated), (1, 1));
        wait_for("a spare made from the dropped segment", &|| {
            e.storage_full().is_none()
        });
        assert!(!e.stats().storage_full);
        // Segment 2 is the only one left; posts roll into segment 3.
        assert_eq!(e.stats().segments, 1);
        let after = post_until_a_second_segment(&e, 1000, tag).await;
        assert!(after >= 100);
        drop(e);
        // Every acknowledged message survives: the one kept and those posted after.
        let e = reopen_holding(&storage, &clock, after + 1);
        let got = e
            .get(&key(), kept[0].id)
            .await
            .expect("the relocated message");
        assert_eq!(got.body, kept[0].body);
    });
}

/// With messages of 10 B, the reservations and deletes that drain a segment take more than
/// a segment of their own: no room kept in the active segment is enough. Posts stop at once
/// (the room kept is the whole segment), consumers fill the active segment and roll into
/// the reserve, and once retention has dropped two segments (one file for the next
/// segment, one for a new reserve) posts resume, all on a full disk.
#[test]
fn a_full_disk_with_tiny_messages_drains_into_the_reserve_segment() {
    let storage = SimStorage::new();
    let clock = ManualClock::new(T0);
    let e = open(&storage, &clock).expect("open");
    rt().block_on(async {
        let (posted, tag) = post_until_the_full_disk_refuses(&e, &storage, 0).await;
        let mut consumed = 0usize;
        let mut rolled_into_the_reserve = false;
        while e.storage_full().is_some() {
            let got = reserve_and_delete_100(&e).await;
            if got == 0 {
                // All consumed: the allocator makes its spares at its own pace.
                wait_for("posts to resume", &|| e.storage_full().is_none());
                break;
            }
            consumed += got;
            if !rolled_into_the_reserve && !e.stats().reserve_segment {
                rolled_into_the_reserve = true;
                // The reserve is the consumers': no post lands there, however empty.
                assert!(matches!(
                    e.post(&key(), &tagged_batch(tag, 0), true).await,
                    Err(Error::StorageFull(_))
                ));
                // A crash now, with the reserve (blocks reserved, no zeros written) as the
                // active segment, loses nothing acknowledged.
                for image in [storage.crash_image(7), storage.durable_image()] {
                    let crashed = open(&image, &clock).expect("open after a crash");
                    assert_eq!(
                        crashed.queue_info_now(&key()).unwrap().size as usize,
                        posted - consumed
                    );
                }
            }
            e.maintain().expect("maintain");
        }
        assert!(
            rolled_into_the_reserve,
            "the drain never needed the reserve"
        );
        assert!(
            e.stats().reserve_segment,
            "posts resume with a reserve again"
        );
        assert!(consumed <= posted, "{consumed} of {posted}");
        let after = post_until_a_second_segment(&e, 0, tag).await;
        drop(e);
        reopen_holding(&storage, &clock, posted - consumed + after);
    });
}

/// With messages of 100 B, draining a segment takes about 30 % of a segment in reservations
/// and deletes: more than the fixed eighth kept before. The room kept for consumers is
/// sized by the oldest segment's live messages, so consumers that reserve and delete in
/// batches drain it, retention drops it, and posts resume, all on a full disk.
#[test]
fn a_full_disk_keeps_the_room_draining_the_oldest_segment_of_small_messages_takes() {
    let storage = SimStorage::new();
    let clock = ManualClock::new(T0);
    let e = open(&storage, &clock).expect("open");
    rt().block_on(async {
        let (posted, tag) = post_until_the_full_disk_refuses(&e, &storage, 90).await;
        // Consumers reserve 100 at a time and delete what they got, as clients do; the
        // server's maintenance runs between their calls.
        let mut consumed = 0usize;
        loop {
            let got = reserve_and_delete_100(&e).await;
            assert!(got > 0, "the queue drained but no segment went");
            consumed += got;
            if e.maintain().expect("maintain").segments_dropped > 0 {
                break;
            }
        }
        assert!(consumed < posted, "{consumed} of {posted}");
        wait_for("a spare made from the dropped segment", &|| {
            e.storage_full().is_none()
        });
        let after = post_until_a_second_segment(&e, 90, tag).await;
        drop(e);
        reopen_holding(&storage, &clock, posted - consumed + after);
    });
}
