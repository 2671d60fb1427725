//! Hot backup: a consistent cut of the log, pinned against retention while it is copied,
//! and the backup file format (FORMAT.md, "Backup file").
//!
//! The log is append-only and state changes are logged in the order they happen, so every
//! prefix of the log that ends on a record boundary is a consistent state. A snapshot is such
//! a prefix: the segments from the first one still in the log up to the log's end at the
//! instant [`Engine::snapshot`] takes the state lock (the *cut*), once everything before the
//! cut is durable. Taking it holds the state lock only long enough to read two positions
//! and register a pin; copying reads the memory-mapped segments and never blocks writers.
//!
//! The pin keeps retention from deleting the snapshot's segments until the [`Snapshot`] is
//! dropped: a due drop of a pinned segment waits in the log's drop list. Should the process
//! stop while a pin is held, the segments retention had already given up stay on disk; they
//! are an older prefix of the same log, so the next open replays them harmlessly and
//! retention drops them again.
//!
//! The backup file (all integers little-endian, CRC-32 IEEE):
//! Format (header, 48 bytes): { magic "FERROMQB" | version u16 | header_len u16 |
//!   segment_count u32 | segment_bytes u64 | body_bytes_max u32 | cut_segment u32 |
//!   cut_offset u32 | created_ms u64 | crc u32 over bytes 0..44 }
//! Format (per segment): { segment u32 | file_bytes u64 | data_bytes u64 | crc u32 over the
//!   20 bytes before } data [data_bytes] | data_crc u32
//! Format (trailer, 16 bytes): { magic "FERROMQE" | file_crc u32 over every byte before the
//!   trailer | zero u32 }

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clock::{Clock, SystemClock};
use crate::engine::{Engine, EngineConfig, RecoveryMode};
use crate::error::Error;
use crate::ids::{LogPos, SegmentId};
use crate::limits;
use crate::log::Log;
use crate::segment::HEADER_BYTES as SEGMENT_HEADER_BYTES;
use crate::storage::{OsStorage, Region, Storage, StorageFile};
use crate::types::QueueInfo;

pub const BACKUP_MAGIC: [u8; 8] = *b"FERROMQB";
pub const BACKUP_VERSION: u16 = 1;
pub const BACKUP_HEADER_BYTES: usize = 48;
pub const ENTRY_HEADER_BYTES: usize = 24;
pub const TRAILER_MAGIC: [u8; 8] = *b"FERROMQE";
pub const TRAILER_BYTES: usize = 16;
/// Segments in one backup. With the largest segments that is 128 TiB; with the default
/// 64 MiB segments, 4 TiB.
pub const BACKUP_SEGMENTS_MAX: u32 = 1 << 16;
/// Bytes copied per step, both ways.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// Prefix of the files a restore writes before the whole backup has been verified.
const RESTORING_PREFIX: &str = "restoring-";

/// Which part of a backup file an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupPart {
    Header,
    EntryHeader(SegmentId),
    Segment(SegmentId),
    Trailer,
}

impl std::fmt::Display for BackupPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupPart::Header => write!(f, "backup header"),
            BackupPart::EntryHeader(s) => write!(f, "entry header of segment {}", s.0),
            BackupPart::Segment(s) => write!(f, "data of segment {}", s.0),
            BackupPart::Trailer => write!(f, "trailer (whole-file checksum)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The OS error is in the message, not the `source()` (see [`Error::Io`]).
    #[error("I/O error during {op} on {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    /// Reading or writing the backup stream itself failed (network, output file).
    #[error("backup stream: {0}")]
    Stream(io::Error),
    #[error("not a ferromq backup file (bad magic)")]
    BadMagic,
    #[error("unsupported backup format version {0}")]
    UnsupportedVersion(u16),
    #[error("checksum mismatch in the {0}")]
    Checksum(BackupPart),
    #[error("the backup is truncated: it ends inside the {0}")]
    Truncated(BackupPart),
    #[error("invalid backup: {0}")]
    Invalid(&'static str),
    #[error("{what} is {got}; the limit is {max}")]
    LimitExceeded {
        what: &'static str,
        got: u64,
        max: u64,
    },
    #[error("the backup has bytes after its trailer")]
    TrailingBytes,
    #[error("the data directory {0} is not empty; restore only into an empty directory")]
    NotEmpty(PathBuf),
    #[error(
        "recovery of the restored log ended at segment {} offset {}, not at the backup's cut \
         (segment {} offset {})",
        found.segment().0, found.offset(), expected.segment().0, expected.offset()
    )]
    CutMismatch { expected: LogPos, found: LogPos },
    #[error(transparent)]
    Engine(#[from] Error),
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> BackupError {
    let path = path.into();
    move |cause| BackupError::Io { op, path, cause }
}

/// The backup file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupHeader {
    pub segment_count: u32,
    /// The source's configured segment size (a restored server should use the same).
    pub segment_bytes: u64,
    /// The source's body limit: recovery needs it to bound record lengths.
    pub body_bytes_max: u32,
    /// End of the log at the snapshot instant: the last segment's data ends here.
    pub cut: LogPos,
    pub created_ms: u64,
}

impl BackupHeader {
    pub fn encode(&self) -> [u8; BACKUP_HEADER_BYTES] {
        let mut b = [0u8; BACKUP_HEADER_BYTES];
        b[0..8].copy_from_slice(&BACKUP_MAGIC);
        b[8..10].copy_from_slice(&BACKUP_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(BACKUP_HEADER_BYTES as u16).to_le_bytes());
        b[12..16].copy_from_slice(&self.segment_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&self.body_bytes_max.to_le_bytes());
        b[28..32].copy_from_slice(&self.cut.segment().0.to_le_bytes());
        b[32..36].copy_from_slice(&self.cut.offset().to_le_bytes());
        b[36..44].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[0..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks every field against its bound.
    pub fn decode(b: &[u8; BACKUP_HEADER_BYTES]) -> Result<BackupHeader, BackupError> {
        if b[0..8] != BACKUP_MAGIC {
            return Err(BackupError::BadMagic);
        }
        if crc32fast::hash(&b[0..44]) != u32_at(b, 44) {
            return Err(BackupError::Checksum(BackupPart::Header));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != BACKUP_VERSION {
            return Err(BackupError::UnsupportedVersion(version));
        }
        if u16::from_le_bytes([b[10], b[11]]) as usize != BACKUP_HEADER_BYTES {
            return Err(BackupError::Invalid("header length"));
        }
        let h = BackupHeader {
            segment_count: u32_at(b, 12),
            segment_bytes: u64_at(b, 16),
            body_bytes_max: u32_at(b, 24),
            cut: LogPos::new(SegmentId(u32_at(b, 28)), u32_at(b, 32)),
            created_ms: u64_at(b, 36),
        };
        bound(
            "segment_count",
            h.segment_count as u64,
            BACKUP_SEGMENTS_MAX as u64,
        )?;
        if h.segment_count == 0 {
            return Err(BackupError::Invalid("a backup holds at least one segment"));
        }
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&h.segment_bytes) {
            return Err(BackupError::Invalid("segment_bytes out of range"));
        }
        if h.body_bytes_max == 0 || h.body_bytes_max > limits::BODY_BYTES_MAX {
            return Err(BackupError::Invalid("body_bytes_max out of range"));
        }
        if h.cut.segment().0 < h.segment_count {
            return Err(BackupError::Invalid("cut segment below the segment count"));
        }
        if (h.cut.offset() as usize) < SEGMENT_HEADER_BYTES {
            return Err(BackupError::Invalid("cut offset inside the segment header"));
        }
        Ok(h)
    }

    /// The first segment in the backup.
    pub fn first_segment(&self) -> SegmentId {
        SegmentId(self.cut.segment().0 + 1 - self.segment_count)
    }
}

/// The header of one segment in the backup file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub segment: SegmentId,
    /// Length of the segment file; a restore zero-fills from `data_bytes` to here.
    pub file_bytes: u64,
    /// Bytes of the segment that follow.
    pub data_bytes: u64,
}

impl EntryHeader {
    pub fn encode(&self) -> [u8; ENTRY_HEADER_BYTES] {
        let mut b = [0u8; ENTRY_HEADER_BYTES];
        b[0..4].copy_from_slice(&self.segment.0.to_le_bytes());
        b[4..12].copy_from_slice(&self.file_bytes.to_le_bytes());
        b[12..20].copy_from_slice(&self.data_bytes.to_le_bytes());
        let crc = crc32fast::hash(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; ENTRY_HEADER_BYTES], expected: SegmentId) -> Result<Self, BackupError> {
        if crc32fast::hash(&b[0..20]) != u32_at(b, 20) {
            return Err(BackupError::Checksum(BackupPart::EntryHeader(expected)));
        }
        let e = EntryHeader {
            segment: SegmentId(u32_at(b, 0)),
            file_bytes: u64_at(b, 4),
            data_bytes: u64_at(b, 12),
        };
        if e.segment != expected {
            return Err(BackupError::Invalid(
                "segments are not contiguous and in order",
            ));
        }
        bound(
            "segment file_bytes",
            e.file_bytes,
            limits::SEGMENT_BYTES_MAX,
        )?;
        if e.file_bytes < SEGMENT_HEADER_BYTES as u64 {
            return Err(BackupError::Invalid("segment shorter than its header"));
        }
        if e.data_bytes < SEGMENT_HEADER_BYTES as u64 || e.data_bytes > e.file_bytes {
            return Err(BackupError::Invalid("segment data length out of range"));
        }
        Ok(e)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn bound(what: &'static str, got: u64, max: u64) -> Result<(), BackupError> {
    if got > max {
        return Err(BackupError::LimitExceeded { what, got, max });
    }
    Ok(())
}

struct SnapSegment {
    id: SegmentId,
    region: Arc<dyn Region>,
    data_bytes: u64,
}

/// A consistent cut of the log whose segments are pinned against retention until it is
/// dropped. Encode it with [`Snapshot::write_to`].
pub struct Snapshot {
    log: Arc<Log>,
    pin: u64,
    header: BackupHeader,
    segments: Vec<SnapSegment>,
    root: PathBuf,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        self.log.unpin(self.pin);
    }
}

/// Releases a pin if the snapshot is abandoned before it is built.
struct PinGuard<'a> {
    log: &'a Log,
    pin: Option<u64>,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pin {
            self.log.unpin(p);
        }
    }
}

impl Engine {
    /// Takes a consistent snapshot for a hot backup: the log up to its end at this instant,
    /// once that is durable, with its segments pinned against retention. Writers are held up
    /// only while the cut is read (a few instructions under the state lock).
    pub async fn snapshot(&self) -> Result<Snapshot, BackupError> {
        let (state, log, _, config, storage) = self.parts();
        let (first, cut, pin) = {
            let st = state.lock();
            log.check()?;
            let cut = log.end();
            (st.first_segment, cut, log.pin(st.first_segment))
        };
        let mut guard = PinGuard {
            log: log.as_ref(),
            pin: Some(pin),
        };
        let count = (cut.segment().0 - first.0 + 1) as u64;
        bound("segments in a backup", count, BACKUP_SEGMENTS_MAX as u64)?;
        log.wait_durable(cut).await?;
        let mut segments = Vec::with_capacity(count as usize);
        for n in first.0..=cut.segment().0 {
            let id = SegmentId(n);
            let region = log.region(id).ok_or_else(|| {
                Error::Failed(format!("segment {n} of a pinned snapshot is not mapped"))
            })?;
            let data_bytes = if id == cut.segment() {
                cut.offset() as u64
            } else {
                region.len() as u64
            };
            assert!(
                data_bytes <= region.len() as u64,
                "cut past the segment end"
            );
            segments.push(SnapSegment {
                id,
                region,
                data_bytes,
            });
        }
        guard.pin = None;
        Ok(Snapshot {
            log: log.clone(),
            pin,
            header: BackupHeader {
                segment_count: count as u32,
                segment_bytes: config.segment_bytes,
                body_bytes_max: config.body_bytes_max,
                cut,
                created_ms: SystemClock.now_ms(),
            },
            segments,
            root: storage.root().to_path_buf(),
        })
    }
}

impl Snapshot {
    pub fn header(&self) -> BackupHeader {
        self.header
    }

    /// Size of the encoded backup file.
    pub fn encoded_bytes(&self) -> u64 {
        let per = self
            .segments
            .iter()
            .map(|s| (ENTRY_HEADER_BYTES + 4) as u64 + s.data_bytes)
            .sum::<u64>();
        (BACKUP_HEADER_BYTES + TRAILER_BYTES) as u64 + per
    }

    /// Writes the backup file. Returns the bytes written (= [`Snapshot::encoded_bytes`]).
    pub fn write_to(&self, w: &mut dyn Write) -> Result<u64, BackupError> {
        let mut out = CrcWriter {
            w,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        out.put(&self.header.encode())?;
        for s in &self.segments {
            let entry = EntryHeader {
                segment: s.id,
                file_bytes: s.region.len() as u64,
                data_bytes: s.data_bytes,
            };
            out.put(&entry.encode())?;
            let mut seg_crc = crc32fast::Hasher::new();
            let mut off = 0usize;
            let path = self.root.join(s.id.file_name());
            while (off as u64) < s.data_bytes {
                let n = (s.data_bytes as usize - off).min(COPY_CHUNK_BYTES);
                let mut res = Ok(());
                s.region
                    .with_slice(off, n, &mut |bytes| {
                        seg_crc.update(bytes);
                        res = out.put(bytes);
                    })
                    .map_err(io_err("read", &path))?;
                res?;
                off += n;
            }
            out.put(&seg_crc.finalize().to_le_bytes())?;
        }
        let file_crc = out.crc.clone().finalize();
        let mut trailer = [0u8; TRAILER_BYTES];
        trailer[0..8].copy_from_slice(&TRAILER_MAGIC);
        trailer[8..12].copy_from_slice(&file_crc.to_le_bytes());
        out.put(&trailer)?;
        out.w.flush().map_err(BackupError::Stream)?;
        debug_assert_eq!(out.bytes, self.encoded_bytes());
        Ok(out.bytes)
    }
}

struct CrcWriter<'a> {
    w: &'a mut dyn Write,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl CrcWriter<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), BackupError> {
        self.w.write_all(b).map_err(BackupError::Stream)?;
        self.crc.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }
}

/// What a reader of a backup file sees, in order.
pub enum BackupEvent<'a> {
    Header(&'a BackupHeader),
    SegmentStart(&'a EntryHeader),
    /// The next bytes of the current segment (checksum not yet verified).
    Data(&'a [u8]),
    /// The segment's checksum matched.
    SegmentEnd(&'a EntryHeader),
}

struct CrcReader<'a> {
    r: &'a mut dyn Read,
    crc: crc32fast::Hasher,
}

impl CrcReader<'_> {
    fn take(&mut self, buf: &mut [u8], part: BackupPart) -> Result<(), BackupError> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BackupError::Truncated(part),
            _ => BackupError::Stream(e),
        })?;
        self.crc.update(buf);
        Ok(())
    }
}

/// Reads a whole backup file, checking every checksum and bound, and reports what it
/// finds to `visit` as it goes. Returns the header once the trailer has been verified and
/// nothing follows it.
pub fn read_backup(
    r: &mut dyn Read,
    visit: &mut dyn FnMut(BackupEvent<'_>) -> Result<(), BackupError>,
) -> Result<BackupHeader, BackupError> {
    let mut rd = CrcReader {
        r,
        crc: crc32fast::Hasher::new(),
    };
    let mut hb = [0u8; BACKUP_HEADER_BYTES];
    rd.take(&mut hb, BackupPart::Header)?;
    let header = BackupHeader::decode(&hb)?;
    visit(BackupEvent::Header(&header))?;
    let mut buf = vec![0u8; COPY_CHUNK_BYTES];
    for i in 0..header.segment_count {
        let id = SegmentId(header.first_segment().0 + i);
        let mut eb = [0u8; ENTRY_HEADER_BYTES];
        rd.take(&mut eb, BackupPart::EntryHeader(id))?;
        let entry = EntryHeader::decode(&eb, id)?;
        if id == header.cut.segment() && entry.data_bytes != header.cut.offset() as u64 {
            return Err(BackupError::Invalid(
                "the last segment does not end at the cut",
            ));
        }
        visit(BackupEvent::SegmentStart(&entry))?;
        let mut seg_crc = crc32fast::Hasher::new();
        let mut left = entry.data_bytes;
        while left > 0 {
            let n = (left as usize).min(buf.len());
            rd.take(&mut buf[..n], BackupPart::Segment(id))?;
            seg_crc.update(&buf[..n]);
            visit(BackupEvent::Data(&buf[..n]))?;
            left -= n as u64;
        }
        let mut cb = [0u8; 4];
        rd.take(&mut cb, BackupPart::Segment(id))?;
        if seg_crc.finalize() != u32::from_le_bytes(cb) {
            return Err(BackupError::Checksum(BackupPart::Segment(id)));
        }
        visit(BackupEvent::SegmentEnd(&entry))?;
    }
    let file_crc = rd.crc.clone().finalize();
    let mut tb = [0u8; TRAILER_BYTES];
    rd.take(&mut tb, BackupPart::Trailer)?;
    if tb[0..8] != TRAILER_MAGIC || tb[12..16] != [0u8; 4] {
        return Err(BackupError::Invalid("bad trailer"));
    }
    if u32_at(&tb, 8) != file_crc {
        return Err(BackupError::Checksum(BackupPart::Trailer));
    }
    let mut extra = [0u8; 1];
    loop {
        match rd.r.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => return Err(BackupError::TrailingBytes),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BackupError::Stream(e)),
        }
    }
    Ok(header)
}

/// What strict recovery found in a data directory.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Segment files in the log.
    pub segments: u32,
    /// Where recovery found the end of the log.
    pub end: LogPos,
    /// Every queue, sorted by project and name.
    pub queues: Vec<QueueInfo>,
    /// Messages in all queues (reserved and delayed included).
    pub messages: u64,
    /// Server metadata entries (projects, tokens).
    pub meta_entries: usize,
}

/// Runs the engine's recovery in strict mode over `dir` without starting the log and
/// reports what it found. Fails on any damage, like an open would, and when a running
/// server holds the directory.
pub fn inspect(dir: &Path, body_bytes_max: u32) -> Result<Inspection, BackupError> {
    let _lock = crate::engine::lock_dir(dir)?;
    inspect_locked(dir, body_bytes_max)
}

fn inspect_locked(dir: &Path, body_bytes_max: u32) -> Result<Inspection, BackupError> {
    let storage: Arc<dyn Storage> = Arc::new(OsStorage::new(dir).map_err(io_err("open", dir))?);
    let segments = storage
        .list()
        .map_err(io_err("list", dir))?
        .iter()
        .filter(|n| SegmentId::from_file_name(n).is_some())
        .count();
    if segments == 0 {
        return Err(BackupError::Invalid("the directory holds no log segments"));
    }
    let mut config = EngineConfig::new(dir);
    config.body_bytes_max = body_bytes_max;
    config.recovery = RecoveryMode::Strict;
    let rec = crate::recovery::recover_without_index(&config, storage, SystemClock.now_ms())?;
    // Recovery's count: an unstarted segment left by a crash is not part of the log.
    let segments = rec.report.segments as usize;
    let st = &rec.state;
    let mut queues: Vec<QueueInfo> = st.by_key.values().map(|no| st.info(*no)).collect();
    queues.sort_by(|a, b| (&a.project, &a.name).cmp(&(&b.project, &b.name)));
    Ok(Inspection {
        segments: segments as u32,
        end: LogPos::new(rec.tail.segment, rec.tail.end),
        messages: queues.iter().map(|q| q.size).sum(),
        queues,
        meta_entries: st.meta.len(),
    })
}

/// The result of a restore.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub header: BackupHeader,
    /// Bytes of segment files written (zero fill included).
    pub bytes_written: u64,
    pub inspection: Inspection,
}

/// Restores a backup into `dir`, which must be empty or absent. Segment files are written
/// under temporary names, renamed only after the whole file has been read and every
/// checksum matched. Then recovery runs in strict mode over the result, and must end exactly
/// at the backup's cut. A restore that fails removes every file it made (segments, `LOCK`)
/// and the directory itself if it made that too, so that the same directory takes a retry.
pub fn restore(r: &mut dyn Read, dir: &Path) -> Result<RestoreReport, BackupError> {
    let existed = dir.exists();
    if existed {
        let mut entries = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
        if entries.next().is_some() {
            return Err(BackupError::NotEmpty(dir.to_path_buf()));
        }
    }
    let storage = OsStorage::new(dir).map_err(io_err("create", dir))?;
    // Keep a server from opening the directory while it is being written.
    let lock = match crate::engine::lock_dir(dir) {
        Ok(l) => l,
        Err(e) => {
            // Another process holds a lock file here: it is not ours to remove.
            if !existed {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e.into());
        }
    };
    // Checked again under the lock: a server may have opened the directory (and written
    // its log) between the first check and the lock. Only `LOCK` may be here now, or a
    // failed restore's cleanup could remove that server's files.
    let others = std::fs::read_dir(dir)
        .map_err(io_err("list", dir))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() != "LOCK");
    if others {
        drop(lock);
        return Err(BackupError::NotEmpty(dir.to_path_buf()));
    }
    let mut written: Vec<(String, SegmentId)> = Vec::new();
    let result = write_segments(r, &storage, &mut written).and_then(|(header, bytes_written)| {
        for (tmp, id) in &written {
            storage
                .rename(tmp, &id.file_name())
                .map_err(io_err("rename", dir.join(tmp)))?;
        }
        let inspection = inspect_locked(dir, header.body_bytes_max)?;
        if inspection.end != header.cut {
            return Err(BackupError::CutMismatch {
                expected: header.cut,
                found: inspection.end,
            });
        }
        Ok(RestoreReport {
            header,
            bytes_written,
            inspection,
        })
    });
    if result.is_err() {
        remove_restored(&storage, &written, existed);
    }
    drop(lock);
    result
}

/// Undoes a failed restore into a directory that was empty: removes the segment files under
/// either name, the lock file (while still holding its lock, so no server slips in), and
/// the directory if the restore created it. Best effort: the restore's error is what counts.
fn remove_restored(storage: &OsStorage, written: &[(String, SegmentId)], existed: bool) {
    for (tmp, id) in written {
        for name in [tmp.clone(), id.file_name()] {
            let _ = storage.remove(&name);
        }
    }
    // Recovery may have left files of its own beside the segments (spares, a restart
    // index): the directory held nothing before, so whatever the log uses here is ours.
    if let Ok(names) = storage.list() {
        for name in names.iter().filter(|n| {
            n.starts_with(RESTORING_PREFIX)
                || SegmentId::from_file_name(n).is_some()
                || n.starts_with(crate::segment::SPARE_PREFIX)
                || [crate::checkpoint::FILE, crate::checkpoint::TMP].contains(&n.as_str())
        }) {
            let _ = storage.remove(name);
        }
    }
    let _ = storage.remove(crate::engine::LOCK_FILE);
    if !existed {
        let _ = std::fs::remove_dir(storage.root());
    }
}

fn write_segments(
    r: &mut dyn Read,
    storage: &OsStorage,
    written: &mut Vec<(String, SegmentId)>,
) -> Result<(BackupHeader, u64), BackupError> {
    let root = storage.root().to_path_buf();
    let mut current: Option<(Arc<dyn StorageFile>, String, u64)> = None;
    let mut total = 0u64;
    let zeros = vec![0u8; COPY_CHUNK_BYTES];
    let header = read_backup(r, &mut |ev| {
        match ev {
            BackupEvent::Header(_) => {}
            BackupEvent::SegmentStart(e) => {
                let name = format!("{RESTORING_PREFIX}{}", e.segment.file_name());
                let file = storage
                    .create(&name)
                    .map_err(io_err("create", root.join(&name)))?;
                written.push((name.clone(), e.segment));
                current = Some((file, name, 0));
            }
            BackupEvent::Data(bytes) => {
                let (file, name, off) = current.as_mut().expect("data inside a segment");
                file.write_at(*off, bytes)
                    .map_err(io_err("write", root.join(&*name)))?;
                *off += bytes.len() as u64;
            }
            BackupEvent::SegmentEnd(e) => {
                let (file, name, mut off) = current.take().expect("end of a started segment");
                // The rest of the file reads as the end of the log: zeros, written for real
                // like a spare so that later syncs need no metadata commit.
                while off < e.file_bytes {
                    let n = ((e.file_bytes - off) as usize).min(zeros.len());
                    file.write_at(off, &zeros[..n])
                        .map_err(io_err("write", root.join(&name)))?;
                    off += n as u64;
                }
                file.sync_data()
                    .map_err(io_err("fdatasync", root.join(&name)))?;
                total += e.file_bytes;
            }
        }
        Ok(())
    })?;
    storage.sync_dir().map_err(io_err("fsync", &root))?;
    Ok((header, total))
}
