//! The restart index (`index.idx`): a cache of the engine's state as of one log position,
//! so that an open replays only the records after that position instead of the whole log.
//!
//! The log stays the only truth. The index is written whole to a temporary file, synced and
//! renamed over the old one (never modified in place), and only ever covers records that
//! are durable. On open it is used only if its checksums hold, the position it covers is
//! still in the log and is the end of the very record it names, the records after it check,
//! and every segment its messages live in is still there. Anything else means it is
//! removed and the whole log is replayed; a missing index costs time, never data.
//!
//! Layout (all little-endian, FORMAT.md has the byte diagram):
//! { header: 64 B | metas: u32 × meta | queues: u32 × queue }, where a queue carries its
//! definition and then three fixed-width tables (32-byte message entries in id order, 32-byte
//! reservations, 16-byte delays) and, for push queues, the delivery states.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::engine::{Engine, State};
use crate::entries::Entries;
use crate::error::{Error, Result};
use crate::ids::{LogPos, QueueKey, QueueNo, ReservationId, SegmentId};
use crate::log::Log;
use crate::push::Done;
use crate::queue::{Entry, LiveBytes, MsgState, Queue, Timers};
use crate::record::{self, FRAME_HEADER_BYTES, FrameCheck, Put, Reader};
use crate::storage::{Region, STEP_BYTES, Storage, StorageFile};
use crate::types::{PushAttempt, PushStatus, PushSubState};

/// The index file, in the data directory.
pub(crate) const FILE: &str = "index.idx";
/// Where a new index is written before it is swapped with [`FILE`] (which leaves the old
/// index here, to be rewritten in place by the next write; the open removes it).
pub(crate) const TMP: &str = "index.idx.tmp";

pub const INDEX_VERSION: u16 = 1;
pub const INDEX_HEADER_BYTES: usize = 64;
const MAGIC: [u8; 8] = *b"FERROMQI";
const ENTRY_BYTES: usize = 32;
const RESERVATION_BYTES: usize = 32;
const DELAY_BYTES: usize = 16;
/// Where a segment header keeps its checksum (its last four bytes, FORMAT.md).
/// How fast maintenance writes the restart index. Written at full speed, the index of
/// 4M messages (128 MiB) kept the device busy for about half a second, and the log's
/// fdatasyncs waited behind it: p99 of durable batch posts at 6,800 req/s went from
/// 17–29 ms to 140–150 ms. At this rate the index of 10M messages (305 MiB) takes ~4 s.
const INDEX_WRITE_BYTES_PER_S: u64 = 80 << 20;
const SEGMENT_CRC_AT: usize = crate::segment::HEADER_BYTES - 4;
/// `due_ms` value meaning "nothing scheduled" (as in Push records).
const NOT_DUE: u64 = u64::MAX;

/// The segment the restart index in `storage` covers a position of, if there is an index
/// with a sound header. The log can never end before it: the index covers only durable
/// records, and the tail segment is never deleted.
pub(crate) fn covered_segment(storage: &dyn Storage) -> Option<SegmentId> {
    let file = storage.open(FILE).ok()?;
    let mut b = [0u8; INDEX_HEADER_BYTES];
    file.read_at(0, &mut b).ok()?;
    Header::decode(&b).ok().map(|h| h.covers.segment())
}

/// What the open did with the restart index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IndexUse {
    /// There was none: the whole log was replayed.
    #[default]
    Absent,
    /// It was loaded; only the records after `covers` were checked and replayed.
    Loaded { covers: LogPos },
    /// It was unusable, so it was removed and the whole log was replayed.
    Ignored(IndexRejection),
}

/// Why an index was not used. None of these loses data: the log is replayed instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IndexRejection {
    #[error("the index file could not be read")]
    Unreadable,
    #[error("the index file is shorter than its header says (a torn write)")]
    Truncated,
    #[error("bad index magic")]
    BadMagic,
    #[error("unsupported index version {0}")]
    UnsupportedVersion(u16),
    #[error("index header checksum mismatch")]
    HeaderChecksum,
    #[error("index checksum mismatch")]
    Checksum,
    #[error("the index contents do not decode")]
    Malformed,
    #[error("the log position the index covers is not in the log (dropped or never durable)")]
    NotInLog,
    #[error("the record the index names before its position does not match the log")]
    LogMismatch,
    #[error("the index refers to a segment that is not in the log")]
    MissingSegment,
    /// Live messages lie in a segment before the log's first one: its file is gone, though
    /// retention never drops a segment that holds live messages. Not a reason to replay
    /// the whole log (which would lose them in silence): the open fails.
    #[error(
        "{messages} live messages lie in segment {segment}, whose file is missing at the \
         front of the log"
    )]
    LostSegment { segment: u32, messages: u64 },
    #[error("the log after the index's position does not check; a full replay decides")]
    TailUnchecked,
}

/// What [`Engine::write_index`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexWrite {
    /// The log position the index on disk now covers.
    pub covers: LogPos,
    /// False when the index on disk already covered the log's end (nothing was written).
    pub written: bool,
    /// Size of the index file.
    pub bytes: u64,
    /// Live messages in it.
    pub messages: u64,
    /// How long the state lock was held to copy the state.
    pub lock_held: Duration,
}

// ---- header ----

/// Format (index header, 64 bytes): { magic: [u8;8] = "FERROMQI" | version: u16 |
///   header_len: u16 | covers_segment: u32 | covers_offset: u32 | last_frame_at: u32 |
///   last_frame_crc: u32 | next_queue_no: u32 | next_message_id: u64 | body_bytes: u64 |
///   segment_crc: u32 | zero: u32 | body_crc: u32 | header_crc: u32 } — header_crc over
///   bytes 0..60.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub covers: LogPos,
    /// Offset (in the covered segment) of the record that ends at `covers`; 0 when
    /// `covers` is the first record position of its segment.
    pub last_frame_at: u32,
    /// That record's checksum field.
    pub last_frame_crc: u32,
    pub next_queue: u32,
    pub next_id: u64,
    pub body_bytes: u64,
    /// The checksum field of the covered segment's header (which holds the id floor of
    /// the moment it began): with the last record, ties the index to this very log.
    pub segment_crc: u32,
    pub body_crc: u32,
}

impl Header {
    pub fn encode(&self) -> [u8; INDEX_HEADER_BYTES] {
        let mut b = [0u8; INDEX_HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&INDEX_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(INDEX_HEADER_BYTES as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.covers.segment().0.to_le_bytes());
        b[16..20].copy_from_slice(&self.covers.offset().to_le_bytes());
        b[20..24].copy_from_slice(&self.last_frame_at.to_le_bytes());
        b[24..28].copy_from_slice(&self.last_frame_crc.to_le_bytes());
        b[28..32].copy_from_slice(&self.next_queue.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.body_bytes.to_le_bytes());
        b[48..52].copy_from_slice(&self.segment_crc.to_le_bytes());
        b[56..60].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Header, IndexRejection> {
        if b.len() < INDEX_HEADER_BYTES {
            return Err(IndexRejection::Truncated);
        }
        if b[0..8] != MAGIC {
            return Err(IndexRejection::BadMagic);
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        if crc32fast::hash(&b[0..60]) != u32_at(60) {
            return Err(IndexRejection::HeaderChecksum);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != INDEX_VERSION {
            return Err(IndexRejection::UnsupportedVersion(version));
        }
        if u16::from_le_bytes([b[10], b[11]]) as usize != INDEX_HEADER_BYTES || u32_at(52) != 0 {
            return Err(IndexRejection::Malformed);
        }
        Ok(Header {
            covers: LogPos::new(SegmentId(u32_at(12)), u32_at(16)),
            last_frame_at: u32_at(20),
            last_frame_crc: u32_at(24),
            next_queue: u32_at(28),
            next_id: u64_at(32),
            body_bytes: u64_at(40),
            segment_crc: u32_at(48),
            body_crc: u32_at(56),
        })
    }
}

// ---- body codec ----

/// Format (entry, 32 bytes): { id: u64 | segment: u32 | body_offset: u32 | body_len: u32 |
///   expires_at_s: u32 | meta_len: u16 | reserved_count: u16 | state: u8 (0 visible,
///   1 delayed, 2 reserved) | zero: [u8;3] }
fn put_entry(buf: &mut Vec<u8>, e: &Entry) {
    let mut b = [0u8; ENTRY_BYTES];
    b[0..8].copy_from_slice(&e.id.to_le_bytes());
    b[8..12].copy_from_slice(&e.segment.to_le_bytes());
    b[12..16].copy_from_slice(&e.offset.to_le_bytes());
    b[16..20].copy_from_slice(&e.body_len.to_le_bytes());
    b[20..24].copy_from_slice(&e.expires_at_s.to_le_bytes());
    b[24..26].copy_from_slice(&e.meta_len.to_le_bytes());
    b[26..28].copy_from_slice(&e.reserved_count.to_le_bytes());
    b[28] = match e.state {
        MsgState::Visible => 0,
        MsgState::Delayed => 1,
        MsgState::Reserved => 2,
        MsgState::Deleted => unreachable!("tombstones are not written"),
    };
    buf.extend_from_slice(&b);
}

#[inline(always)]
fn get_entry(b: &[u8; ENTRY_BYTES]) -> std::result::Result<Entry, IndexRejection> {
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let state = match b[28] {
        0 => MsgState::Visible,
        1 => MsgState::Delayed,
        2 => MsgState::Reserved,
        _ => return Err(IndexRejection::Malformed),
    };
    if b[29] | b[30] | b[31] != 0 {
        return Err(IndexRejection::Malformed);
    }
    Ok(Entry {
        id: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        segment: u32_at(8),
        offset: u32_at(12),
        body_len: u32_at(16),
        expires_at_s: u32_at(20),
        meta_len: u16::from_le_bytes([b[24], b[25]]),
        reserved_count: u16::from_le_bytes([b[26], b[27]]),
        state,
    })
}

/// Format (push sub-state): { subscriber: str16 | status: u8 | tries: u32 | status_code: u16 |
///   last_try_ms: u64 | due_ms: u64 (u64::MAX: none) | has_rid: u8 | rid: [u8;16] |
///   msg: str16 | attempts: u8 × { at_ms: u64 | status_code: u16 | latency_ms: u32 |
///   error: str16 } }
fn put_sub(buf: &mut Vec<u8>, s: &PushSubState) {
    buf.bytes16(s.subscriber.as_bytes());
    buf.u8(s.status as u8);
    buf.u32(s.tries);
    buf.u16(s.status_code);
    buf.u64(s.last_try_ms);
    buf.u64(s.due_ms.unwrap_or(NOT_DUE));
    buf.u8(s.reservation.is_some() as u8);
    buf.extend_from_slice(&s.reservation.unwrap_or_default().0);
    buf.bytes16(s.msg.as_bytes());
    buf.u8(s.attempts.len() as u8);
    for a in &s.attempts {
        buf.u64(a.at_ms);
        buf.u16(a.status_code);
        buf.u32(a.latency_ms);
        buf.bytes16(a.error.as_bytes());
    }
}

type R<T> = std::result::Result<T, IndexRejection>;

fn malformed<T>(_: T) -> IndexRejection {
    IndexRejection::Malformed
}

fn get_sub(r: &mut Reader<'_>) -> R<PushSubState> {
    let subscriber = r.str16().map_err(malformed)?.to_string();
    let status =
        PushStatus::from_byte(r.u8().map_err(malformed)?).ok_or(IndexRejection::Malformed)?;
    let tries = r.u32().map_err(malformed)?;
    let status_code = r.u16().map_err(malformed)?;
    let last_try_ms = r.u64().map_err(malformed)?;
    let due = r.u64().map_err(malformed)?;
    let has_rid = r.u8().map_err(malformed)?;
    let rid = r.rid().map_err(malformed)?;
    let reservation = match has_rid {
        0 => None,
        1 => Some(rid),
        _ => return Err(IndexRejection::Malformed),
    };
    let msg = r.str16().map_err(malformed)?.to_string();
    let n = r.u8().map_err(malformed)? as usize;
    if n > crate::limits::PUSH_ATTEMPTS_KEPT {
        return Err(IndexRejection::Malformed);
    }
    let mut attempts = Vec::with_capacity(n);
    for _ in 0..n {
        attempts.push(PushAttempt {
            at_ms: r.u64().map_err(malformed)?,
            status_code: r.u16().map_err(malformed)?,
            latency_ms: r.u32().map_err(malformed)?,
            error: r.str16().map_err(malformed)?.to_string(),
        });
    }
    Ok(PushSubState {
        subscriber,
        status,
        tries,
        status_code,
        last_try_ms,
        due_ms: (due != NOT_DUE).then_some(due),
        reservation,
        msg,
        attempts,
    })
}

fn get_subs(r: &mut Reader<'_>) -> R<Vec<PushSubState>> {
    let n = r.u16().map_err(malformed)? as usize;
    (0..n).map(|_| get_sub(r)).collect()
}

/// What [`capture`] took under the state lock: the index body with a hole where each
/// queue's entries go, and a snapshot of those entries ([`Entries`] clones share their
/// chunks) to fill the holes with as the file is written, after the lock is released.
pub(crate) struct Capture {
    /// Header space (zero) followed by the body, but for the entries.
    buf: Vec<u8>,
    /// Where each queue's live entries, reservations and delays go, and which parts of
    /// `buf` go out in another order, in `buf` order.
    parts: Vec<Part>,
    covers: LogPos,
    last_frame: Option<LogPos>,
    next_id: u64,
    next_queue: u32,
    messages: u64,
}

/// What [`Capture::write_to`] does at a place in `buf` besides copying it.
enum Part {
    /// Writes a queue's entries, reservations and delays there.
    Hole(Hole),
    /// The push delivery states of a queue: `(id, from, to)` ranges of `buf`, one per
    /// message, adjoining, in the order they were encoded; written in id order
    /// ([`Capture::put_in_order`] sorts them, after the lock is released).
    Sorted(Vec<(u64, usize, usize)>),
}

/// A queue's part of the index that [`capture`] snapshots rather than writes: its live
/// entries, reservations and delays, written at `at` in `buf` (after their counts).
struct Hole {
    at: usize,
    entries: Entries,
    live: u64,
    timers: Timers,
}

impl Capture {
    /// Puts what was captured in an order of its own in the file's order (without the lock).
    pub(crate) fn put_in_order(&mut self) {
        for part in &mut self.parts {
            if let Part::Sorted(ranges) = part {
                ranges.sort_unstable_by_key(|r| r.0);
            }
        }
    }

    /// Writes the whole file but the header (its place stays zero): the bytes taken under
    /// the lock with each queue's entries, reservations and delays in its hole, and its
    /// push states in id order.
    fn write_to(&self, out: &mut Stream<'_>) -> std::io::Result<()> {
        // The counts written before a hole must match what goes in it: else no index is
        // written (the open would reject it) rather than a shutdown stopped.
        let mismatch = |what: &str, counted: u64, held: u64| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a queue counts {counted} {what} but holds {held}"),
            )
        };
        let mut at = 0;
        let mut bytes = Vec::new();
        for part in &self.parts {
            let hole = match part {
                Part::Hole(hole) => hole,
                Part::Sorted(ranges) => {
                    // The ranges cover `buf` from their lowest start to their highest end.
                    let (Some(from), Some(to)) = (
                        ranges.iter().map(|r| r.1).min(),
                        ranges.iter().map(|r| r.2).max(),
                    ) else {
                        continue;
                    };
                    out.put(&self.buf[at..from])?;
                    for &(_, from, to) in ranges {
                        out.put(&self.buf[from..to])?;
                    }
                    at = to;
                    continue;
                }
            };
            out.put(&self.buf[at..hole.at])?;
            let mut n = 0;
            for e in hole.entries.iter().filter(|e| e.state != MsgState::Deleted) {
                out.put_entry(e)?;
                n += 1;
            }
            if n != hole.live {
                return Err(mismatch("live messages", hole.live, n));
            }
            bytes.clear();
            for (id, rid, until) in hole.timers.reservations() {
                bytes.u64(id);
                bytes.extend_from_slice(&rid.0);
                bytes.u64(until);
            }
            let delays = hole.timers.delays(&hole.entries);
            if delays.len() as u64 != hole.timers.delay_count() {
                let held = delays.len() as u64;
                return Err(mismatch(
                    "delayed messages",
                    hole.timers.delay_count(),
                    held,
                ));
            }
            for (id, visible_at) in delays {
                bytes.u64(id);
                bytes.u64(visible_at);
            }
            out.put(&bytes)?;
            at = hole.at;
        }
        out.put(&self.buf[at..])?;
        out.flush()
    }
}

/// The index file as it is written: bytes go out in steps of about [`STEP_BYTES`], each
/// written back on its own (see [`crate::storage::write_zeros_stepped`]) and checksummed on the way, so that
/// neither the file nor a copy of it is ever whole in memory.
struct Stream<'a> {
    file: &'a dyn StorageFile,
    step: Vec<u8>,
    /// File offset of `step[0]`.
    at: u64,
    body_crc: crc32fast::Hasher,
    pace: &'a mut dyn FnMut(u64) -> bool,
}

impl Stream<'_> {
    fn put(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = (STEP_BYTES as usize - self.step.len()).min(bytes.len());
            self.step.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.step.len() >= STEP_BYTES as usize {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn put_entry(&mut self, e: &Entry) -> std::io::Result<()> {
        if self.step.len() + ENTRY_BYTES > STEP_BYTES as usize {
            self.flush()?;
        }
        put_entry(&mut self.step, e);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.step.is_empty() {
            return Ok(());
        }
        // `pace` never calls the write off (see `write_locked`).
        (self.pace)(self.at);
        let len = self.step.len();
        self.file.write_at(self.at, &self.step)?;
        self.file.write_back(self.at, len as u64)?;
        // The header's place is not part of the body's checksum.
        let body_from = (INDEX_HEADER_BYTES as u64).saturating_sub(self.at) as usize;
        self.body_crc.update(&self.step[body_from.min(len)..]);
        self.at += len as u64;
        self.step.clear();
        Ok(())
    }
}

/// Copies the state as of `covers` (the log's end while the state lock is held), all but
/// the message entries, reservations and delays, which it snapshots (see [`Capture`]).
/// Format (body): { metas: u32 × { key: str16 | segment: u32 | value: bytes32 } |
///   queues: u32 × queue }
/// Format (queue): { def: bytes32 (a QueueDef payload) | def_segment: u32 | entries: u64 |
///   reservations: u64 | delays: u64 | entries × 32 B | reservations × { id: u64 |
///   reservation_id: [u8;16] | until_ms: u64 } | delays × { id: u64 | visible_at_ms: u64 } |
///   push: u8 (0: pull queue) [| states: u32 × { id: u64 | subs: u16 × sub } |
///   finished: u32 × { finished_ms: u64 | entry: 32 B | subs: u16 × sub }] }
pub(crate) fn capture(
    st: &State,
    covers: LogPos,
    last_frame: Option<LogPos>,
    mut buf: Vec<u8>,
) -> Capture {
    let messages: u64 = st.queues.values().map(|q| q.size()).sum();
    buf.clear();
    buf.resize(INDEX_HEADER_BYTES, 0);
    buf.u32(st.meta.len() as u32);
    for (k, (v, seg)) in &st.meta {
        buf.bytes16(k.as_bytes());
        buf.u32(seg.0);
        buf.bytes32(v);
    }
    let mut nos: Vec<QueueNo> = st.queues.keys().copied().collect();
    nos.sort();
    buf.u32(nos.len() as u32);
    let mut parts = Vec::with_capacity(nos.len());
    let mut def = Vec::new();
    for no in nos {
        let q = &st.queues[&no];
        def.clear();
        record::put_queue_def(
            &mut def,
            &record::QueueDef {
                queue: no,
                total_messages: q.total_messages,
                project: &q.key.project,
                name: &q.key.name,
                config: q.config.clone(),
            },
        );
        buf.bytes32(&def);
        buf.u32(q.def_segment.0);
        let timers = q.timers_snapshot();
        buf.u64(q.size());
        buf.u64(timers.reservation_count());
        buf.u64(timers.delay_count());
        parts.push(Part::Hole(Hole {
            at: buf.len(),
            entries: q.entries_snapshot(),
            live: q.size(),
            timers,
        }));
        match &q.push {
            None => buf.u8(0),
            Some(p) => {
                buf.u8(1);
                // Encoded in the table's order, put in id order after the lock is released
                // (sorting them here, a vector per message, held it 0.25 s for 1M messages).
                let count_at = buf.len();
                buf.u32(0);
                let mut ranges = Vec::with_capacity(p.states_len());
                for (id, subs) in p.recorded_states() {
                    let from = buf.len();
                    buf.u64(id);
                    let n_at = buf.len();
                    buf.u16(0);
                    let mut n = 0u16;
                    for s in subs {
                        put_sub(&mut buf, s);
                        n += 1;
                    }
                    buf[n_at..n_at + 2].copy_from_slice(&n.to_le_bytes());
                    ranges.push((id, from, buf.len()));
                }
                buf[count_at..count_at + 4].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
                parts.push(Part::Sorted(ranges));
                let finished: Vec<(u64, &Done)> = p.finished_messages().collect();
                buf.u32(finished.len() as u32);
                for (at, d) in finished {
                    buf.u64(at);
                    put_entry(&mut buf, &d.entry);
                    buf.u16(d.subs.len() as u16);
                    for s in &d.subs {
                        put_sub(&mut buf, s);
                    }
                }
            }
        }
    }
    Capture {
        buf,
        parts,
        covers,
        last_frame,
        next_id: st.next_id,
        next_queue: st.next_queue,
        messages,
    }
}

/// About how many bytes `capture` will write under the state lock (a little more, unless
/// many push states): everything but the entries, reservations and delays.
fn estimate(st: &State) -> usize {
    let meta: usize = st
        .meta
        .iter()
        .map(|(k, (v, _))| k.len() + v.len() + 10)
        .sum();
    let queues: usize = st
        .queues
        .values()
        .map(|q| {
            // A message with delivery states takes about 120 bytes per subscriber with
            // one attempt (a short error, a short name), more with more attempts.
            let push = q
                .push
                .as_ref()
                .map_or(0, |p| p.states_len() * (16 + 128 * p.names().len().max(1)));
            push + q.config.extra.len() + 1024
        })
        .sum();
    INDEX_HEADER_BYTES + 8 + meta + queues + (meta + queues) / 64
}

/// Reads bytes of a segment the log has mapped.
fn read_segment(
    log: &Log,
    storage: &dyn Storage,
    seg: SegmentId,
    offset: usize,
    dst: &mut [u8],
) -> Result<()> {
    let path = storage.root().join(seg.file_name());
    let region = log.region(seg).ok_or_else(|| {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "the segment is not mapped");
        Error::io("read", &path, e)
    })?;
    region
        .read(offset, dst)
        .map_err(|e| Error::io("read", &path, e))
}

/// The header fields that tie the index to this log: (last_frame_at, last_frame_crc,
/// segment_crc), read once the last covered record is readable, i.e. durable.
fn log_ties(c: &Capture, log: &Log, storage: &dyn Storage) -> Result<(u32, u32, u32)> {
    let covers = c.covers;
    let (last_frame_at, last_frame_crc) = match c.last_frame {
        None => (0, 0),
        Some(at) => {
            let mut h = [0u8; FRAME_HEADER_BYTES];
            read_segment(log, storage, at.segment(), at.offset() as usize, &mut h)?;
            let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as u64;
            let end = at.offset() as u64 + FRAME_HEADER_BYTES as u64 + len;
            if at.segment() != covers.segment() || end != covers.offset() as u64 {
                // The log's own bookkeeping disagrees with its bytes: write nothing.
                let e = std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the last record ({}:{}) does not end at the index's position ({}:{})",
                        at.segment().0,
                        at.offset(),
                        covers.segment().0,
                        covers.offset()
                    ),
                );
                return Err(Error::io("read", storage.root().join(FILE), e));
            }
            (at.offset(), u32::from_le_bytes([h[4], h[5], h[6], h[7]]))
        }
    };
    let mut crc = [0u8; 4];
    read_segment(log, storage, covers.segment(), SEGMENT_CRC_AT, &mut crc)?;
    Ok((last_frame_at, last_frame_crc, u32::from_le_bytes(crc)))
}

/// Writes the index file atomically: the temporary file, its header last, fdatasync, then
/// a swap with the current one (which syncs the directory). A crash at any point leaves
/// either the old index or the new one. Returns the file's length.
fn store(
    storage: &dyn Storage,
    log: &Log,
    c: &Capture,
    pace: &mut dyn FnMut(u64) -> bool,
) -> Result<u64> {
    let root = storage.root();
    let tmp_err = |op, e| Error::io(op, root.join(TMP), e);
    let (last_frame_at, last_frame_crc, segment_crc) = log_ties(c, log, storage)?;
    // The index before the current one is at TMP (the last write swapped it there) and is
    // rewritten in place: its blocks are allocated already, so the final fdatasync commits
    // no allocation, and no blocks are freed. On a file system mounted with `discard`,
    // freed blocks are trimmed inside the journal commit, and every fdatasync of the log
    // waited behind the trim of a replaced 75 MB index: 20-30 ms.
    let file = match storage.open(TMP) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            storage.create(TMP).map_err(|e| tmp_err("create", e))?
        }
        Err(e) => return Err(tmp_err("open", e)),
    };
    let mut out = Stream {
        file: &*file,
        step: Vec::with_capacity(STEP_BYTES as usize),
        at: 0,
        body_crc: crc32fast::Hasher::new(),
        pace,
    };
    c.write_to(&mut out).map_err(|e| tmp_err("write", e))?;
    let len = out.at;
    let header = Header {
        covers: c.covers,
        last_frame_at,
        last_frame_crc,
        next_queue: c.next_queue,
        next_id: c.next_id,
        body_bytes: len - INDEX_HEADER_BYTES as u64,
        segment_crc,
        body_crc: out.body_crc.finalize(),
    };
    file.write_at(0, &header.encode())
        .map_err(|e| tmp_err("write", e))?;
    if file.len().map_err(|e| tmp_err("stat", e))? != len {
        file.set_len(len).map_err(|e| tmp_err("truncate", e))?;
    }
    file.sync_data().map_err(|e| tmp_err("fdatasync", e))?;
    match storage.exchange(TMP, FILE) {
        Ok(()) => {}
        // The first index, or a file system without RENAME_EXCHANGE.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::Unsupported
            ) =>
        {
            storage
                .rename(TMP, FILE)
                .map_err(|e| Error::io("rename", root.join(FILE), e))?;
        }
        Err(e) => return Err(Error::io("rename", root.join(FILE), e)),
    }
    Ok(len)
}

// ---- loading ----

/// What a usable index holds, ready to be extended by replaying the records after `covers`.
pub(crate) struct Loaded {
    pub header: Header,
    pub meta: BTreeMap<String, (Vec<u8>, SegmentId)>,
    pub queues: Vec<Queue>,
    pub live: LiveBytes,
    pub bytes: u64,
}

/// The segments of the log on open: contiguous from `first`, mapped.
pub(crate) struct Segments<'a> {
    pub first: SegmentId,
    pub regions: &'a [Arc<dyn Region>],
}

impl Segments<'_> {
    fn region(&self, id: SegmentId) -> Option<&Arc<dyn Region>> {
        let i = id.0.checked_sub(self.first.0)? as usize;
        self.regions.get(i)
    }
}

/// Reads the index if there is one. `Ok(None)`: no index file. `Err`: there is one but it
/// cannot be used (the caller removes it and replays the whole log).
pub(crate) fn load(
    storage: &dyn Storage,
    segs: &Segments<'_>,
    len_max: usize,
) -> R<Option<Loaded>> {
    let file = match storage.open(FILE) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(_) => return Err(IndexRejection::Unreadable),
    };
    let region = file.map().map_err(|_| IndexRejection::Unreadable)?;
    let len = region.len();
    let mut out = Err(IndexRejection::Unreadable);
    region
        .with_slice(0, len, &mut |bytes| out = load_bytes(bytes, segs, len_max))
        .map_err(|_| IndexRejection::Unreadable)?;
    out.map(Some)
}

fn load_bytes(bytes: &[u8], segs: &Segments<'_>, len_max: usize) -> R<Loaded> {
    let header = Header::decode(bytes)?;
    let body = &bytes[INDEX_HEADER_BYTES..];
    if (body.len() as u64) < header.body_bytes {
        return Err(IndexRejection::Truncated);
    }
    if body.len() as u64 != header.body_bytes {
        return Err(IndexRejection::Malformed);
    }
    check_position(&header, segs, len_max)?;
    // A large body is checksummed on another thread while it is decoded (the decoder is
    // bounds-checked, so decoding bytes that turn out damaged is harmless: the result is
    // thrown away).
    let (crc, decoded) = if body.len() >= PARALLEL_CRC_BYTES {
        std::thread::scope(|s| {
            let crc = std::thread::Builder::new()
                .name("ferromq-index-crc".into())
                .spawn_scoped(s, || crc32fast::hash(body));
            let decoded = decode_body(body, &header, segs);
            let crc = match crc {
                Ok(handle) => handle.join().unwrap_or_else(|_| crc32fast::hash(body)),
                Err(_) => crc32fast::hash(body),
            };
            (crc, decoded)
        })
    } else {
        let crc = crc32fast::hash(body);
        if crc != header.body_crc {
            return Err(IndexRejection::Checksum);
        }
        (crc, decode_body(body, &header, segs))
    };
    if crc != header.body_crc {
        return Err(IndexRejection::Checksum);
    }
    let (meta, queues, live) = decoded?;
    Ok(Loaded {
        header,
        meta,
        queues,
        live,
        bytes: bytes.len() as u64,
    })
}

/// Bodies at least this large are checksummed on a second thread.
const PARALLEL_CRC_BYTES: usize = 4 << 20;

type Decoded = (
    BTreeMap<String, (Vec<u8>, SegmentId)>,
    Vec<Queue>,
    LiveBytes,
);

fn decode_body(body: &[u8], header: &Header, segs: &Segments<'_>) -> R<Decoded> {
    let mut r = Reader::new(body);
    let meta = get_metas(&mut r)?;
    let mut live = LiveBytes::default();
    let n = r.u32().map_err(malformed)? as usize;
    let mut queues = Vec::with_capacity(n.min(1024));
    let mut seen = HashSet::new();
    let mut keys = HashSet::new();
    for _ in 0..n {
        let q = get_queue(&mut r, header, segs, &mut live)?;
        if !seen.insert(q.no) || !keys.insert(q.key.clone()) || q.no.0 >= header.next_queue {
            return Err(IndexRejection::Malformed);
        }
        queues.push(q);
    }
    r.finish().map_err(malformed)?;
    Ok((meta, queues, live))
}

/// The covered position must be in the log and be the end of the record the index names.
fn check_position(header: &Header, segs: &Segments<'_>, len_max: usize) -> R<()> {
    let at = header.covers;
    let region = segs.region(at.segment()).ok_or(IndexRejection::NotInLog)?;
    let off = at.offset() as usize;
    if off < crate::segment::HEADER_BYTES || off > region.len() {
        return Err(IndexRejection::NotInLog);
    }
    let mut crc = [0u8; 4];
    region
        .read(SEGMENT_CRC_AT, &mut crc)
        .map_err(|_| IndexRejection::NotInLog)?;
    if u32::from_le_bytes(crc) != header.segment_crc {
        return Err(IndexRejection::LogMismatch);
    }
    if header.last_frame_at == 0 {
        return if off == crate::segment::HEADER_BYTES {
            Ok(())
        } else {
            Err(IndexRejection::Malformed)
        };
    }
    let start = header.last_frame_at as usize;
    if start < crate::segment::HEADER_BYTES || start + FRAME_HEADER_BYTES > off {
        return Err(IndexRejection::Malformed);
    }
    let seed = record::crc_seed(at.segment().0);
    let mut ok = false;
    region
        .with_slice(start, off - start, &mut |b| {
            ok = matches!(
                record::check_frame(b, seed, len_max),
                FrameCheck::Valid { len, .. } if FRAME_HEADER_BYTES + len == b.len()
            ) && b[4..8] == header.last_frame_crc.to_le_bytes();
        })
        .map_err(|_| IndexRejection::NotInLog)?;
    if ok {
        Ok(())
    } else {
        Err(IndexRejection::LogMismatch)
    }
}

fn get_metas(r: &mut Reader<'_>) -> R<BTreeMap<String, (Vec<u8>, SegmentId)>> {
    let n = r.u32().map_err(malformed)? as usize;
    let mut meta = BTreeMap::new();
    for _ in 0..n {
        let k = r.str16().map_err(malformed)?.to_string();
        let seg = SegmentId(r.u32().map_err(malformed)?);
        let v = r.bytes32().map_err(malformed)?.to_vec();
        if k.is_empty() || meta.insert(k, (v, seg)).is_some() {
            return Err(IndexRejection::Malformed);
        }
    }
    Ok(meta)
}

/// Counts checked entries into `live` a run of equal segments at a time (one map update
/// per run, not per message), checking each run's segment is in the log.
struct Runs<'a, 'b> {
    segs: &'a Segments<'b>,
    covers: SegmentId,
    live: &'a mut LiveBytes,
    segment: u32,
    region_len: usize,
    count: u64,
    bytes: u64,
}

impl Runs<'_, '_> {
    #[inline(always)]
    fn add(&mut self, e: &Entry) -> R<()> {
        if e.segment != self.segment || self.count == 0 {
            self.flush();
            let id = SegmentId(e.segment);
            // A message the index holds was posted at or before the covered position.
            if id > self.covers {
                return Err(IndexRejection::Malformed);
            }
            self.region_len = match self.segs.region(id) {
                Some(r) => r.len(),
                // Before the log's first segment: retention may have dropped it after
                // relocating the message, which the records after `covers` then show.
                // Whether that holds is checked after they are replayed (a message still
                // there means the file was lost: `recovery::from_index`).
                None if id < self.segs.first => usize::MAX,
                None => return Err(IndexRejection::MissingSegment),
            };
            self.segment = e.segment;
        }
        let end = e.offset as u64 + e.disk_bytes();
        if (e.offset as usize) < crate::segment::HEADER_BYTES || end > self.region_len as u64 {
            return Err(IndexRejection::Malformed);
        }
        self.count += 1;
        self.bytes += e.disk_bytes();
        Ok(())
    }

    fn flush(&mut self) {
        if self.count > 0 {
            let s = self.live.per_segment.entry(self.segment).or_default();
            s.0 += self.count;
            s.1 += self.bytes;
            self.live.total += self.bytes;
        }
        self.count = 0;
        self.bytes = 0;
    }
}

fn get_queue(
    r: &mut Reader<'_>,
    header: &Header,
    segs: &Segments<'_>,
    live: &mut LiveBytes,
) -> R<Queue> {
    let def = record::get_queue_def(r.bytes32().map_err(malformed)?).map_err(malformed)?;
    let def_segment = SegmentId(r.u32().map_err(malformed)?);
    let n_entries = r.u64().map_err(malformed)?;
    let n_reservations = r.u64().map_err(malformed)?;
    let n_delays = r.u64().map_err(malformed)?;
    let bytes_for = |n: u64, each: usize| {
        usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(each))
            .ok_or(IndexRejection::Malformed)
    };
    let entry_bytes = r
        .take(bytes_for(n_entries, ENTRY_BYTES)?)
        .map_err(malformed)?;
    let reservation_bytes = r
        .take(bytes_for(n_reservations, RESERVATION_BYTES)?)
        .map_err(malformed)?;
    let delay_bytes = r
        .take(bytes_for(n_delays, DELAY_BYTES)?)
        .map_err(malformed)?;

    let (chunks, rest) = entry_bytes.as_chunks::<ENTRY_BYTES>();
    debug_assert!(rest.is_empty());
    let mut entries = Entries::new();
    // Messages per state: visible, delayed, reserved.
    let mut counts = [0u64; 3];
    let mut runs = Runs {
        segs,
        covers: header.covers.segment(),
        live,
        segment: 0,
        region_len: 0,
        count: 0,
        bytes: 0,
    };
    let mut prev = 0u64;
    for b in chunks {
        let e = get_entry(b)?;
        if e.id <= prev || e.id >= header.next_id {
            return Err(IndexRejection::Malformed);
        }
        prev = e.id;
        runs.add(&e)?;
        counts[e.state as usize] += 1;
        entries.push_back(e);
    }
    runs.flush();
    let reservations = reservation_bytes
        .chunks_exact(RESERVATION_BYTES)
        .map(|b| {
            let mut r = Reader::new(b);
            let id = r.u64().map_err(malformed)?;
            let rid: ReservationId = r.rid().map_err(malformed)?;
            Ok((id, rid, r.u64().map_err(malformed)?))
        })
        .collect::<R<Vec<_>>>()?;
    let delays = delay_bytes
        .chunks_exact(DELAY_BYTES)
        .map(|b| {
            let mut r = Reader::new(b);
            Ok((r.u64().map_err(malformed)?, r.u64().map_err(malformed)?))
        })
        .collect::<R<Vec<_>>>()?;

    let key = QueueKey::new(def.project, def.name);
    let mut q = Queue::new(def.queue, key, def.config, def_segment);
    q.total_messages = def.total_messages;
    let mut q = q
        .restore(entries, counts[2], counts[1], reservations, delays)
        .map_err(malformed)?;
    let has_push = r.u8().map_err(malformed)?;
    match (has_push, q.push.as_mut()) {
        (0, None) => {}
        (1, Some(p)) => {
            let n = r.u32().map_err(malformed)? as usize;
            let mut states = Vec::with_capacity(n.min(1 << 16));
            let mut prev = 0u64;
            for _ in 0..n {
                let id = r.u64().map_err(malformed)?;
                if id <= prev {
                    return Err(IndexRejection::Malformed);
                }
                prev = id;
                states.push((id, get_subs(r)?));
            }
            let n = r.u32().map_err(malformed)? as usize;
            let mut done = Vec::with_capacity(n.min(crate::limits::PUSH_DONE_KEPT));
            for _ in 0..n {
                let at = r.u64().map_err(malformed)?;
                let b = r.take(ENTRY_BYTES).map_err(malformed)?;
                let entry = get_entry(b.try_into().map_err(malformed)?)?;
                let subs = get_subs(r)?;
                done.push((at, Done { entry, subs }));
            }
            p.restore(states, done);
        }
        _ => return Err(IndexRejection::Malformed),
    }
    Ok(q)
}

// ---- the engine's side: when to write, and how ----

/// What the engine knows of the index on disk. Held (locked) for the whole of a write, so
/// writes never overlap.
pub(crate) struct Tracker {
    /// The position the index on disk covers, if there is one.
    covers: Option<LogPos>,
    /// Its size.
    bytes: u64,
    /// Where the last attempt (successful or not) was, so a failing write is not retried
    /// at every maintenance call.
    attempted: Option<LogPos>,
    /// The record that ends at the recovered end of the log (used while nothing has been
    /// appended since the open).
    recovered_last_frame: Option<LogPos>,
}

impl Tracker {
    pub(crate) fn new(
        covers: Option<(LogPos, u64)>,
        recovered_last_frame: Option<LogPos>,
    ) -> Tracker {
        Tracker {
            covers: covers.map(|c| c.0),
            bytes: covers.map_or(0, |c| c.1),
            attempted: None,
            recovered_last_frame,
        }
    }
}

/// Log bytes between two positions (segments counted at their full size).
fn distance(from: LogPos, to: LogPos, segment_bytes: u64) -> u64 {
    if to <= from {
        return 0;
    }
    let segs = (to.segment().0 - from.segment().0) as u64;
    (segs * segment_bytes + to.offset() as u64).saturating_sub(from.offset() as u64)
}

/// Maintenance writes a new index once the log has grown by this many times the last
/// index's size (and by at least a segment) since it: the copy under the state lock (about
/// 4 ns per live message) and the write then cost a fixed fraction of the appends, and a
/// restart after a crash replays at most that much log.
pub(crate) const INDEX_GROWTH_FACTOR: u64 = 4;

/// Whether maintenance should write a new index (see [`INDEX_GROWTH_FACTOR`]).
fn due(t: &Tracker, end: LogPos, first: SegmentId, segment_bytes: u64) -> bool {
    let base = match (t.covers, t.attempted) {
        (Some(a), Some(b)) => a.max(b),
        (a, b) => a.or(b).unwrap_or(LogPos::new(first, 0)),
    };
    distance(base, end, segment_bytes) >= segment_bytes.max(INDEX_GROWTH_FACTOR * t.bytes)
}

pub(crate) type TrackerLock = Mutex<Tracker>;

impl Engine {
    /// Writes the restart index now, covering everything appended so far, unless the one
    /// on disk already does. Copies the state under the state lock (the only time it is
    /// held), then checksums and writes the file outside it, after the covered records
    /// are durable. Blocks; call it from a thread that may block. Works after
    /// [`Engine::close`] too (that is how a clean shutdown leaves an index behind).
    pub fn write_index(&self) -> Result<IndexWrite> {
        let tracker = self.index_tracker();
        let mut t = tracker.lock();
        write_locked(self, &mut t, false)
    }

    /// Maintenance's part: writes the index if enough was appended since the last one
    /// (and no other write is running).
    pub(crate) fn maintain_index(&self) -> Result<Option<IndexWrite>> {
        let Some(mut t) = self.index_tracker().try_lock() else {
            return Ok(None);
        };
        let (state, log, _, config, _) = self.parts();
        let first = state.lock().first_segment;
        if !due(&t, log.end(), first, config.segment_bytes) {
            return Ok(None);
        }
        write_locked(self, &mut t, true).map(Some)
    }
}

/// Writes the index; `paced`: no faster than [`INDEX_WRITE_BYTES_PER_S`] (maintenance),
/// unless the log is stopping.
fn write_locked(engine: &Engine, t: &mut Tracker, paced: bool) -> Result<IndexWrite> {
    let (state, log, _, _, storage) = engine.parts();
    let bytes = {
        let st = state.lock();
        let end = log.end();
        if t.covers == Some(end) {
            return Ok(IndexWrite {
                covers: end,
                written: false,
                bytes: t.bytes,
                messages: st.queues.values().map(|q| q.size()).sum(),
                lock_held: Duration::ZERO,
            });
        }
        estimate(&st)
    };
    // Allocate and touch the buffer before taking the lock for the copy, so the page
    // faults of a fresh allocation do not happen while writers wait.
    // (`vec![0; n]` maps lazily zeroed pages: write one byte per page to fault them in.)
    let mut buf = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        buf[i] = 1;
    }
    let (mut captured, lock_held) = {
        let st = state.lock();
        let started = Instant::now();
        let (end, last_frame) = log.end_and_last_frame();
        let captured = capture(&st, end, last_frame.or(t.recovered_last_frame), buf);
        (captured, started.elapsed())
    };
    captured.put_in_order();
    t.attempted = Some(captured.covers);
    // The index must never cover a record a crash could still take back.
    log.wait_durable_blocking(captured.covers)?;
    let started = Instant::now();
    let bytes = store(storage, log, &captured, &mut |done| {
        if paced && !log.is_stopping() {
            let due = Duration::from_secs_f64(done as f64 / INDEX_WRITE_BYTES_PER_S as f64);
            if let Some(early) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(early);
            }
        }
        true
    })?;
    t.covers = Some(captured.covers);
    t.bytes = bytes;
    Ok(IndexWrite {
        covers: captured.covers,
        written: true,
        bytes,
        messages: captured.messages,
        lock_held,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = Header {
            covers: LogPos::new(SegmentId(7), 4096),
            last_frame_at: 1000,
            last_frame_crc: 0xDEAD_BEEF,
            next_queue: 3,
            next_id: 1_000_000_000_000_000_123,
            body_bytes: 55,
            segment_crc: 0x1234_5678,
            body_crc: 42,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(Header::decode(&bad), Err(IndexRejection::HeaderChecksum));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(IndexRejection::BadMagic));
        assert_eq!(Header::decode(&b[..10]), Err(IndexRejection::Truncated));
    }

    #[test]
    fn entries_round_trip_in_32_bytes() {
        let e = Entry {
            id: 1_000_000_000_000_000_777,
            segment: 9,
            offset: 12345,
            body_len: 100,
            expires_at_s: 1_800_000_000,
            meta_len: 7,
            reserved_count: 3,
            state: MsgState::Reserved,
        };
        let mut buf = Vec::new();
        put_entry(&mut buf, &e);
        assert_eq!(buf.len(), ENTRY_BYTES);
        let d = get_entry(buf.as_slice().try_into().unwrap()).unwrap();
        assert_eq!(
            (
                d.id,
                d.segment,
                d.offset,
                d.body_len,
                d.expires_at_s,
                d.meta_len,
                d.reserved_count,
                d.state
            ),
            (
                e.id,
                e.segment,
                e.offset,
                e.body_len,
                e.expires_at_s,
                e.meta_len,
                e.reserved_count,
                e.state
            )
        );
        buf[28] = 3;
        assert_eq!(
            get_entry(buf.as_slice().try_into().unwrap()).err(),
            Some(IndexRejection::Malformed)
        );
    }

    #[test]
    fn writes_are_due_after_a_segment_and_four_times_the_index() {
        let seg = 1 << 20;
        let mut t = Tracker::new(None, None);
        let first = SegmentId(1);
        assert!(!due(&t, LogPos::new(first, 1000), first, seg));
        assert!(due(&t, LogPos::new(SegmentId(2), 1000), first, seg));
        t.covers = Some(LogPos::new(SegmentId(2), 1000));
        t.bytes = 3 << 20;
        assert!(!due(&t, LogPos::new(SegmentId(13), 999), first, seg));
        assert!(due(&t, LogPos::new(SegmentId(14), 1000), first, seg));
        t.attempted = Some(LogPos::new(SegmentId(14), 1000));
        assert!(!due(&t, LogPos::new(SegmentId(14), 2000), first, seg));
        assert_eq!(
            distance(
                LogPos::new(SegmentId(3), 100),
                LogPos::new(SegmentId(3), 50),
                seg
            ),
            0
        );
    }
}
