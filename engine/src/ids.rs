//! Newtypes for the identifiers that must never be mixed up.

use std::fmt;

/// A message id. Shown on the wire as a 19-digit decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    /// Ids start here so that every id has exactly 19 decimal digits.
    pub const FLOOR: u64 = 1_000_000_000_000_000_000;
    /// Parses the decimal wire form.
    pub fn parse(s: &str) -> Option<MessageId> {
        if s.is_empty() || s.len() > 20 {
            return None;
        }
        // One pass; digits only (no sign), and no overflow.
        let mut v: u64 = 0;
        for b in s.bytes() {
            let d = b.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(d as u64)?;
        }
        Some(MessageId(v))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A reservation id: 128 random bits, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReservationId(pub [u8; 16]);

impl ReservationId {
    /// The one value the engine never issues (all zeros). It stands for a reservation id
    /// a client sent malformed: such an id matches no reservation, and checking it as one
    /// keeps the order of answers (missing queue, then missing message, then 403).
    pub const NEVER_ISSUED: ReservationId = ReservationId([0; 16]);

    pub fn parse(s: &str) -> Option<ReservationId> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        // Branch-free over the 32 digits: a batch delete parses 100 of these.
        let mut out = [0u8; 16];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
            bad |= hi | lo;
            *o = (hi << 4) | (lo & 15);
        }
        (bad & 0x80 == 0).then_some(ReservationId(out))
    }

    /// The 32 lowercase hex digits, without going through `fmt` (a reply to a reserve of
    /// 100 messages writes 100 of them).
    pub fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[(b >> 4) as usize];
            pair[1] = DIGITS[(b & 15) as usize];
        }
        out
    }
}

/// The value of each byte as a hex digit (either case); 0xFF for a byte that is not one.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xFFu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        // The digits are ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReservationId({self})")
    }
}

/// A segment file number. Segment `n` is the file `{n:016x}.seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId(pub u32);

impl SegmentId {
    pub fn file_name(self) -> String {
        format!("{:016x}.seg", self.0)
    }
    pub fn from_file_name(name: &str) -> Option<SegmentId> {
        let hex = name.strip_suffix(".seg")?;
        if hex.len() != 16 {
            return None;
        }
        u32::try_from(u64::from_str_radix(hex, 16).ok()?)
            .ok()
            .map(SegmentId)
    }
}

/// A logical log position: segment id in the high 32 bits, byte offset in the low 32.
/// Positions only grow, across segments too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogPos(pub u64);

impl LogPos {
    pub fn new(segment: SegmentId, offset: u32) -> LogPos {
        LogPos(((segment.0 as u64) << 32) | offset as u64)
    }
    pub fn segment(self) -> SegmentId {
        SegmentId((self.0 >> 32) as u32)
    }
    pub fn offset(self) -> u32 {
        self.0 as u32
    }
}

/// Internal queue number, never reused; records name queues by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueNo(pub u32);

/// A queue's name within a project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub project: String,
    pub name: String,
}

impl QueueKey {
    pub fn new(project: impl Into<String>, name: impl Into<String>) -> QueueKey {
        QueueKey {
            project: project.into(),
            name: name.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_id_round_trips_through_hex() {
        let rid = ReservationId([0xab; 16]);
        let s = rid.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(ReservationId::parse(&s), Some(rid));
        assert_eq!(ReservationId::parse("zz"), None);
        assert_eq!(ReservationId::parse(&"g".repeat(32)), None);
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8) * 17;
        }
        let rid = ReservationId(bytes);
        let s = "00112233445566778899aabbccddeeff";
        assert_eq!(rid.to_string(), s);
        assert_eq!(&rid.hex(), s.as_bytes());
        assert_eq!(ReservationId::parse(&s.to_uppercase()), Some(rid));
        assert_eq!(ReservationId::parse(&format!("{}é", &s[..30])), None);
    }

    #[test]
    fn message_ids_have_nineteen_digits_from_the_floor() {
        assert_eq!(MessageId(MessageId::FLOOR).to_string().len(), 19);
        assert_eq!(
            MessageId::parse("1000000000000000123"),
            Some(MessageId(1000000000000000123))
        );
        assert_eq!(MessageId::parse("12a"), None);
        assert_eq!(MessageId::parse("+12"), None);
        assert_eq!(
            MessageId::parse(&u64::MAX.to_string()),
            Some(MessageId(u64::MAX))
        );
        assert_eq!(MessageId::parse("18446744073709551616"), None);
        assert_eq!(
            MessageId::parse("00000000000000000012"),
            Some(MessageId(12))
        );
        assert_eq!(MessageId::parse(""), None);
    }

    #[test]
    fn segment_names_round_trip() {
        let id = SegmentId(42);
        assert_eq!(SegmentId::from_file_name(&id.file_name()), Some(id));
        assert_eq!(SegmentId::from_file_name("junk.seg"), None);
        let p = LogPos::new(SegmentId(3), 77);
        assert_eq!((p.segment(), p.offset()), (SegmentId(3), 77));
        assert!(LogPos::new(SegmentId(4), 0) > LogPos::new(SegmentId(3), u32::MAX));
    }
}
