//! One queue's in-memory state: its messages in id order, which are visible, delayed or
//! reserved, and the timers that move them between those states. Pure: no I/O, time comes in
//! as `now_ms`. Live operations and log replay use the same `apply_*` methods, so a reopened
//! engine reaches exactly the state that was acknowledged.
//!
//! Message bodies are not here, only where they are in the log (bodies stay on disk).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::entries::Entries;
use crate::ids::{MessageId, QueueKey, QueueNo, ReservationId, SegmentId};
use crate::push::PushState;
use crate::types::{PushUpdate, QueueConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum MsgState {
    Visible,
    Delayed,
    Reserved,
    Deleted,
}

/// A message's place and state: 32 bytes, the dominant cost of a live message in memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub id: u64,
    pub segment: u32,
    /// Byte offset of the body in the segment; the metadata follows the body.
    pub offset: u32,
    pub body_len: u32,
    pub expires_at_s: u32,
    pub meta_len: u16,
    /// Saturates at `u16::MAX`.
    pub reserved_count: u16,
    pub state: MsgState,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32);

impl Entry {
    pub fn disk_bytes(&self) -> u64 {
        self.body_len as u64 + self.meta_len as u64
    }
}

/// Hashes the engine's own integer ids (message ids, segment numbers) with a multiply per
/// word. Clients never choose these keys (the engine assigns them), so the flooding
/// resistance of the default SipHash buys nothing here, and it cost two hashes per
/// message on every post, reserve and delete.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
}

/// A map keyed by engine-assigned ids (see [`IdHasher`]).
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Live message counts and bytes per segment, to know when a segment can go.
#[derive(Debug, Default)]
pub(crate) struct LiveBytes {
    pub per_segment: IdMap<u32, (u64, u64)>,
    pub total: u64,
}

/// Entries one expiry sweep looks at, at most.
pub const SWEEP_SCAN_MAX: usize = 16_384;

impl LiveBytes {
    pub fn add(&mut self, e: &Entry) {
        let s = self.per_segment.entry(e.segment).or_default();
        s.0 += 1;
        s.1 += e.disk_bytes();
        self.total += e.disk_bytes();
    }
    pub fn remove(&mut self, e: &Entry) {
        if let Some(s) = self.per_segment.get_mut(&e.segment) {
            s.0 -= 1;
            s.1 -= e.disk_bytes();
            if s.0 == 0 {
                self.per_segment.remove(&e.segment);
            }
        }
        self.total -= e.disk_bytes();
    }
    /// What the live (not deleted) messages among `entries` take, per segment.
    pub fn of(entries: &Entries) -> LiveBytes {
        let mut of = LiveBytes::default();
        // Runs of one segment, one map update each: entries are in id order, and ids
        // mostly follow the log.
        let mut run: Option<(u32, u64, u64)> = None;
        for e in entries.iter().filter(|e| e.state != MsgState::Deleted) {
            match &mut run {
                Some((seg, n, bytes)) if *seg == e.segment => {
                    *n += 1;
                    *bytes += e.disk_bytes();
                }
                _ => {
                    if let Some(r) = run.replace((e.segment, 1, e.disk_bytes())) {
                        of.add_run(r);
                    }
                }
            }
        }
        if let Some(r) = run {
            of.add_run(r);
        }
        of
    }

    fn add_run(&mut self, (segment, n, bytes): (u32, u64, u64)) {
        let s = self.per_segment.entry(segment).or_default();
        s.0 += n;
        s.1 += bytes;
        self.total += bytes;
    }

    /// Takes out what `gone` counts (from [`LiveBytes::of`] entries counted here).
    pub fn subtract(&mut self, gone: &LiveBytes) {
        for (&segment, &(n, bytes)) in gone.per_segment.iter() {
            if let Some(s) = self.per_segment.get_mut(&segment) {
                s.0 -= n;
                s.1 -= bytes;
                if s.0 == 0 {
                    self.per_segment.remove(&segment);
                }
            }
        }
        self.total -= gone.total;
    }

    pub fn messages_in(&self, segment: SegmentId) -> u64 {
        self.per_segment.get(&segment.0).map_or(0, |s| s.0)
    }
    pub fn bytes_in(&self, segment: SegmentId) -> u64 {
        self.per_segment.get(&segment.0).map_or(0, |s| s.1)
    }
}

/// The visible-at time of each message in a delay heap's items: the latest of its items
/// (an item left by an earlier delay is superseded by the latest).
fn latest_delays<'a>(
    delayed: impl IntoIterator<Item = &'a Reverse<(u64, u64)>>,
) -> HashMap<u64, u64> {
    let mut latest: HashMap<u64, u64> = HashMap::new();
    for Reverse((at, id)) in delayed {
        let t = latest.entry(*id).or_insert(*at);
        *t = (*t).max(*at);
    }
    latest
}

/// A push queue's live messages with the time each becomes due at first: its delay's end
/// while `Delayed` (a heap entry left by an earlier delay is superseded by the latest), at
/// once otherwise.
fn push_plan<'a>(
    entries: &'a Entries,
    delayed: &BinaryHeap<Reverse<(u64, u64)>>,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    let until = latest_delays(delayed);
    entries
        .iter()
        .filter(|e| e.state != MsgState::Deleted)
        .map(move |e| {
            let due = match e.state {
                MsgState::Delayed => until.get(&e.id).copied().unwrap_or(0),
                _ => 0,
            };
            (e.id, due)
        })
}

/// Finds a message's index. Ids in a queue are increasing and mostly dense (a queue's posts
/// take consecutive ids unless other queues post in between), so the interpolated position
/// `id - first id` is usually right or an upper bound; binary search covers the rest.
fn index_in(entries: &Entries, id: u64) -> Option<usize> {
    let first = entries.front()?.id;
    if id < first {
        return None;
    }
    let last = entries.len() - 1;
    let guess = (id - first).min(last as u64) as usize;
    let at = entries[guess].id;
    if at == id {
        return Some(guess);
    }
    let (lo, hi) = if at > id {
        (0, guess)
    } else {
        (guess + 1, last + 1)
    };
    entries.search_in(id, lo, hi).ok()
}

/// A queue's reservations and delay heap, copied under the state lock for the restart
/// index as they are (two copies of contiguous memory), and put in order after the lock is
/// released: sorting them, and telling a delayed message's latest heap entry from the
/// ones a later delay superseded, under the lock took 0.2–0.5 s for 1M delayed messages.
pub(crate) struct Timers {
    reservations: IdMap<u64, (ReservationId, u64)>,
    delayed: Vec<Reverse<(u64, u64)>>,
    delayed_count: u64,
}

impl Timers {
    pub fn reservation_count(&self) -> u64 {
        self.reservations.len() as u64
    }

    /// How many messages are delayed: as many as [`Timers::delays`] gives.
    pub fn delay_count(&self) -> u64 {
        self.delayed_count
    }

    /// (message id, reservation id, until_ms), in id order.
    pub fn reservations(&self) -> Vec<(u64, ReservationId, u64)> {
        let mut out: Vec<_> = self
            .reservations
            .iter()
            .map(|(id, (rid, until))| (*id, *rid, *until))
            .collect();
        out.sort_unstable_by_key(|r| r.0);
        out
    }

    /// The visible-at time of every delayed message of `entries` (the queue's entries when
    /// this was taken): the latest one the heap holds for it, as `drop_stale_delays` would
    /// keep, in id order.
    pub fn delays(&self, entries: &Entries) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = latest_delays(&self.delayed)
            .into_iter()
            .filter(|(id, _)| {
                index_in(entries, *id).is_some_and(|i| entries[i].state == MsgState::Delayed)
            })
            .collect();
        out.sort_unstable();
        out
    }
}

pub(crate) struct Queue {
    pub no: QueueNo,
    pub key: QueueKey,
    pub config: QueueConfig,
    pub total_messages: u64,
    /// Segment holding this queue's latest definition record.
    pub def_segment: SegmentId,
    /// Messages in id order. Deleted ones linger as tombstones until compacted.
    entries: Entries,
    /// Every Visible entry before `cursor` has its id in `returned`; entries from `cursor`
    /// on are found by scanning forward.
    cursor: usize,
    /// Ids made visible again (released, reservation expired, delay over); may hold stale ids.
    returned: BinaryHeap<Reverse<u64>>,
    /// (visible_at_ms, id) of delayed messages.
    delayed: BinaryHeap<Reverse<(u64, u64)>>,
    reservations: IdMap<u64, (ReservationId, u64)>,
    /// (until_ms, id) of reservations; stale pairs are skipped.
    expiries: BinaryHeap<Reverse<(u64, u64)>>,
    live: u64,
    delayed_count: u64,
    tombstones: usize,
    /// Long-polling reservers wait here.
    pub waiters: Arc<tokio::sync::Notify>,
    /// Delivery state (push queues only).
    pub push: Option<PushState>,
}

/// Why a message could not be changed, before the engine maps it to its error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotFound,
    ReservationRequired,
    ReservationMismatch,
}

impl Queue {
    pub fn new(no: QueueNo, key: QueueKey, config: QueueConfig, def_segment: SegmentId) -> Queue {
        let push = config.kind.is_push().then(|| PushState::new(&config));
        Queue {
            push,
            no,
            key,
            config,
            total_messages: 0,
            def_segment,
            entries: Entries::new(),
            cursor: 0,
            returned: BinaryHeap::new(),
            delayed: BinaryHeap::new(),
            reservations: IdMap::default(),
            expiries: BinaryHeap::new(),
            live: 0,
            delayed_count: 0,
            tombstones: 0,
            waiters: Arc::new(tokio::sync::Notify::new()),
        }
    }

    pub fn size(&self) -> u64 {
        self.live
    }
    pub fn reserved(&self) -> u64 {
        self.reservations.len() as u64
    }
    pub fn delayed(&self) -> u64 {
        self.delayed_count
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        index_in(&self.entries, id)
    }

    /// Takes new settings (the kind never changes); re-plans push deliveries when the
    /// subscribers changed, and says whether they did.
    pub fn set_config(&mut self, config: QueueConfig) -> bool {
        let mut changed = false;
        if let Some(p) = &mut self.push
            && p.set_config(&config)
        {
            changed = true;
            p.rebuild(push_plan(&self.entries, &self.delayed));
        }
        self.config = config;
        changed
    }

    /// Plans push deliveries from scratch (after replay).
    pub fn rebuild_push(&mut self) {
        if let Some(p) = &mut self.push {
            p.rebuild(push_plan(&self.entries, &self.delayed));
        }
    }

    /// The due time of `lane`'s first delivery, skipping stale ones.
    pub fn push_lane_top(&mut self, lane: usize) -> Option<u64> {
        let entries = &self.entries;
        let p = self.push.as_mut()?;
        p.lane_top(lane, |id| {
            index_in(entries, id).is_some_and(|i| entries[i].state != MsgState::Deleted)
        })
    }

    /// Applies a Push record's updates; a message that is now finished leaves the queue (kept
    /// aside for lookups). Returns true if it finished.
    pub fn apply_push(
        &mut self,
        id: MessageId,
        attempt: bool,
        ups: &[PushUpdate],
        decided: Option<bool>,
        now_ms: u64,
        live: &mut LiveBytes,
    ) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        let Some(p) = &mut self.push else {
            return false;
        };
        if !p.apply(id.0, attempt, ups, decided) {
            return false;
        }
        let states_kept = p.final_states(id.0);
        let Some(e) = self.apply_delete(id, live) else {
            return false;
        };
        if let Some(p) = &mut self.push {
            p.finish_with(e, states_kept, now_ms);
        }
        true
    }

    pub fn get(&self, id: MessageId) -> Option<&Entry> {
        let e = &self.entries[self.index_of(id.0)?];
        (e.state != MsgState::Deleted).then_some(e)
    }

    pub fn reservation(&self, id: MessageId) -> Option<(ReservationId, u64)> {
        self.reservations.get(&id.0).copied()
    }

    /// The earliest time a timer (delay or reservation expiry) may make a message visible.
    pub fn next_due_ms(&self) -> Option<u64> {
        let a = self.delayed.peek().map(|Reverse((t, _))| *t);
        let b = self.expiries.peek().map(|Reverse((t, _))| *t);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn make_visible(&mut self, idx: usize) {
        let e = &mut self.entries[idx];
        e.state = MsgState::Visible;
        if idx < self.cursor {
            self.returned.push(Reverse(e.id));
        }
    }

    /// Moves due delays and expired reservations to visible. Returns how many became visible.
    pub fn tick(&mut self, now_ms: u64) -> usize {
        let mut woke = 0;
        while let Some(&Reverse((at, id))) = self.delayed.peek() {
            if at > now_ms {
                break;
            }
            self.delayed.pop();
            if let Some(idx) = self.index_of(id)
                && self.entries[idx].state == MsgState::Delayed
            {
                self.delayed_count -= 1;
                self.make_visible(idx);
                woke += 1;
            }
        }
        while let Some(&Reverse((until, id))) = self.expiries.peek() {
            if until > now_ms {
                break;
            }
            self.expiries.pop();
            if self.reservations.get(&id).is_some_and(|r| r.1 == until) {
                self.reservations.remove(&id);
                if let Some(idx) = self.index_of(id) {
                    self.make_visible(idx);
                    woke += 1;
                }
            }
        }
        woke
    }

    /// The next visible message in id order, without taking it. Skips stale heap ids and
    /// advances the cursor past entries that are not visible.
    pub fn next_visible(&mut self) -> Option<usize> {
        let from_heap = loop {
            let Some(&Reverse(id)) = self.returned.peek() else {
                break None;
            };
            match self.index_of(id) {
                Some(idx) if self.entries[idx].state == MsgState::Visible && idx < self.cursor => {
                    break Some(idx);
                }
                _ => {
                    self.returned.pop();
                }
            }
        };
        self.skip_hidden();
        let from_cursor = (self.cursor < self.entries.len()).then_some(self.cursor);
        match (from_heap, from_cursor) {
            (Some(h), Some(c)) => Some(h.min(c)),
            (h, c) => h.or(c),
        }
    }

    /// Moves the cursor past the entries at it that are not visible (delayed, reserved,
    /// deleted): each is passed once, and one made visible later goes to `returned`.
    fn skip_hidden(&mut self) {
        while self.cursor < self.entries.len()
            && self.entries[self.cursor].state != MsgState::Visible
        {
            self.cursor += 1;
        }
    }

    /// Takes `idx` (as returned by `next_visible`) out of the visible set's bookkeeping.
    pub fn take_visible(&mut self, idx: usize) {
        if idx == self.cursor {
            self.cursor += 1;
        } else {
            let top = self.returned.pop();
            debug_assert_eq!(top.map(|Reverse(id)| id), Some(self.entries[idx].id));
        }
    }

    pub fn entry(&self, idx: usize) -> &Entry {
        &self.entries[idx]
    }

    /// Visible messages from the head, for peek: up to `n`, skipping expired ones.
    ///
    /// Every visible entry before the cursor has its id in `returned`, so the entries the
    /// cursor has passed (reserved, deleted, delayed: 100,000 reserved messages at the head
    /// were 800 pages walked under the state lock on every peek) are not walked; and peek
    /// moves the cursor past the hidden entries at it first, as a reserve does (100,000
    /// delayed messages after the cursor were walked by every peek until a reserve came).
    pub fn peek(&mut self, n: usize, now_s: u32) -> Vec<Entry> {
        self.skip_hidden();
        let shown = |e: &Entry| e.state == MsgState::Visible && e.expires_at_s > now_s;
        let cursor = self.cursor.min(self.entries.len());
        let mut returned: Vec<usize> = self
            .returned
            .iter()
            .filter_map(|Reverse(id)| self.index_of(*id))
            .filter(|&i| i < cursor && shown(&self.entries[i]))
            .collect();
        returned.sort_unstable();
        returned.dedup();
        let mut out: Vec<Entry> = returned
            .into_iter()
            .take(n)
            .map(|i| self.entries[i])
            .collect();
        for i in cursor..self.entries.len() {
            if out.len() >= n {
                break;
            }
            if shown(&self.entries[i]) {
                out.push(self.entries[i]);
            }
        }
        out
    }

    // ---- apply: the state changes that records describe ----

    /// A posted (or relocated, or dead-lettered) message arrives.
    pub fn apply_insert(
        &mut self,
        mut e: Entry,
        visible_at_ms: u64,
        reservation: Option<(ReservationId, u64)>,
        live: &mut LiveBytes,
    ) {
        if let Some(p) = &mut self.push {
            // Push messages are never reserved: their lanes hold when each subscriber's
            // delivery is due. One posted with a delay is `Delayed` until then as a pull
            // message is (counted, kept out of peek, kept by the restart index), so that
            // a re-plan of the lanes (a subscriber change, a restart) still knows its time.
            p.on_insert(e.id, visible_at_ms);
            if visible_at_ms > 0 {
                e.state = MsgState::Delayed;
                self.delayed.push(Reverse((visible_at_ms, e.id)));
                self.delayed_count += 1;
            } else {
                e.state = MsgState::Visible;
            }
        } else if let Some((rid, until)) = reservation {
            e.state = MsgState::Reserved;
            self.reservations.insert(e.id, (rid, until));
            self.expiries.push(Reverse((until, e.id)));
        } else if visible_at_ms > 0 {
            e.state = MsgState::Delayed;
            self.delayed.push(Reverse((visible_at_ms, e.id)));
            self.delayed_count += 1;
        }
        live.add(&e);
        self.live += 1;
        let at_end = self.entries.back().is_none_or(|last| last.id < e.id);
        let idx = if at_end {
            self.entries.push_back(e);
            self.entries.len() - 1
        } else {
            match self.entries.search(e.id) {
                Ok(idx) => {
                    // Replaces an older copy (a relocation replayed over its original).
                    let old = self.entries[idx];
                    if old.state == MsgState::Reserved && reservation.is_some() {
                        // `forget` would drop the reservation just registered above.
                        live.remove(&old);
                        self.live -= 1;
                    } else {
                        self.forget(idx, old, live);
                    }
                    if old.state == MsgState::Deleted {
                        self.tombstones -= 1;
                    }
                    // `live` already counts `e` (above) and no longer counts `old`.
                    self.entries[idx] = e;
                    idx
                }
                Err(idx) => {
                    self.entries.insert(idx, e);
                    if idx < self.cursor {
                        self.cursor += 1;
                    }
                    idx
                }
            }
        };
        if e.state == MsgState::Visible && idx < self.cursor {
            self.returned.push(Reverse(e.id));
        }
    }

    /// Undoes the bookkeeping of an entry being replaced or removed.
    fn forget(&mut self, idx: usize, old: Entry, live: &mut LiveBytes) {
        match old.state {
            MsgState::Deleted => return,
            MsgState::Delayed => self.delayed_count -= 1,
            MsgState::Reserved => {
                self.reservations.remove(&old.id);
            }
            MsgState::Visible => {}
        }
        self.entries[idx].state = MsgState::Deleted;
        live.remove(&old);
        self.live -= 1;
    }

    pub fn apply_reserve(&mut self, id: MessageId, rid: ReservationId, until_ms: u64) -> bool {
        let Some(idx) = self.index_of(id.0) else {
            return false;
        };
        let e = &mut self.entries[idx];
        match e.state {
            MsgState::Deleted => return false,
            MsgState::Delayed => self.delayed_count -= 1,
            _ => {}
        }
        e.state = MsgState::Reserved;
        e.reserved_count = e.reserved_count.saturating_add(1);
        self.reservations.insert(id.0, (rid, until_ms));
        self.expiries.push(Reverse((until_ms, id.0)));
        self.compact_expiries();
        true
    }

    /// Drops expiry-heap pairs of reservations that ended early (deleted, released,
    /// superseded by a touch) once they outnumber the live ones: otherwise a fast
    /// reserve/delete cycle keeps one stale pair per reservation for a whole timeout
    /// (24 B each; 60 s at 150k msg/s is 200 MB). The rebuild is linear in the heap and
    /// runs only after at least as many pushes as it removes, so its cost is amortized O(1).
    fn compact_expiries(&mut self) {
        const SLACK: usize = 64 * 1024;
        if self.expiries.len() <= 2 * self.reservations.len() + SLACK {
            return;
        }
        let reservations = &self.reservations;
        let kept: Vec<Reverse<(u64, u64)>> = std::mem::take(&mut self.expiries)
            .into_vec()
            .into_iter()
            .filter(|Reverse((until, id))| reservations.get(id).is_some_and(|r| r.1 == *until))
            .collect();
        self.expiries = BinaryHeap::from(kept);
    }

    pub fn apply_touch(&mut self, id: MessageId, rid: ReservationId, until_ms: u64) {
        let Some(idx) = self.index_of(id.0) else {
            return;
        };
        if self.entries[idx].state != MsgState::Reserved {
            return;
        }
        let e = &mut self.entries[idx];
        e.reserved_count = e.reserved_count.saturating_add(1);
        self.reservations.insert(id.0, (rid, until_ms));
        self.expiries.push(Reverse((until_ms, id.0)));
        self.compact_expiries();
    }

    pub fn apply_release(&mut self, id: MessageId, visible_at_ms: u64, now_ms: u64) {
        let Some(idx) = self.index_of(id.0) else {
            return;
        };
        if self.entries[idx].state != MsgState::Reserved {
            return;
        }
        self.reservations.remove(&id.0);
        if visible_at_ms > now_ms {
            self.entries[idx].state = MsgState::Delayed;
            self.delayed_count += 1;
            self.delayed.push(Reverse((visible_at_ms, id.0)));
        } else {
            self.make_visible(idx);
        }
    }

    /// Removes a message. Returns the removed entry.
    pub fn apply_delete(&mut self, id: MessageId, live: &mut LiveBytes) -> Option<Entry> {
        let idx = self.index_of(id.0)?;
        let old = self.entries[idx];
        if old.state == MsgState::Deleted {
            return None;
        }
        self.forget(idx, old, live);
        if let Some(p) = &mut self.push {
            p.on_remove(id.0);
        }
        self.tombstones += 1;
        self.trim();
        Some(old)
    }

    pub fn apply_clear(&mut self, live: &mut LiveBytes) {
        let gone = self.take_all();
        live.subtract(&LiveBytes::of(&gone));
    }

    /// Empties the queue as [`Queue::apply_clear`] does, but leaves what its messages take
    /// in `LiveBytes` there: the caller subtracts [`LiveBytes::of`] the entries returned,
    /// and can walk them (millions, in pages idle for long) without the state lock, while
    /// the counts only keep retention from dropping those segments a little longer.
    pub fn take_all(&mut self) -> Entries {
        let gone = std::mem::take(&mut self.entries);
        if let Some(p) = &mut self.push {
            p.on_clear();
        }
        self.cursor = 0;
        self.returned.clear();
        self.delayed.clear();
        self.reservations.clear();
        self.expiries.clear();
        self.live = 0;
        self.delayed_count = 0;
        self.tombstones = 0;
        gone
    }

    /// Drops tombstones at the head, and compacts when they dominate.
    fn trim(&mut self) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.state == MsgState::Deleted)
        {
            self.entries.pop_front();
            self.tombstones -= 1;
            self.cursor = self.cursor.saturating_sub(1);
        }
        if self.tombstones > 1024 && self.tombstones > self.live as usize {
            let cursor = self.cursor;
            let mut new_cursor = 0;
            let mut i = 0;
            self.entries.retain(|e| {
                let keep = e.state != MsgState::Deleted;
                if keep && i < cursor {
                    new_cursor += 1;
                }
                i += 1;
                keep
            });
            self.cursor = new_cursor;
            self.tombstones = 0;
        }
    }

    /// Drops delay-heap entries superseded by a later one for the same message. Replay
    /// applies records without ticking between them, so a message posted with a delay,
    /// reserved, then released with a delay holds both visible-at times, and the stale
    /// earlier one would make it visible early. Later delays of a message are never earlier.
    pub fn drop_stale_delays(&mut self) {
        let latest = latest_delays(&self.delayed);
        self.delayed
            .retain(|Reverse((at, id))| latest.get(id) == Some(at));
    }

    // ---- the restart index (`checkpoint.rs`) ----

    /// The entries as they are now, tombstones included (a snapshot: see [`Entries`]).
    pub fn entries_snapshot(&self) -> Entries {
        self.entries.clone()
    }

    /// The reservations and delays as they are now, copied for the restart index (see
    /// [`Timers`]).
    pub fn timers_snapshot(&self) -> Timers {
        Timers {
            reservations: self.reservations.clone(),
            delayed: if self.delayed_count == 0 {
                Vec::new()
            } else {
                self.delayed.as_slice().to_vec()
            },
            delayed_count: self.delayed_count,
        }
    }

    /// Rebuilds a queue from what the restart index kept: `entries` (live, in strictly
    /// increasing id order, already counted in `live`; `reserved` and `delayed` of them in
    /// those states), the reservations of the reserved ones and the visible-at times of the
    /// delayed ones. Fails if they disagree.
    pub fn restore(
        mut self,
        entries: Entries,
        reserved: u64,
        delayed: u64,
        reservations: Vec<(u64, ReservationId, u64)>,
        delays: Vec<(u64, u64)>,
    ) -> Result<Queue, crate::error::CorruptionKind> {
        use crate::error::CorruptionKind::BadPayload;
        if reserved != reservations.len() as u64 || delayed != delays.len() as u64 {
            return Err(BadPayload);
        }
        let state_of = |id: u64| index_in(&entries, id).map(|i| entries[i].state);
        for &(id, rid, until) in &reservations {
            if state_of(id) != Some(MsgState::Reserved) {
                return Err(BadPayload);
            }
            self.reservations.insert(id, (rid, until));
            self.expiries.push(Reverse((until, id)));
        }
        if self.reservations.len() as u64 != reserved {
            return Err(BadPayload);
        }
        if delays.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(BadPayload);
        }
        for &(id, at) in &delays {
            if state_of(id) != Some(MsgState::Delayed) {
                return Err(BadPayload);
            }
            self.delayed.push(Reverse((at, id)));
        }
        self.live = entries.len() as u64;
        self.delayed_count = delayed;
        self.entries = entries;
        self.cursor = 0;
        self.tombstones = 0;
        Ok(self)
    }

    /// Deletes expired, unreserved messages from the head up to the first one that has not
    /// expired. Reserved ones are passed over (they expire once their reservation ends and
    /// they are visible again), at most [`SWEEP_SCAN_MAX`] entries per call: this runs under
    /// the state lock, and messages it does not reach still expire when a reserve, peek or
    /// lookup meets them. Returns how many went.
    pub fn sweep_expired(&mut self, now_s: u32, live: &mut LiveBytes) -> usize {
        let due: Vec<u64> = self
            .entries
            .iter()
            .take(SWEEP_SCAN_MAX)
            .filter(|e| !matches!(e.state, MsgState::Deleted | MsgState::Reserved))
            .take_while(|e| e.expires_at_s <= now_s)
            .map(|e| e.id)
            .collect();
        for &id in &due {
            self.apply_delete(MessageId(id), live);
        }
        due.len()
    }

    /// Deletes the messages in segments before `first` that have expired by `now_s`, in
    /// whatever state: a restart index older than a segment's removal can still hold them
    /// (expiry is not logged, so nothing after the index says they went). Returns how many.
    pub fn drop_expired_before(&mut self, first: u32, now_s: u32, live: &mut LiveBytes) -> usize {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| {
                e.state != MsgState::Deleted && e.segment < first && e.expires_at_s <= now_s
            })
            .map(|e| e.id)
            .collect();
        for &id in &gone {
            self.apply_delete(MessageId(id), live);
        }
        gone.len()
    }

    /// Deletes message `id` if it has expired and is not reserved (what the sweep would do
    /// once it reaches it), so that a lookup by id never finds an expired message. Push
    /// queues' messages are left to the pusher. True if it went.
    pub fn expire_if_due(&mut self, id: MessageId, now_s: u32, live: &mut LiveBytes) -> bool {
        let due = self.push.is_none()
            && self
                .get(id)
                .is_some_and(|e| e.state != MsgState::Reserved && e.expires_at_s <= now_s);
        due && self.apply_delete(id, live).is_some()
    }

    /// Checks a caller's claim on a message before deleting it.
    pub fn check_delete(&self, id: MessageId, rid: Option<ReservationId>) -> Result<(), Refusal> {
        let e = self.get(id).ok_or(Refusal::NotFound)?;
        match (e.state, rid) {
            (MsgState::Reserved, None) => Err(Refusal::ReservationRequired),
            (MsgState::Reserved, Some(rid)) => {
                if self.reservations.get(&id.0).is_some_and(|r| r.0 == rid) {
                    Ok(())
                } else {
                    Err(Refusal::ReservationMismatch)
                }
            }
            (_, Some(_)) => Err(Refusal::ReservationMismatch),
            (_, None) => Ok(()),
        }
    }

    /// Checks a reservation for touch and release.
    pub fn check_reservation(&self, id: MessageId, rid: ReservationId) -> Result<(), Refusal> {
        let e = self.get(id).ok_or(Refusal::NotFound)?;
        if e.state != MsgState::Reserved {
            return Err(Refusal::ReservationMismatch);
        }
        match self.reservations.get(&id.0) {
            Some(r) if r.0 == rid => Ok(()),
            _ => Err(Refusal::ReservationMismatch),
        }
    }

    /// Points a message at its new place in the log after relocation.
    pub fn relocate(&mut self, id: MessageId, segment: u32, offset: u32, live: &mut LiveBytes) {
        let Some(idx) = self.index_of(id.0) else {
            return;
        };
        let e = &mut self.entries[idx];
        if e.state == MsgState::Deleted {
            return;
        }
        live.remove(e);
        e.segment = segment;
        e.offset = offset;
        live.add(e);
    }

    /// The visible-at time of every delayed message, by id (the latest of a message's heap
    /// entries; one walk over the delay heap, for relocation only).
    pub fn delayed_times(&self) -> HashMap<u64, u64> {
        latest_delays(&self.delayed)
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn check_invariants(&self) {
        let mut live = 0;
        let mut delayed = 0;
        let mut reserved = 0;
        let mut prev = None;
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(p) = prev {
                assert!(e.id > p, "ids out of order");
            }
            prev = Some(e.id);
            match e.state {
                MsgState::Deleted => continue,
                MsgState::Delayed => delayed += 1,
                MsgState::Reserved => {
                    reserved += 1;
                    assert!(
                        self.reservations.contains_key(&e.id),
                        "reserved without reservation"
                    );
                }
                MsgState::Visible => {
                    if i < self.cursor {
                        assert!(
                            self.returned.iter().any(|Reverse(id)| *id == e.id),
                            "visible entry behind the cursor is not in the returned heap"
                        );
                    }
                }
            }
            live += 1;
        }
        assert_eq!(live, self.live, "live count");
        assert_eq!(delayed, self.delayed_count, "delayed count");
        assert_eq!(reserved, self.reservations.len(), "reservation count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_heap_stays_bounded_under_reserve_and_delete() {
        let mut q = Queue::new(
            QueueNo(1),
            QueueKey::new("p", "q"),
            QueueConfig::default(),
            SegmentId(1),
        );
        let mut live = LiveBytes::default();
        let entry = |id| Entry {
            id,
            segment: 1,
            offset: 64,
            body_len: 1,
            expires_at_s: u32::MAX,
            meta_len: 0,
            reserved_count: 0,
            state: MsgState::Visible,
        };
        // One reservation kept open the whole time must survive every compaction.
        q.apply_insert(entry(0), 0, None, &mut live);
        q.apply_reserve(MessageId(0), ReservationId([1; 16]), 9_000_000);
        for id in 1..300_000u64 {
            q.apply_insert(entry(id), 0, None, &mut live);
            q.apply_reserve(MessageId(id), ReservationId([2; 16]), 60_000 + id);
            q.apply_delete(MessageId(id), &mut live);
        }
        assert!(
            q.expiries.len() <= 2 + 64 * 1024 + 1,
            "{}",
            q.expiries.len()
        );
        q.check_invariants();
        // The open reservation still expires on time, and only then.
        assert_eq!(q.tick(8_999_999), 0);
        assert_eq!(q.tick(9_000_000), 1);
    }
}
