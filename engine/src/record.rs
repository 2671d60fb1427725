//! Record framing and payload codecs: pure functions, no I/O. Mirrors `engine/FORMAT.md`.
//!
//! Format (frame): { len: u32 | crc: u32 | kind: u8 | version: u8 | flags: u16 | payload[len] }
//! All integers little-endian. `crc` is CRC-32 (IEEE) over kind, version, flags and payload,
//! started from a seed derived from the segment id, so a record copied into another segment
//! (or left over in a reused file) never validates there.

use crate::error::CorruptionKind;
use crate::ids::{MessageId, QueueNo, ReservationId};
use crate::types::{DeadLetter, PushStatus, PushUpdate, QueueConfig, QueueKind};

pub const FRAME_HEADER_BYTES: usize = 12;
pub const RECORD_VERSION: u8 = 1;

/// Record kinds. Numbers are part of the on-disk format and are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    QueueDef = 1,
    QueueDrop = 2,
    Post = 3,
    Reserve = 4,
    Delete = 5,
    Release = 6,
    Touch = 7,
    Clear = 8,
    Move = 9,
    Relocate = 10,
    Meta = 11,
    Push = 12,
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::QueueDef,
            2 => Kind::QueueDrop,
            3 => Kind::Post,
            4 => Kind::Reserve,
            5 => Kind::Delete,
            6 => Kind::Release,
            7 => Kind::Touch,
            8 => Kind::Clear,
            9 => Kind::Move,
            10 => Kind::Relocate,
            11 => Kind::Meta,
            12 => Kind::Push,
            _ => return None,
        })
    }
}

pub fn crc_seed(segment: u32) -> u32 {
    segment.wrapping_mul(0x9E37_79B9) ^ 0x4652_4D51
}

/// Appends one framed record to `buf`; `payload` writes the payload. Returns the frame's
/// start offset within `buf`.
pub fn frame(
    buf: &mut Vec<u8>,
    seed: u32,
    kind: Kind,
    payload: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 8]);
    buf.push(kind as u8);
    buf.push(RECORD_VERSION);
    buf.extend_from_slice(&0u16.to_le_bytes());
    payload(buf);
    let len = (buf.len() - start - FRAME_HEADER_BYTES) as u32;
    let mut hasher = crc32fast::Hasher::new_with_initial(seed);
    hasher.update(&buf[start + 8..]);
    let crc = hasher.finalize();
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    start
}

/// What a frame at some offset turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameCheck {
    /// A valid frame: kind and payload length.
    Valid { kind: Kind, len: usize },
    /// All-zero header: the end of the written log in a preallocated segment.
    End,
    /// Anything else, with why.
    Bad(CorruptionKind),
}

/// The payload length and the stored checksum of the frame header at the start of `bytes`
/// (at least [`FRAME_HEADER_BYTES`] long).
pub(crate) fn header_len_crc(bytes: &[u8]) -> (u32, u32) {
    let le = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (le(0), le(4))
}

/// Checks the frame at the start of `bytes` (which runs to the end of the segment).
pub fn check_frame(bytes: &[u8], seed: u32, len_max: usize) -> FrameCheck {
    if bytes.len() < FRAME_HEADER_BYTES {
        return if bytes.iter().all(|&b| b == 0) {
            FrameCheck::End
        } else {
            FrameCheck::Bad(CorruptionKind::RecordLength(bytes.len() as u32))
        };
    }
    let header = &bytes[..FRAME_HEADER_BYTES];
    if header.iter().all(|&b| b == 0) {
        return FrameCheck::End;
    }
    let (len, crc) = header_len_crc(header);
    if len == 0 || len as usize > len_max || FRAME_HEADER_BYTES + len as usize > bytes.len() {
        return FrameCheck::Bad(CorruptionKind::RecordLength(len));
    }
    let mut hasher = crc32fast::Hasher::new_with_initial(seed);
    hasher.update(&bytes[8..FRAME_HEADER_BYTES + len as usize]);
    if hasher.finalize() != crc {
        return FrameCheck::Bad(CorruptionKind::RecordChecksum);
    }
    let Some(kind) = Kind::from_byte(header[8]) else {
        return FrameCheck::Bad(CorruptionKind::UnknownKind(header[8]));
    };
    if header[9] != RECORD_VERSION {
        return FrameCheck::Bad(CorruptionKind::UnsupportedVersion(header[9] as u16));
    }
    FrameCheck::Valid {
        kind,
        len: len as usize,
    }
}

/// Cheap test used when scanning garbage for a valid frame: could a frame start here?
pub fn plausible_frame_start(bytes: &[u8], len_max: usize) -> bool {
    if bytes.len() < FRAME_HEADER_BYTES {
        return false;
    }
    let len = header_len_crc(bytes).0 as usize;
    len != 0
        && len <= len_max
        && Kind::from_byte(bytes[8]).is_some()
        && bytes[9] == RECORD_VERSION
        && bytes[10] == 0
        && bytes[11] == 0
}

// ---- little-endian writing helpers ----

pub(crate) trait Put {
    fn u8(&mut self, v: u8);
    fn u16(&mut self, v: u16);
    fn u32(&mut self, v: u32);
    fn u64(&mut self, v: u64);
    fn bytes16(&mut self, v: &[u8]);
    fn bytes32(&mut self, v: &[u8]);
}

impl Put for Vec<u8> {
    fn u8(&mut self, v: u8) {
        self.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes16(&mut self, v: &[u8]) {
        debug_assert!(v.len() <= u16::MAX as usize);
        self.u16(v.len() as u16);
        self.extend_from_slice(v);
    }
    fn bytes32(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.extend_from_slice(v);
    }
}

/// A bounds-checked little-endian reader over a payload.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, CorruptionKind>;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    pub fn pos(&self) -> usize {
        self.pos
    }
    pub fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or(CorruptionKind::BadPayload)?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(CorruptionKind::BadPayload)?;
        self.pos = end;
        Ok(out)
    }
    pub fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> R<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub fn rid(&mut self) -> R<ReservationId> {
        let b = self.take(16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(b);
        Ok(ReservationId(a))
    }
    pub fn bytes16(&mut self) -> R<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    pub fn bytes32(&mut self) -> R<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn str16(&mut self) -> R<&'a str> {
        std::str::from_utf8(self.bytes16()?).map_err(|_| CorruptionKind::BadPayload)
    }
    pub fn finish(self) -> R<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(CorruptionKind::BadPayload)
        }
    }
}

// ---- payloads ----

/// Format (QueueDef): { queue: u32 | total_messages: u64 | project: str16 | name: str16 |
///   timeout_s: u32 | expiration_s: u32 | kind: u8 | has_dlq: u8 [| dlq_max: u32 | dlq: str16]
///   | extra: bytes32 [| subscribers: u16 | subscribers × str16] }
/// (the subscriber list is absent when empty, so definitions written before it read alike)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDef<'a> {
    pub queue: QueueNo,
    pub total_messages: u64,
    pub project: &'a str,
    pub name: &'a str,
    pub config: QueueConfig,
}

pub fn put_queue_def(buf: &mut Vec<u8>, d: &QueueDef<'_>) {
    buf.u32(d.queue.0);
    buf.u64(d.total_messages);
    buf.bytes16(d.project.as_bytes());
    buf.bytes16(d.name.as_bytes());
    buf.u32(d.config.message_timeout_s);
    buf.u32(d.config.message_expiration_s);
    buf.u8(d.config.kind.to_byte());
    match &d.config.dead_letter {
        None => buf.u8(0),
        Some(dl) => {
            buf.u8(1);
            buf.u32(dl.max_reservations);
            buf.bytes16(dl.queue.as_bytes());
        }
    }
    buf.bytes32(&d.config.extra);
    if !d.config.subscribers.is_empty() {
        buf.u16(d.config.subscribers.len() as u16);
        for s in &d.config.subscribers {
            buf.bytes16(s.as_bytes());
        }
    }
}

pub fn get_queue_def(p: &[u8]) -> R<QueueDef<'_>> {
    let mut r = Reader::new(p);
    let queue = QueueNo(r.u32()?);
    let total_messages = r.u64()?;
    let project = r.str16()?;
    let name = r.str16()?;
    let message_timeout_s = r.u32()?;
    let message_expiration_s = r.u32()?;
    let kind = QueueKind::from_byte(r.u8()?).ok_or(CorruptionKind::BadPayload)?;
    let dead_letter = match r.u8()? {
        0 => None,
        1 => {
            let max_reservations = r.u32()?;
            Some(DeadLetter {
                max_reservations,
                queue: r.str16()?.to_string(),
            })
        }
        _ => return Err(CorruptionKind::BadPayload),
    };
    let extra = r.bytes32()?.to_vec();
    let mut subscribers = Vec::new();
    if r.pos() < p.len() {
        let n = r.u16()? as usize;
        if n == 0 || n > crate::limits::SUBSCRIBERS_MAX {
            return Err(CorruptionKind::BadPayload);
        }
        for _ in 0..n {
            subscribers.push(r.str16()?.to_string());
        }
    }
    r.finish()?;
    Ok(QueueDef {
        queue,
        total_messages,
        project,
        name,
        config: QueueConfig {
            message_timeout_s,
            message_expiration_s,
            kind,
            dead_letter,
            subscribers,
            extra,
        },
    })
}

/// One message of a post record, as decoded. `body_at` is the body's offset within the
/// payload; the metadata follows the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostItem {
    pub id: MessageId,
    pub visible_at_ms: u64,
    pub expires_at_s: u32,
    pub body_at: usize,
    pub body_len: u32,
    pub meta_len: u32,
}

/// Format (Post): { queue: u32 | count: u16 | count × { id: u64 | visible_at_ms: u64 |
///   expires_at_s: u32 | body_len: u32 | meta_len: u32 | body | meta } }
/// (28 header bytes per message, `limits::POST_ITEM_HEADER_BYTES`.)
pub fn get_post(p: &[u8], items: &mut Vec<PostItem>) -> R<QueueNo> {
    let mut r = Reader::new(p);
    let queue = QueueNo(r.u32()?);
    let count = r.u16()? as usize;
    if count == 0 || count > crate::limits::MESSAGES_PER_POST_MAX {
        return Err(CorruptionKind::BadPayload);
    }
    items.clear();
    for _ in 0..count {
        let id = MessageId(r.u64()?);
        let visible_at_ms = r.u64()?;
        let expires_at_s = r.u32()?;
        let body_len = r.u32()?;
        let meta_len = r.u32()?;
        let body_at = r.pos();
        r.take(body_len as usize)?;
        r.take(meta_len as usize)?;
        items.push(PostItem {
            id,
            visible_at_ms,
            expires_at_s,
            body_at,
            body_len,
            meta_len,
        });
    }
    r.finish()?;
    Ok(queue)
}

/// Format (Reserve): { queue: u32 | count: u16 | count × { id: u64 | rid: [u8;16] | until_ms: u64 } }
pub fn get_reserve(p: &[u8], out: &mut Vec<(MessageId, ReservationId, u64)>) -> R<QueueNo> {
    let mut r = Reader::new(p);
    let queue = QueueNo(r.u32()?);
    let count = r.u16()? as usize;
    if count > crate::limits::MESSAGES_PER_RESERVE_MAX {
        return Err(CorruptionKind::BadPayload);
    }
    out.clear();
    for _ in 0..count {
        out.push((MessageId(r.u64()?), r.rid()?, r.u64()?));
    }
    r.finish()?;
    Ok(queue)
}

/// Format (Delete): { queue: u32 | count: u16 | count × id: u64 }
pub fn get_delete(p: &[u8], out: &mut Vec<MessageId>) -> R<QueueNo> {
    let mut r = Reader::new(p);
    let queue = QueueNo(r.u32()?);
    let count = r.u16()? as usize;
    if count > crate::limits::IDS_PER_DELETE_MAX.max(crate::limits::MESSAGES_PER_RESERVE_MAX) {
        return Err(CorruptionKind::BadPayload);
    }
    out.clear();
    for _ in 0..count {
        out.push(MessageId(r.u64()?));
    }
    r.finish()?;
    Ok(queue)
}

/// Format (Release): { queue: u32 | id: u64 | visible_at_ms: u64 }
pub fn get_release(p: &[u8]) -> R<(QueueNo, MessageId, u64)> {
    let mut r = Reader::new(p);
    let out = (QueueNo(r.u32()?), MessageId(r.u64()?), r.u64()?);
    r.finish()?;
    Ok(out)
}

/// Format (Touch): { queue: u32 | id: u64 | rid: [u8;16] | until_ms: u64 }
pub fn get_touch(p: &[u8]) -> R<(QueueNo, MessageId, ReservationId, u64)> {
    let mut r = Reader::new(p);
    let out = (QueueNo(r.u32()?), MessageId(r.u64()?), r.rid()?, r.u64()?);
    r.finish()?;
    Ok(out)
}

/// Format (QueueDrop, Clear): { queue: u32 }
pub fn get_queue_no(p: &[u8]) -> R<QueueNo> {
    let mut r = Reader::new(p);
    let q = QueueNo(r.u32()?);
    r.finish()?;
    Ok(q)
}

/// Format (Move): { from: u32 | to: u32 | id: u64 | expires_at_s: u32 }
pub fn get_move(p: &[u8]) -> R<(QueueNo, QueueNo, MessageId, u32)> {
    let mut r = Reader::new(p);
    let out = (
        QueueNo(r.u32()?),
        QueueNo(r.u32()?),
        MessageId(r.u64()?),
        r.u32()?,
    );
    r.finish()?;
    Ok(out)
}

/// The whole state of one message, as a relocation record carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocateItem {
    pub queue: QueueNo,
    pub id: MessageId,
    pub reserved_count: u32,
    pub expires_at_s: u32,
    /// Visible from this time (0: visible now); ignored while reserved.
    pub visible_at_ms: u64,
    pub reservation: Option<(ReservationId, u64)>,
    pub body_at: usize,
    pub body_len: u32,
    pub meta_len: u32,
}

/// Format (Relocate): { queue: u32 | id: u64 | reserved_count: u32 | expires_at_s: u32 |
///   visible_at_ms: u64 | reserved: u8 | rid: [u8;16] | until_ms: u64 | body_len: u32 |
///   meta_len: u32 | body | meta }
pub fn put_relocate(buf: &mut Vec<u8>, it: &RelocateItem, body: &[u8], meta: &[u8]) {
    buf.u32(it.queue.0);
    buf.u64(it.id.0);
    buf.u32(it.reserved_count);
    buf.u32(it.expires_at_s);
    buf.u64(it.visible_at_ms);
    let (flag, rid, until) = match it.reservation {
        Some((rid, until)) => (1, rid, until),
        None => (0, ReservationId::default(), 0),
    };
    buf.u8(flag);
    buf.extend_from_slice(&rid.0);
    buf.u64(until);
    buf.u32(body.len() as u32);
    buf.u32(meta.len() as u32);
    buf.extend_from_slice(body);
    buf.extend_from_slice(meta);
}

/// Bytes of a relocation payload before the body.
pub const RELOCATE_HEADER_BYTES: usize = 4 + 8 + 4 + 4 + 8 + 1 + 16 + 8 + 4 + 4;

pub fn get_relocate(p: &[u8]) -> R<RelocateItem> {
    let mut r = Reader::new(p);
    let queue = QueueNo(r.u32()?);
    let id = MessageId(r.u64()?);
    let reserved_count = r.u32()?;
    let expires_at_s = r.u32()?;
    let visible_at_ms = r.u64()?;
    let flag = r.u8()?;
    let rid = r.rid()?;
    let until = r.u64()?;
    let reservation = match flag {
        0 => None,
        1 => Some((rid, until)),
        _ => return Err(CorruptionKind::BadPayload),
    };
    let body_len = r.u32()?;
    let meta_len = r.u32()?;
    let body_at = r.pos();
    r.take(body_len as usize)?;
    r.take(meta_len as usize)?;
    r.finish()?;
    Ok(RelocateItem {
        queue,
        id,
        reserved_count,
        expires_at_s,
        visible_at_ms,
        reservation,
        body_at,
        body_len,
        meta_len,
    })
}

/// Format (Meta): { key: str16 | present: u8 [| value: bytes32] }
pub fn put_meta(buf: &mut Vec<u8>, key: &str, value: Option<&[u8]>) {
    buf.bytes16(key.as_bytes());
    match value {
        None => buf.u8(0),
        Some(v) => {
            buf.u8(1);
            buf.bytes32(v);
        }
    }
}

pub fn get_meta(p: &[u8]) -> R<(&str, Option<&[u8]>)> {
    let mut r = Reader::new(p);
    let key = r.str16()?;
    let value = match r.u8()? {
        0 => None,
        1 => Some(r.bytes32()?),
        _ => return Err(CorruptionKind::BadPayload),
    };
    r.finish()?;
    Ok((key, value))
}

/// Marks a Push record as describing delivery attempts (their results go to the delivery
/// log); without it the record restates the state (after an acknowledgement, relocation).
pub const PUSH_FLAG_ATTEMPT: u8 = 1;
/// Marks a Push record that says whether it finishes its message (`PUSH_FLAG_FINISHED`).
/// Records without it (builds before 2026-12-07) leave that to the kind's rule, applied on
/// replay to the queue's latest subscribers.
pub const PUSH_FLAG_DECIDED: u8 = 2;
/// With `PUSH_FLAG_DECIDED`: the message is finished once this record is applied.
pub const PUSH_FLAG_FINISHED: u8 = 4;

/// The flags of a Push record that decides whether its message finishes.
pub fn push_flags(attempt: bool, finished: bool) -> u8 {
    let mut f = PUSH_FLAG_DECIDED;
    if attempt {
        f |= PUSH_FLAG_ATTEMPT;
    }
    if finished {
        f |= PUSH_FLAG_FINISHED;
    }
    f
}

/// What a Push record's flags decide: whether its message finishes, if they say.
pub fn push_decision(flags: u8) -> Option<bool> {
    (flags & PUSH_FLAG_DECIDED != 0).then_some(flags & PUSH_FLAG_FINISHED != 0)
}
/// `due_ms` value meaning "nothing scheduled".
const NOT_DUE: u64 = u64::MAX;

/// Format (Push): { queue: u32 | id: u64 | flags: u8 | count: u16 | count × {
///   subscriber: str16 | status: u8 | tries: u32 | status_code: u16 | at_ms: u64 |
///   latency_ms: u32 | due_ms: u64 (u64::MAX: none) | has_rid: u8 | rid: [u8;16] | msg: str16 } }
pub fn put_push(buf: &mut Vec<u8>, queue: QueueNo, id: MessageId, flags: u8, ups: &[PushUpdate]) {
    // What `get_push` takes back.
    debug_assert!((1..=crate::limits::SUBSCRIBERS_MAX).contains(&ups.len()));
    buf.u32(queue.0);
    buf.u64(id.0);
    buf.u8(flags);
    buf.u16(ups.len() as u16);
    for u in ups {
        buf.bytes16(u.subscriber.as_bytes());
        buf.u8(u.status as u8);
        buf.u32(u.tries);
        buf.u16(u.status_code);
        buf.u64(u.at_ms);
        buf.u32(u.latency_ms);
        buf.u64(u.due_ms.unwrap_or(NOT_DUE));
        buf.u8(u.reservation.is_some() as u8);
        buf.extend_from_slice(&u.reservation.unwrap_or_default().0);
        buf.bytes16(u.msg.as_bytes());
    }
}

pub fn get_push(p: &[u8], out: &mut Vec<PushUpdate>) -> R<(QueueNo, MessageId, u8)> {
    let mut r = Reader::new(p);
    let queue = QueueNo(r.u32()?);
    let id = MessageId(r.u64()?);
    let flags = r.u8()?;
    let count = r.u16()? as usize;
    if count == 0 || count > crate::limits::SUBSCRIBERS_MAX {
        return Err(CorruptionKind::BadPayload);
    }
    out.clear();
    for _ in 0..count {
        let subscriber = r.str16()?.to_string();
        let status = PushStatus::from_byte(r.u8()?).ok_or(CorruptionKind::BadPayload)?;
        let tries = r.u32()?;
        let status_code = r.u16()?;
        let at_ms = r.u64()?;
        let latency_ms = r.u32()?;
        let due = r.u64()?;
        let has_rid = r.u8()?;
        let rid = r.rid()?;
        let reservation = match has_rid {
            0 => None,
            1 => Some(rid),
            _ => return Err(CorruptionKind::BadPayload),
        };
        let msg = r.str16()?.to_string();
        out.push(PushUpdate {
            subscriber,
            status,
            tries,
            status_code,
            at_ms,
            latency_ms,
            due_ms: (due != NOT_DUE).then_some(due),
            reservation,
            msg,
        });
    }
    r.finish()?;
    Ok((queue, id, flags))
}

/// Decodes any payload fully, for validation and fuzzing: `Ok` if it is well formed.
pub fn validate_payload(kind: Kind, p: &[u8]) -> R<()> {
    match kind {
        Kind::QueueDef => get_queue_def(p).map(drop),
        Kind::QueueDrop | Kind::Clear => get_queue_no(p).map(drop),
        Kind::Post => get_post(p, &mut Vec::new()).map(drop),
        Kind::Reserve => get_reserve(p, &mut Vec::new()).map(drop),
        Kind::Delete => get_delete(p, &mut Vec::new()).map(drop),
        Kind::Release => get_release(p).map(drop),
        Kind::Touch => get_touch(p).map(drop),
        Kind::Move => get_move(p).map(drop),
        Kind::Relocate => get_relocate(p).map(drop),
        Kind::Meta => get_meta(p).map(drop),
        Kind::Push => get_push(p, &mut Vec::new()).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_and_detects_flips() {
        let mut buf = Vec::new();
        frame(&mut buf, crc_seed(7), Kind::Clear, |b| b.u32(42));
        assert_eq!(
            check_frame(&buf, crc_seed(7), 1024),
            FrameCheck::Valid {
                kind: Kind::Clear,
                len: 4
            }
        );
        assert_eq!(get_queue_no(&buf[FRAME_HEADER_BYTES..]), Ok(QueueNo(42)));
        // The same bytes do not validate in another segment.
        assert_eq!(
            check_frame(&buf, crc_seed(8), 1024),
            FrameCheck::Bad(CorruptionKind::RecordChecksum)
        );
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert!(
                    matches!(check_frame(&b, crc_seed(7), 1024), FrameCheck::Bad(_)),
                    "flip at {i}:{bit}"
                );
            }
        }
        assert_eq!(check_frame(&[0u8; 40], 1, 1024), FrameCheck::End);
    }

    #[test]
    fn queue_def_round_trips() {
        let def = QueueDef {
            queue: QueueNo(3),
            total_messages: 99,
            project: "p",
            name: "a queue",
            config: QueueConfig {
                dead_letter: Some(DeadLetter {
                    queue: "dlq".into(),
                    max_reservations: 4,
                }),
                extra: b"{\"x\":1}".to_vec(),
                subscribers: vec!["a".into(), "b".into()],
                ..QueueConfig::default()
            },
        };
        let mut buf = Vec::new();
        put_queue_def(&mut buf, &def);
        assert_eq!(get_queue_def(&buf), Ok(def));
        assert!(get_queue_def(&buf[..buf.len() - 1]).is_err());
    }

    #[test]
    fn relocate_and_meta_round_trip() {
        let it = RelocateItem {
            queue: QueueNo(1),
            id: MessageId(5),
            reserved_count: 2,
            expires_at_s: 9,
            visible_at_ms: 11,
            reservation: Some((ReservationId([7; 16]), 123)),
            body_at: RELOCATE_HEADER_BYTES,
            body_len: 3,
            meta_len: 2,
        };
        let mut buf = Vec::new();
        put_relocate(&mut buf, &it, b"abc", b"xy");
        assert_eq!(get_relocate(&buf), Ok(it));
        let ups = vec![PushUpdate {
            subscriber: "s1".into(),
            status: PushStatus::Reserved,
            tries: 2,
            status_code: 202,
            at_ms: 77,
            latency_ms: 5,
            due_ms: Some(99),
            reservation: Some(ReservationId([3; 16])),
            msg: "held".into(),
        }];
        let mut pb = Vec::new();
        put_push(&mut pb, QueueNo(4), MessageId(8), PUSH_FLAG_ATTEMPT, &ups);
        let mut got = Vec::new();
        assert_eq!(
            get_push(&pb, &mut got),
            Ok((QueueNo(4), MessageId(8), PUSH_FLAG_ATTEMPT))
        );
        assert_eq!(got, ups);
        // Records of builds before 2026-12-07 decide nothing; later ones say finished or not.
        assert_eq!(push_decision(PUSH_FLAG_ATTEMPT), None);
        assert_eq!(push_decision(push_flags(true, false)), Some(false));
        assert_eq!(push_decision(push_flags(false, true)), Some(true));
        assert_eq!(
            push_flags(true, true) & PUSH_FLAG_ATTEMPT,
            PUSH_FLAG_ATTEMPT
        );
        let mut m = Vec::new();
        put_meta(&mut m, "k", Some(b"v"));
        assert_eq!(get_meta(&m), Ok(("k", Some(&b"v"[..]))));
    }
}
