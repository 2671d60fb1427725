//! The ferromq storage engine.
//!
//! Guarantees, in five lines:
//! 1. Every mutating call returns only after its record is durable (per [`SyncPolicy`];
//!    `Always` by default, with group commit: one fdatasync covers all concurrent callers).
//! 2. Every record carries a CRC; a torn tail is truncated on open, any other damage stops
//!    the open with the file and offset.
//! 3. State (queues, messages, delays, reservations) is rebuilt from the log alone; the
//!    restart index only saves replaying the part of the log it covers.
//! 4. Message bodies stay on disk; memory holds 32 bytes of bookkeeping per live message.
//! 5. An I/O failure stops the engine: nothing is acknowledged after it.
//!
//! The on-disk format is specified in `engine/FORMAT.md`.

pub mod backup;
mod checkpoint;
mod clock;
mod delivery;
mod engine;
mod entries;
mod error;
mod ids;
pub mod limits;
mod log;
mod push;
mod queue;
pub mod record;
mod recovery;
mod retention;
mod segment;
mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod types;

pub use checkpoint::{INDEX_HEADER_BYTES, INDEX_VERSION, IndexRejection, IndexUse, IndexWrite};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{Engine, EngineConfig, EngineStats, Links, MaintainReport, RecoveryMode};
pub use error::{CorruptionKind, Error, Result};
pub use ids::{LogPos, MessageId, QueueKey, ReservationId, SegmentId};
pub use log::FSYNC_BUCKET_BOUNDS_S;
pub use log::SyncPolicy;
pub use recovery::RecoveryReport;
pub use segment::{FORMAT_VERSION, HEADER_BYTES as SEGMENT_HEADER_BYTES};
pub use storage::{OsStorage, Region, Storage, StorageFile};
pub use types::{
    DeadLetter, DeleteItem, MessageView, NewMessage, PushAttempt, PushDelivery, PushLane,
    PushStatus, PushSubState, PushUpdate, QueueConfig, QueueInfo, QueueKind, ReserveOptions,
    ReservedMessage,
};

/// Recovery's scan for a valid frame, exposed for the fuzz targets.
pub fn find_valid_frame(bytes: &[u8], from: usize, seed: u32, len_max: usize) -> Option<usize> {
    recovery::find_valid_frame(bytes, from, seed, len_max)
}
