//! Every hard bound of the engine, in one place.
//!
//! Lengths read from disk or from a caller are checked against these before anything is
//! allocated. Relations between the constants are asserted at compile time below.

/// Messages in one post call (the IronMQ v3 batch limit).
pub const MESSAGES_PER_POST_MAX: usize = 100;
/// Messages returned by one reserve or peek call.
pub const MESSAGES_PER_RESERVE_MAX: usize = 100;
/// Ids in one batch delete call.
pub const IDS_PER_DELETE_MAX: usize = 100;
/// Default and upper bound of a message body.
pub const BODY_BYTES_DEFAULT: u32 = 256 * 1024;
pub const BODY_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Opaque per-message metadata (push headers), kept beside the body.
pub const META_BYTES_MAX: u32 = 8 * 1024;
/// Visibility timeout of a reservation.
pub const TIMEOUT_S_MAX: u32 = 86_400;
/// How long a message lives after it is posted.
pub const EXPIRATION_S_MAX: u32 = 2_592_000;
/// Delay on post and on release.
pub const DELAY_S_MAX: u32 = 604_800;
/// `dead_letter.max_reservations`.
pub const DEAD_LETTER_MAX_RESERVATIONS_MAX: u32 = 1_000;
/// Long-poll wait.
pub const WAIT_S_MAX: u32 = 30;
/// Names.
pub const QUEUE_NAME_BYTES_MAX: usize = 255;
pub const PROJECT_BYTES_MAX: usize = 64;
/// Opaque queue settings owned by the server (push subscribers, alerts).
pub const QUEUE_EXTRA_BYTES_MAX: usize = 256 * 1024;
/// The durable key/value store for server metadata (projects, tokens).
pub const META_KEY_BYTES_MAX: usize = 1024;
pub const META_VALUE_BYTES_MAX: usize = 64 * 1024;

/// Subscribers of one push queue.
pub const SUBSCRIBERS_MAX: usize = 64;
pub const SUBSCRIBER_NAME_BYTES_MAX: usize = 255;
/// The error text kept with a push attempt (longer ones are cut).
pub const PUSH_MSG_BYTES_MAX: usize = 1024;
/// Delivery attempts kept per message and subscriber (the delivery log).
pub const PUSH_ATTEMPTS_KEPT: usize = 8;
/// Delivered push messages kept per queue for lookups (by id, statuses), and for how long.
pub const PUSH_DONE_KEPT: usize = 4096;
pub const PUSH_DONE_KEPT_MS: u64 = 3_600_000;

/// A post record's payload header: queue number and message count (see FORMAT.md).
pub const POST_HEADER_BYTES: usize = 6;
/// Fixed per-message overhead inside a post record (see FORMAT.md).
pub const POST_ITEM_HEADER_BYTES: usize = 28;
/// The largest record the engine ever writes, for a given body limit: a full post batch,
/// or a relocation of one message (smaller), or a queue definition.
pub const fn record_bytes_max(body_bytes_max: u32) -> usize {
    let post = POST_HEADER_BYTES
        + MESSAGES_PER_POST_MAX
            * (POST_ITEM_HEADER_BYTES + body_bytes_max as usize + META_BYTES_MAX as usize);
    let def = 64
        + PROJECT_BYTES_MAX
        + QUEUE_NAME_BYTES_MAX * 2
        + QUEUE_EXTRA_BYTES_MAX
        + SUBSCRIBERS_MAX * (2 + SUBSCRIBER_NAME_BYTES_MAX);
    if post > def { post } else { def }
}

/// Segment size bounds. A segment must hold the largest record.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Bytes buffered for the writer before appenders wait for it (backpressure).
pub const PENDING_BYTES_MAX: usize = 64 * 1024 * 1024;

const _: () = assert!(BODY_BYTES_DEFAULT <= BODY_BYTES_MAX);
const _: () = assert!(
    (record_bytes_max(BODY_BYTES_DEFAULT) as u64) < SEGMENT_BYTES_DEFAULT,
    "the default segment must hold a full post batch of maximal bodies"
);
const _: () = assert!((record_bytes_max(BODY_BYTES_MAX) as u64) < SEGMENT_BYTES_MAX);
const _: () = assert!(MESSAGES_PER_POST_MAX <= u16::MAX as usize);
