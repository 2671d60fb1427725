//! Public value types of the engine API.

use std::borrow::Cow;

use crate::ids::{MessageId, QueueKey, ReservationId};

/// The three kinds of queue. The engine treats the push kinds alike; the server delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Pull,
    Multicast,
    Unicast,
}

impl QueueKind {
    pub fn is_push(self) -> bool {
        !matches!(self, QueueKind::Pull)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Pull => "pull",
            QueueKind::Multicast => "multicast",
            QueueKind::Unicast => "unicast",
        }
    }
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            QueueKind::Pull => 0,
            QueueKind::Multicast => 1,
            QueueKind::Unicast => 2,
        }
    }
    pub(crate) fn from_byte(b: u8) -> Option<QueueKind> {
        Some(match b {
            0 => QueueKind::Pull,
            1 => QueueKind::Multicast,
            2 => QueueKind::Unicast,
            _ => return None,
        })
    }
}

/// Where messages go after `max_reservations` reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub queue: String,
    pub max_reservations: u32,
}

/// A queue's settings. `extra` is opaque to the engine (the server keeps push settings and
/// alerts there) and is stored and returned verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub message_timeout_s: u32,
    pub message_expiration_s: u32,
    pub kind: QueueKind,
    pub dead_letter: Option<DeadLetter>,
    /// Push queues: the subscriber names, in order. The engine keeps one delivery state per
    /// message and subscriber; where and how to deliver is the server's business (`extra`).
    pub subscribers: Vec<String>,
    pub extra: Vec<u8>,
}

impl QueueConfig {
    pub const TIMEOUT_S_DEFAULT: u32 = 60;
    pub const EXPIRATION_S_DEFAULT: u32 = 604_800;
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            message_timeout_s: Self::TIMEOUT_S_DEFAULT,
            message_expiration_s: Self::EXPIRATION_S_DEFAULT,
            kind: QueueKind::Pull,
            dead_letter: None,
            subscribers: Vec::new(),
            extra: Vec::new(),
        }
    }
}

/// A message to post. The body may borrow from the request it came in (the server parses
/// a batch without copying each body out of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage<'a> {
    pub body: Cow<'a, [u8]>,
    pub delay_s: u32,
    /// Opaque per-message metadata (the server keeps push headers here).
    pub meta: Vec<u8>,
}

/// A queue as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueInfo {
    pub project: String,
    pub name: String,
    /// Internal number, stable for the queue's life; the API derives the queue `id` from it.
    pub number: u32,
    pub config: QueueConfig,
    /// Messages in the queue, reserved and delayed ones included.
    pub size: u64,
    pub reserved: u64,
    pub delayed: u64,
    /// Messages ever posted, dead-letter moves into the queue included.
    pub total_messages: u64,
}

/// A message as peek and get show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    pub id: MessageId,
    pub body: Vec<u8>,
    pub meta: Vec<u8>,
    pub reserved_count: u32,
    /// Present while the message is reserved.
    pub reservation: Option<(ReservationId, u64)>,
}

/// A reserved message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedMessage {
    pub id: MessageId,
    pub body: Vec<u8>,
    pub meta: Vec<u8>,
    pub reserved_count: u32,
    /// `None` when the reserve call deleted the message (`delete: true`).
    pub reservation_id: Option<ReservationId>,
    pub reserved_until_ms: u64,
}

/// Options of a reserve call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReserveOptions {
    pub n: usize,
    /// 0 means the queue's `message_timeout`.
    pub timeout_s: u32,
    /// Long-poll: how long to wait for a message when none is visible.
    pub wait_ms: u64,
    /// Remove the messages as they are returned.
    pub delete: bool,
}

impl Default for ReserveOptions {
    fn default() -> Self {
        ReserveOptions {
            n: 1,
            timeout_s: 0,
            wait_ms: 0,
            delete: false,
        }
    }
}

/// One entry of a batch delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteItem {
    pub id: MessageId,
    pub reservation_id: Option<ReservationId>,
}

impl DeleteItem {
    /// The delete of a message just reserved: its id and its reservation.
    pub fn of(m: &ReservedMessage) -> DeleteItem {
        DeleteItem {
            id: m.id,
            reservation_id: m.reservation_id,
        }
    }
}

/// Where a message stands with one push subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PushStatus {
    /// Not attempted yet.
    Queued = 0,
    /// Answered 202: held for the subscriber until it acknowledges or `retries_delay` passes.
    Reserved = 1,
    /// The last attempt failed; another is scheduled.
    Retrying = 2,
    /// Delivered (or acknowledged).
    Deleted = 3,
    /// Retries exhausted.
    Error = 4,
}

impl PushStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::Queued => "queued",
            PushStatus::Reserved => "reserved",
            PushStatus::Retrying => "retrying",
            PushStatus::Deleted => "deleted",
            PushStatus::Error => "error",
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, PushStatus::Deleted | PushStatus::Error)
    }
    pub(crate) fn from_byte(b: u8) -> Option<PushStatus> {
        Some(match b {
            0 => PushStatus::Queued,
            1 => PushStatus::Reserved,
            2 => PushStatus::Retrying,
            3 => PushStatus::Deleted,
            4 => PushStatus::Error,
            _ => return None,
        })
    }
}

/// One delivery attempt, as the bounded delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAttempt {
    pub at_ms: u64,
    /// HTTP status; 0 when there was no answer.
    pub status_code: u16,
    pub latency_ms: u32,
    /// Empty on success.
    pub error: String,
}

/// A message's delivery state for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubState {
    pub subscriber: String,
    pub status: PushStatus,
    /// Attempts made so far.
    pub tries: u32,
    /// The last attempt's HTTP status (0: none yet, or no answer).
    pub status_code: u16,
    pub last_try_ms: u64,
    /// When the next attempt is due; `None` when none is scheduled.
    pub due_ms: Option<u64>,
    /// The reservation a 202 answer holds (acknowledged with it).
    pub reservation: Option<ReservationId>,
    /// The last error, if any.
    pub msg: String,
    /// The last attempts, oldest first (at most `limits::PUSH_ATTEMPTS_KEPT`).
    pub attempts: Vec<PushAttempt>,
}

impl PushSubState {
    /// The state of a subscriber not tried yet.
    pub fn queued(subscriber: &str) -> PushSubState {
        PushSubState {
            subscriber: subscriber.to_string(),
            status: PushStatus::Queued,
            tries: 0,
            status_code: 0,
            last_try_ms: 0,
            due_ms: None,
            reservation: None,
            msg: String::new(),
            attempts: Vec::new(),
        }
    }
}

/// A change to one subscriber's delivery state, as the server decides it after an attempt
/// (or an acknowledgement). Written as one log record with the others of the same call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushUpdate {
    pub subscriber: String,
    pub status: PushStatus,
    pub tries: u32,
    pub status_code: u16,
    /// When the attempt was made (0: this update is not an attempt).
    pub at_ms: u64,
    pub latency_ms: u32,
    pub due_ms: Option<u64>,
    pub reservation: Option<ReservationId>,
    pub msg: String,
}

/// A subscriber of a push queue with deliveries due (a handle for `Engine::push_claim`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PushLane {
    pub queue: u32,
    pub lane: u16,
    pub key: QueueKey,
    pub subscriber: String,
}

/// One delivery handed to the pusher: the message, the subscriber, and the state of every
/// subscriber of the message (unicast picks the next one from it).
#[derive(Debug, Clone)]
pub struct PushDelivery {
    pub queue: u32,
    pub key: QueueKey,
    /// The queue's settings (shared by the deliveries of one claim).
    pub config: std::sync::Arc<QueueConfig>,
    pub id: MessageId,
    pub subscriber: String,
    /// The reservation id sent with this attempt (`Iron-Reservation-Id`).
    pub reservation: ReservationId,
    pub body: Vec<u8>,
    pub meta: Vec<u8>,
    /// Every current subscriber's state, in subscriber order (this one included).
    pub states: Vec<PushSubState>,
}

impl PushDelivery {
    /// This delivery's subscriber state.
    pub fn state(&self) -> Option<&PushSubState> {
        self.states.iter().find(|s| s.subscriber == self.subscriber)
    }
}
