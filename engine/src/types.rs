//! Public value types of the engine API.

use crate::ids::{MessageId, ReservationId};

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
            extra: Vec::new(),
        }
    }
}

/// A message to post.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMessage {
    pub body: Vec<u8>,
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
    /// Messages ever posted.
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
