//! The [`Engine`] façade: the only public entry point. It owns the queue registry, the
//! durable key/value metadata, and the log, and turns each API call into
//! decide → append record → apply → wait for durability → read bodies.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::clock::{Clock, SystemClock};
use crate::entries::Entries;
use crate::error::{Error, Result};
use crate::ids::{LogPos, MessageId, QueueKey, QueueNo, ReservationId, SegmentId};
use crate::limits;
use crate::log::{FSYNC_BUCKETS, Log, SyncPolicy};
use crate::queue::{Entry, LiveBytes, MsgState, Queue, Refusal};
use crate::record::{self, Kind, Put, QueueDef};
use crate::recovery::{self, RecoveryReport};
use crate::storage::{OsStorage, Storage};
use crate::types::{
    DeleteItem, MessageView, NewMessage, QueueConfig, QueueInfo, ReserveOptions, ReservedMessage,
};

/// What to do with a damaged log tail on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Truncate a torn tail (bad bytes followed by nothing valid); refuse anything else.
    #[default]
    Strict,
    /// Also truncate the last segment at the first bad record even when valid records
    /// follow it. For use after a power loss on a disk that reorders writes, when an operator
    /// has decided to accept the loss.
    TolerateTail,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub body_bytes_max: u32,
    pub sync: SyncPolicy,
    pub recovery: RecoveryMode,
}

impl EngineConfig {
    pub fn new(dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            dir: dir.into(),
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            body_bytes_max: limits::BODY_BYTES_DEFAULT,
            sync: SyncPolicy::Always,
            recovery: RecoveryMode::Strict,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(Error::Config {
                key: "segment_bytes",
                msg: format!(
                    "segment_bytes must be between {} and {}",
                    limits::SEGMENT_BYTES_MIN,
                    limits::SEGMENT_BYTES_MAX
                ),
            });
        }
        if self.body_bytes_max == 0 || self.body_bytes_max > limits::BODY_BYTES_MAX {
            return Err(Error::Config {
                key: "body_bytes_max",
                msg: format!(
                    "body_bytes_max must be between 1 and {}",
                    limits::BODY_BYTES_MAX
                ),
            });
        }
        // The segment is what is too small for the bodies: the fix is a larger segment.
        let need = self.record_bytes_max() as u64 + 2 * crate::segment::HEADER_BYTES as u64;
        if need > self.segment_bytes {
            return Err(Error::Config {
                key: "segment_bytes",
                msg: format!(
                    "segment_bytes {} cannot hold a full batch of {}-byte bodies; it needs {need}",
                    self.segment_bytes, self.body_bytes_max
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn record_bytes_max(&self) -> usize {
        limits::record_bytes_max(self.body_bytes_max)
    }
}

pub(crate) struct State {
    pub queues: HashMap<QueueNo, Queue>,
    pub by_key: BTreeMap<QueueKey, QueueNo>,
    pub next_queue: u32,
    pub next_id: u64,
    pub meta: BTreeMap<String, (Vec<u8>, SegmentId)>,
    pub live: LiveBytes,
    /// Reused buffer for encoding payloads.
    pub scratch: Vec<u8>,
    /// First segment still on disk.
    pub first_segment: SegmentId,
    pub rids: RidGen,
    /// Push queues, for the pusher's scan of due deliveries.
    pub push_queues: BTreeSet<QueueNo>,
}

struct Inner {
    state: Mutex<State>,
    log: Arc<Log>,
    clock: Arc<dyn Clock>,
    config: EngineConfig,
    storage: Arc<dyn Storage>,
    /// Woken when push deliveries may have become due (post, acknowledgement, settings).
    push_wake: Arc<tokio::sync::Notify>,
    _lock: Option<File>,
    /// Message counters since open, for metrics (not durable).
    counters: Counters,
    /// Set by [`Engine::stop_waiting`]: long polls answer at once from then on.
    draining: AtomicBool,
    /// Wakes every long poll when `draining` is set.
    drain: tokio::sync::Notify,
    recovery: RecoveryReport,
    /// The restart index on disk; locked for the whole of a write.
    index: crate::checkpoint::TrackerLock,
    /// Some queue has had settings with extras since the open (set under the state lock,
    /// never cleared): until then [`Engine::size_if_extra`], asked after every post and
    /// delete, answers without taking the lock.
    any_extra: AtomicBool,
}

#[derive(Default)]
struct Counters {
    posted: AtomicU64,
    reserved: AtomicU64,
    deleted: AtomicU64,
    expired: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The queues a queue's settings forward messages to on their own, given its key and
/// settings (see [`Engine::upsert_queue_linked`]).
pub type Links<'a> = dyn Fn(&QueueKey, &QueueConfig) -> Vec<QueueKey> + Send + Sync + 'a;

/// A handle to an open engine. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    pub fsyncs: u64,
    pub fsync_seconds: f64,
    /// Group-commit syncs per bucket of [`crate::FSYNC_BUCKET_BOUNDS_S`], the last one
    /// counting the slower ones (not cumulative).
    pub fsync_buckets: [u64; FSYNC_BUCKETS],
    pub segments: u64,
    pub live_message_bytes: u64,
    pub queues: u64,
    /// No new log segment can be made for want of space (see [`Engine::storage_full`]).
    pub storage_full: bool,
    /// A reserve segment is held: one more spare, kept back for consumers' records on a
    /// full disk (see `FORMAT.md`, "Full disk").
    pub reserve_segment: bool,
    /// Messages since open: posted, handed out by reserve (with or without `delete`),
    /// deleted (by id, by reserve with `delete`, or by a clear), and dropped on expiry.
    pub messages_posted: u64,
    pub messages_reserved: u64,
    pub messages_deleted: u64,
    pub messages_expired: u64,
}

/// A message with its body and metadata, read after the durability wait.
pub(crate) type ReadMessage = (Pending, Vec<u8>, Vec<u8>);

/// The mappings a read holds from the moment its locations were gathered ([`Engine::hold`]).
pub(crate) struct Held(Vec<(SegmentId, Arc<dyn crate::storage::Region>)>);

/// A message location gathered under the lock, read after the durability wait.
pub(crate) struct Pending {
    pub id: MessageId,
    pub segment: SegmentId,
    pub offset: u32,
    pub body_len: u32,
    pub meta_len: u16,
    pub reserved_count: u32,
    pub reservation: Option<(ReservationId, u64)>,
}

impl Pending {
    pub(crate) fn of(e: &Entry, reservation: Option<(ReservationId, u64)>) -> Pending {
        Pending {
            id: MessageId(e.id),
            segment: SegmentId(e.segment),
            offset: e.offset,
            body_len: e.body_len,
            meta_len: e.meta_len,
            reserved_count: e.reserved_count as u32,
            reservation,
        }
    }
}

/// `Err(LimitExceeded)` when `got` is over `max`.
fn check_limit(what: &'static str, got: u64, max: u64) -> Result<()> {
    if got > max {
        Err(Error::LimitExceeded { what, got, max })
    } else {
        Ok(())
    }
}

/// `n` of reserve and peek: 1 to 100.
fn check_n(n: usize) -> Result<()> {
    let max = limits::MESSAGES_PER_RESERVE_MAX as u64;
    if n == 0 {
        return Err(Error::LimitExceeded {
            what: "n",
            got: 0,
            max,
        });
    }
    check_limit("n", n as u64, max)
}

fn refusal(r: Refusal, id: MessageId) -> Error {
    match r {
        Refusal::NotFound => Error::MessageNotFound,
        Refusal::ReservationRequired => Error::ReservationRequired(id),
        Refusal::ReservationMismatch => Error::ReservationMismatch(id),
    }
}

/// Unguessable reservation ids without a syscall each: the ChaCha12 keystream (`StdRng`)
/// under a 256-bit key from the OS random source, 16 bytes per id. ChaCha is a keyed PRF
/// of its block counter, so ids cannot be predicted from earlier ones without the key.
/// It replaced SipHash over a counter (two hashes per id, for 128 bits), which cost about
/// 35 ns per reserved message; the keystream is made 256 bytes at a time.
pub(crate) struct RidGen {
    rng: rand::rngs::StdRng,
}

impl RidGen {
    pub(crate) fn new() -> RidGen {
        use rand::SeedableRng;
        let mut key = [0u8; 32];
        // getrandom only fails if the OS has no entropy source at all.
        getrandom::fill(&mut key).expect("the OS random number generator is available");
        RidGen {
            rng: rand::rngs::StdRng::from_seed(key),
        }
    }

    /// A fresh random id, never [`ReservationId::NEVER_ISSUED`].
    pub(crate) fn next(&mut self) -> ReservationId {
        use rand::RngCore;
        loop {
            let mut out = [0u8; 16];
            self.rng.fill_bytes(&mut out);
            let rid = ReservationId(out);
            if rid != ReservationId::NEVER_ISSUED {
                return rid;
            }
        }
    }
}

fn check_name(key: &QueueKey) -> Result<()> {
    if key.name.is_empty() || key.name.len() > limits::QUEUE_NAME_BYTES_MAX {
        return Err(Error::Invalid("queue name must be 1 to 255 bytes"));
    }
    if key.project.is_empty() || key.project.len() > limits::PROJECT_BYTES_MAX {
        return Err(Error::Invalid("project id must be 1 to 64 bytes"));
    }
    Ok(())
}

fn check_config(c: &QueueConfig) -> Result<()> {
    let bound = |what, got: u32, max: u32| check_limit(what, got as u64, max as u64);
    if c.message_timeout_s == 0 || c.message_expiration_s == 0 {
        return Err(Error::Invalid(
            "message_timeout and message_expiration must be positive",
        ));
    }
    bound(
        "message_timeout",
        c.message_timeout_s,
        limits::TIMEOUT_S_MAX,
    )?;
    bound(
        "message_expiration",
        c.message_expiration_s,
        limits::EXPIRATION_S_MAX,
    )?;
    if c.extra.len() > limits::QUEUE_EXTRA_BYTES_MAX {
        return Err(Error::Invalid("queue settings are too large"));
    }
    if let Some(dl) = &c.dead_letter {
        if dl.queue.is_empty() || dl.queue.len() > limits::QUEUE_NAME_BYTES_MAX {
            return Err(Error::Invalid(
                "dead_letter queue_name must be 1 to 255 bytes",
            ));
        }
        if dl.max_reservations == 0 {
            return Err(Error::Invalid(
                "dead_letter max_reservations must be at least 1",
            ));
        }
        bound(
            "dead_letter max_reservations",
            dl.max_reservations,
            limits::DEAD_LETTER_MAX_RESERVATIONS_MAX,
        )?;
    }
    Ok(())
}

impl State {
    pub(crate) fn floors(&self) -> (u64, u32) {
        (self.next_id, self.next_queue)
    }

    fn queue_no(&self, key: &QueueKey) -> Result<QueueNo> {
        self.by_key.get(key).copied().ok_or(Error::QueueNotFound)
    }

    /// Makes due delays and ended reservations of queue `no` visible and deletes the expired
    /// messages at its head (a bounded look, [`Queue::sweep_expired`]): what its counts
    /// should show a reader. Returns how many expired.
    fn settle_queue(&mut self, no: QueueNo, now_ms: u64) -> u64 {
        let q = self.queues.get_mut(&no).expect("registered queue");
        q.tick(now_ms);
        q.sweep_expired((now_ms / 1000) as u32, &mut self.live) as u64
    }

    pub(crate) fn info(&self, no: QueueNo) -> QueueInfo {
        let q = &self.queues[&no];
        QueueInfo {
            project: q.key.project.clone(),
            name: q.key.name.clone(),
            number: no.0,
            config: q.config.clone(),
            size: q.size(),
            reserved: q.reserved(),
            delayed: q.delayed(),
            total_messages: q.total_messages,
        }
    }

    /// Appends the payload in `scratch` as one record.
    fn append(&mut self, log: &Log, kind: Kind) -> Result<(LogPos, LogPos)> {
        if kind == Kind::Post {
            log.note_oldest_live(|| self.live.messages_in(self.first_segment));
        }
        let floors = self.floors();
        log.append(kind, &self.scratch, floors)
    }

    /// Writes a queue definition record for `no` with its current settings and counters.
    pub(crate) fn write_def(&mut self, log: &Log, no: QueueNo) -> Result<LogPos> {
        let q = &self.queues[&no];
        let def = QueueDef {
            queue: no,
            total_messages: q.total_messages,
            project: &q.key.project,
            name: &q.key.name,
            config: q.config.clone(),
        };
        let buf = &mut self.scratch;
        buf.clear();
        record::put_queue_def(buf, &def);
        let (start, end) = self.append(log, Kind::QueueDef)?;
        if let Some(q) = self.queues.get_mut(&no) {
            q.def_segment = start.segment();
        }
        Ok(end)
    }

    /// Creates a queue (no record yet: the caller writes its definition).
    fn insert_queue(&mut self, key: QueueKey, config: QueueConfig) -> QueueNo {
        let no = QueueNo(self.next_queue);
        self.next_queue += 1;
        if config.kind.is_push() {
            self.push_queues.insert(no);
        }
        self.by_key.insert(key.clone(), no);
        self.queues
            .insert(no, Queue::new(no, key, config, SegmentId(0)));
        no
    }

    fn create_queue(
        &mut self,
        log: &Log,
        key: &QueueKey,
        config: QueueConfig,
    ) -> Result<(QueueNo, LogPos)> {
        check_name(key)?;
        check_config(&config)?;
        let no = self.insert_queue(key.clone(), config);
        let end = self.write_def(log, no)?;
        Ok((no, end))
    }

    fn queue_or_create(&mut self, log: &Log, key: &QueueKey) -> Result<QueueNo> {
        match self.by_key.get(key) {
            Some(no) => Ok(*no),
            None => Ok(self.create_queue(log, key, QueueConfig::default())?.0),
        }
    }

    /// Removes an entry from whichever structures hold it (used by replay's drop).
    pub(crate) fn drop_queue(&mut self, no: QueueNo) {
        if let Some(gone) = self.take_queue(no) {
            self.live.subtract(&LiveBytes::of(&gone));
        }
    }

    /// Removes queue `no` as [`State::drop_queue`] does, but returns its entries with what
    /// they take still counted in `live` (see [`Queue::take_all`]).
    fn take_queue(&mut self, no: QueueNo) -> Option<Entries> {
        self.push_queues.remove(&no);
        let mut q = self.queues.remove(&no)?;
        let gone = q.take_all();
        self.by_key.remove(&q.key);
        q.waiters.notify_waiters();
        Some(gone)
    }

    /// A path from `key` through one of `starts` and then `links` back to `key`.
    fn link_cycle(
        &self,
        key: &QueueKey,
        starts: Vec<QueueKey>,
        links: &Links<'_>,
    ) -> Option<Vec<String>> {
        let mut seen = HashSet::new();
        let mut stack: Vec<(QueueKey, Vec<String>)> = starts
            .into_iter()
            .map(|s| {
                let path = vec![key.name.clone(), s.name.clone()];
                (s, path)
            })
            .collect();
        while let Some((at, path)) = stack.pop() {
            if &at == key {
                return Some(path);
            }
            let Some(no) = self.by_key.get(&at) else {
                continue;
            };
            if !seen.insert(at.clone()) {
                continue;
            }
            for next in links(&at, &self.queues[no].config) {
                let mut p = path.clone();
                p.push(next.name.clone());
                stack.push((next, p));
            }
        }
        None
    }

    /// The dead-letter cycle that `key` would close by sending to the queue named `dlq`:
    /// the names from `key` along the links of the queues that exist now back to `key`.
    /// `None` if the chain ends (at a queue that is missing, which a move would create
    /// without a dead-letter queue, or that has none) or runs into a cycle `key` is not on
    /// (one in a log written before links were checked; this link does not close it).
    /// Each step reaches a queue not seen before, so the walk is bounded by the number of
    /// queues.
    fn dead_letter_cycle(&self, key: &QueueKey, dlq: &str) -> Option<Vec<String>> {
        let mut path = vec![key.name.clone()];
        let mut seen = HashSet::new();
        let mut next = dlq.to_string();
        loop {
            path.push(next.clone());
            if next == key.name {
                return Some(path);
            }
            if !seen.insert(next.clone()) {
                return None;
            }
            let no = self.by_key.get(&QueueKey::new(key.project.clone(), next))?;
            next = self.queues[no].config.dead_letter.as_ref()?.queue.clone();
        }
    }

    /// Moves a message that reached `max_reservations` to the dead-letter queue, creating
    /// that queue if needed. Returns false if the move was not possible.
    fn dead_letter(
        &mut self,
        log: &Log,
        from: QueueNo,
        idx_entry: Entry,
        now_ms: u64,
    ) -> Result<()> {
        let project = self.queues[&from].key.project.clone();
        let Some(dl) = self.queues[&from].config.dead_letter.clone() else {
            return Ok(());
        };
        let dst_key = QueueKey::new(project, dl.queue);
        let to = self.queue_or_create(log, &dst_key)?;
        let expires_at_s =
            (now_ms / 1000 + self.queues[&to].config.message_expiration_s as u64) as u32;
        let buf = &mut self.scratch;
        buf.clear();
        buf.u32(from.0);
        buf.u32(to.0);
        buf.u64(idx_entry.id);
        buf.u32(expires_at_s);
        self.append(log, Kind::Move)?;
        self.apply_move(from, to, MessageId(idx_entry.id), expires_at_s);
        Ok(())
    }

    pub(crate) fn apply_move(
        &mut self,
        from: QueueNo,
        to: QueueNo,
        id: MessageId,
        expires_at_s: u32,
    ) {
        let taken = self
            .queues
            .get_mut(&from)
            .and_then(|src| src.apply_delete(id, &mut self.live));
        let Some(dst) = self.queues.get_mut(&to) else {
            return;
        };
        // A move posts the message to `to`: it counts there as every post does. Counted
        // even when the source no longer holds the message, which only a replay sees (the
        // live path moves a message it holds): retention may have dropped the Post while
        // this record and the message, relocated into `to`, survive. A QueueDef of `to`
        // after this record carries the count that includes it, so nothing counts twice.
        dst.total_messages += 1;
        let Some(mut e) = taken else {
            return;
        };
        e.state = MsgState::Visible;
        e.expires_at_s = expires_at_s;
        dst.apply_insert(e, 0, None, &mut self.live);
        dst.waiters.notify_one();
    }
}

impl Engine {
    /// Opens (or creates) the engine in `config.dir`, recovering state from the log.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        let storage =
            OsStorage::new(&config.dir).map_err(|e| Error::io("create", &config.dir, e))?;
        let lock = lock_dir(&config.dir)?;
        Self::open_inner(config, Arc::new(storage), Arc::new(SystemClock), Some(lock))
    }

    /// Opens with injected storage and clock (tests, fault injection).
    pub fn open_with(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine> {
        Self::open_inner(config, storage, clock, None)
    }

    fn open_inner(
        config: EngineConfig,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
        lock: Option<File>,
    ) -> Result<Engine> {
        config.validate()?;
        let recovered = recovery::recover(&config, storage.clone(), clock.now_ms())?;
        let index = crate::checkpoint::Tracker::new(recovered.index, recovered.last_frame);
        let log = Log::start(
            storage.clone(),
            config.segment_bytes,
            config.record_bytes_max(),
            config.sync,
            recovered.tail,
            recovered.regions,
        );
        let any_extra = recovered
            .state
            .queues
            .values()
            .any(|q| !q.config.extra.is_empty());
        let engine = Engine {
            inner: Arc::new(Inner {
                any_extra: AtomicBool::new(any_extra),
                state: Mutex::new(recovered.state),
                log,
                clock,
                config,
                storage,
                push_wake: Arc::new(tokio::sync::Notify::new()),
                _lock: lock,
                counters: Counters::default(),
                draining: AtomicBool::new(false),
                drain: tokio::sync::Notify::new(),
                recovery: recovered.report,
                index: Mutex::new(index),
            }),
        };
        engine.finish_left_behind_all()?;
        Ok(engine)
    }

    /// Finishes, with a logged record each, the push messages their queue's subscribers
    /// leave finished but that are still in the queue: a crash after a subscriber change was
    /// logged and before its finishing records were, or a log written by a build that did
    /// not write them. Blocks until they are durable.
    fn finish_left_behind_all(&self) -> Result<()> {
        let end = {
            let mut st = self.inner.state.lock();
            let now = self.now_ms();
            let mut nos: Vec<QueueNo> = st
                .queues
                .iter()
                .filter(|(_, q)| q.push.is_some())
                .map(|(no, _)| *no)
                .collect();
            nos.sort();
            let mut end = None;
            for no in nos {
                let log = &self.inner.log;
                if let Some(e) = crate::delivery::finish_left_behind(&mut st, log, no, now)? {
                    end = Some(e);
                }
            }
            end
        };
        match end {
            Some(end) => self.inner.log.wait_durable_blocking(end),
            None => Ok(()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// What the open found (segments read, a torn tail zeroed).
    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner.recovery
    }

    /// Starts a shutdown: every waiting long poll answers now with what it has (nothing),
    /// and later reserves do not wait. Writes are still accepted until [`Engine::close`].
    pub fn stop_waiting(&self) {
        self.inner.draining.store(true, Ordering::Release);
        self.inner.drain.notify_waiters();
    }

    /// Waits for durability of everything appended so far (for reads that must not show
    /// state a crash could take back).
    pub(crate) async fn settle(&self) -> Result<()> {
        let end = self.inner.log.end();
        self.inner.log.wait_durable(end).await
    }

    /// The mappings of the segments `pending` reads from. Taken with the state lock held,
    /// where the locations were: during the durability wait before the read, retention may
    /// relocate those messages and drop their segments, and a mapping held here stays
    /// readable (a dropped segment that is still mapped is deleted, never reused).
    ///
    /// A segment the log has rolled to but the writer has not written yet has no mapping:
    /// the roll names the segment as it appends, and the writer maps it when it writes the
    /// roll (a post into it, or a relocation after it, takes locations there). Nothing in
    /// it is durable yet, and retention cannot drop the newest segment: the read, after the
    /// durability wait, finds it mapped ([`Engine::read_bodies`]).
    pub(crate) fn hold<'p>(&self, pending: impl IntoIterator<Item = &'p Pending>) -> Held {
        let mut held: Vec<(SegmentId, Arc<dyn crate::storage::Region>)> = Vec::new();
        for p in pending {
            // Messages read together mostly sit in one or two segments.
            if held.iter().any(|(s, _)| *s == p.segment) {
                continue;
            }
            if let Some(r) = self.inner.log.region(p.segment) {
                held.push((p.segment, r));
            }
        }
        Held(held)
    }

    /// Reads the bodies at `pending`, once durable, from the mappings `held` took (or, for a
    /// segment that was not mapped yet then, from the log's mapping now).
    pub(crate) fn read_bodies(
        &self,
        pending: Vec<Pending>,
        held: &Held,
    ) -> Result<Vec<ReadMessage>> {
        let mut out = Vec::with_capacity(pending.len());
        let mut late: Vec<(SegmentId, Arc<dyn crate::storage::Region>)> = Vec::new();
        for p in pending {
            let found = held.0.iter().chain(&late).find(|(s, _)| *s == p.segment);
            let region = match found {
                Some((_, r)) => r.clone(),
                None => {
                    let r = self.inner.log.region(p.segment).ok_or_else(|| {
                        Error::Failed(format!(
                            "segment {} holding message {} is not mapped",
                            p.segment.0, p.id
                        ))
                    })?;
                    late.push((p.segment, r.clone()));
                    r
                }
            };
            // The metadata follows the body: one bounds-checked view, two exact copies.
            let (body_len, meta_len) = (p.body_len as usize, p.meta_len as usize);
            let (mut body, mut meta) = (Vec::new(), Vec::new());
            region
                .with_slice(p.offset as usize, body_len + meta_len, &mut |b| {
                    body = b[..body_len].to_vec();
                    meta = b[body_len..].to_vec();
                })
                .map_err(|e| {
                    Error::io(
                        "read",
                        self.inner.storage.root().join(p.segment.file_name()),
                        e,
                    )
                })?;
            out.push((p, body, meta));
        }
        Ok(out)
    }

    // ---- queues ----

    /// Creates or updates a queue atomically. `f` sees the current settings (`None` if the
    /// queue does not exist) and returns the new ones, or its own error to refuse.
    /// With `create == false` a missing queue is `QueueNotFound`.
    pub async fn upsert_queue<E>(
        &self,
        key: &QueueKey,
        create: bool,
        f: impl FnOnce(Option<&QueueConfig>) -> std::result::Result<QueueConfig, E>,
    ) -> Result<std::result::Result<QueueInfo, E>> {
        self.upsert_queue_linked(key, create, f, &|_, _| Vec::new())
            .await
    }

    /// [`Engine::upsert_queue`], refusing settings whose new links would close a cycle
    /// (`Error::PushCycle`). `links` gives the queues a queue's settings forward messages
    /// to on their own (the engine does not read the server's push settings); the check
    /// runs under the state lock, so two updates cannot close a cycle between them.
    pub async fn upsert_queue_linked<E>(
        &self,
        key: &QueueKey,
        create: bool,
        f: impl FnOnce(Option<&QueueConfig>) -> std::result::Result<QueueConfig, E>,
        links: &Links<'_>,
    ) -> Result<std::result::Result<QueueInfo, E>> {
        check_name(key)?;
        let (end, info) = {
            let mut st = self.inner.state.lock();
            let existing = st.by_key.get(key).copied();
            if existing.is_none() && !create {
                return Err(Error::QueueNotFound);
            }
            let current = existing.map(|no| st.queues[&no].config.clone());
            let config = match f(current.as_ref()) {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            check_config(&config)?;
            if !config.extra.is_empty() {
                // Before the settings are in place, so no check that could see them skips.
                self.inner.any_extra.store(true, Ordering::Release);
            }
            if let Some(cur) = &current
                && cur.kind.is_push() != config.kind.is_push()
            {
                return Err(Error::WrongQueueType("the queue type cannot be changed"));
            }
            // Checked whenever a link is set or changed (every link is set here), under the
            // state lock, so two updates cannot close a cycle between them; a link left as
            // it was closes nothing new.
            let current_dlq = current.as_ref().and_then(|c| c.dead_letter.as_ref());
            if let Some(dl) = &config.dead_letter
                && current_dlq.is_none_or(|d| d.queue != dl.queue)
                && let Some(cycle) = st.dead_letter_cycle(key, &dl.queue)
            {
                return Err(Error::DeadLetterCycle(cycle));
            }
            let before = current.as_ref().map(|c| links(key, c)).unwrap_or_default();
            let added: Vec<QueueKey> = links(key, &config)
                .into_iter()
                .filter(|l| !before.contains(l))
                .collect();
            if let Some(cycle) = st.link_cycle(key, added, links) {
                return Err(Error::PushCycle(cycle));
            }
            let (no, end) = match existing {
                Some(no) => {
                    let subscribers_changed = st
                        .queues
                        .get_mut(&no)
                        .expect("registered queue")
                        .set_config(config);
                    let mut end = st.write_def(&self.inner.log, no)?;
                    if subscribers_changed {
                        // A removed subscriber may have been all a message still waited
                        // for. (A crash between the def and these records is mended by the
                        // next open, see `Engine::open_inner`.)
                        let now = self.now_ms();
                        let log = &self.inner.log;
                        if let Some(e) = crate::delivery::finish_left_behind(&mut st, log, no, now)?
                        {
                            end = e;
                        }
                    }
                    (no, end)
                }
                None => st.create_queue(&self.inner.log, key, config)?,
            };
            (end, st.info(no))
        };
        self.inner.log.wait_durable(end).await?;
        if info.config.kind.is_push() {
            self.inner.push_wake.notify_one();
        }
        Ok(Ok(info))
    }

    pub async fn delete_queue(&self, key: &QueueKey) -> Result<()> {
        let (end, gone) = {
            let mut st = self.inner.state.lock();
            let no = st.queue_no(key)?;
            let buf = &mut st.scratch;
            buf.clear();
            buf.u32(no.0);
            let (_, end) = st.append(&self.inner.log, Kind::QueueDrop)?;
            (end, st.take_queue(no))
        };
        let (_, durable) = tokio::join!(
            self.forget(gone.unwrap_or_default()),
            self.inner.log.wait_durable(end)
        );
        durable
    }

    /// Takes what the entries of a cleared or deleted queue counted out of `LiveBytes`, and
    /// frees them: the walk over every entry (a queue of millions, in pages that may have
    /// been idle for long) is done without the state lock, on the blocking pool when large,
    /// and the lock is held only to subtract the per-segment sums.
    async fn forget(&self, gone: Entries) {
        let small = gone_is_small(&gone);
        let inner = self.inner.clone();
        let walk = move || {
            let of = LiveBytes::of(&gone);
            drop(gone);
            inner.state.lock().live.subtract(&of);
        };
        if small {
            walk();
        } else {
            // An error means it did not run (the runtime is shutting down) or panicked: the
            // counts stay high, which only keeps retention from dropping those segments
            // until the next open.
            let _ = tokio::task::spawn_blocking(walk).await;
        }
    }

    pub async fn queue_info(&self, key: &QueueKey) -> Result<QueueInfo> {
        let info = {
            let mut st = self.inner.state.lock();
            let no = st.queue_no(key)?;
            let expired = st.settle_queue(no, self.now_ms());
            Counters::add(&self.inner.counters.expired, expired);
            st.info(no)
        };
        self.settle().await?;
        Ok(info)
    }

    /// A queue's settings and counters as they are in memory right now, without waiting for
    /// durability. For the server's own decisions (alerts), never for answering a client.
    pub fn queue_info_now(&self, key: &QueueKey) -> Result<QueueInfo> {
        let st = self.inner.state.lock();
        let no = st.queue_no(key)?;
        Ok(st.info(no))
    }

    /// The queue's size, when its settings carry server-side extras (alerts among them):
    /// what an alert check after a change needs, read from memory without copying anything
    /// (waiting for durability here would cost every request a second group commit).
    /// `None` for a queue without extras, or none at all.
    pub fn size_if_extra(&self, key: &QueueKey) -> Option<u64> {
        if !self.inner.any_extra.load(Ordering::Acquire) {
            return None;
        }
        let st = self.inner.state.lock();
        let q = &st.queues[&st.queue_no(key).ok()?];
        (!q.config.extra.is_empty()).then(|| q.size())
    }

    /// For a queue with a dead-letter queue that exists and carries extras: that queue and
    /// its size now (to check its alerts around a reserve, which may move messages there).
    pub fn dead_letter_size(&self, key: &QueueKey) -> Option<(QueueKey, u64)> {
        if !self.inner.any_extra.load(Ordering::Acquire) {
            return None;
        }
        let st = self.inner.state.lock();
        let q = &st.queues[&st.queue_no(key).ok()?];
        let dl = q.config.dead_letter.as_ref()?;
        let dst = QueueKey::new(key.project.clone(), dl.queue.clone());
        let d = &st.queues[&st.queue_no(&dst).ok()?];
        (!d.config.extra.is_empty()).then(|| (dst, d.size()))
    }

    /// Queue names of a project in byte order: those starting with `prefix`, strictly after
    /// `after`, at most `limit`.
    pub async fn list_queues(
        &self,
        project: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>> {
        let names = {
            let st = self.inner.state.lock();
            let from = match after {
                Some(a) if a > prefix => a,
                _ => prefix,
            };
            st.by_key
                .range(QueueKey::new(project, from)..)
                .take_while(|(k, _)| k.project == project && k.name.starts_with(prefix))
                .filter(|(k, _)| after.is_none_or(|a| k.name.as_str() > a))
                .take(limit)
                .map(|(k, _)| k.name.clone())
                .collect()
        };
        self.settle().await?;
        Ok(names)
    }

    /// All queues of all projects (for metrics and stats), in key order, each as
    /// `queue_info` sees it (settled: an idle queue's counts, in a metrics scrape, do not
    /// wait for a client to touch it). Queues are read a few per hold of the state lock, so
    /// this is no snapshot of one moment: a queue made meanwhile may be missing, and one
    /// deleted meanwhile is left out.
    pub fn all_queues(&self) -> Vec<QueueInfo> {
        // Sized first: a grown copy of the list would be made under the lock.
        let mut infos = Vec::with_capacity(self.inner.state.lock().by_key.len() + 64);
        let mut expired = 0;
        self.each_queue(|st, no, now| {
            expired += st.settle_queue(no, now);
            infos.push(st.info(no));
        });
        Counters::add(&self.inner.counters.expired, expired);
        infos
    }

    /// Calls `f` with the state, each queue in key order and the time, for
    /// [`QUEUES_PER_HOLD`] queues per hold of the state lock: a walk over every queue (tens
    /// of thousands, in pages that may have been idle for long: even collecting their
    /// numbers first took 12-21 ms for 20,000 queues) never stops requests for long.
    fn each_queue(&self, mut f: impl FnMut(&mut State, QueueNo, u64)) {
        let mut after: Option<QueueKey> = None;
        loop {
            let mut st = self.inner.state.lock();
            let now = self.now_ms();
            let from = after.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut group = st
                .by_key
                .range((from, Bound::Unbounded))
                .take(QUEUES_PER_HOLD);
            let nos: Vec<QueueNo> = group.by_ref().map(|(_, no)| *no).collect();
            let Some(&last) = nos.last() else {
                return;
            };
            after = Some(st.queues[&last].key.clone());
            for no in nos {
                f(&mut st, no, now);
            }
            yield_lock(st);
        }
    }

    /// As [`Engine::each_queue`], for the queues of `nos` still registered.
    fn each_queue_of(&self, nos: &[QueueNo], mut f: impl FnMut(&mut State, QueueNo, u64)) {
        for group in nos.chunks(QUEUES_PER_HOLD) {
            let mut st = self.inner.state.lock();
            let now = self.now_ms();
            for &no in group {
                if st.queues.contains_key(&no) {
                    f(&mut st, no, now);
                }
            }
            yield_lock(st);
        }
    }

    // ---- messages ----

    /// Posts messages, creating the queue with default settings if `auto_create` and it
    /// does not exist. Returns the new ids in order.
    pub async fn post(
        &self,
        key: &QueueKey,
        messages: &[NewMessage<'_>],
        auto_create: bool,
    ) -> Result<Vec<MessageId>> {
        if messages.is_empty() {
            return Err(Error::Invalid("no messages to post"));
        }
        check_limit(
            "messages per request",
            messages.len() as u64,
            limits::MESSAGES_PER_POST_MAX as u64,
        )?;
        let body_max = self.inner.config.body_bytes_max;
        for m in messages {
            if m.body.len() > body_max as usize {
                return Err(Error::BodyTooLarge {
                    len: m.body.len(),
                    max: body_max,
                });
            }
            if m.meta.len() > limits::META_BYTES_MAX as usize {
                return Err(Error::MetaTooLarge {
                    len: m.meta.len(),
                    max: limits::META_BYTES_MAX,
                });
            }
            check_limit("delay", m.delay_s as u64, limits::DELAY_S_MAX as u64)?;
        }
        let now = self.now_ms();
        let (ids, end, waiters, push) = {
            let mut guard = self.inner.state.lock();
            let st = &mut *guard;
            // Refused for want of space before a new queue is made for it (appends happen
            // under this lock, so the log's end stays where it is checked).
            self.inner
                .log
                .note_oldest_live(|| st.live.messages_in(st.first_segment));
            self.inner.log.check_post_room(|| {
                limits::POST_HEADER_BYTES
                    + messages
                        .iter()
                        .map(|m| limits::POST_ITEM_HEADER_BYTES + m.body.len() + m.meta.len())
                        .sum::<usize>()
            })?;
            let no = if auto_create {
                st.queue_or_create(&self.inner.log, key)?
            } else {
                st.queue_no(key)?
            };
            let expiration_s = st.queues[&no].config.message_expiration_s as u64;
            let expires_at_s = (now / 1000 + expiration_s).min(u32::MAX as u64) as u32;
            let first_id = st.next_id;
            st.next_id += messages.len() as u64;
            let buf = &mut st.scratch;
            buf.clear();
            buf.u32(no.0);
            buf.u16(messages.len() as u16);
            let mut body_ats = Vec::with_capacity(messages.len());
            for (i, m) in messages.iter().enumerate() {
                let visible_at = if m.delay_s > 0 {
                    now + m.delay_s as u64 * 1000
                } else {
                    0
                };
                buf.u64(first_id + i as u64);
                buf.u64(visible_at);
                buf.u32(expires_at_s);
                buf.u32(m.body.len() as u32);
                buf.u32(m.meta.len() as u32);
                body_ats.push((buf.len(), visible_at));
                buf.extend_from_slice(&m.body);
                buf.extend_from_slice(&m.meta);
            }
            let (start, end) = st.append(&self.inner.log, Kind::Post)?;
            let q = st.queues.get_mut(&no).expect("registered queue");
            q.total_messages += messages.len() as u64;
            let base = start.offset() as usize + record::FRAME_HEADER_BYTES;
            for (i, (m, (at, visible_at))) in messages.iter().zip(body_ats).enumerate() {
                let e = Entry {
                    id: first_id + i as u64,
                    segment: start.segment().0,
                    offset: (base + at) as u32,
                    body_len: m.body.len() as u32,
                    expires_at_s,
                    meta_len: m.meta.len() as u16,
                    reserved_count: 0,
                    state: MsgState::Visible,
                };
                q.apply_insert(e, visible_at, None, &mut st.live);
            }
            let ids = (0..messages.len() as u64)
                .map(|i| MessageId(first_id + i))
                .collect::<Vec<_>>();
            let push = q.push.is_some();
            (ids, end, q.waiters.clone(), push)
        };
        if !push {
            for _ in 0..messages.len() {
                waiters.notify_one();
            }
        }
        Counters::add(&self.inner.counters.posted, ids.len() as u64);
        self.inner.log.wait_durable(end).await?;
        if push {
            // Only durable messages are pushed.
            self.inner.push_wake.notify_one();
        }
        Ok(ids)
    }

    /// Reserves up to `opts.n` messages, waiting up to `opts.wait_ms` for one to appear.
    pub async fn reserve(
        &self,
        key: &QueueKey,
        opts: ReserveOptions,
    ) -> Result<Vec<ReservedMessage>> {
        check_n(opts.n)?;
        check_limit(
            "timeout",
            opts.timeout_s as u64,
            limits::TIMEOUT_S_MAX as u64,
        )?;
        let wait_ms = opts.wait_ms.min(limits::WAIT_S_MAX as u64 * 1000);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            // Registered before the attempt, so a `stop_waiting` after it cannot be missed.
            let drain = self.inner.drain.notified();
            tokio::pin!(drain);
            drain.as_mut().enable();
            let draining = self.inner.draining.load(Ordering::Acquire);
            let (picked, held, end, waiters, next_due) = self.reserve_now(key, &opts)?;
            if !picked.is_empty() && !opts.delete {
                // New reservations are new timers: a long poll asleep on this queue set its
                // wake-up from the timers there were, so one of them is woken to look again
                // (each one woken that takes messages passes it on the same way).
                waiters.notify_one();
            }
            if !picked.is_empty() || draining || tokio::time::Instant::now() >= deadline {
                self.inner.log.wait_durable(end).await?;
                return Ok(self
                    .read_bodies(picked, &held)?
                    .into_iter()
                    .map(|(p, body, meta)| ReservedMessage {
                        id: p.id,
                        body,
                        meta,
                        reserved_count: p.reserved_count,
                        reservation_id: p.reservation.map(|r| r.0),
                        reserved_until_ms: p.reservation.map_or(0, |r| r.1),
                    })
                    .collect());
            }
            let notified = waiters.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A message may have arrived between the attempt and `enable`; the permit model of
            // `Notify` (notify_one stores a permit) covers posts, and timers cover the rest.
            let mut until = deadline;
            if let Some(due) = next_due {
                let now = self.now_ms();
                let wake = tokio::time::Instant::now()
                    + Duration::from_millis(due.saturating_sub(now) + 1);
                until = until.min(wake);
            }
            tokio::select! {
                _ = tokio::time::timeout_at(until, notified) => {}
                _ = drain => {}
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn reserve_now(
        &self,
        key: &QueueKey,
        opts: &ReserveOptions,
    ) -> Result<(
        Vec<Pending>,
        Held,
        LogPos,
        Arc<tokio::sync::Notify>,
        Option<u64>,
    )> {
        let now = self.now_ms();
        let now_s = (now / 1000) as u32;
        let mut guard = self.inner.state.lock();
        let st = &mut *guard;
        let no = st.queue_no(key)?;
        if st.queues[&no].config.kind.is_push() {
            return Err(Error::NotForQueueType(
                "messages on a push queue cannot be reserved",
            ));
        }
        let timeout_s = if opts.timeout_s == 0 {
            st.queues[&no].config.message_timeout_s
        } else {
            opts.timeout_s
        };
        let until = now + timeout_s as u64 * 1000;
        let dl_max = st.queues[&no]
            .config
            .dead_letter
            .as_ref()
            .map(|d| d.max_reservations);
        st.queues.get_mut(&no).expect("registered queue").tick(now);
        let mut picked = Vec::new();
        let mut to_dead_letter = Vec::new();
        let buf = &mut st.scratch;
        buf.clear();
        buf.u32(no.0);
        buf.u16(0);
        {
            let q = st.queues.get_mut(&no).expect("registered queue");
            while picked.len() < opts.n {
                let Some(idx) = q.next_visible() else { break };
                q.take_visible(idx);
                let e = *q.entry(idx);
                if e.expires_at_s <= now_s {
                    q.apply_delete(MessageId(e.id), &mut st.live);
                    Counters::add(&self.inner.counters.expired, 1);
                    continue;
                }
                if dl_max.is_some_and(|max| e.reserved_count as u32 >= max) {
                    to_dead_letter.push(e);
                    continue;
                }
                let id = MessageId(e.id);
                if opts.delete {
                    buf.u64(e.id);
                    // A pop is a reservation too: it counts in the reply (first = 1).
                    let mut p = Pending::of(&e, None);
                    p.reserved_count += 1;
                    picked.push(p);
                    q.apply_delete(id, &mut st.live);
                } else {
                    let rid = st.rids.next();
                    buf.u64(e.id);
                    buf.extend_from_slice(&rid.0);
                    buf.u64(until);
                    q.apply_reserve(id, rid, until);
                    let mut p = Pending::of(&e, Some((rid, until)));
                    p.reserved_count += 1;
                    picked.push(p);
                }
            }
        }
        let count = picked.len() as u16;
        buf[4..6].copy_from_slice(&count.to_le_bytes());
        Counters::add(&self.inner.counters.reserved, count as u64);
        if opts.delete {
            Counters::add(&self.inner.counters.deleted, count as u64);
        }
        let mut end = self.inner.log.end();
        if count > 0 {
            let kind = if opts.delete {
                Kind::Delete
            } else {
                Kind::Reserve
            };
            end = st.append(&self.inner.log, kind)?.1;
        }
        // The dead-letter moves are logged after the reserve record (which did not touch them).
        for e in to_dead_letter {
            // Put it back in the visible bookkeeping's view: the move deletes it anyway.
            st.dead_letter(&self.inner.log, no, e, now)?;
            end = self.inner.log.end();
        }
        let held = self.hold(&picked);
        let q = &st.queues[&no];
        Ok((picked, held, end, q.waiters.clone(), q.next_due_ms()))
    }

    /// Visible messages from the head, without reserving them.
    pub async fn peek(&self, key: &QueueKey, n: usize) -> Result<Vec<MessageView>> {
        check_n(n)?;
        let (pending, held) = {
            let mut st = self.inner.state.lock();
            let no = st.queue_no(key)?;
            let now = self.now_ms();
            let q = st.queues.get_mut(&no).expect("registered queue");
            q.tick(now);
            let pending: Vec<Pending> = q
                .peek(n, (now / 1000) as u32)
                .iter()
                .map(|e| Pending::of(e, None))
                .collect();
            let held = self.hold(&pending);
            (pending, held)
        };
        self.settle().await?;
        Ok(self
            .read_bodies(pending, &held)?
            .into_iter()
            .map(view)
            .collect())
    }

    /// One message by id, reserved or not.
    pub async fn get(&self, key: &QueueKey, id: MessageId) -> Result<MessageView> {
        let (pending, held) = {
            let mut st = self.inner.state.lock();
            let no = st.queue_no(key)?;
            let now = self.now_ms();
            let st = &mut *st;
            let q = st.queues.get_mut(&no).expect("registered queue");
            q.tick(now);
            if q.expire_if_due(id, (now / 1000) as u32, &mut st.live) {
                Counters::add(&self.inner.counters.expired, 1);
            }
            let pending = match q.get(id) {
                Some(e) => Pending::of(e, q.reservation(id)),
                // A delivered push message stays readable for a while.
                None => q
                    .push
                    .as_ref()
                    .and_then(|p| p.done(id.0))
                    .filter(|d| self.inner.log.region(SegmentId(d.entry.segment)).is_some())
                    .map(|d| Pending::of(&d.entry, None))
                    .ok_or(Error::MessageNotFound)?,
            };
            let held = self.hold([&pending]);
            (pending, held)
        };
        self.settle().await?;
        let mut v = self.read_bodies(vec![pending], &held)?;
        Ok(view(v.pop().expect("one message read")))
    }

    /// Deletes one message; a reserved one needs its current reservation id.
    pub async fn delete(
        &self,
        key: &QueueKey,
        id: MessageId,
        reservation: Option<ReservationId>,
    ) -> Result<()> {
        self.delete_batch(
            key,
            &[DeleteItem {
                id,
                reservation_id: reservation,
            }],
        )
        .await
    }

    /// Deletes several messages: all of them, or (on any refusal) none.
    pub async fn delete_batch(&self, key: &QueueKey, items: &[DeleteItem]) -> Result<()> {
        if items.is_empty() {
            return Err(Error::Invalid("no ids to delete"));
        }
        check_limit(
            "ids per request",
            items.len() as u64,
            limits::IDS_PER_DELETE_MAX as u64,
        )?;
        let end = {
            let mut guard = self.inner.state.lock();
            let st = &mut *guard;
            let no = st.queue_no(key)?;
            let now = self.now_ms();
            let q = st.queues.get_mut(&no).expect("registered queue");
            q.tick(now);
            for it in items {
                if q.expire_if_due(it.id, (now / 1000) as u32, &mut st.live) {
                    Counters::add(&self.inner.counters.expired, 1);
                }
                q.check_delete(it.id, it.reservation_id)
                    .map_err(|r| refusal(r, it.id))?;
            }
            let buf = &mut st.scratch;
            buf.clear();
            buf.u32(no.0);
            buf.u16(0);
            let mut count = 0u16;
            for it in items {
                if q.apply_delete(it.id, &mut st.live).is_some() {
                    buf.u64(it.id.0);
                    count += 1;
                }
            }
            buf[4..6].copy_from_slice(&count.to_le_bytes());
            Counters::add(&self.inner.counters.deleted, count as u64);
            st.append(&self.inner.log, Kind::Delete)?.1
        };
        self.inner.log.wait_durable(end).await
    }

    /// Extends a reservation: a new reservation id, expiring `timeout_s` from now (0: the
    /// queue's timeout). The old id stops working.
    pub async fn touch(
        &self,
        key: &QueueKey,
        id: MessageId,
        rid: ReservationId,
        timeout_s: u32,
    ) -> Result<(ReservationId, u64)> {
        check_limit("timeout", timeout_s as u64, limits::TIMEOUT_S_MAX as u64)?;
        let (out, end) = {
            let mut guard = self.inner.state.lock();
            let st = &mut *guard;
            let no = st.queue_no(key)?;
            let now = self.now_ms();
            let q = st.queues.get_mut(&no).expect("registered queue");
            q.tick(now);
            q.check_reservation(id, rid).map_err(|r| refusal(r, id))?;
            let timeout_s = if timeout_s == 0 {
                q.config.message_timeout_s
            } else {
                timeout_s
            };
            let until = now + timeout_s as u64 * 1000;
            let new = st.rids.next();
            q.apply_touch(id, new, until);
            // The reservation may now end sooner than any waiting long poll expects.
            q.waiters.notify_one();
            let buf = &mut st.scratch;
            buf.clear();
            buf.u32(no.0);
            buf.u64(id.0);
            buf.extend_from_slice(&new.0);
            buf.u64(until);
            ((new, until), st.append(&self.inner.log, Kind::Touch)?.1)
        };
        self.inner.log.wait_durable(end).await?;
        Ok(out)
    }

    /// Ends a reservation; the message becomes visible again after `delay_s`.
    pub async fn release(
        &self,
        key: &QueueKey,
        id: MessageId,
        rid: ReservationId,
        delay_s: u32,
    ) -> Result<()> {
        check_limit("delay", delay_s as u64, limits::DELAY_S_MAX as u64)?;
        let (end, waiters) = {
            let mut guard = self.inner.state.lock();
            let st = &mut *guard;
            let no = st.queue_no(key)?;
            let now = self.now_ms();
            let q = st.queues.get_mut(&no).expect("registered queue");
            q.tick(now);
            q.check_reservation(id, rid).map_err(|r| refusal(r, id))?;
            let visible_at = if delay_s > 0 {
                now + delay_s as u64 * 1000
            } else {
                0
            };
            q.apply_release(id, visible_at, now);
            let waiters = q.waiters.clone();
            let buf = &mut st.scratch;
            buf.clear();
            buf.u32(no.0);
            buf.u64(id.0);
            buf.u64(visible_at);
            (st.append(&self.inner.log, Kind::Release)?.1, waiters)
        };
        // Without a delay the message is visible now; with one, a waiting long poll must learn
        // the new due time (it only knows those that existed when it started waiting).
        waiters.notify_one();
        self.inner.log.wait_durable(end).await
    }

    /// Removes every message of a queue, reserved or not.
    pub async fn clear(&self, key: &QueueKey) -> Result<()> {
        let (end, gone) = {
            let mut guard = self.inner.state.lock();
            let st = &mut *guard;
            let no = st.queue_no(key)?;
            let buf = &mut st.scratch;
            buf.clear();
            buf.u32(no.0);
            let end = st.append(&self.inner.log, Kind::Clear)?.1;
            let q = st.queues.get_mut(&no).expect("registered queue");
            Counters::add(&self.inner.counters.deleted, q.size());
            (end, q.take_all())
        };
        let (_, durable) = tokio::join!(self.forget(gone), self.inner.log.wait_durable(end));
        durable
    }

    // ---- durable metadata for the server (projects, tokens) ----

    /// Sets (`Some`) or removes (`None`) a metadata value.
    pub async fn put_meta(&self, key: &str, value: Option<&[u8]>) -> Result<()> {
        if key.is_empty() || key.len() > limits::META_KEY_BYTES_MAX {
            return Err(Error::Invalid("metadata key must be 1 to 1024 bytes"));
        }
        if value.is_some_and(|v| v.len() > limits::META_VALUE_BYTES_MAX) {
            return Err(Error::Invalid("metadata value is too large"));
        }
        let end = {
            let mut guard = self.inner.state.lock();
            let st = &mut *guard;
            let buf = &mut st.scratch;
            buf.clear();
            record::put_meta(buf, key, value);
            let (start, end) = st.append(&self.inner.log, Kind::Meta)?;
            match value {
                Some(v) => {
                    st.meta
                        .insert(key.to_string(), (v.to_vec(), start.segment()));
                }
                None => {
                    st.meta.remove(key);
                }
            }
            end
        };
        self.inner.log.wait_durable(end).await
    }

    pub fn meta(&self, key: &str) -> Option<Vec<u8>> {
        self.inner
            .state
            .lock()
            .meta
            .get(key)
            .map(|(v, _)| v.clone())
    }

    /// Metadata entries whose keys start with `prefix`, in key order.
    pub fn meta_with_prefix(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let st = self.inner.state.lock();
        st.meta
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    // ---- maintenance ----

    /// Frees disk space: drops leading segments with no live message (rewriting the queue
    /// definitions and metadata they hold first), and relocates the live messages of the
    /// oldest segment when the log holds more than twice the live data.
    /// Does a bounded amount of work per call; the server calls it periodically.
    ///
    /// Then writes the restart index if the log has grown enough since the last one (see
    /// [`Engine::write_index`]); the report says if it did.
    pub fn maintain(&self) -> Result<MaintainReport> {
        let swept = self.sweep_expired_everywhere();
        let mut report = crate::retention::maintain(self)?;
        report.messages_expired += swept;
        Counters::add(&self.inner.counters.expired, report.messages_expired);
        report.index = match self.maintain_index() {
            // The index is a cache: on a full disk it is not written (the full disk is
            // reported on its own, `storage_full`), and retention's report stands.
            Err(Error::Io { cause, .. }) if crate::log::is_no_space(&cause) => None,
            r => r?,
        };
        Ok(report)
    }

    /// Deletes the expired messages at the head of every queue (as [`Engine::queue_info`]
    /// does for one), so that a queue no client touches loses them too: its counts drop,
    /// and retention can drop the segments they were in. A queue is swept again while its
    /// last sweep found any (each sweep looks at a bounded number of entries), for at most
    /// [`SWEEP_ROUNDS_MAX`] rounds, a few queues per hold of the state lock. Expiry is not
    /// logged: a replay finds the same messages expired. Returns how many went.
    fn sweep_expired_everywhere(&self) -> u64 {
        // The queues whose sweep found any, to be swept again.
        fn sweep(st: &mut State, no: QueueNo, now: u64, expired: &mut u64, due: &mut Vec<QueueNo>) {
            let n = st.settle_queue(no, now);
            if n > 0 {
                *expired += n;
                due.push(no);
            }
        }
        let (mut expired, mut due) = (0, Vec::new());
        self.each_queue(|st, no, now| sweep(st, no, now, &mut expired, &mut due));
        for _ in 1..SWEEP_ROUNDS_MAX {
            if due.is_empty() {
                break;
            }
            let last = std::mem::take(&mut due);
            self.each_queue_of(&last, |st, no, now| {
                sweep(st, no, now, &mut expired, &mut due)
            });
        }
        expired
    }

    /// While the disk is full: why no new log segment can be made. Posts that would need
    /// one are refused ([`Error::StorageFull`]) until one is made (after deletes let
    /// retention reuse an old segment's file, or space is freed).
    pub fn storage_full(&self) -> Option<String> {
        self.inner.log.no_space()
    }

    /// Whether the reserve segment is held: a spare segment file kept back for consumers'
    /// records on a full disk (see `FORMAT.md`, "Full disk").
    pub fn reserve_segment_held(&self) -> bool {
        self.inner.log.reserve_held()
    }

    pub(crate) fn index_tracker(&self) -> &crate::checkpoint::TrackerLock {
        &self.inner.index
    }

    pub(crate) fn push_wake_handle(&self) -> &Arc<tokio::sync::Notify> {
        &self.inner.push_wake
    }

    pub(crate) fn parts(
        &self,
    ) -> (
        &Mutex<State>,
        &Arc<Log>,
        &dyn Clock,
        &EngineConfig,
        &dyn Storage,
    ) {
        (
            &self.inner.state,
            &self.inner.log,
            &*self.inner.clock,
            &self.inner.config,
            &*self.inner.storage,
        )
    }

    pub fn stats(&self) -> EngineStats {
        let st = self.inner.state.lock();
        let log = &self.inner.log;
        let c = &self.inner.counters;
        EngineStats {
            fsyncs: log.fsyncs.load(Ordering::Relaxed),
            fsync_seconds: log.fsync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            fsync_buckets: std::array::from_fn(|i| log.fsync_buckets[i].load(Ordering::Relaxed)),
            segments: (log.end().segment().0 - st.first_segment.0 + 1) as u64,
            live_message_bytes: st.live.total,
            queues: st.queues.len() as u64,
            storage_full: log.no_space().is_some(),
            reserve_segment: self.reserve_segment_held(),
            messages_posted: c.posted.load(Ordering::Relaxed),
            messages_reserved: c.reserved.load(Ordering::Relaxed),
            messages_deleted: c.deleted.load(Ordering::Relaxed),
            messages_expired: c.expired.load(Ordering::Relaxed),
        }
    }

    /// Checks the records of the log that a loaded restart index let the open skip (the
    /// open checks only what comes after the index). `Ok(None)` when the open replayed the
    /// whole log and so checked everything already; `Ok(Some(frames))` when all held. Damage
    /// stops the engine, as a failed fsync does, and is returned: a damaged record before
    /// the tail is never served as if it were good. Blocks; meant for a background thread
    /// right after the open.
    pub fn verify_log_before_index(&self) -> Result<Option<u64>> {
        let crate::checkpoint::IndexUse::Loaded { covers } = self.recovery_report().index else {
            return Ok(None);
        };
        let (_, log, _, config, storage) = self.parts();
        let regions = log.regions_through(covers.segment());
        let checked = crate::recovery::verify_before(
            &regions,
            storage.root(),
            covers,
            config.record_bytes_max(),
        );
        if let Err(e) = &checked {
            log.fail(format!(
                "damage found in the log before the restart index: {e}"
            ));
        }
        checked.map(Some)
    }

    /// Whether an I/O failure has stopped the engine.
    pub fn is_failed(&self) -> bool {
        self.inner.log.is_failed()
    }

    /// Waits until everything appended so far is durable.
    pub async fn sync(&self) -> Result<()> {
        self.settle().await
    }

    /// Writes out everything and stops the log threads, then writes the restart index so
    /// the next open replays nothing. Later calls fail with `Closed`. The index is a cache:
    /// if writing it fails, the next open replays the log instead; call
    /// [`Engine::write_index`] afterwards to see the error.
    pub fn close(&self) {
        self.inner.log.shutdown();
        if !self.inner.log.is_failed() {
            let _ = self.write_index();
        }
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn check_invariants(&self) {
        let st = self.inner.state.lock();
        let mut live = 0;
        for q in st.queues.values() {
            q.check_invariants();
            live += q.size();
        }
        let counted: u64 = st.live.per_segment.values().map(|s| s.0).sum();
        assert_eq!(live, counted, "per-segment live counts");
    }
}

/// Everything appended is synced and the threads stop when the last handle goes.
impl Drop for Inner {
    fn drop(&mut self) {
        self.log.shutdown();
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaintainReport {
    pub segments_dropped: u64,
    pub messages_relocated: u64,
    /// Expired messages deleted: swept from the heads of queues, or met by relocation
    /// (which deletes an expired message instead of copying it).
    pub messages_expired: u64,
    pub definitions_rewritten: u64,
    /// The restart index written by this call, if one was due.
    pub index: Option<crate::checkpoint::IndexWrite>,
}

fn view((p, body, meta): (Pending, Vec<u8>, Vec<u8>)) -> MessageView {
    MessageView {
        id: p.id,
        body,
        meta,
        reserved_count: p.reserved_count,
        reservation: p.reservation,
    }
}

/// Whether [`Engine::forget`] walks these entries on the calling thread (a few pages)
/// rather than on the blocking pool.
fn gone_is_small(gone: &Entries) -> bool {
    gone.len() <= 16_384
}

/// Releases the state lock between two holds of a walk that takes it again at once: to a
/// thread parked on it, if any, and then gives up the CPU, so that one still spinning for
/// it (parking_lot yields a few times before it parks) gets it too. Without the yield, a
/// request waited 9-11 ms for the lock during a walk whose holds were each under 2 ms (its
/// thread and the walker's shared a CPU).
fn yield_lock(st: MutexGuard<'_, State>) {
    MutexGuard::unlock_fair(st);
    std::thread::yield_now();
}

/// Queues handled per hold of the state lock by walks over every queue
/// ([`Engine::all_queues`], the expiry sweep of [`Engine::maintain`]).
const QUEUES_PER_HOLD: usize = 8;
/// Rounds of that sweep per call at most (a queue's sweep looks at
/// [`crate::queue::SWEEP_SCAN_MAX`] entries at most: 64 rounds, about 1M messages).
const SWEEP_ROUNDS_MAX: usize = 64;

/// The file a process holding a data directory keeps locked.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Takes an exclusive lock on the data directory, so two processes never share a log.
pub(crate) fn lock_dir(dir: &std::path::Path) -> Result<File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("open", &path, e))?;
    #[expect(
        unsafe_code,
        reason = "flock on a descriptor we own; no memory is involved"
    )]
    // SAFETY: `file` is open for the duration of the call; flock only reads the descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(Error::Locked(dir.to_path_buf()));
    }
    Ok(file)
}
