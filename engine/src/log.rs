//! The append path: one log for all queues, group commit, segment rolling.
//!
//! Appenders (holding the engine's state lock, so appends are totally ordered) frame
//! records into an in-memory pipe. A committer takes everything in the pipe, writes it,
//! issues one fdatasync for the lot, and publishes the new durable position. Callers then
//! wait until the durable position passes their record: that is the group commit. The pipe
//! is bounded; appenders wait when it is full.
//!
//! The committer is the writer thread, or a caller of [`Log::wait_durable`] that finds the
//! log idle under `SyncPolicy::Never` (see [`Log::commit_inline`]): that caller writes the pipe itself,
//! which saves two thread wake-ups per commit when the load is light. Either holds the
//! `io` mutex from taking the pipe's contents until it has published their durability, so
//! commits never overlap and the durable position only moves forward.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::ids::{LogPos, SegmentId};
use crate::limits::PENDING_BYTES_MAX;
use crate::record::{self, FRAME_HEADER_BYTES, Kind};
use crate::segment::{self, HEADER_BYTES, SegmentHeader, Spare};
use crate::storage::{Region, Storage, StorageFile};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After an fdatasync that covers it (group commit). Nothing acknowledged is lost.
    Always,
    /// After it is written to the OS; fdatasync at most every `n` ms. A power cut can lose
    /// up to `n` ms of acknowledged writes; a process crash loses nothing.
    IntervalMs(u64),
    /// After it is written to the OS, never synced. For benchmarks only: a power cut can
    /// lose everything since the OS last flushed.
    Never,
}

/// Upper bounds (seconds) of the fsync latency histogram's buckets; one more bucket counts
/// everything slower than the last bound.
pub const FSYNC_BUCKET_BOUNDS_S: [f64; 12] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// A spare's zero-fill goes at least this fast, however slowly the log fills (see
/// [`Log::pace_spare`]): a 64 MiB spare is ready within 2 s. A rate, not a time: a 2 GiB
/// segment's zeros within 2 s would be 1 GB/s of writes in front of the log's syncs.
const SPARE_FILL_FLOOR_BYTES_PER_S: f64 = 32.0 * 1024.0 * 1024.0;
/// The zero-fill of a reserve that gets one (see [`SpareSlot::reserve`]: a dropped
/// segment's file, or a new file where the file system cannot reserve blocks) goes at this
/// fraction of [`SPARE_FILL_FLOOR_BYTES_PER_S`], whatever the fill: nothing waits for it
/// (its blocks are there), and a start makes it right after the next segment's spare,
/// under whatever load the start meets. If a roll takes the next segment's spare
/// meanwhile, this file becomes the next one and goes at that one's pace.
const RESERVE_FILL_SLOWDOWN: f64 = 4.0;
/// The spare's zero-fill keeps this far ahead of the active segment's fill (in 1/4ths:
/// done when the active segment is 4/5 full). Its zeros cost the device as many bytes as
/// the log itself; at 2× (done at half full) they came in bursts three times the log's
/// rate, and the log's fdatasyncs waited behind them: p99 of batch posts at 7,000 req/s
/// was 11-115 ms (median 31) against 9-21 ms (median 11) at 5/4, alternated in one sitting.
const SPARE_LEAD_QUARTERS: u64 = 5;

/// Under `Never` and `IntervalMs`, write-back of the active segment is started every this
/// many bytes. Without it, a roll's fdatasync wrote out the whole segment (64 MiB) while
/// every commit waited: at 7,000 batch posts/s, 20-60 ms every 0.75 s.
const WRITE_BACK_KICK_BYTES: u32 = 4 << 20;

/// Dropped segments kept to become spares, at most. A dropped segment's file is renamed
/// and zeroed in place rather than deleted and a new one allocated: its blocks are
/// allocated already, and a deleted 64 MiB file on a file system mounted with `discard` is
/// trimmed inside a journal commit that the log's fdatasyncs wait for (p99.9 of the
/// reserve + delete cycle: 27-31 ms with `discard`, 14 ms without).
const RECYCLED_MAX: usize = 2;

/// While no spare can be made for want of space, posts stop short of the active segment's
/// last 1/this (8 MiB of a 64 MiB segment), or of the room draining the oldest segment
/// takes if that is more ([`DRAIN_BYTES_PER_MESSAGE`]): that room is kept for the records
/// that let consumers drain the queues (reservations, deletes), so that retention can drop
/// old segments and the allocator reuse their files, which needs no new space. Posts resume
/// as soon as a spare is made.
const ROOM_KEPT_DIVISOR: u64 = 8;

/// Log bytes counted for consuming one message, to size the room kept on a full disk: a
/// reservation (32 B a message in a Reserve record) and a delete (8 B), with each record's
/// header shared by a batch of 100 about 40 B; counted at 64 B for smaller batches, touches
/// and releases. With messages of 100 B (about 140 B in the log), draining a segment takes
/// about 30 % of a segment: more than the [`ROOM_KEPT_DIVISOR`] floor.
pub(crate) const DRAIN_BYTES_PER_MESSAGE: u64 = 64;

/// How long a roll waits for the allocator to finish the spare it is making before it
/// makes one itself.
const SPARE_HURRY_WAIT_MAX: Duration = Duration::from_secs(5);

/// The log's writes end on a multiple of this (a page, the alignment of the spare's
/// direct zero-fill), with zeros after the records: what the file holds there already. A
/// spare's zeros go past the page cache ([`crate::storage::write_zeros_stepped`]), and a
/// write that covered only part of a page not in the cache would first read that page from
/// the disk, on the writer thread, while commits wait. Each write's last page is cached by
/// that write, so the next write's first page is too.
const WRITE_END_ALIGN: u64 = crate::storage::DIRECT_ALIGN;

/// Buckets of [`FSYNC_BUCKET_BOUNDS_S`] plus the overflow bucket.
pub(crate) const FSYNC_BUCKETS: usize = FSYNC_BUCKET_BOUNDS_S.len() + 1;

/// The bucket a sync of `nanos` falls in.
fn fsync_bucket(nanos: u64) -> usize {
    let s = nanos as f64 / 1e9;
    FSYNC_BUCKET_BOUNDS_S
        .iter()
        .position(|&b| s <= b)
        .unwrap_or(FSYNC_BUCKET_BOUNDS_S.len())
}

struct Chunk {
    segment: SegmentId,
    offset: u32,
    buf: Vec<u8>,
}

/// How often an idle writer thread looks for records appended without waking it (see
/// `Log::append`): those whose callers never wait for them (retention's rewrites).
const WRITER_IDLE_CHECK: Duration = Duration::from_millis(10);

/// Chunk buffers kept for reuse (each up to [`CHUNK_BUF_KEEP_BYTES`]).
const CHUNK_BUFS_KEPT: usize = 8;
const CHUNK_BUF_KEEP_BYTES: usize = 1 << 20;

/// The file being appended to. Whoever holds it is the committer (see the module doc).
struct Io {
    segment: SegmentId,
    file: Arc<dyn StorageFile>,
    /// Offset in `file` up to which records were written.
    written: u32,
    /// Offset in `file` up to which write-back was started (policies other than `Always`).
    kicked: u32,
}

struct Pipe {
    chunks: Vec<Chunk>,
    /// Emptied chunk buffers, reused by `append` (saves a 64 KiB allocation per commit).
    free: Vec<Vec<u8>>,
    bytes: usize,
    /// Where the next record goes.
    end: LogPos,
    /// Where the last record appended since start begins (the restart index names it).
    last_frame: Option<LogPos>,
    /// Highest id/queue floors to put in the next segment header.
    shutdown: bool,
}

pub(crate) struct Log {
    storage: Arc<dyn Storage>,
    segment_bytes: u64,
    record_bytes_max: usize,
    policy: SyncPolicy,
    /// Callers may commit inline: only with `Never`, where a commit is a `pwrite` into the
    /// page cache. With `Always` the commit ends in an fdatasync, which must not run on a
    /// caller's thread: callers are async tasks, and a sync (0.1 ms, or tens of ms when the
    /// disk stalls) would block a runtime worker and everything queued on it. `IntervalMs`
    /// leaves the timing of its syncs to the writer thread.
    inline: bool,
    io: Mutex<Io>,
    pipe: Mutex<Pipe>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes appenders waiting for room in the pipe.
    room: Condvar,
    durable: AtomicU64,
    durable_lock: Mutex<()>,
    durable_cv: Condvar,
    notify: tokio::sync::Notify,
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    regions: RwLock<HashMap<SegmentId, Arc<dyn Region>>>,
    spare: Mutex<SpareSlot>,
    /// `SpareSlot::head_synced` is false: the next sync of the active segment sets it (a
    /// flag outside the mutex, so that a commit's sync does not take it every time).
    head_unsynced: AtomicBool,
    spare_cv: Condvar,
    spare_counter: AtomicU64,
    /// The allocator is making a spare (set and cleared under the `spare` mutex).
    allocating: AtomicBool,
    /// The writer is waiting for the spare being made: stop pacing, finish it now.
    hurry: AtomicBool,
    /// A spare could not be made for want of space (cleared once the allocator holds both
    /// the next segment's spare and the reserve again): posts keep off the active
    /// segment's last part ([`ROOM_KEPT_DIVISOR`]) and out of later segments.
    no_space: AtomicBool,
    /// Why, while `no_space` is set.
    no_space_why: Mutex<String>,
    /// The segment posts were appended to when `no_space` was set: posts may go on there
    /// (short of the room kept), never in a later one, which consumers' records rolled
    /// into: that one, and the reserve, are theirs until `no_space` clears.
    full_segment: AtomicU64,
    /// While `no_space` is set: the log bytes consumers need to drain the oldest segment
    /// (its live messages × [`DRAIN_BYTES_PER_MESSAGE`]), noted by the engine before
    /// each post.
    drain_room: AtomicU64,
    /// Dropped segment files renamed to spare names, for the allocator to zero and use
    /// (at most [`RECYCLED_MAX`]).
    recycled: Mutex<Vec<String>>,
    /// An inline commit left write-back to start for the writer thread.
    kick_due: AtomicBool,
    /// Segments to delete once the durable position passes the given point.
    drops: Mutex<Vec<(LogPos, SegmentId)>>,
    /// Backup pins: (pin id, first pinned segment). A due drop of a segment at or after a
    /// pin's first segment waits until the pin is released (see `backup.rs`).
    pins: Mutex<Vec<(u64, SegmentId)>>,
    pin_counter: AtomicU64,
    /// Counters for stats.
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_nanos: AtomicU64,
    /// Group-commit syncs per latency bucket (not cumulative).
    pub(crate) fsync_buckets: [AtomicU64; FSYNC_BUCKETS],
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Whether a spare was named ahead for a segment ([`Log::name_ahead`]).
fn named_ahead((name, _): &Spare) -> bool {
    SegmentId::from_file_name(name).is_some()
}

/// The time allowance of one spare's zero-fill ([`Log::pace_spare`]): bytes it may have
/// written by `last`.
struct SparePace {
    last: Instant,
    allowed: f64,
}

/// The allocator's hand-over to the writer (under `Log::spare`).
struct SpareSlot {
    /// The next segment's file, once made. The allocator names it for the segment after
    /// `head` ([`Log::name_ahead`]) once `head`'s header is durable, so that the roll
    /// needs neither a rename nor a directory sync while commits wait.
    ready: Option<Spare>,
    /// One more spare, made after `ready` and kept back for a full disk: a roll takes it
    /// only when no other spare can be made for want of space. Consumers' records then
    /// have a whole segment more than the room kept in the active one
    /// ([`ROOM_KEPT_DIVISOR`]): with tiny messages (10 B), the reservations and deletes
    /// that drain a segment take more than a segment of their own. A new reserve only has
    /// its blocks reserved where the file system can (`fallocate`; it reads as zeros), so
    /// it costs no writes: its first use commits the allocation with each sync.
    reserve: Option<Spare>,
    /// The segment the writer writes, or is rolling to (set when it takes a spare).
    head: SegmentId,
    /// Whether `head`'s header is durable. Until it is, no file may take the next name:
    /// recovery removes an unstarted segment only as the last file, and a file named after
    /// one whose header a crash took would make that one damage in the middle of the log.
    head_synced: bool,
}

/// What recovery hands to the log to continue from.
pub(crate) struct Tail {
    pub segment: SegmentId,
    pub file: Arc<dyn StorageFile>,
    pub end: u32,
}

impl Log {
    pub(crate) fn start(
        storage: Arc<dyn Storage>,
        segment_bytes: u64,
        record_bytes_max: usize,
        policy: SyncPolicy,
        tail: Tail,
        regions: HashMap<SegmentId, Arc<dyn Region>>,
    ) -> Arc<Log> {
        let end = LogPos::new(tail.segment, tail.end);
        let log = Arc::new(Log {
            storage,
            segment_bytes,
            record_bytes_max,
            policy,
            inline: matches!(policy, SyncPolicy::Never),
            io: Mutex::new(Io {
                segment: tail.segment,
                file: tail.file,
                written: tail.end,
                kicked: 0,
            }),
            pipe: Mutex::new(Pipe {
                chunks: Vec::new(),
                free: Vec::new(),
                bytes: 0,
                end,
                last_frame: None,
                shutdown: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            durable: AtomicU64::new(end.0),
            durable_lock: Mutex::new(()),
            durable_cv: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            regions: RwLock::new(regions),
            spare: Mutex::new(SpareSlot {
                ready: None,
                reserve: None,
                head: tail.segment,
                // Recovery syncs the tail segment (`recovery::finish`).
                head_synced: true,
            }),
            head_unsynced: AtomicBool::new(false),
            spare_cv: Condvar::new(),
            spare_counter: AtomicU64::new(0),
            allocating: AtomicBool::new(false),
            no_space: AtomicBool::new(false),
            no_space_why: Mutex::new(String::new()),
            full_segment: AtomicU64::new(u64::MAX),
            drain_room: AtomicU64::new(0),
            recycled: Mutex::new(Vec::new()),
            kick_due: AtomicBool::new(false),
            hurry: AtomicBool::new(false),
            drops: Mutex::new(Vec::new()),
            pins: Mutex::new(Vec::new()),
            pin_counter: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            fsync_nanos: AtomicU64::new(0),
            fsync_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            threads: Mutex::new(Vec::new()),
        });
        let writer = {
            let log = log.clone();
            std::thread::Builder::new()
                .name("ferromq-log-writer".into())
                .spawn(move || log.writer_loop())
                .expect("spawn the log writer thread")
        };
        let allocator = {
            let log = log.clone();
            std::thread::Builder::new()
                .name("ferromq-segment-allocator".into())
                .spawn(move || log.allocator_loop())
                .expect("spawn the segment allocator thread")
        };
        log.threads.lock().extend([writer, allocator]);
        log
    }

    pub(crate) fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Error::Failed(
                self.failure.lock().clone().unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Frames `payload` as one record and queues it for writing. Returns the record's start
    /// (the frame header) and the position just past it. Must be called with the engine's
    /// state lock held, so that positions follow the order of state changes.
    ///
    /// `floors` supplies the id and queue-number floors for a new segment header, should
    /// this append roll the log.
    pub(crate) fn append(
        &self,
        kind: Kind,
        payload: &[u8],
        floors: (u64, u32),
    ) -> Result<(LogPos, LogPos)> {
        self.check()?;
        let frame_len = FRAME_HEADER_BYTES + payload.len();
        assert!(
            frame_len <= self.record_bytes_max + FRAME_HEADER_BYTES,
            "record over the limit"
        );
        let mut pipe = self.pipe.lock();
        while pipe.bytes > PENDING_BYTES_MAX && !self.failed.load(Ordering::Acquire) {
            self.room.wait(&mut pipe);
        }
        self.check()?;
        if pipe.shutdown {
            return Err(Error::Closed);
        }
        // With inline commits, the first record into an empty pipe does not wake the writer
        // thread: its caller is about to commit it inline (`wait_durable`), and wakes the
        // writer itself if it cannot. Records nobody waits for are picked up by the writer's
        // periodic check ([`WRITER_IDLE_CHECK`]).
        let wake_writer = !self.inline || !pipe.chunks.is_empty();
        let mut end = pipe.end;
        if kind == Kind::Post {
            self.post_room(end, frame_len)?;
        }
        if end.offset() as u64 + frame_len as u64 > self.segment_bytes {
            // Roll: the next segment starts with its header.
            let next = SegmentId(end.segment().0 + 1);
            let header = SegmentHeader {
                segment: next,
                next_message_id: floors.0,
                next_queue_no: floors.1,
            };
            pipe.chunks.push(Chunk {
                segment: next,
                offset: 0,
                buf: header.encode().to_vec(),
            });
            pipe.bytes += HEADER_BYTES;
            end = LogPos::new(next, HEADER_BYTES as u32);
        }
        let need_new_chunk = match pipe.chunks.last() {
            Some(c) => c.segment != end.segment(),
            None => true,
        };
        if need_new_chunk {
            let buf = pipe
                .free
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(frame_len.max(64 * 1024)));
            pipe.chunks.push(Chunk {
                segment: end.segment(),
                offset: end.offset(),
                buf,
            });
        }
        let seed = record::crc_seed(end.segment().0);
        let chunk = pipe.chunks.last_mut().expect("a chunk was just ensured");
        debug_assert_eq!(
            chunk.offset as usize + chunk.buf.len(),
            end.offset() as usize
        );
        record::frame(&mut chunk.buf, seed, kind, |b| b.extend_from_slice(payload));
        pipe.bytes += frame_len;
        let start = end;
        pipe.last_frame = Some(start);
        pipe.end = LogPos::new(end.segment(), end.offset() + frame_len as u32);
        let new_end = pipe.end;
        drop(pipe);
        if wake_writer {
            self.work.notify_one();
        }
        Ok((start, new_end))
    }

    /// Refuses a post record of `frame_len` bytes at `end` while no spare can be made for
    /// want of space and it would reach into the room kept for consumers
    /// ([`ROOM_KEPT_DIVISOR`], or the room draining the oldest segment takes), or land in
    /// a segment after the one posts were in when the disk filled (`full_segment`).
    fn post_room(&self, end: LogPos, frame_len: usize) -> Result<()> {
        // Every post append asks: the usual answer (space) costs one load.
        if !self.no_space.load(Ordering::Acquire) {
            return Ok(());
        }
        let kept =
            (self.segment_bytes / ROOM_KEPT_DIVISOR).max(self.drain_room.load(Ordering::Acquire));
        if end.segment().0 as u64 > self.full_segment.load(Ordering::Acquire)
            || (end.offset() as u64 + frame_len as u64).saturating_add(kept) > self.segment_bytes
        {
            return Err(Error::StorageFull(self.no_space_why.lock().clone()));
        }
        Ok(())
    }

    /// While no spare can be made for want of space: notes that the oldest segment holds
    /// `live_messages()` messages, which sizes the room kept for consumers. Called before
    /// every post record, under the state lock; does nothing in the usual case (space).
    pub(crate) fn note_oldest_live(&self, live_messages: impl FnOnce() -> u64) {
        if self.no_space.load(Ordering::Acquire) {
            self.drain_room.store(
                live_messages().saturating_mul(DRAIN_BYTES_PER_MESSAGE),
                Ordering::Release,
            );
        }
    }

    /// [`Log::post_room`] at the current end, for a post payload of `payload_len()` bytes:
    /// for a caller that would change state before appending (a post that creates its
    /// queue). In the usual case (space) neither the length nor the pipe's lock is needed.
    pub(crate) fn check_post_room(&self, payload_len: impl FnOnce() -> usize) -> Result<()> {
        if !self.no_space.load(Ordering::Acquire) {
            return Ok(());
        }
        self.post_room(self.end(), FRAME_HEADER_BYTES + payload_len())
    }

    /// The position after the last appended record.
    pub(crate) fn end(&self) -> LogPos {
        self.pipe.lock().end
    }

    /// The end, and where the record just before it begins if it was appended since start.
    pub(crate) fn end_and_last_frame(&self) -> (LogPos, Option<LogPos>) {
        let pipe = self.pipe.lock();
        (pipe.end, pipe.last_frame)
    }

    pub(crate) fn durable(&self) -> LogPos {
        LogPos(self.durable.load(Ordering::Acquire))
    }

    /// Waits until everything before `pos` is durable (per the sync policy). Commits
    /// inline when the log is idle (see [`Log::commit_inline`]).
    pub(crate) async fn wait_durable(&self, pos: LogPos) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= pos.0 {
            return Ok(());
        }
        if self.inline {
            self.commit_inline()?;
            if self.durable.load(Ordering::Acquire) < pos.0 {
                // A commit is under way, or a roll is due: the writer thread takes it from
                // here. Our record is in the pipe (or in the commit under way) already, and
                // the writer checks the pipe before it sleeps, so this cannot be lost.
                self.work.notify_one();
            }
        }
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.durable.load(Ordering::Acquire) >= pos.0 {
                return Ok(());
            }
            self.check()?;
            notified.await;
        }
    }

    /// If no commit is under way, writes (and with `Always` fdatasyncs) everything in the
    /// pipe on the calling thread and publishes it as durable, exactly as the writer thread
    /// would; otherwise returns at once and the caller waits for the writer. Leaves a roll
    /// (which may wait for the allocator) and shutdown to the writer thread.
    ///
    /// Why: handing each commit to the writer thread and back costs two cross-CPU wake-ups
    /// (the writer's, then the caller's), about 25 µs on this VM per commit, which is most
    /// of the gap to a raw `write` + `fdatasync` when one caller commits at a time. Under
    /// load the writer thread is usually mid-commit, so callers fall through to waiting and
    /// the group commit is as before: the writer takes the `io` mutex next and commits all
    /// that arrived meanwhile in one sync.
    fn commit_inline(&self) -> Result<()> {
        let Some(mut io) = self.io.try_lock() else {
            return Ok(());
        };
        let mut chunks = {
            let mut pipe = self.pipe.lock();
            if pipe.shutdown
                || pipe.chunks.is_empty()
                || pipe.chunks.iter().any(|c| c.segment != io.segment)
                || self.failed.load(Ordering::Acquire)
            {
                return Ok(());
            }
            pipe.bytes = 0;
            (std::mem::take(&mut pipe.chunks), pipe.end)
        };
        self.room.notify_all();
        let target = chunks.1;
        let done = self
            .write_chunks(&mut chunks.0, &mut io)
            .and_then(|()| match self.policy {
                SyncPolicy::Always => self.sync_counted(&io),
                _ => Ok(()),
            });
        if let Err(e) = done {
            self.fail(e.to_string());
            return Err(Error::Failed(e.to_string()));
        }
        self.durable.fetch_max(target.0, Ordering::AcqRel);
        let kick = self.write_back_due(&io);
        drop(io);
        self.wake_all();
        if kick {
            self.kick_due.store(true, Ordering::Release);
            self.work.notify_one();
        }
        let due_drops = !self.drops.lock().is_empty();
        {
            let mut pipe = self.pipe.lock();
            recycle(&mut pipe.free, &mut chunks.0);
        }
        if due_drops {
            // Deletions run on the writer thread; it may be asleep with them now due.
            self.work.notify_one();
        }
        Ok(())
    }

    /// fdatasync of the active segment, counted in the stats.
    fn sync_counted(&self, io: &Io) -> Result<()> {
        let t = Instant::now();
        // fsync errors are fatal (the caller fails the log): the kernel may have dropped
        // the dirty pages, so a retry could "succeed" with the data gone.
        io.file
            .sync_data()
            .map_err(|e| Error::io("fdatasync", self.path(&io.segment.file_name()), e))?;
        self.head_synced();
        let nanos = t.elapsed().as_nanos() as u64;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.fsync_buckets[fsync_bucket(nanos)].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Blocks the calling thread (not an async task) until everything before `pos` is
    /// durable, or the log fails.
    pub(crate) fn wait_durable_blocking(&self, pos: LogPos) -> Result<()> {
        self.work.notify_one();
        let mut guard = self.durable_lock.lock();
        // `wake_all` notifies under `durable_lock` after publishing, so checking under it
        // cannot miss a wake-up; the timeout only bounds the wait for a failure.
        while self.durable.load(Ordering::Acquire) < pos.0 {
            self.check()?;
            self.durable_cv
                .wait_for(&mut guard, Duration::from_millis(100));
        }
        Ok(())
    }

    /// The mapped segments up to and including `last`, in order.
    pub(crate) fn regions_through(&self, last: SegmentId) -> Vec<(SegmentId, Arc<dyn Region>)> {
        let mut v: Vec<_> = self
            .regions
            .read()
            .iter()
            .filter(|(id, _)| **id <= last)
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    pub(crate) fn region(&self, segment: SegmentId) -> Option<Arc<dyn Region>> {
        self.regions.read().get(&segment).cloned()
    }

    /// Deletes `segment` once everything up to `after` is durable.
    pub(crate) fn drop_segment_after(&self, segment: SegmentId, after: LogPos) {
        self.drops.lock().push((after, segment));
        self.work.notify_one();
    }

    pub(crate) fn fail(&self, what: String) {
        *self.failure.lock() = Some(what);
        self.failed.store(true, Ordering::Release);
        self.wake_all();
        // Take each condvar's mutex before notifying: a waiter that checked the flag just
        // before it was set holds that mutex until it sleeps, so the notify cannot be lost.
        drop(self.pipe.lock());
        self.room.notify_all();
        // The writer thread may be asleep when an inline commit fails: let it stop.
        self.work.notify_all();
        drop(self.spare.lock());
        self.spare_cv.notify_all();
    }

    fn wake_all(&self) {
        self.notify.notify_waiters();
        let _g = self.durable_lock.lock();
        self.durable_cv.notify_all();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.storage.root().join(name)
    }

    fn writer_loop(self: Arc<Self>) {
        let mut chunks = Vec::new();
        let mut last_sync = Instant::now();
        let mut dirty = false;
        loop {
            {
                let mut pipe = self.pipe.lock();
                loop {
                    if self.failed.load(Ordering::Acquire) {
                        // An inline commit failed; nothing more may be written.
                        return;
                    }
                    if !pipe.chunks.is_empty()
                        || pipe.shutdown
                        || self.has_due_drops()
                        || self.kick_due.load(Ordering::Acquire)
                    {
                        break;
                    }
                    if dirty && let SyncPolicy::IntervalMs(ms) = self.policy {
                        let left = Duration::from_millis(ms).saturating_sub(last_sync.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        self.work.wait_for(&mut pipe, left);
                        continue;
                    }
                    if self.inline {
                        self.work.wait_for(&mut pipe, WRITER_IDLE_CHECK);
                    } else {
                        self.work.wait(&mut pipe);
                    }
                }
            }
            let mut io = self.io.lock();
            let target;
            let shutdown;
            {
                let mut pipe = self.pipe.lock();
                recycle(&mut pipe.free, &mut chunks);
                std::mem::swap(&mut chunks, &mut pipe.chunks);
                pipe.bytes = 0;
                target = pipe.end;
                shutdown = pipe.shutdown;
            }
            self.room.notify_all();
            if self.failed.load(Ordering::Acquire) {
                return;
            }
            // An inline commit may have taken the records this thread was woken for.
            let wrote = !chunks.is_empty();
            if let Err(e) = self.write_chunks(&mut chunks, &mut io) {
                self.fail(e.to_string());
                return;
            }
            self.kick_write_back(&mut io);
            if chunks.capacity() > 64 {
                chunks.shrink_to(8);
            }
            dirty |= wrote;
            let must_sync = dirty
                && match self.policy {
                    SyncPolicy::Always => true,
                    SyncPolicy::IntervalMs(ms) => {
                        shutdown || last_sync.elapsed() >= Duration::from_millis(ms)
                    }
                    SyncPolicy::Never => false,
                };
            if must_sync {
                if let Err(e) = self.sync_counted(&io) {
                    self.fail(e.to_string());
                    return;
                }
                last_sync = Instant::now();
                dirty = false;
            }
            self.durable.fetch_max(target.0, Ordering::AcqRel);
            if shutdown && self.pipe.lock().chunks.is_empty() {
                if dirty && self.policy != SyncPolicy::Never {
                    let _ = io.file.sync_data();
                }
                drop(io);
                self.wake_all();
                let _ = self.run_due_drops();
                return;
            }
            drop(io);
            if wrote {
                self.wake_all();
            }
            if let Err(e) = self.run_due_drops() {
                self.fail(e.to_string());
                return;
            }
        }
    }

    fn write_chunks(&self, chunks: &mut [Chunk], io: &mut Io) -> Result<()> {
        let Io {
            segment,
            file,
            written,
            kicked,
        } = io;
        for chunk in chunks.iter_mut() {
            if chunk.segment != *segment {
                debug_assert_eq!(chunk.segment.0, segment.0 + 1);
                debug_assert_eq!(chunk.offset, 0);
                // Seal the old segment: its bytes must be durable before any of the new
                // one's are (recovery allows a torn tail in the last segment only).
                file.sync_data()
                    .map_err(|e| Error::io("fdatasync", self.path(&segment.file_name()), e))?;
                // Its header with it (two rolls in one batch: the first one's segment was
                // never synced by a commit).
                self.head_synced();
                let (spare_name, spare) = self.take_spare(chunk.segment)?;
                let name = chunk.segment.file_name();
                if spare_name != name {
                    // Not named ahead (the allocator fell behind). The name is durable
                    // before anything in the file is acknowledged; until the header is,
                    // recovery takes the file for an unstarted segment.
                    self.storage
                        .rename(&spare_name, &name)
                        .map_err(|e| Error::io("rename", self.path(&name), e))?;
                }
                // Under `Always`, synced with the rest of this commit: the file's blocks were
                // all written and synced as zeros, so that sync commits no metadata (but for
                // a reserve only `fallocate`d: its syncs commit the allocation as they go,
                // which fdatasync does for whatever a read of the data needs).
                self.write_to_page_end(&*spare, 0, &mut chunk.buf)
                    .map_err(|e| Error::io("write", self.path(&name), e))?;
                if self.policy != SyncPolicy::Always {
                    // The next sync may be far off (or never): the header is made durable
                    // now, so that the next file may be named (see `SpareSlot`) and no
                    // restart index (which covers records written, not synced, under these
                    // policies) names a segment whose header a crash could take.
                    spare
                        .sync_data()
                        .map_err(|e| Error::io("fdatasync", self.path(&name), e))?;
                    self.head_synced();
                }
                let region = spare
                    .map()
                    .map_err(|e| Error::io("mmap", self.path(&name), e))?;
                self.regions.write().insert(chunk.segment, region);
                *segment = chunk.segment;
                *file = spare;
                *written = chunk.buf.len() as u32;
                *kicked = 0;
                continue;
            }
            self.write_to_page_end(&**file, chunk.offset, &mut chunk.buf)
                .map_err(|e| Error::io("write", self.path(&segment.file_name()), e))?;
            *written = chunk.offset + chunk.buf.len() as u32;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` of a segment, and zeros after it up to the next
    /// [`WRITE_END_ALIGN`] boundary (or the segment's end). `buf` is as it was after.
    fn write_to_page_end(
        &self,
        file: &dyn StorageFile,
        offset: u32,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let len = buf.len();
        let end = offset as u64 + len as u64;
        let pad = (end.next_multiple_of(WRITE_END_ALIGN) - end)
            .min(self.segment_bytes.saturating_sub(end));
        buf.resize(len + pad as usize, 0);
        let written = file.write_at(offset as u64, buf);
        buf.truncate(len);
        written
    }

    /// Whether [`Log::kick_write_back`] has work.
    fn write_back_due(&self, io: &Io) -> bool {
        self.policy != SyncPolicy::Always && io.written - io.kicked >= WRITE_BACK_KICK_BYTES
    }

    /// Starts write-back of what was written since the last call, once there is enough
    /// (policies other than `Always`; see [`WRITE_BACK_KICK_BYTES`]). Writer thread only:
    /// `sync_file_range` can block while the device's queue is full, and an inline commit
    /// runs on an async caller's thread.
    fn kick_write_back(&self, io: &mut Io) {
        self.kick_due.store(false, Ordering::Release);
        if self.write_back_due(io) {
            // A hint: the roll's fdatasync, or the next interval's, finds the segment mostly
            // written back already. Failures show there, so they are not kept.
            let _ = io
                .file
                .start_write_back(io.kicked as u64, (io.written - io.kicked) as u64);
            io.kicked = io.written;
        }
    }

    /// The file for segment `to`, which the writer is rolling to: the allocator's, named
    /// `to`'s file name already (or under a spare name if it was not), else the reserve
    /// on a full disk, else a new spare.
    fn take_spare(&self, to: SegmentId) -> Result<Spare> {
        {
            let mut slot = self.spare.lock();
            if slot.ready.is_none() && self.allocating.load(Ordering::Acquire) {
                // The allocator is part-way through one: finishing it at full speed is
                // quicker than starting another here.
                self.hurry.store(true, Ordering::Release);
                let deadline = Instant::now() + SPARE_HURRY_WAIT_MAX;
                while slot.ready.is_none()
                    && self.allocating.load(Ordering::Acquire)
                    && !self.spare_cv.wait_until(&mut slot, deadline).timed_out()
                {}
            }
            // Only now: a spare made during the wait was named for `head` + 1 = `to`. The
            // next file is named for the segment after `to`, once `to`'s header is durable.
            slot.head = to;
            slot.head_synced = false;
            self.head_unsynced.store(true, Ordering::Release);
            if let Some(s) = slot.ready.take() {
                drop(slot);
                self.spare_cv.notify_all();
                return Ok(s);
            }
        }
        // The disk is full: the reserve, while there is one (the allocator makes another
        // once retention frees the room, before posts resume).
        if self.no_space.load(Ordering::Acquire)
            && let Some(reserve) = self.take_reserve()
        {
            return Ok(reserve);
        }
        // The allocator fell behind: make one here.
        let n = self.spare_counter.fetch_add(1, Ordering::Relaxed) | (1 << 62);
        match segment::create_spare(&*self.storage, n, self.segment_bytes) {
            Ok(out) => {
                self.spare_cv.notify_all();
                Ok(out)
            }
            Err(e) if is_no_space(&e) => {
                self.note_no_space(&e);
                self.take_reserve()
                    .ok_or_else(|| Error::io("preallocate", self.path("spare"), e))
            }
            Err(e) => Err(Error::io("preallocate", self.path("spare"), e)),
        }
    }

    /// The reserve spare ([`SpareSlot::reserve`]), if one is held.
    fn take_reserve(&self) -> Option<Spare> {
        let reserve = self.spare.lock().reserve.take();
        if reserve.is_some() {
            self.spare_cv.notify_all();
        }
        reserve
    }

    /// Whether a reserve spare is held ([`SpareSlot::reserve`]).
    pub(crate) fn reserve_held(&self) -> bool {
        self.spare.lock().reserve.is_some()
    }

    /// A spare could not be made for want of space: posts keep off the room kept for
    /// consumers ([`Log::post_room`]) until the allocator holds two again.
    fn note_no_space(&self, e: &std::io::Error) {
        *self.no_space_why.lock() = e.to_string();
        if !self.no_space.load(Ordering::Acquire) {
            self.full_segment
                .store(self.end().segment().0 as u64, Ordering::Release);
        }
        self.no_space.store(true, Ordering::Release);
    }

    /// Decides, before each step of a spare's zero-fill, whether to go on now (true), or
    /// sleeps a little first; false once the log is stopping. The spare is due when the
    /// active segment is 4/5 full ([`SPARE_LEAD_QUARTERS`]), and in any case at
    /// [`SPARE_FILL_FLOOR_BYTES_PER_S`]: writing its zeros no faster than that keeps them
    /// from crowding out the log's own syncs. A spare begun as the reserve (`for_reserve`)
    /// goes slower while the next segment's spare is ready ([`RESERVE_FILL_SLOWDOWN`]).
    /// The time allowance accrues at the rate of each moment (`pace`), so a reserve that
    /// becomes the next segment's spare speeds up without a burst of the zeros its slower
    /// rate held back.
    fn pace_spare(&self, pace: &mut SparePace, done: u64, for_reserve: bool) -> bool {
        let bytes = self.segment_bytes;
        if bytes <= 4 * crate::storage::STEP_BYTES {
            return !self.is_stopping();
        }
        loop {
            // A roll waiting for this spare (even one in the final write-out) comes first.
            if self.hurry.load(Ordering::Acquire) {
                return true;
            }
            if self.is_stopping() {
                return false;
            }
            let slow = for_reserve && self.spare.lock().ready.is_some();
            let (rate, by_fill) = if slow {
                (SPARE_FILL_FLOOR_BYTES_PER_S / RESERVE_FILL_SLOWDOWN, 0)
            } else {
                let fill = self.durable().offset() as u64;
                (
                    SPARE_FILL_FLOOR_BYTES_PER_S,
                    bytes.min(fill.saturating_mul(SPARE_LEAD_QUARTERS) / 4),
                )
            };
            let now = Instant::now();
            pace.allowed =
                (pace.allowed + rate * (now - pace.last).as_secs_f64()).min(bytes as f64);
            pace.last = now;
            if done < by_fill.max(pace.allowed as u64) {
                return true;
            }
            // When the time allowance catches up with `done`, at the latest.
            let nap = Duration::from_secs_f64((done as f64 - pace.allowed) / rate)
                .clamp(Duration::from_millis(1), Duration::from_millis(10));
            std::thread::sleep(nap);
        }
    }

    /// After a sync of the active segment: its header is durable.
    fn head_synced(&self) {
        if self.head_unsynced.swap(false, Ordering::AcqRel) {
            self.spare.lock().head_synced = true;
            self.spare_cv.notify_all();
        }
    }

    fn allocator_loop(self: Arc<Self>) {
        loop {
            // Whether this spare is begun as the reserve (the next segment's is ready).
            let for_reserve = {
                let mut slot = self.spare.lock();
                loop {
                    if self.is_stopping() {
                        return;
                    }
                    match &slot.ready {
                        None => break,
                        // The next segment's file is ready: then the reserve.
                        Some(ready) if named_ahead(ready) && slot.reserve.is_none() => break,
                        Some(ready) if !slot.head_synced || named_ahead(ready) => {
                            self.spare_cv.wait(&mut slot);
                            continue;
                        }
                        Some(_) => {}
                    }
                    // Named under the mutex: the writer cannot roll meanwhile, and a roll
                    // that is waiting for it rolls to `head` + 1.
                    let (head, ready) = (slot.head, slot.ready.take());
                    slot.ready = ready.and_then(|r| self.name_ahead(r, head));
                    if slot.ready.is_none() {
                        // Given up (see `name_ahead`): wait a little before the next.
                        drop(slot);
                        std::thread::sleep(Duration::from_millis(200));
                        slot = self.spare.lock();
                    }
                }
                self.allocating.store(true, Ordering::Release);
                slot.ready.is_some()
            };
            let mut allowance = SparePace {
                last: Instant::now(),
                allowed: 0.0,
            };
            let pace = &mut |done| self.pace_spare(&mut allowance, done, for_reserve);
            let recycled = self.recycled.lock().pop();
            // Whether it is zero-filled: a new reserve is only given its blocks where the
            // file system can (`segment::create_reserve_paced`).
            let made = match recycled.map(|name| {
                segment::refill_spare_paced(&*self.storage, name, self.segment_bytes, pace)
            }) {
                Some(Ok(made)) => Ok(made.map(|s| (s, true))),
                // Not reusable (another size, or it failed): a new file, as without one.
                None | Some(Err(_)) => {
                    let n = self.spare_counter.fetch_add(1, Ordering::Relaxed);
                    let bytes = self.segment_bytes;
                    if for_reserve {
                        segment::create_reserve_paced(&*self.storage, n, bytes, pace)
                    } else {
                        segment::create_spare_paced(&*self.storage, n, bytes, pace)
                            .map(|m| m.map(|s| (s, true)))
                    }
                }
            };
            let failed = {
                let mut slot = self.spare.lock();
                let failed = match made {
                    Ok(Some((s, zeroed))) => {
                        if slot.ready.is_none() && zeroed {
                            // Named at the top of the loop, if `head`'s header is durable.
                            slot.ready = Some(s);
                        } else if slot.reserve.is_none() {
                            slot.reserve = Some(s);
                        } else {
                            let _ = self.storage.remove(&s.0);
                        }
                        // Posts resume once the reserve is back too: after a full disk,
                        // the first file retention frees becomes the next segment's, the
                        // second the reserve.
                        if slot.reserve.is_some() {
                            self.no_space.store(false, Ordering::Release);
                        }
                        false
                    }
                    Ok(None) => false,
                    Err(e) => {
                        if is_no_space(&e) {
                            self.note_no_space(&e);
                        }
                        true
                    }
                };
                self.allocating.store(false, Ordering::Release);
                self.hurry.store(false, Ordering::Release);
                self.spare_cv.notify_all();
                failed
            };
            if failed {
                // Not fatal by itself: the writer makes its own spare when it needs one,
                // and fails loudly if that fails too.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Renames a new spare to the file name of the segment after `head` (the directory
    /// synced with it), so that the roll to it only writes. Until the writer gets there,
    /// the file is an unstarted segment: zeros where its header goes, which recovery
    /// removes (FORMAT.md, "Crash model"). If the rename fails, the spare is given up
    /// under both names (neither can be in use: the writer has not rolled past `head`),
    /// and the writer makes its own at the roll, which fails loudly if storage does.
    fn name_ahead(&self, (name, file): Spare, head: SegmentId) -> Option<Spare> {
        if self.is_stopping() {
            return Some((name, file));
        }
        let next = SegmentId(head.0 + 1).file_name();
        match self.storage.rename(&name, &next) {
            Ok(()) => Some((next, file)),
            Err(_) => {
                drop(file);
                let _ = self.storage.remove(&next);
                let _ = self.storage.remove(&name);
                None
            }
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.failed.load(Ordering::Acquire) || self.pipe.lock().shutdown
    }

    /// Pins every segment from `first` on against deletion until [`Log::unpin`]. Must be
    /// called with the engine's state lock held, so that retention cannot schedule the drop
    /// of `first` between reading it and pinning it.
    pub(crate) fn pin(&self, first: SegmentId) -> u64 {
        let id = self.pin_counter.fetch_add(1, Ordering::Relaxed);
        self.pins.lock().push((id, first));
        id
    }

    /// Releases a pin; drops it held back run at the writer's next turn.
    pub(crate) fn unpin(&self, id: u64) {
        self.pins.lock().retain(|(p, _)| *p != id);
        // Take the pipe mutex before notifying: the writer checks for due drops under it,
        // so this wake-up cannot fall between its check and its wait.
        drop(self.pipe.lock());
        self.work.notify_one();
    }

    /// The first pinned segment, if any pin is held.
    fn pinned_from(&self) -> Option<SegmentId> {
        self.pins.lock().iter().map(|(_, s)| *s).min()
    }

    fn has_due_drops(&self) -> bool {
        let durable = self.durable();
        let pinned = self.pinned_from();
        self.drops
            .lock()
            .iter()
            .any(|(after, seg)| *after <= durable && pinned.is_none_or(|p| *seg < p))
    }

    fn run_due_drops(&self) -> Result<()> {
        let durable = self.durable();
        let pinned = self.pinned_from();
        let due: Vec<SegmentId> = {
            let mut drops = self.drops.lock();
            let (due, keep): (Vec<_>, Vec<_>) = drops
                .drain(..)
                .partition(|(after, seg)| *after <= durable && pinned.is_none_or(|p| *seg < p));
            *drops = keep;
            due.into_iter().map(|(_, s)| s).collect()
        };
        if !due.is_empty() && self.policy != SyncPolicy::Always {
            // Under `Never` and `IntervalMs`, "durable" means written to the OS, not synced:
            // the records retention wrote before this drop (definitions and metadata written
            // again at the tail, relocated messages) must be on disk before the segment that
            // held them goes, or a power cut could lose both. Older segments were synced when
            // the log rolled past them, so syncing the active one covers everything.
            let io = self.io.lock();
            self.sync_counted(&io)?;
        }
        for seg in due {
            let region = self.regions.write().remove(&seg);
            // Only a file no reader still maps may be rewritten (as a spare).
            let unmapped = region.is_none_or(|r| Arc::strong_count(&r) == 1);
            let name = seg.file_name();
            let mut recycled = self.recycled.lock();
            if unmapped && recycled.len() < RECYCLED_MAX {
                let n = self.spare_counter.fetch_add(1, Ordering::Relaxed) | (1 << 61);
                let spare = segment::spare_name(n);
                self.storage
                    .rename(&name, &spare)
                    .map_err(|e| Error::io("rename", self.path(&name), e))?;
                recycled.push(spare);
                drop(recycled);
                self.spare_cv.notify_all();
            } else {
                drop(recycled);
                self.storage
                    .remove(&name)
                    .map_err(|e| Error::io("remove", self.path(&name), e))?;
            }
        }
        Ok(())
    }

    /// Writes out and syncs everything appended so far, then stops the threads.
    pub(crate) fn shutdown(&self) {
        self.pipe.lock().shutdown = true;
        self.work.notify_all();
        // The allocator checks `is_stopping` under the spare mutex and then sleeps: take that
        // mutex so this notify cannot fall between its check and its wait (a hang on drop).
        drop(self.spare.lock());
        self.spare_cv.notify_all();
        let threads: Vec<_> = self.threads.lock().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        // An unused spare named ahead gets a spare's name back: a closed directory holds only
        // started segments. Recovery removes spares, and unstarted segments after a crash.
        let mut slot = self.spare.lock();
        if let Some(spare) = slot.ready.take()
            && named_ahead(&spare)
        {
            let n = self.spare_counter.fetch_add(1, Ordering::Relaxed) | (1 << 60);
            let _ = self.storage.rename(&spare.0, &segment::spare_name(n));
        }
        drop(slot);
        self.wake_all();
    }

    /// Why no spare segment can be made, while that is for want of space.
    pub(crate) fn no_space(&self) -> Option<String> {
        self.no_space
            .load(Ordering::Acquire)
            .then(|| self.no_space_why.lock().clone())
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// Whether an I/O error says the file system is out of space (or over a quota).
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Empties `chunks`, keeping a few of their buffers in `free` for reuse.
fn recycle(free: &mut Vec<Vec<u8>>, chunks: &mut Vec<Chunk>) {
    for c in chunks.drain(..) {
        let mut buf = c.buf;
        if free.len() < CHUNK_BUFS_KEPT && buf.capacity() <= CHUNK_BUF_KEEP_BYTES {
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SimStorage;

    fn start(policy: SyncPolicy) -> (Arc<SimStorage>, Arc<Log>) {
        let storage = Arc::new(SimStorage::new());
        let segment = SegmentId(1);
        let file = storage.create(&segment.file_name()).expect("create");
        let header = SegmentHeader {
            segment,
            next_message_id: 0,
            next_queue_no: 0,
        };
        file.write_at(0, &header.encode()).expect("header");
        file.sync_data().expect("sync");
        let tail = Tail {
            segment,
            file,
            end: HEADER_BYTES as u32,
        };
        let log = Log::start(
            storage.clone(),
            256 * 1024,
            4096,
            policy,
            tail,
            HashMap::new(),
        );
        (storage, log)
    }

    #[test]
    fn every_write_of_the_log_ends_on_a_page_boundary_with_zeros_after_the_records() {
        // `Never`: nothing is synced, so every write stays listed.
        let (storage, log) = start(SyncPolicy::Never);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut ends = Vec::new();
        for i in 0..50usize {
            let payload = vec![b'x'; 1 + i * 97 % 3000];
            let (_, end) = log.append(Kind::Meta, &payload, (0, 0)).expect("append");
            rt.block_on(log.wait_durable(end)).expect("written");
            ends.push(end);
        }
        let name = SegmentId(1).file_name();
        let spans = storage.unsynced_write_spans(&name);
        assert!(!spans.is_empty());
        for (start, end) in &spans {
            assert!(end % WRITE_END_ALIGN == 0 && end > start, "{start}..{end}");
        }
        let bytes = storage.contents(&name).expect("segment");
        let last = ends.last().expect("an end").offset() as usize;
        let page_end = last.next_multiple_of(WRITE_END_ALIGN as usize);
        assert!(bytes[last..page_end].iter().all(|&b| b == 0));
        log.shutdown();
    }

    #[test]
    fn a_waited_record_on_an_idle_log_takes_one_sync_and_is_in_the_synced_image() {
        let (storage, log) = start(SyncPolicy::Always);
        let (_, end) = log.append(Kind::Meta, b"payload", (0, 0)).expect("append");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(log.wait_durable(end)).expect("durable");
        assert!(log.durable() >= end);
        assert_eq!(
            log.fsyncs.load(Ordering::Relaxed),
            1,
            "one sync for the record"
        );
        let synced = storage
            .durable_contents(&SegmentId(1).file_name())
            .expect("segment");
        assert!(
            synced.len() >= end.offset() as usize,
            "the record is in the synced image"
        );
        log.shutdown();
    }

    #[test]
    fn a_record_nobody_waits_for_is_written_by_the_writer_thread() {
        let (_storage, log) = start(SyncPolicy::Always);
        let (_, end) = log.append(Kind::Meta, b"payload", (0, 0)).expect("append");
        let deadline = Instant::now() + Duration::from_secs(5);
        while log.durable() < end && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(log.durable() >= end, "written within the idle check");
        log.shutdown();
    }

    #[test]
    fn concurrent_waiters_are_all_durable_with_no_more_syncs_than_records() {
        let (_storage, log) = start(SyncPolicy::Always);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let ends: Vec<LogPos> = rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let log = log.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ends = Vec::new();
                    for _ in 0..50 {
                        let (_, end) = log.append(Kind::Meta, b"payload", (0, 0)).expect("append");
                        log.wait_durable(end).await.expect("durable");
                        assert!(log.durable() >= end, "acknowledged only when durable");
                        ends.push(end);
                    }
                    ends
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("task"));
            }
            all
        });
        assert_eq!(ends.len(), 400);
        assert!(log.fsyncs.load(Ordering::Relaxed) <= 400);
        log.shutdown();
    }

    #[test]
    fn fsync_buckets_are_upper_bounds() {
        assert_eq!(fsync_bucket(0), 0);
        assert_eq!(fsync_bucket(100_000), 0);
        assert_eq!(fsync_bucket(100_001), 1);
        assert_eq!(fsync_bucket(1_000_000_000), FSYNC_BUCKET_BOUNDS_S.len() - 1);
        assert_eq!(fsync_bucket(5_000_000_000), FSYNC_BUCKET_BOUNDS_S.len());
    }
}
