//! Arbitrary bytes as the body of a segment after a valid header, or (first byte odd) as a
//! whole second segment, header included, after a valid first one (the file the log names
//! ahead of a roll: unstarted, torn or damaged): opening must return Ok or Err, never panic.
#![no_main]

use std::sync::Arc;

use engine::testing::SimStorage;
use engine::{Engine, EngineConfig, ManualClock, SEGMENT_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    const SEGMENT: usize = 2 << 20;
    // A valid first segment, made by the engine itself.
    let base = SimStorage::new();
    let mut config = EngineConfig::new("/sim");
    config.segment_bytes = SEGMENT as u64;
    config.body_bytes_max = 4096;
    let clock = ManualClock::new(1_700_000_000_000);
    let e = Engine::open_with(
        config.clone(),
        Arc::new(base.clone()),
        Arc::new(clock.clone()),
    )
    .expect("fresh open");
    e.close();
    drop(e);
    let name = "0000000000000001.seg";
    let mut seg = base.contents(name).expect("first segment");
    let storage = SimStorage::new();
    if let Some((&first, rest)) = data.split_first()
        && first & 1 == 1
    {
        let mut next = vec![0u8; SEGMENT];
        let n = rest.len().min(SEGMENT);
        next[..n].copy_from_slice(&rest[..n]);
        storage.put_file("0000000000000002.seg", next);
    } else {
        let n = data.len().min(SEGMENT - SEGMENT_HEADER_BYTES);
        seg[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + n].copy_from_slice(&data[..n]);
    }
    storage.put_file(name, seg);
    if let Ok(e) = Engine::open_with(config, Arc::new(storage), Arc::new(clock)) {
        e.check_invariants();
        e.close();
    }
});
