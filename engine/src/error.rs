//! The engine's error type. `Display` is written for operators and API users.

use std::io;
use std::path::PathBuf;

use crate::ids::MessageId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Queue not found")]
    QueueNotFound,
    #[error("Message not found")]
    MessageNotFound,
    /// The reservation id does not match the message's current reservation: it timed out,
    /// was released, or was superseded by a touch.
    #[error("Reservation timed out or is no longer valid for message {0}")]
    ReservationMismatch(MessageId),
    /// The message is reserved and the caller gave no reservation id.
    #[error("Message {0} is reserved: a reservation_id is required")]
    ReservationRequired(MessageId),
    #[error("Message body is {len} bytes; the limit is {max} bytes")]
    BodyTooLarge { len: usize, max: u32 },
    #[error("Message metadata is {len} bytes; the limit is {max} bytes")]
    MetaTooLarge { len: usize, max: u32 },
    #[error("{what} is {got}; the limit is {max}")]
    LimitExceeded {
        what: &'static str,
        got: u64,
        max: u64,
    },
    #[error("{0}")]
    Invalid(&'static str),
    /// A dead-letter link that would close a cycle of dead-letter queues (messages would
    /// move around it forever): the queue names along the cycle, from the queue being
    /// configured back to it.
    #[error("{}", dead_letter_cycle_msg(.0))]
    DeadLetterCycle(Vec<String>),
    /// Links between queues that deliver on their own (push queues' `ironmq://`
    /// subscribers and error queues, pull queues' alerts) that would close a cycle (a message would go around
    /// it forever): the queue names along it, from the queue being configured back to it.
    #[error("{}", push_cycle_msg(.0))]
    PushCycle(Vec<String>),
    /// A change of a queue's type, which is fixed when the queue is made.
    #[error("{0}")]
    WrongQueueType(&'static str),
    /// Pull operations on a push queue, or push operations on a pull queue: a request
    /// the queue's type does not take (not a change of it).
    #[error("{0}")]
    NotForQueueType(&'static str),
    /// The OS error is in the message, and so deliberately not the error's `source()`: a
    /// report that prints the chain (anyhow's `{:#}`) would say it twice.
    #[error("I/O error during {op} on {path}: {cause}")]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
    #[error(
        "corrupt log: {kind} in {path} at byte offset {offset}; the data before it is intact. \
         In the last segment after a power loss (not a disk fault), recovery mode \
         `tolerate-tail` truncates the log at this offset; anywhere else the file was damaged \
         or altered: restore the data directory from a backup"
    )]
    Corruption {
        path: PathBuf,
        offset: u64,
        kind: CorruptionKind,
    },
    #[error("the data directory {0} is in use by another process")]
    Locked(PathBuf),
    /// A setting out of its range; `key` names it as the configuration does
    /// (`segment_bytes`, `body_bytes_max`).
    #[error("invalid engine configuration: {msg}")]
    Config { key: &'static str, msg: String },
    /// A write or fsync failed earlier; the engine accepts nothing more and must be reopened.
    #[error("the storage engine stopped after an I/O failure and must be restarted: {0}")]
    Failed(String),
    #[error("the storage engine is shutting down")]
    Closed,
    /// No room for more messages: the log needs a new segment and none can be made for
    /// want of space (the error says why). Nothing was stored; reads, reservations and
    /// deletes go on, and posts resume once there is space again.
    #[error(
        "Insufficient storage: no room for a new log segment ({0}). Nothing was stored; \
         posting resumes once messages are deleted or disk space is freed"
    )]
    StorageFull(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionKind {
    #[error("bad segment header magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    #[error("segment header checksum mismatch")]
    HeaderChecksum,
    #[error("segment header names segment {found} but the file name says {expected}")]
    SegmentIdMismatch { expected: u32, found: u32 },
    #[error("record checksum mismatch")]
    RecordChecksum,
    #[error("record length {0} out of bounds")]
    RecordLength(u32),
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("record payload does not decode")]
    BadPayload,
    #[error("segment is shorter than its header")]
    ShortSegment,
    #[error("a segment file is missing (a gap in the numbering, or the end of the log)")]
    MissingSegment,
    /// A segment file missing at the start of the log, where the restart index (written
    /// before a crash) places live messages.
    #[error(
        "a segment file is missing at the start of the log, and the restart index places \
         {messages} live messages in it (retention never drops a segment that holds live \
         messages: the file was removed or lost). If the system clock was set back since the \
         last run, those messages may have expired: removing index.idx then opens the log by \
         a full replay, without them"
    )]
    LostSegment { messages: u64 },
}

/// Names shown of a long cycle: the first ones and the last ones (the message stays short
/// however many queues the cycle passes through).
const CYCLE_NAMES_SHOWN: usize = 8;

fn dead_letter_cycle_msg(path: &[String]) -> String {
    let target = path.get(1).map(String::as_str).unwrap_or_default();
    format!(
        "dead_letter queue_name \"{target}\" would make a dead-letter cycle: {}",
        cycle_shown(path)
    )
}

fn push_cycle_msg(path: &[String]) -> String {
    format!(
        "ironmq:// subscribers, error queues and alerts would make a cycle that messages \
         go around forever: {}",
        cycle_shown(path)
    )
}

fn cycle_shown(path: &[String]) -> String {
    if path.len() <= CYCLE_NAMES_SHOWN {
        path.join(" -> ")
    } else {
        let half = CYCLE_NAMES_SHOWN / 2;
        format!(
            "{} -> ... -> {}",
            path[..half].join(" -> "),
            path[path.len() - half..].join(" -> ")
        )
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            cause: source,
        }
    }
}
