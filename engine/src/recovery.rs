//! Rebuilding the engine's state from the log on open.
//!
//! Pass 1 checks every record's checksum, finds the end of the log, and collects the latest
//! definition of every queue and the final metadata values. Pass 2 replays the message
//! records through the same `apply_*` methods the live path uses. Queue definitions are
//! collected first because retention may rewrite a definition after records that use it.
//!
//! With a usable restart index (`checkpoint.rs`), both passes start at the position the
//! index covers instead of the start of the log, from the state the index holds; an
//! unusable one is removed and the whole log replayed.
//!
//! The crash model (FORMAT.md): the last segment may end in a torn write: bad bytes followed
//! by nothing valid. That tail is zeroed. A bad record anywhere else, or one followed by a
//! valid record, is corruption: the open fails naming the file and offset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::{self, IndexRejection, IndexUse};
use crate::engine::{EngineConfig, RecoveryMode, State};
use crate::error::{CorruptionKind, Error, Result};
use crate::ids::{LogPos, MessageId, QueueKey, QueueNo, SegmentId};
use crate::log::Tail;
use crate::queue::{Entry, LiveBytes, MsgState, Queue};
use crate::record::{self, FRAME_HEADER_BYTES, FrameCheck, Kind};
use crate::segment::{self, HEADER_BYTES, SegmentHeader};
use crate::storage::{Region, Storage, StorageFile};
use crate::types::QueueConfig;

pub(crate) struct Recovered {
    pub state: State,
    pub tail: Tail,
    pub regions: HashMap<SegmentId, Arc<dyn Region>>,
    pub report: RecoveryReport,
    /// Where the record that ends at the tail begins, if the last segment has one.
    pub last_frame: Option<LogPos>,
    /// The restart index that was used: the position it covers and its size.
    pub index: Option<(LogPos, u64)>,
}

/// What the open found, for the operator's log: a clean close leaves no torn tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Segment files read.
    pub segments: u64,
    /// Where a torn tail was found and zeroed (segment, byte offset), if one was.
    pub torn_tail: Option<(SegmentId, u64)>,
    /// Unstarted last segments (named ahead of a roll the crash came before) removed.
    pub unstarted_removed: u32,
    /// Under `RecoveryMode::TolerateTail`: a last segment whose header was bad over valid
    /// records, removed whole (with those records).
    pub damaged_header_cut: Option<SegmentId>,
    /// Segments whose records were checked and replayed: all of them without a restart
    /// index, those from the index's position on with one.
    pub segments_scanned: u64,
    /// Records replayed (those after the index's position when one was used).
    pub records_replayed: u64,
    /// What became of the restart index.
    pub index: IndexUse,
}

struct Seg {
    id: SegmentId,
    file: Arc<dyn StorageFile>,
    region: Arc<dyn Region>,
    header: SegmentHeader,
    /// End of the valid records.
    end: usize,
}

struct Defs {
    latest: HashMap<QueueNo, (String, String, QueueConfig)>,
    dropped: HashSet<QueueNo>,
    /// Queues that messages were moved out of (dead-letter moves); see [`Placeholders`].
    move_sources: HashSet<QueueNo>,
    meta: BTreeMap<String, Option<(Vec<u8>, SegmentId)>>,
    max_id: u64,
    max_queue: u32,
}

pub(crate) fn recover(
    config: &EngineConfig,
    storage: Arc<dyn Storage>,
    now_ms: u64,
) -> Result<Recovered> {
    recover_with(config, storage, now_ms, true)
}

/// Replays the whole log, leaving any restart index alone (strict inspection).
pub(crate) fn recover_without_index(
    config: &EngineConfig,
    storage: Arc<dyn Storage>,
    now_ms: u64,
) -> Result<Recovered> {
    recover_with(config, storage, now_ms, false)
}

fn recover_with(
    config: &EngineConfig,
    storage: Arc<dyn Storage>,
    now_ms: u64,
    use_index: bool,
) -> Result<Recovered> {
    let root = storage.root().to_path_buf();
    let names = storage.list().map_err(|e| Error::io("list", &root, e))?;
    for name in names
        .iter()
        .filter(|n| n.starts_with(segment::SPARE_PREFIX))
    {
        storage
            .remove(name)
            .map_err(|e| Error::io("remove", root.join(name), e))?;
    }
    let mut ids: Vec<SegmentId> = names
        .iter()
        .filter_map(|n| SegmentId::from_file_name(n))
        .collect();
    ids.sort();
    // The log names the next segment's file ahead of the roll to it (log.rs, `name_ahead`):
    // a crash before the roll, or before the roll's first write reached the disk, leaves it
    // unstarted. It holds nothing, and is removed once the open has succeeded (a failed
    // open changes nothing). The log names only one file ahead, after a durable header;
    // a run of them is accepted all the same.
    let mut unstarted = Vec::new();
    let mut damaged_cut = None;
    while let [.., _, last] = ids.as_slice() {
        let last = *last;
        let start = start_of(config, &*storage, last)?;
        if let Start::Started = start {
            break;
        }
        unstarted.push(last);
        ids.pop();
        if let Start::DamagedTolerated = start {
            // A bad header over valid records: cut whole under `TolerateTail`, as a torn
            // tail is cut at its first bad frame. One file at most.
            damaged_cut = Some(last);
            break;
        }
    }
    // Segment files missing at the end of the log (all of them, even) cannot be told from a
    // short log by the files alone; the restart index can: it covers a position the log
    // reached. Replaying what is left would lose acknowledged data without a word.
    if use_index
        && let Some(covered) = checkpoint::covered_segment(&*storage)
        && ids.last().is_none_or(|last| *last < covered)
    {
        return Err(Error::Corruption {
            path: root.join(covered.file_name()),
            offset: 0,
            kind: CorruptionKind::MissingSegment,
        });
    }
    let done = |r: Result<Recovered>| {
        let mut r = r?;
        for id in &unstarted {
            storage
                .remove(&id.file_name())
                .map_err(|e| Error::io("remove", root.join(id.file_name()), e))?;
        }
        r.report.unstarted_removed = (unstarted.len() - damaged_cut.is_some() as usize) as u32;
        r.report.damaged_header_cut = damaged_cut;
        Ok(r)
    };
    let time_floor = MessageId::FLOOR + now_ms.saturating_mul(1024);
    if ids.is_empty() {
        let first = SegmentId(1);
        let header = SegmentHeader {
            segment: first,
            next_message_id: time_floor,
            next_queue_no: 1,
        };
        let (spare, file) = segment::create_spare(&*storage, 0, config.segment_bytes)
            .map_err(|e| Error::io("create", root.join(first.file_name()), e))?;
        file.write_at(0, &header.encode())
            .map_err(|e| Error::io("write", root.join(&spare), e))?;
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", root.join(&spare), e))?;
        storage
            .rename(&spare, &first.file_name())
            .map_err(|e| Error::io("rename", root.join(&spare), e))?;
        ids.push(first);
    }
    for w in ids.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(Error::Corruption {
                path: root.join(w[1].file_name()),
                offset: 0,
                kind: CorruptionKind::MissingSegment,
            });
        }
    }

    let mut segs = Vec::with_capacity(ids.len());
    for &id in &ids {
        let path = root.join(id.file_name());
        let file = storage
            .open(&id.file_name())
            .map_err(|e| Error::io("open", &path, e))?;
        let region = file.map().map_err(|e| Error::io("mmap", &path, e))?;
        let mut hb = [0u8; HEADER_BYTES];
        if region.len() < HEADER_BYTES {
            return Err(Error::Corruption {
                path,
                offset: 0,
                kind: CorruptionKind::ShortSegment,
            });
        }
        region
            .read(0, &mut hb)
            .map_err(|e| Error::io("read", &path, e))?;
        let header = SegmentHeader::decode(&hb, id).map_err(|kind| Error::Corruption {
            path: path.clone(),
            offset: 0,
            kind,
        })?;
        let end = region.len();
        segs.push(Seg {
            id,
            file,
            region,
            header,
            end,
        });
    }

    let mut index = IndexUse::Absent;
    if use_index {
        remove_if_present(&*storage, checkpoint::TMP)?;
        let regions: Vec<Arc<dyn Region>> = segs.iter().map(|s| s.region.clone()).collect();
        let view = checkpoint::Segments {
            first: segs[0].id,
            regions: &regions,
        };
        let loaded = checkpoint::load(&*storage, &view, config.record_bytes_max());
        match loaded {
            Ok(None) => {}
            Ok(Some(loaded)) => {
                match from_index(config, &root, &mut segs, loaded, now_ms, time_floor) {
                    Ok(replayed) => return done(finish(&root, segs, replayed)),
                    // A file removed from the front of the log: the index is the only
                    // witness (a full replay cannot tell), so it stays, and the open stops.
                    Err(IndexRejection::LostSegment { segment, messages }) => {
                        return Err(Error::Corruption {
                            path: root.join(SegmentId(segment).file_name()),
                            offset: 0,
                            kind: CorruptionKind::LostSegment { messages },
                        });
                    }
                    Err(why) => index = IndexUse::Ignored(why),
                }
            }
            Err(why) => index = IndexUse::Ignored(why),
        }
        if let IndexUse::Ignored(_) = index {
            // Never leave an unusable index behind: appends after this open could make a
            // position it names look valid again.
            remove_if_present(&*storage, checkpoint::FILE)?;
        }
    }

    // Pass 1 over the whole log.
    let from = LogPos::new(segs[0].id, HEADER_BYTES as u32);
    let checked = pass1(config, &root, &mut segs, from)?;
    let defs = checked.defs;
    let next_id = segs
        .iter()
        .map(|s| s.header.next_message_id)
        .chain([defs.max_id + 1, time_floor])
        .max()
        .unwrap_or(time_floor);
    let next_queue = segs
        .iter()
        .map(|s| s.header.next_queue_no)
        .chain([defs.max_queue + 1, 1])
        .max()
        .unwrap_or(1);

    // Pass 2.
    let mut state = empty_state(next_queue, next_id, segs[0].id);
    let mut qnos: Vec<_> = defs.latest.keys().copied().collect();
    qnos.sort();
    for no in qnos {
        let (project, name, config) = defs.latest[&no].clone();
        if config.kind.is_push() {
            state.push_queues.insert(no);
        }
        state.queues.insert(
            no,
            Queue::new(no, QueueKey::new(project, name), config, SegmentId(0)),
        );
    }
    let placeholders = Placeholders::add(&mut state, &defs.move_sources);
    let records = pass2(&root, &segs, from, &mut state, now_ms)?;
    placeholders.remove(&mut state);
    for (key, value) in defs.meta {
        if let Some(v) = value {
            state.meta.insert(key, v);
        }
    }
    settle(&mut state, now_ms);
    done(finish(
        &root,
        segs,
        Replayed {
            state,
            torn_at: checked.torn_at,
            last_frame: checked.last_frame,
            records,
            scanned: checked.scanned,
            index,
            index_file: None,
        },
    ))
}

/// What the header of the last segment file says about it.
enum Start {
    /// A whole header (good or not: the open checks it like any other).
    Started,
    /// The header never reached the disk whole (zeros, or a torn write: a bad magic or
    /// checksum; not a whole header of another version or segment), and no valid record
    /// follows. Under the crash model a file's unsynced writes survive as a prefix, so a
    /// header that did not survive means nothing after it did either.
    Unstarted,
    /// Such a header with valid records after it: damage. Under `TolerateTail` the file is
    /// cut whole; in strict mode the open fails on the header.
    DamagedTolerated,
}

fn start_of(config: &EngineConfig, storage: &dyn Storage, id: SegmentId) -> Result<Start> {
    let path = storage.root().join(id.file_name());
    let file = storage
        .open(&id.file_name())
        .map_err(|e| Error::io("open", &path, e))?;
    let region = file.map().map_err(|e| Error::io("mmap", &path, e))?;
    if region.len() < HEADER_BYTES {
        return Ok(Start::Started);
    }
    let mut hb = [0u8; HEADER_BYTES];
    region
        .read(0, &mut hb)
        .map_err(|e| Error::io("read", &path, e))?;
    let torn = hb.iter().all(|b| *b == 0)
        || matches!(
            SegmentHeader::decode(&hb, id),
            Err(CorruptionKind::BadMagic | CorruptionKind::HeaderChecksum)
        );
    if !torn {
        return Ok(Start::Started);
    }
    let seed = record::crc_seed(id.0);
    let mut valid = None;
    region
        .with_slice(0, region.len(), &mut |bytes| {
            valid = find_valid_frame(bytes, HEADER_BYTES, seed, config.record_bytes_max())
        })
        .map_err(|e| Error::io("read", &path, e))?;
    Ok(match (valid, config.recovery) {
        (None, _) => Start::Unstarted,
        (Some(_), RecoveryMode::Strict) => Start::Started,
        (Some(_), _) => Start::DamagedTolerated,
    })
}

/// Recovery's result before the tail is repaired and the log handed over.
struct Replayed {
    state: State,
    torn_at: Option<usize>,
    /// Where the last record of the last segment begins, if it has one.
    last_frame: Option<usize>,
    records: u64,
    scanned: u64,
    index: IndexUse,
    /// The index that was used: the position it covers and its size.
    index_file: Option<(LogPos, u64)>,
}

fn empty_state(next_queue: u32, next_id: u64, first_segment: SegmentId) -> State {
    State {
        queues: HashMap::new(),
        by_key: BTreeMap::new(),
        next_queue,
        next_id,
        meta: BTreeMap::new(),
        live: LiveBytes::default(),
        scratch: Vec::with_capacity(64 * 1024),
        first_segment,
        rids: crate::engine::RidGen::new(),
        push_queues: std::collections::BTreeSet::new(),
    }
}

/// Stand-ins, during pass 2, for queues that messages were moved out of but that have no
/// definition left in the log: a queue deleted after a dead-letter move, whose definition
/// retention then dropped (the definitions of deleted queues are not written again). The
/// moved message still lives in its Post record, which names that queue, until retention
/// relocates it; without a queue to post it to, the replay of the Move would find nothing
/// and the message would vanish from the dead-letter queue. The stand-in takes the Post and
/// whatever else the log says of its messages, hands the moved ones over, and is dropped
/// after the replay with whatever it still holds (messages of the deleted queue).
struct Placeholders(Vec<QueueNo>);

impl Placeholders {
    fn add(state: &mut State, move_sources: &HashSet<QueueNo>) -> Placeholders {
        let mut added = Vec::new();
        for &no in move_sources {
            if let std::collections::hash_map::Entry::Vacant(v) = state.queues.entry(no) {
                // Not in `by_key` (that is built by `settle`), and no real queue name can
                // hold a NUL, so nothing can find it by name.
                let key = QueueKey::new("", format!("\0moved-from-{}", no.0));
                v.insert(Queue::new(no, key, QueueConfig::default(), SegmentId(0)));
                added.push(no);
            }
        }
        Placeholders(added)
    }

    fn remove(self, state: &mut State) {
        for no in self.0 {
            state.drop_queue(no);
        }
    }
}

/// After replay: drop superseded delays, let due timers fire, plan push deliveries, and
/// index queues by name.
fn settle(state: &mut State, now_ms: u64) {
    for q in state.queues.values_mut() {
        q.drop_stale_delays();
        q.tick(now_ms);
        q.rebuild_push();
    }
    state.by_key = state
        .queues
        .values()
        .map(|q| (q.key.clone(), q.no))
        .collect();
}

fn remove_if_present(storage: &dyn Storage, name: &str) -> Result<()> {
    match storage.remove(name) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", storage.root().join(name), e)),
    }
}

/// Starts from a loaded index: checks and replays only the records after the position it
/// covers. Any doubt (a bad record after it, a definition that disagrees with it, a message
/// left in a segment that is gone) rejects the index; the caller then replays everything,
/// which also gives the authoritative error if the log itself is damaged.
fn from_index(
    config: &EngineConfig,
    root: &Path,
    segs: &mut [Seg],
    loaded: checkpoint::Loaded,
    now_ms: u64,
    time_floor: u64,
) -> std::result::Result<Replayed, IndexRejection> {
    let covers = loaded.header.covers;
    let checked = pass1(config, root, segs, covers).map_err(|_| IndexRejection::TailUnchecked)?;
    let defs = checked.defs;
    let next_id = segs
        .iter()
        .map(|s| s.header.next_message_id)
        .chain([loaded.header.next_id, defs.max_id + 1, time_floor])
        .max()
        .unwrap_or(time_floor);
    let next_queue = segs
        .iter()
        .map(|s| s.header.next_queue_no)
        .chain([loaded.header.next_queue, defs.max_queue + 1, 1])
        .max()
        .unwrap_or(1);
    let mut state = empty_state(next_queue, next_id, segs[0].id);
    state.live = loaded.live;
    state.meta = loaded.meta;
    for q in loaded.queues {
        state.queues.insert(q.no, q);
    }
    // Definitions after the position: the latest settings of known queues, and new queues
    // (created before the records that use them, as in a full replay).
    let mut qnos: Vec<_> = defs.latest.keys().copied().collect();
    qnos.sort();
    for no in qnos {
        let (project, name, config) = defs.latest[&no].clone();
        match state.queues.get_mut(&no) {
            Some(q) => {
                if q.key.project != project
                    || q.key.name != name
                    || q.config.kind.is_push() != config.kind.is_push()
                {
                    return Err(IndexRejection::LogMismatch);
                }
                q.set_config(config);
            }
            None => {
                let key = QueueKey::new(project, name);
                state
                    .queues
                    .insert(no, Queue::new(no, key, config, SegmentId(0)));
            }
        }
    }
    let placeholders = Placeholders::add(&mut state, &defs.move_sources);
    let records =
        pass2(root, segs, covers, &mut state, now_ms).map_err(|_| IndexRejection::TailUnchecked)?;
    placeholders.remove(&mut state);
    for (key, value) in defs.meta {
        match value {
            Some(v) => state.meta.insert(key, v),
            None => state.meta.remove(&key),
        };
    }
    // Every live message must still have its body in the log (retention cannot have
    // dropped a segment a message lives in, but the index is only trusted as far as this).
    let (first, last) = (segs[0].id.0, segs[segs.len() - 1].id.0);
    // Messages that expired in a segment retention dropped went without a record (expiry
    // is not logged), so an index older than the drop still holds them: gone, as a full
    // replay has them. Any other message left there lost its file.
    let now_s = (now_ms / 1000) as u32;
    for q in state.queues.values_mut() {
        q.drop_expired_before(first, now_s, &mut state.live);
    }
    if let Some((&segment, &(messages, _))) =
        state.live.per_segment.iter().find(|(s, _)| **s < first)
    {
        return Err(IndexRejection::LostSegment { segment, messages });
    }
    if state.live.per_segment.keys().any(|&s| s > last) {
        return Err(IndexRejection::MissingSegment);
    }
    state.push_queues = state
        .queues
        .values()
        .filter(|q| q.config.kind.is_push())
        .map(|q| q.no)
        .collect();
    settle(&mut state, now_ms);
    let last_seg = &segs[segs.len() - 1];
    let last_frame = checked.last_frame.or_else(|| {
        let at = loaded.header.last_frame_at as usize;
        (last_seg.id == covers.segment() && at > 0).then_some(at)
    });
    Ok(Replayed {
        state,
        torn_at: checked.torn_at,
        last_frame,
        records,
        scanned: checked.scanned,
        index: IndexUse::Loaded { covers },
        index_file: Some((covers, loaded.bytes)),
    })
}

/// Zeroes a torn tail and hands the log's end over.
fn finish(root: &Path, segs: Vec<Seg>, r: Replayed) -> Result<Recovered> {
    let last = segs.len() - 1;
    let tail_seg = &segs[last];
    if let Some(offset) = r.torn_at {
        // Zero the torn bytes in place (files never shrink: they are mapped).
        let path = root.join(tail_seg.id.file_name());
        let zeros = vec![0u8; 1 << 20];
        let mut off = offset;
        let len = tail_seg.region.len();
        while off < len {
            let n = (len - off).min(zeros.len());
            tail_seg
                .file
                .write_at(off as u64, &zeros[..n])
                .map_err(|e| Error::io("write", &path, e))?;
            off += n;
        }
    }
    // Durable from here on, whatever the last run left in the page cache (a process killed
    // before its sync): the log takes the tail's header for durable (it names the next file
    // after it) and appends after what was read.
    tail_seg
        .file
        .sync_data()
        .map_err(|e| Error::io("fdatasync", root.join(tail_seg.id.file_name()), e))?;
    let tail = Tail {
        segment: tail_seg.id,
        file: tail_seg.file.clone(),
        end: tail_seg.end as u32,
    };
    let last_frame = r.last_frame.map(|at| LogPos::new(tail_seg.id, at as u32));
    let regions = segs.iter().map(|s| (s.id, s.region.clone())).collect();
    let report = RecoveryReport {
        segments: segs.len() as u64,
        torn_tail: r.torn_at.map(|off| (tail_seg.id, off as u64)),
        unstarted_removed: 0,
        damaged_header_cut: None,
        segments_scanned: r.scanned,
        records_replayed: r.records,
        index: r.index,
    };
    Ok(Recovered {
        state: r.state,
        tail,
        regions,
        report,
        last_frame,
        index: r.index_file,
    })
}

/// What pass 1 found.
struct Checked {
    defs: Defs,
    torn_at: Option<usize>,
    last_frame: Option<usize>,
    scanned: u64,
}

/// Pass 1 from `from` (a record boundary) to the end of the log: checks every frame, finds
/// the end of the records (and a torn tail), and collects definitions and metadata. Sets
/// `end` of every segment it scans.
fn pass1(config: &EngineConfig, root: &Path, segs: &mut [Seg], from: LogPos) -> Result<Checked> {
    let len_max = config.record_bytes_max();
    let mut defs = Defs {
        latest: HashMap::new(),
        dropped: HashSet::new(),
        move_sources: HashSet::new(),
        meta: BTreeMap::new(),
        max_id: 0,
        max_queue: 0,
    };
    let last = segs.len() - 1;
    let mut torn_at = None;
    let mut last_frame = None;
    let mut scanned = 0;
    for (i, seg) in segs.iter_mut().enumerate() {
        if seg.id < from.segment() {
            continue;
        }
        let start = if seg.id == from.segment() {
            from.offset() as usize
        } else {
            HEADER_BYTES
        };
        scanned += 1;
        let path = root.join(seg.id.file_name());
        let seed = record::crc_seed(seg.id.0);
        let mut outcome: Result<Scan> = Ok(Scan {
            end: start,
            bad: None,
            last: None,
        });
        let len = seg.region.len();
        if start > len {
            return Err(Error::Corruption {
                path,
                offset: start as u64,
                kind: CorruptionKind::ShortSegment,
            });
        }
        seg.region
            .with_slice(0, len, &mut |bytes| {
                outcome = scan_pass1(bytes, start, seed, len_max, seg.id, &mut defs);
            })
            .map_err(|e| Error::io("read", &path, e))?;
        let scan = outcome?;
        let end = scan.end;
        seg.end = end;
        if i == last {
            last_frame = scan.last;
        }
        if let Some((offset, kind)) = scan.bad {
            let tolerate = i == last;
            let mut valid_after = None;
            seg.region
                .with_slice(0, len, &mut |bytes| {
                    valid_after = find_valid_frame(bytes, offset + 1, seed, len_max)
                })
                .map_err(|e| Error::io("read", &path, e))?;
            let strict = config.recovery == RecoveryMode::Strict;
            if !tolerate || (valid_after.is_some() && strict) {
                return Err(Error::Corruption {
                    path,
                    offset: offset as u64,
                    kind,
                });
            }
            torn_at = Some(offset);
        } else if i != last {
            // A sealed segment ends in zeros; a valid record beyond them means a zeroed block.
            let mut valid_after = None;
            seg.region
                .with_slice(0, len, &mut |bytes| {
                    valid_after = find_valid_frame(bytes, end + 1, seed, len_max)
                })
                .map_err(|e| Error::io("read", &path, e))?;
            if valid_after.is_some() {
                return Err(Error::Corruption {
                    path,
                    offset: end as u64,
                    kind: CorruptionKind::RecordLength(0),
                });
            }
        }
    }
    Ok(Checked {
        defs,
        torn_at,
        last_frame,
        scanned,
    })
}

/// Pass 2 from `from`: replays every checked record into `state`. Returns how many.
fn pass2(root: &Path, segs: &[Seg], from: LogPos, state: &mut State, now_ms: u64) -> Result<u64> {
    let mut records = 0;
    for seg in segs.iter().filter(|s| s.id >= from.segment()) {
        let start = if seg.id == from.segment() {
            from.offset() as usize
        } else {
            HEADER_BYTES
        };
        let path = root.join(seg.id.file_name());
        let mut outcome = Ok(0);
        seg.region
            .with_slice(0, seg.end, &mut |bytes| {
                outcome = replay(bytes, start, seg.id, state, now_ms)
            })
            .map_err(|e| Error::io("read", &path, e))?;
        records += outcome.map_err(|kind| Error::Corruption {
            path,
            offset: 0,
            kind,
        })?;
    }
    Ok(records)
}

/// What one segment's pass-1 scan found.
struct Scan {
    /// End of the valid records.
    end: usize,
    /// Where and why the scan stopped at a bad frame, if it did.
    bad: Option<(usize, CorruptionKind)>,
    /// Where the last valid record scanned begins.
    last: Option<usize>,
}

/// Checks every frame from `start`; collects definitions.
fn scan_pass1(
    bytes: &[u8],
    start: usize,
    seed: u32,
    len_max: usize,
    seg: SegmentId,
    defs: &mut Defs,
) -> Result<Scan> {
    let mut off = start;
    let mut last = None;
    let mut items = Vec::new();
    loop {
        match record::check_frame(&bytes[off..], seed, len_max) {
            FrameCheck::End => {
                return Ok(Scan {
                    end: off,
                    bad: None,
                    last,
                });
            }
            FrameCheck::Bad(kind) => {
                return Ok(Scan {
                    end: off,
                    bad: Some((off, kind)),
                    last,
                });
            }
            FrameCheck::Valid { kind, len } => {
                let p = &bytes[off + FRAME_HEADER_BYTES..off + FRAME_HEADER_BYTES + len];
                if let Err(k) = collect(kind, p, seg, defs, &mut items) {
                    return Ok(Scan {
                        end: off,
                        bad: Some((off, k)),
                        last,
                    });
                }
                last = Some(off);
                off += FRAME_HEADER_BYTES + len;
            }
        }
    }
}

fn collect(
    kind: Kind,
    p: &[u8],
    seg: SegmentId,
    defs: &mut Defs,
    items: &mut Vec<record::PostItem>,
) -> std::result::Result<(), CorruptionKind> {
    match kind {
        Kind::QueueDef => {
            let d = record::get_queue_def(p)?;
            defs.max_queue = defs.max_queue.max(d.queue.0);
            defs.latest.insert(
                d.queue,
                (d.project.to_string(), d.name.to_string(), d.config),
            );
        }
        Kind::QueueDrop => {
            let q = record::get_queue_no(p)?;
            defs.dropped.insert(q);
        }
        Kind::Meta => {
            let (k, v) = record::get_meta(p)?;
            defs.meta
                .insert(k.to_string(), v.map(|v| (v.to_vec(), seg)));
        }
        Kind::Post => {
            record::get_post(p, items)?;
            if let Some(last) = items.last() {
                defs.max_id = defs.max_id.max(last.id.0);
            }
        }
        Kind::Relocate => {
            let r = record::get_relocate(p)?;
            defs.max_id = defs.max_id.max(r.id.0);
        }
        Kind::Move => {
            let (from, ..) = record::get_move(p)?;
            defs.move_sources.insert(from);
        }
        other => record::validate_payload(other, p)?,
    }
    Ok(())
}

/// Replays the records of one segment (already checked by pass 1) into `state`.
fn replay(
    bytes: &[u8],
    start: usize,
    seg: SegmentId,
    state: &mut State,
    now_ms: u64,
) -> std::result::Result<u64, CorruptionKind> {
    let mut off = start;
    let mut records = 0;
    let mut items = Vec::new();
    let mut reserves = Vec::new();
    let mut ids = Vec::new();
    let mut ups = Vec::new();
    while off + FRAME_HEADER_BYTES <= bytes.len() {
        let len = u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
            as usize;
        let kind =
            Kind::from_byte(bytes[off + 8]).ok_or(CorruptionKind::UnknownKind(bytes[off + 8]))?;
        let base = off + FRAME_HEADER_BYTES;
        let p = &bytes[base..base + len];
        let live = &mut state.live;
        match kind {
            Kind::QueueDef => {
                let d = record::get_queue_def(p)?;
                if let Some(q) = state.queues.get_mut(&d.queue) {
                    q.total_messages = d.total_messages;
                    q.def_segment = seg;
                }
            }
            Kind::QueueDrop => state.drop_queue(record::get_queue_no(p)?),
            Kind::Post => {
                let no = record::get_post(p, &mut items)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    q.total_messages += items.len() as u64;
                    for it in &items {
                        let e = Entry {
                            id: it.id.0,
                            segment: seg.0,
                            offset: (base + it.body_at) as u32,
                            body_len: it.body_len,
                            expires_at_s: it.expires_at_s,
                            meta_len: it.meta_len as u16,
                            reserved_count: 0,
                            state: MsgState::Visible,
                        };
                        q.apply_insert(e, it.visible_at_ms, None, live);
                    }
                }
            }
            Kind::Reserve => {
                let no = record::get_reserve(p, &mut reserves)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    for &(id, rid, until) in &reserves {
                        q.apply_reserve(id, rid, until);
                    }
                }
            }
            Kind::Delete => {
                let no = record::get_delete(p, &mut ids)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    for &id in &ids {
                        q.apply_delete(id, live);
                    }
                }
            }
            Kind::Release => {
                let (no, id, visible_at) = record::get_release(p)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    q.apply_release(id, visible_at, now_ms);
                }
            }
            Kind::Touch => {
                let (no, id, rid, until) = record::get_touch(p)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    q.apply_touch(id, rid, until);
                }
            }
            Kind::Clear => {
                let no = record::get_queue_no(p)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    q.apply_clear(live);
                }
            }
            Kind::Move => {
                let (from, to, id, expires) = record::get_move(p)?;
                state.apply_move(from, to, id, expires);
            }
            Kind::Relocate => {
                let r = record::get_relocate(p)?;
                if let Some(q) = state.queues.get_mut(&r.queue) {
                    let e = Entry {
                        id: r.id.0,
                        segment: seg.0,
                        offset: (base + r.body_at) as u32,
                        body_len: r.body_len,
                        expires_at_s: r.expires_at_s,
                        meta_len: r.meta_len as u16,
                        reserved_count: r.reserved_count.min(u16::MAX as u32) as u16,
                        state: MsgState::Visible,
                    };
                    q.apply_insert(e, r.visible_at_ms, r.reservation, live);
                }
            }
            Kind::Meta => {}
            Kind::Push => {
                let (no, id, flags) = record::get_push(p, &mut ups)?;
                if let Some(q) = state.queues.get_mut(&no) {
                    let attempt = flags & record::PUSH_FLAG_ATTEMPT != 0;
                    let decided = record::push_decision(flags);
                    q.apply_push(id, attempt, &ups, decided, now_ms, live);
                }
            }
        }
        off = base + len;
        records += 1;
    }
    Ok(records)
}

/// The first offset at or after `from` where a valid frame starts, if any.
///
/// Every plausible frame header in the bytes is a candidate, and what follows a torn frame
/// can be message bodies, which a client chose: bodies made of plausible headers that each
/// claim a long length would make a candidate-by-candidate checksum cost their count times
/// that length (hours for a few MiB). So a candidate's checksum comes from the checksums of
/// the bytes' prefixes ([`Prefixes`]): two short hashes and one combine each, whatever its
/// length. The prefixes are hashed once, at the first candidate (zeros are skipped without).
pub(crate) fn find_valid_frame(
    bytes: &[u8],
    from: usize,
    seed: u32,
    len_max: usize,
) -> Option<usize> {
    let mut prefixes: Option<Prefixes<'_>> = None;
    let mut i = from;
    while i + FRAME_HEADER_BYTES <= bytes.len() {
        // Skip zeros quickly: a frame's length field is non-zero, so a frame can only start
        // within three bytes before a non-zero byte.
        let nz = bytes[i..].iter().position(|&b| b != 0)?;
        let p = i + nz;
        let lo = p.saturating_sub(3).max(i);
        for start in lo..=p {
            if start + FRAME_HEADER_BYTES > bytes.len()
                || !record::plausible_frame_start(&bytes[start..], len_max)
            {
                continue;
            }
            // As `record::check_frame`: the whole frame in the bytes, and its checksum,
            // over kind, version, flags and payload, from the segment's seed.
            let (len, stored) = record::header_len_crc(&bytes[start..]);
            let end = start + FRAME_HEADER_BYTES + len as usize;
            if end > bytes.len() {
                continue;
            }
            let prefixes = prefixes.get_or_insert_with(|| Prefixes::new(bytes, from));
            if prefixes.seeded_crc(seed, start + 8, end) == stored {
                return Some(start);
            }
        }
        i = p + 1;
    }
    None
}

/// CRC-32 of any span of `bytes[base..]`, from the CRCs of its prefixes at every
/// [`Prefixes::STRIDE`] bytes.
struct Prefixes<'a> {
    bytes: &'a [u8],
    base: usize,
    /// `marks[k]`: the CRC-32 of `bytes[base..base + k * STRIDE]`.
    marks: Vec<u32>,
}

impl<'a> Prefixes<'a> {
    const STRIDE: usize = 4096;

    fn new(bytes: &'a [u8], base: usize) -> Prefixes<'a> {
        let mut marks = Vec::with_capacity((bytes.len() - base) / Self::STRIDE + 1);
        marks.push(0);
        let mut h = crc32fast::Hasher::new();
        for chunk in bytes[base..].chunks_exact(Self::STRIDE) {
            h.update(chunk);
            marks.push(h.clone().finalize());
        }
        Prefixes { bytes, base, marks }
    }

    /// The CRC-32 of `bytes[base..x]`.
    fn at(&self, x: usize) -> u32 {
        let k = (x - self.base) / Self::STRIDE;
        let mut h = crc32fast::Hasher::new_with_initial(self.marks[k]);
        h.update(&self.bytes[self.base + k * Self::STRIDE..x]);
        h.finalize()
    }

    /// What hashing `bytes[a..b]` from `seed` gives (`Hasher::new_with_initial(seed)`, as
    /// `record::check_frame` does). A CRC continued over `n` more bytes is the old one
    /// shifted by `n` bytes, XOR the CRC of those bytes, and the shift is linear: so it is
    /// `crc(base..b) ^ shift(seed ^ crc(base..a), b - a)`, which `combine` computes.
    fn seeded_crc(&self, seed: u32, a: usize, b: usize) -> u32 {
        let mut h = crc32fast::Hasher::new_with_initial(seed ^ self.at(a));
        h.combine(&crc32fast::Hasher::new_with_initial_len(
            self.at(b),
            (b - a) as u64,
        ));
        h.finalize()
    }
}

/// Checks every frame of the log before `until` (the position a loaded restart index
/// covers, which the open did not check). Returns the frames checked, or the first damage
/// found. The segments before `until` are sealed or already durable, so this can run while
/// the engine serves.
pub(crate) fn verify_before(
    regions: &[(SegmentId, Arc<dyn Region>)],
    root: &Path,
    until: LogPos,
    len_max: usize,
) -> Result<u64> {
    let mut frames = 0;
    for (id, region) in regions {
        let path = root.join(id.file_name());
        let seed = record::crc_seed(id.0);
        let stop = if *id == until.segment() {
            Some(until.offset() as usize)
        } else {
            None
        };
        let mut outcome = Ok(());
        region
            .with_slice(0, region.len(), &mut |bytes| {
                let mut off = HEADER_BYTES;
                outcome = loop {
                    if stop.is_some_and(|s| off >= s) || off >= bytes.len() {
                        break Ok(());
                    }
                    match record::check_frame(&bytes[off..], seed, len_max) {
                        FrameCheck::End => break Ok(()),
                        FrameCheck::Bad(kind) => break Err((off, kind)),
                        FrameCheck::Valid { len, .. } => {
                            frames += 1;
                            off += FRAME_HEADER_BYTES + len;
                        }
                    }
                };
            })
            .map_err(|e| Error::io("read", &path, e))?;
        if let Err((offset, kind)) = outcome {
            return Err(Error::Corruption {
                path,
                offset: offset as u64,
                kind,
            });
        }
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `find_valid_frame` as it was: every candidate hashed in full by `check_frame`.
    fn find_valid_frame_by_hashing(
        bytes: &[u8],
        from: usize,
        seed: u32,
        len_max: usize,
    ) -> Option<usize> {
        (from..bytes.len()).find(|&start| {
            record::plausible_frame_start(&bytes[start..], len_max)
                && matches!(
                    record::check_frame(&bytes[start..], seed, len_max),
                    FrameCheck::Valid { .. }
                )
        })
    }

    fn frame_of(seed: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        record::frame(&mut b, seed, Kind::Clear, |p| p.extend_from_slice(payload));
        b
    }

    proptest! {
        #[test]
        fn finds_what_hashing_each_candidate_finds(
            noise in proptest::collection::vec(any::<u8>(), 0..20_000),
            zeros in 0usize..9_000,
            plants in proptest::collection::vec((0usize..30_000, 1usize..5_000, any::<bool>(), any::<bool>()), 0..4),
            from in 0usize..30_000,
            seed in any::<u32>(),
        ) {
            // Noise, a run of zeros, then more noise; frames planted over it, some valid
            // for `seed`, some for another seed, some cut short by the end.
            let mut bytes = noise.clone();
            bytes.extend(std::iter::repeat_n(0u8, zeros));
            bytes.extend(noise.iter().rev());
            for (at, len, right_seed, cut) in plants {
                let f = frame_of(if right_seed { seed } else { seed ^ 1 }, &vec![7u8; len]);
                let at = at.min(bytes.len());
                let keep = if cut { f.len() / 2 } else { f.len() };
                let end = (at + keep).min(bytes.len());
                bytes[at..end].copy_from_slice(&f[..end - at]);
            }
            // Bytes that claim a frame of each length the noise happens to hold.
            let from = from.min(bytes.len());
            for len_max in [64, 4096, 1 << 20] {
                prop_assert_eq!(
                    find_valid_frame(&bytes, from, seed, len_max),
                    find_valid_frame_by_hashing(&bytes, from, seed, len_max)
                );
            }
        }
    }

    #[test]
    fn bytes_of_long_frame_claims_are_searched_without_hashing_each_claim() {
        // 2 MiB of plausible headers, each claiming a 1 MiB frame: 175,000 candidates, which
        // hashed one by one are 175 GB of CRC. Then one real frame.
        let seed = record::crc_seed(9);
        let mut claim = [0u8; FRAME_HEADER_BYTES];
        claim[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
        claim[8] = Kind::Clear as u8;
        claim[9] = record::RECORD_VERSION;
        let mut bytes: Vec<u8> = claim.iter().copied().cycle().take(2 << 20).collect();
        let real = bytes.len();
        bytes.extend(frame_of(seed, b"real"));
        bytes.extend([0u8; 100]);
        assert_eq!(find_valid_frame(&bytes, 0, seed, 1 << 21), Some(real));
        assert_eq!(find_valid_frame(&bytes, real + 1, seed, 1 << 21), None);
    }
}
