//! A queue's entries in id order, kept in fixed-size chunks that are shared copy-on-write.
//!
//! Why not a `VecDeque`: its growth copies the whole queue into a buffer twice the size
//! while the state lock is held (at 4M messages, 128 MB copied into 256 MB of fresh pages,
//! which stopped every request for over 100 ms), and the restart index had to copy every
//! entry under the lock too (38 ms at 5.4M messages). Here growth adds one chunk of
//! [`CHUNK`] entries at a time, and [`Entries::clone`] is a snapshot that copies only the
//! chunk pointers: the index serializes that snapshot after the lock is released, and a
//! chunk changed meanwhile is copied once (14 KiB) by the change that finds it shared.
//!
//! A chunk's reference counts live apart from its entries (`Arc<Box<[Entry]>>`, not
//! `Arc<[Entry]>`): the 32-byte `Arc` allocations are packed together by jemalloc, so a
//! snapshot's count increments touch about one page per 128 chunks instead of one page per
//! chunk. On the 2-core VM of `benches/README.md` a page not touched for a second or so
//! costs about 5 µs to touch again (read or write), and the snapshot of a queue of 3M
//! entries held the state lock for 5–12 ms that way (every request waited; 41 ms at 7M
//! entries); with the counts packed, 0.1 ms. The price is one more pointer followed per
//! access, to memory that the accesses keep warm.
//!
//! Layout: entry `i` is at position `head + i`, in chunk `(head + i) / CHUNK`. Every chunk
//! has `CHUNK` slots except a queue's only chunk, which starts small and doubles up to
//! `CHUNK` (a queue of a few messages costs a few slots, not 14 KiB). Slots outside
//! `head .. head + len` hold stale or vacant entries and are never read.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};
use std::sync::Arc;

use crate::queue::{Entry, MsgState};

/// Entries per chunk: 14,304 bytes (the `Arc`'s counters are elsewhere), inside jemalloc's
/// largest small size class (14 KiB, slab-allocated). Larger allocations carry a page of
/// padding each (jemalloc's cache-oblivious offset): 1,024 entries took 40 KiB and 1,023
/// took 36 KiB, 38 bytes per message instead of 32.
pub(crate) const CHUNK: usize = 447;
const _: () = assert!(CHUNK * std::mem::size_of::<Entry>() <= 14 << 10);

/// Slots of a queue's first chunk.
const FIRST_CHUNK: usize = 4;

/// What unused slots hold.
const VACANT: Entry = Entry {
    id: 0,
    segment: 0,
    offset: 0,
    body_len: 0,
    expires_at_s: 0,
    meta_len: 0,
    reserved_count: 0,
    state: MsgState::Deleted,
};

/// Shared copy-on-write, its counts apart from its entries (see the module comment).
type Chunk = Arc<Box<[Entry]>>;

fn chunk(slots: usize) -> Chunk {
    Arc::new(std::iter::repeat_n(VACANT, slots).collect())
}

/// Entries in id order (see the module comment). Cloning is a snapshot: O(len / CHUNK).
#[derive(Clone, Default)]
pub(crate) struct Entries {
    chunks: VecDeque<Chunk>,
    /// Position of entry 0 in `chunks[0]`.
    head: usize,
    len: usize,
}

impl std::fmt::Debug for Entries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entries")
            .field("len", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl Entries {
    pub fn new() -> Entries {
        Entries::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// (chunk, slot) of entry `i`; `i` may be `len` (the slot a push would fill).
    fn locate(&self, i: usize) -> (usize, usize) {
        let p = self.head + i;
        (p / CHUNK, p % CHUNK)
    }

    /// Slots in all chunks.
    fn slots(&self) -> usize {
        match self.chunks.len() {
            0 => 0,
            1 => self.chunks[0].len(),
            n => n * CHUNK,
        }
    }

    pub fn get(&self, i: usize) -> Option<&Entry> {
        (i < self.len).then(|| {
            let (c, s) = self.locate(i);
            &self.chunks[c][s]
        })
    }

    pub fn front(&self) -> Option<&Entry> {
        self.get(0)
    }

    pub fn back(&self) -> Option<&Entry> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// Grows a queue's only chunk to `slots` (at most [`CHUNK`]), keeping its contents.
    fn grow_first(&mut self, slots: usize) {
        debug_assert!(self.chunks.len() <= 1 && slots <= CHUNK);
        let mut bigger = Vec::with_capacity(slots);
        if let Some(old) = self.chunks.front() {
            bigger.extend_from_slice(old);
        }
        bigger.resize(slots, VACANT);
        self.chunks.clear();
        self.chunks.push_back(Arc::new(bigger.into_boxed_slice()));
    }

    pub fn push_back(&mut self, e: Entry) {
        let p = self.head + self.len;
        if p == self.slots() {
            match self.chunks.len() {
                0 => self.chunks.push_back(chunk(FIRST_CHUNK)),
                1 if p < CHUNK => self.grow_first((2 * p).min(CHUNK)),
                _ => self.chunks.push_back(chunk(CHUNK)),
            }
        }
        self.len += 1;
        let i = self.len - 1;
        self[i] = e;
    }

    fn push_front(&mut self, e: Entry) {
        if self.head == 0 {
            if self.chunks.len() == 1 && self.chunks[0].len() < CHUNK {
                self.grow_first(CHUNK);
            }
            self.chunks.push_front(chunk(CHUNK));
            self.head = CHUNK;
        }
        self.head -= 1;
        self.len += 1;
        self[0] = e;
    }

    pub fn pop_front(&mut self) -> Option<Entry> {
        let e = *self.front()?;
        self.head += 1;
        self.len -= 1;
        if self.len == 0 {
            // Keep the last chunk for the next push (a queue emptied and refilled in turn).
            self.chunks.truncate(1);
            self.head = 0;
        } else if self.head == CHUNK {
            self.chunks.pop_front();
            self.head = 0;
        }
        Some(e)
    }

    /// Inserts `e` at `i`, moving the shorter side by one (as `VecDeque::insert` does).
    pub fn insert(&mut self, i: usize, e: Entry) {
        assert!(i <= self.len, "insert at {i} of {}", self.len);
        if i == self.len {
            return self.push_back(e);
        }
        if i == 0 {
            return self.push_front(e);
        }
        if i >= self.len / 2 {
            self.push_back(self[self.len - 1]);
            for j in (i + 1..self.len - 1).rev() {
                self[j] = self[j - 1];
            }
        } else {
            self.push_front(self[0]);
            for j in 1..i {
                self[j] = self[j + 1];
            }
        }
        self[i] = e;
    }

    /// Finds `id` (entries are in strictly increasing id order): `Ok(index)`, or `Err` with
    /// where it would go.
    pub fn search(&self, id: u64) -> Result<usize, usize> {
        self.search_in(id, 0, self.len)
    }

    /// [`Entries::search`] within `lo..hi`, which must hold `id` if any entry does.
    pub fn search_in(&self, id: u64, mut lo: usize, mut hi: usize) -> Result<usize, usize> {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self[mid].id.cmp(&id) {
                std::cmp::Ordering::Equal => return Ok(mid),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Err(lo)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        let end = self.head + self.len;
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            let from = if c == 0 { self.head } else { 0 };
            let to = end.saturating_sub(c * CHUNK).min(chunk.len());
            chunk[from.min(to)..to].iter()
        })
    }

    /// Keeps the entries `keep` says yes to, in order, in place.
    pub fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let e = self[i];
            if keep(&e) {
                if kept != i {
                    self[kept] = e;
                }
                kept += 1;
            }
        }
        self.len = kept;
        if kept == 0 {
            self.chunks.truncate(1);
            self.head = 0;
        } else {
            let (last, _) = self.locate(kept - 1);
            self.chunks.truncate(last + 1);
        }
        if self.chunks.capacity() > 2 * self.chunks.len() + 64 {
            self.chunks.shrink_to_fit();
        }
    }
}

impl Index<usize> for Entries {
    type Output = Entry;
    fn index(&self, i: usize) -> &Entry {
        assert!(i < self.len, "entry {i} of {}", self.len);
        let (c, s) = self.locate(i);
        &self.chunks[c][s]
    }
}

/// Copies the chunk first if a snapshot still shares it.
impl IndexMut<usize> for Entries {
    fn index_mut(&mut self, i: usize) -> &mut Entry {
        assert!(i < self.len, "entry {i} of {}", self.len);
        let (c, s) = self.locate(i);
        &mut Arc::make_mut(&mut self.chunks[c])[s]
    }
}

impl FromIterator<Entry> for Entries {
    fn from_iter<I: IntoIterator<Item = Entry>>(iter: I) -> Entries {
        let mut out = Entries::new();
        for e in iter {
            out.push_back(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: u64) -> Entry {
        Entry {
            id,
            state: MsgState::Visible,
            ..VACANT
        }
    }

    fn ids(e: &Entries) -> Vec<u64> {
        e.iter().map(|e| e.id).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Pop,
        Insert(usize),
        Set(usize),
        Retain(u64),
        Snapshot,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => Just(Op::Push),
            4 => Just(Op::Pop),
            2 => any::<usize>().prop_map(Op::Insert),
            2 => any::<usize>().prop_map(Op::Set),
            1 => (2..5u64).prop_map(Op::Retain),
            1 => Just(Op::Snapshot),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        /// Every operation agrees with a `VecDeque`, and snapshots never see later changes.
        #[test]
        fn behaves_like_a_vecdeque(ops in proptest::collection::vec((op(), 1..3000usize), 1..40)) {
            let mut e = Entries::new();
            let mut model: VecDeque<Entry> = VecDeque::new();
            let mut snaps: Vec<(Entries, Vec<u64>)> = Vec::new();
            let mut next = 0u64;
            for (op, times) in ops {
                for _ in 0..times {
                    match &op {
                        Op::Push => {
                            next += 1;
                            e.push_back(entry(next));
                            model.push_back(entry(next));
                        }
                        Op::Pop => prop_assert_eq!(e.pop_front().map(|x| x.id), model.pop_front().map(|x| x.id)),
                        Op::Insert(at) => {
                            let at = at % (model.len() + 1);
                            next += 1;
                            e.insert(at, entry(next));
                            model.insert(at, entry(next));
                        }
                        Op::Set(at) if !model.is_empty() => {
                            let at = at % model.len();
                            e[at].reserved_count += 1;
                            model[at].reserved_count += 1;
                        }
                        _ => {}
                    }
                    if matches!(op, Op::Retain(_) | Op::Snapshot | Op::Clear) {
                        break;
                    }
                }
                match op {
                    Op::Retain(m) => {
                        e.retain(|x| x.id % m != 0);
                        model.retain(|x| x.id % m != 0);
                    }
                    Op::Snapshot => snaps.push((e.clone(), ids(&e))),
                    Op::Clear => {
                        std::mem::take(&mut e);
                        model.clear();
                    }
                    _ => {}
                }
                prop_assert_eq!(e.len(), model.len());
                prop_assert_eq!(ids(&e), model.iter().map(|x| x.id).collect::<Vec<_>>());
                for (i, m) in model.iter().enumerate() {
                    prop_assert_eq!(e[i].id, m.id);
                    prop_assert_eq!(e[i].reserved_count, m.reserved_count);
                    prop_assert_eq!(e.get(i).map(|x| x.id), Some(m.id));
                }
                prop_assert!(e.get(model.len()).is_none());
                prop_assert_eq!(e.front().map(|x| x.id), model.front().map(|x| x.id));
                prop_assert_eq!(e.back().map(|x| x.id), model.back().map(|x| x.id));
            }
            for (snap, seen) in &snaps {
                prop_assert_eq!(&ids(snap), seen);
            }
        }
    }

    #[test]
    fn search_finds_ids_and_gaps() {
        let e: Entries = (0..5000u64).map(|i| entry(i * 2 + 10)).collect();
        assert_eq!(e.search(10), Ok(0));
        assert_eq!(e.search(9), Err(0));
        assert_eq!(e.search(11), Err(1));
        assert_eq!(e.search(2 * 4999 + 10), Ok(4999));
        assert_eq!(e.search(2 * 4999 + 11), Err(5000));
        assert_eq!(e.search(2 * 2048 + 10), Ok(2048));
    }

    #[test]
    fn a_small_queue_costs_a_few_slots() {
        let mut e = Entries::new();
        for i in 0..3 {
            e.push_back(entry(i));
        }
        assert_eq!(e.slots(), FIRST_CHUNK);
        for i in 3..CHUNK as u64 + 1 {
            e.push_back(entry(i));
        }
        assert_eq!(e.chunks.len(), 2);
        assert_eq!(e.chunks[0].len(), CHUNK);
        // Emptied, it keeps one chunk for the next push.
        while e.pop_front().is_some() {}
        assert_eq!(e.chunks.len(), 1);
        e.push_back(entry(7));
        assert_eq!(ids(&e), vec![7]);
    }

    #[test]
    fn a_snapshot_shares_chunks_until_one_changes() {
        let mut e: Entries = (0..3 * CHUNK as u64).map(entry).collect();
        let snap = e.clone();
        assert!(Arc::ptr_eq(&e.chunks[1], &snap.chunks[1]));
        e[CHUNK + 5].reserved_count = 9;
        assert!(!Arc::ptr_eq(&e.chunks[1], &snap.chunks[1]));
        assert!(Arc::ptr_eq(&e.chunks[2], &snap.chunks[2]));
        assert_eq!(snap[CHUNK + 5].reserved_count, 0);
        assert_eq!(e[CHUNK + 5].reserved_count, 9);
    }
}
