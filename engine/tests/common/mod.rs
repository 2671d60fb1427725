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
