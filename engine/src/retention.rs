//! Reclaiming disk space.
//!
//! Segments are dropped only from the front of the log, oldest first, so that a delete or
//! reserve record is never dropped while the post it refers to survives (which would
//! resurrect a deleted message on replay). Before the oldest segment goes:
//! - queue definitions and metadata whose latest record is in it are written again at the
//!   tail, so the log stays self-sufficient;
//! - if it still holds live messages, they are relocated (a Relocate record carries the
//!   whole message state) — but only while the log holds more than twice the live data plus
//!   two segments, which bounds the extra writes to the garbage being reclaimed.

use std::collections::{HashMap, HashSet};

use parking_lot::MutexGuard;

use crate::engine::{Engine, MaintainReport};
use crate::error::{Error, Result};
use crate::ids::{MessageId, QueueKey, QueueNo, SegmentId};
use crate::queue::MsgState;
use crate::record::{self, FRAME_HEADER_BYTES, FrameCheck, Kind, RelocateItem};
use crate::segment::HEADER_BYTES;
use crate::storage::Region;

/// Segments dropped per call at most.
const SEGMENTS_PER_CALL_MAX: usize = 4;
/// Messages relocated per call at most (bounds the time the state lock is held).
const RELOCATIONS_PER_CALL_MAX: usize = 20_000;

pub(crate) fn maintain(engine: &Engine) -> Result<MaintainReport> {
    let (state, log, clock, config, storage) = engine.parts();
    let mut report = MaintainReport::default();
    let mut st = state.lock();
    log.check()?;
    for _ in 0..SEGMENTS_PER_CALL_MAX {
        let active = log.end().segment();
        let first = st.first_segment;
        if first >= active {
            break;
        }
        if st.live.messages_in(first) > 0 {
            if (report.messages_relocated + report.messages_expired) as usize
                >= RELOCATIONS_PER_CALL_MAX
            {
                break;
            }
            if log.no_space().is_some() {
                // No new segment can be made: dropping this one is how the log gets one
                // (its file is reused), but relocating writes at the tail, in the room kept
                // for consumers. Only while the records (one per message: its state, body
                // and metadata; a push message's delivery states besides, hence the margin)
                // fit in a quarter of that room.
                let room = config.segment_bytes - log.end().offset() as u64;
                let per_message = (record::RELOCATE_HEADER_BYTES + FRAME_HEADER_BYTES) as u64;
                let records = st.live.bytes_in(first)
                    + st.live.messages_in(first).saturating_mul(per_message);
                if records.saturating_mul(4) > room {
                    break;
                }
            } else {
                let segments = (active.0 - first.0 + 1) as u64;
                let disk = segments * config.segment_bytes;
                let allowed = 2 * st.live.total + 2 * config.segment_bytes;
                if disk <= allowed {
                    break;
                }
            }
            let now = clock.now_ms();
            let mut expired = 0;
            report.messages_relocated +=
                relocate_from(&mut st, log, first, now, storage, &mut expired)? as u64;
            report.messages_expired += expired;
            if st.live.messages_in(first) > 0 {
                break;
            }
        }
        let defs: Vec<QueueNo> = st
            .queues
            .values()
            .filter(|q| q.def_segment <= first)
            .map(|q| q.no)
            .collect();
        for no in defs {
            st.write_def(log, no)?;
            report.definitions_rewritten += 1;
        }
        let metas: Vec<(String, Vec<u8>)> = st
            .meta
            .iter()
            .filter(|(_, (_, seg))| *seg <= first)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        for (k, v) in metas {
            st.scratch.clear();
            record::put_meta(&mut st.scratch, &k, Some(&v));
            let floors = st.floors();
            let (start, _) = log.append(Kind::Meta, &st.scratch, floors)?;
            if let Some(entry) = st.meta.get_mut(&k) {
                entry.1 = start.segment();
            }
            report.definitions_rewritten += 1;
        }
        log.drop_segment_after(first, log.end());
        st.first_segment = SegmentId(first.0 + 1);
        report.segments_dropped += 1;
    }
    Ok(report)
}

/// Copies the live messages of `segment` to the tail, but for expired ones, which it
/// deletes (counted in `expired`). Returns how many moved.
///
/// The state lock is held by the caller, but for the walk over the segment's records (a
/// sealed segment never changes, and up to 64 MiB of mapped pages can take long to read:
/// on the VM of `benches/README.md` a page idle for a second costs 5 µs, and one not in
/// the page cache a read from the disk). Whatever changed meanwhile is seen after: the
/// segment is still the oldest (only retention drops segments, and it runs once at a
/// time; a second run finds it gone and stops), and every message is looked up again.
fn relocate_from(
    st: &mut MutexGuard<'_, crate::engine::State>,
    log: &crate::log::Log,
    segment: SegmentId,
    now_ms: u64,
    storage: &dyn crate::storage::Storage,
    expired: &mut u64,
) -> Result<usize> {
    let region = log
        .region(segment)
        .ok_or_else(|| Error::Failed(format!("segment {} is not mapped", segment.0)))?;
    let path = storage.root().join(segment.file_name());
    let found = MutexGuard::unlocked(st, || segment_messages(&*region, segment, &path))?;
    if st.first_segment != segment {
        return Ok(0);
    }
    // Messages dead-lettered into another queue keep their place: those not live in the
    // queue they were posted to are looked for in other queues, but only while the
    // segment still holds live messages once the rest are moved, and in the queues named
    // as dead-letter queues first (every queue last: a dead-letter setting changed since).
    let mut mover = Mover {
        log,
        segment,
        region: &*region,
        path: &path,
        now_ms,
        delays: Delays::default(),
    };
    let mut moved = 0;
    let mut left = found;
    for pass in [Look::Own, Look::DeadLetterQueues, Look::Everywhere] {
        let only: Option<HashSet<QueueNo>> = (pass == Look::DeadLetterQueues).then(|| {
            st.queues
                .values()
                .filter_map(|q| {
                    let dl = q.config.dead_letter.as_ref()?;
                    st.by_key
                        .get(&QueueKey::new(&q.key.project, &dl.queue))
                        .copied()
                })
                .collect()
        });
        let mut rest = Vec::new();
        for (no, id) in left {
            if moved + *expired as usize >= RELOCATIONS_PER_CALL_MAX
                || st.live.messages_in(segment) == 0
            {
                return Ok(moved);
            }
            let here = |q: &crate::queue::Queue| {
                q.get(id)
                    .filter(|e| e.segment == segment.0)
                    .map(|e| (q.no, *e))
            };
            let located = match pass {
                Look::Own => st.queues.get(&no).and_then(here),
                _ => st
                    .queues
                    .values()
                    .filter(|q| only.as_ref().is_none_or(|only| only.contains(&q.no)))
                    .find_map(here),
            };
            match located {
                // An expired message goes instead of being copied (as a sweep would delete
                // it; a reserved or push message stays for its own rules).
                Some((no, _)) if expire_if_due(st, no, id, now_ms) => *expired += 1,
                Some((no, e)) => {
                    mover.relocate(st, no, e)?;
                    moved += 1;
                }
                None => rest.push((no, id)),
            }
        }
        left = rest;
    }
    Ok(moved)
}

/// Deletes message `id` of queue `no` if it has expired by `now_ms` and is neither
/// reserved nor a push message ([`crate::queue::Queue::expire_if_due`]). True if it went.
fn expire_if_due(st: &mut crate::engine::State, no: QueueNo, id: MessageId, now_ms: u64) -> bool {
    let st = &mut *st;
    st.queues
        .get_mut(&no)
        .is_some_and(|q| q.expire_if_due(id, (now_ms / 1000) as u32, &mut st.live))
}

/// Where [`relocate_from`] looks a message up, in turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// The queue its record names.
    Own,
    /// The queues that some queue names as its dead-letter queue.
    DeadLetterQueues,
    /// Every queue.
    Everywhere,
}

/// The (queue, id) pairs of the messages posted or relocated into `segment`, found by
/// walking its records.
fn segment_messages(
    region: &dyn Region,
    segment: SegmentId,
    path: &std::path::Path,
) -> Result<Vec<(QueueNo, MessageId)>> {
    let mut found: Vec<(QueueNo, MessageId)> = Vec::new();
    let seed = record::crc_seed(segment.0);
    let mut walk = Ok(());
    region
        .with_slice(0, region.len(), &mut |bytes| {
            let mut off = HEADER_BYTES;
            let mut items = Vec::new();
            while let FrameCheck::Valid { kind, len } =
                record::check_frame(&bytes[off..], seed, usize::MAX >> 1)
            {
                let p = &bytes[off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len];
                match kind {
                    Kind::Post => match record::get_post(p, &mut items) {
                        Ok(no) => found.extend(items.iter().map(|it| (no, it.id))),
                        Err(k) => walk = Err(k),
                    },
                    Kind::Relocate => match record::get_relocate(p) {
                        Ok(r) => found.push((r.queue, r.id)),
                        Err(k) => walk = Err(k),
                    },
                    _ => {}
                }
                off += FRAME_HEADER_BYTES + len;
            }
        })
        .map_err(|e| Error::io("read", path, e))?;
    walk.map_err(|kind| Error::Corruption {
        path: path.to_path_buf(),
        offset: 0,
        kind,
    })?;
    Ok(found)
}

/// The visible-at times of delayed messages, per queue, taken from its delay heap once per
/// [`relocate_from`] (a look into the heap per message made relocating `n` delayed
/// messages cost `n` times the heap).
#[derive(Default)]
struct Delays(HashMap<QueueNo, HashMap<u64, u64>>);

impl Delays {
    fn until(&mut self, q: &crate::queue::Queue, id: MessageId) -> u64 {
        let times = self.0.entry(q.no).or_insert_with(|| q.delayed_times());
        times.get(&id.0).copied().unwrap_or(0)
    }
}

/// What [`relocate_from`] copies messages of one segment with.
struct Mover<'a> {
    log: &'a crate::log::Log,
    segment: SegmentId,
    region: &'a dyn Region,
    path: &'a std::path::Path,
    now_ms: u64,
    delays: Delays,
}

impl Mover<'_> {
    /// Copies message `e` of queue `no`, in the segment, to the tail.
    fn relocate(
        &mut self,
        st: &mut crate::engine::State,
        no: QueueNo,
        e: crate::queue::Entry,
    ) -> Result<()> {
        let (log, segment, region, path) = (self.log, self.segment, self.region, self.path);
        let id = MessageId(e.id);
        debug_assert_eq!(e.segment, segment.0);
        let q = &st.queues[&no];
        let mut body = vec![0u8; e.body_len as usize + e.meta_len as usize];
        region
            .read(e.offset as usize, &mut body)
            .map_err(|err| Error::io("read", path, err))?;
        let reservation = if e.state == MsgState::Reserved {
            q.reservation(id)
        } else {
            None
        };
        let visible_at_ms = if e.state == MsgState::Delayed {
            self.delays.until(q, id).max(self.now_ms)
        } else {
            0
        };
        let item = RelocateItem {
            queue: no,
            id,
            reserved_count: e.reserved_count as u32,
            expires_at_s: e.expires_at_s,
            visible_at_ms,
            reservation,
            body_at: record::RELOCATE_HEADER_BYTES,
            body_len: e.body_len,
            meta_len: e.meta_len as u32,
        };
        let buf = &mut st.scratch;
        buf.clear();
        record::put_relocate(
            buf,
            &item,
            &body[..e.body_len as usize],
            &body[e.body_len as usize..],
        );
        let floors = st.floors();
        let (start, _) = log.append(Kind::Relocate, &st.scratch, floors)?;
        let mut new = e;
        new.segment = start.segment().0;
        new.offset = start.offset() + (FRAME_HEADER_BYTES + record::RELOCATE_HEADER_BYTES) as u32;
        let st = &mut *st;
        let q = st.queues.get_mut(&no).expect("queue found above");
        q.relocate(id, new.segment, new.offset, &mut st.live);
        // A push message's delivery state follows it (its records are in the segments about
        // to go).
        let restated = q
            .push
            .as_ref()
            .map(|p| p.recorded(id.0))
            .unwrap_or_default();
        // In records of at most SUBSCRIBERS_MAX updates (states of subscribers removed
        // since are kept too, so there can be more).
        for part in restated.chunks(crate::limits::SUBSCRIBERS_MAX) {
            st.scratch.clear();
            record::put_push(
                &mut st.scratch,
                no,
                id,
                record::push_flags(false, false),
                part,
            );
            let floors = st.floors();
            log.append(Kind::Push, &st.scratch, floors)?;
        }
        Ok(())
    }
}
