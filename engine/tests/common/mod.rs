//! Helpers shared by the engine's API-level tests.

#![allow(dead_code)]

use std::sync::Arc;

use engine::{Engine, EngineConfig, ManualClock, OsStorage, QueueKey};

/// A fixed start time for the manual clock.
pub const T0: u64 = 1_700_000_000_000;

/// Opens the engine on a real directory with a manual clock, 4 KiB bodies and
/// `segment_bytes` segments.
pub fn open_sized(dir: &std::path::Path, clock: &ManualClock, segment_bytes: u64) -> Engine {
    let mut config = EngineConfig::new(dir);
    config.segment_bytes = segment_bytes;
    config.body_bytes_max = 4096;
    Engine::open_with(
        config,
        Arc::new(OsStorage::new(dir).unwrap()),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

/// A queue of project `p`.
pub fn key(name: &str) -> QueueKey {
    QueueKey::new("p", name)
}

/// Whether the segment file at `path` is started: its header is written. The log names the
/// next segment's file ahead of the roll to it, and that file holds zeros until then
/// (FORMAT.md, "unstarted segment"). A file gone meanwhile (retention renames dropped
/// segments) is not started either.
pub fn is_started_segment(path: &std::path::Path) -> bool {
    let mut header = [0u8; engine::SEGMENT_HEADER_BYTES];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut header))
        .is_ok_and(|()| header.iter().any(|b| *b != 0))
}
