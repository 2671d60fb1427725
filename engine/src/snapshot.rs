//! The restart snapshot: an image of the whole in-memory state, written at a clean close and
//! stamped with the log position it covers. It is a cache: on open, recovery still checks
//! every frame of the log, and uses the snapshot instead of replaying only if it covers
//! exactly the log's recovered end (nothing was appended after it) and its checksum holds.
//! Anything else (no file, a bad checksum, a stale position) means a full replay.
//!
//! Format (index.snap): { magic: [u8;8] = "FERROMQX" | version: u32 | crc: u32 (CRC-32 of the
//!   body) | covers: u64 (LogPos) | body_len: u64 | body }
//! body: { next_id: u64 | next_queue: u32 | metas: u32 | × {key str16, value bytes32, seg u32}
//!   | queues: u32 | × {def bytes32 (a QueueDef payload), def_segment u32, Queue::export} }

use std::collections::{BTreeMap, HashMap};

use crate::engine::{RidGen, State};
use crate::ids::{LogPos, QueueKey, SegmentId};
use crate::queue::{LiveBytes, Queue};
use crate::record::{self, Put, QueueDef, Reader};
use crate::storage::Storage;

pub const FILE: &str = "index.snap";
const TMP: &str = "index.snap.tmp";
const MAGIC: [u8; 8] = *b"FERROMQX";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 32;

/// Writes the snapshot of `st`, which must be exactly the state at log position `covers`.
pub(crate) fn write(storage: &dyn Storage, st: &State, covers: LogPos) -> std::io::Result<()> {
    let mut body = Vec::with_capacity(64 + st.live.per_segment.len() * 8);
    body.u64(st.next_id);
    body.u32(st.next_queue);
    body.u32(st.meta.len() as u32);
    for (k, (v, seg)) in &st.meta {
        body.bytes16(k.as_bytes());
        body.bytes32(v);
        body.u32(seg.0);
    }
    body.u32(st.queues.len() as u32);
    let mut def = Vec::new();
    for q in st.queues.values() {
        def.clear();
        record::put_queue_def(
            &mut def,
            &QueueDef {
                queue: q.no,
                total_messages: q.total_messages,
                project: &q.key.project,
                name: &q.key.name,
                config: q.config.clone(),
            },
        );
        body.bytes32(&def);
        body.u32(q.def_segment.0);
        q.export(&mut body);
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.u32(VERSION);
    out.u32(crc32fast::hash(&body));
    out.u64(covers.0);
    out.u64(body.len() as u64);
    out.extend_from_slice(&body);
    let _ = storage.remove(TMP);
    let file = storage.create(TMP)?;
    file.write_at(0, &out)?;
    file.sync_data()?;
    storage.rename(TMP, FILE)
}

/// Loads the snapshot if it covers exactly `end`; removes the file either way.
pub(crate) fn load(storage: &dyn Storage, end: LogPos, first_segment: SegmentId) -> Option<State> {
    let names = storage.list().ok()?;
    if names.iter().any(|n| n == TMP) {
        let _ = storage.remove(TMP);
    }
    if !names.iter().any(|n| n == FILE) {
        return None;
    }
    let state = read(storage, end, first_segment);
    let _ = storage.remove(FILE);
    state
}

fn read(storage: &dyn Storage, end: LogPos, first_segment: SegmentId) -> Option<State> {
    let file = storage.open(FILE).ok()?;
    let len = file.len().ok()? as usize;
    if len < HEADER_BYTES {
        return None;
    }
    let region = file.map().ok()?;
    let mut out = None;
    region
        .with_slice(0, len, &mut |bytes| out = parse(bytes, end, first_segment))
        .ok()?;
    out
}

fn parse(bytes: &[u8], end: LogPos, first_segment: SegmentId) -> Option<State> {
    let mut h = Reader::new(&bytes[..HEADER_BYTES]);
    if h.take(8).ok()? != MAGIC || h.u32().ok()? != VERSION {
        return None;
    }
    let crc = h.u32().ok()?;
    let covers = LogPos(h.u64().ok()?);
    let body_len = h.u64().ok()? as usize;
    if covers != end || bytes.len() < HEADER_BYTES + body_len {
        return None;
    }
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + body_len];
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut r = Reader::new(body);
    let next_id = r.u64().ok()?;
    let next_queue = r.u32().ok()?;
    let mut meta = BTreeMap::new();
    for _ in 0..r.u32().ok()? {
        let k = r.str16().ok()?.to_string();
        let v = r.bytes32().ok()?.to_vec();
        meta.insert(k, (v, SegmentId(r.u32().ok()?)));
    }
    let mut live = LiveBytes::default();
    let mut queues = HashMap::new();
    for _ in 0..r.u32().ok()? {
        let def = record::get_queue_def(r.bytes32().ok()?).ok()?;
        let def_segment = SegmentId(r.u32().ok()?);
        let key = QueueKey::new(def.project, def.name);
        let mut q = Queue::new(def.queue, key, def.config, def_segment);
        q.total_messages = def.total_messages;
        q.import(&mut r, &mut live).ok()?;
        queues.insert(def.queue, q);
    }
    r.finish().ok()?;
    Some(State {
        by_key: queues.values().map(|q| (q.key.clone(), q.no)).collect(),
        queues,
        next_queue,
        next_id,
        meta,
        live,
        scratch: Vec::with_capacity(64 * 1024),
        first_segment,
        rids: RidGen::new(),
    })
}
