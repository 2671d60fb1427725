//! Arbitrary changes to a valid restart index, with its checksums fixed up so the decoder
//! itself is exercised: opening must return Ok or Err, never panic, and an index it does
//! not use must be gone afterwards.
#![no_main]

use std::sync::Arc;

use engine::testing::SimStorage;
use engine::{
    Engine, EngineConfig, INDEX_HEADER_BYTES, IndexUse, ManualClock, NewMessage, QueueKey,
    ReserveOptions,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = SimStorage::new();
    let mut config = EngineConfig::new("/sim");
    config.segment_bytes = 2 << 20;
    config.body_bytes_max = 4096;
    let clock = ManualClock::new(1_700_000_000_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // A small log with visible, delayed and reserved messages, and its index.
    let e = Engine::open_with(
        config.clone(),
        Arc::new(base.clone()),
        Arc::new(clock.clone()),
    )
    .expect("fresh open");
    rt.block_on(async {
        let key = QueueKey::new("p", "q");
        let msgs: Vec<NewMessage> = (0..6)
            .map(|i| NewMessage {
                body: vec![b'a'; 10 + i].into(),
                delay_s: (i % 2) as u32 * 30,
                meta: Vec::new(),
            })
            .collect();
        e.post(&key, &msgs, true).await.expect("post");
        e.reserve(
            &key,
            ReserveOptions {
                n: 2,
                ..Default::default()
            },
        )
        .await
        .expect("reserve");
    });
    e.close();
    drop(e);
    let mut index = base.contents("index.idx").expect("an index");
    // `data` is a list of (offset u16, xor u8) edits to the body, and maybe a new length.
    for edit in data.chunks_exact(3) {
        let at = INDEX_HEADER_BYTES + u16::from_le_bytes([edit[0], edit[1]]) as usize;
        if at < index.len() {
            index[at] ^= edit[2];
        }
    }
    if data.len() % 3 == 1 {
        index.truncate(INDEX_HEADER_BYTES + data[data.len() - 1] as usize * 4);
    }
    // Fix up body_bytes, body_crc and the header crc (FORMAT.md: bytes 40..48, 56..60, 60..64).
    let body_len = (index.len().max(INDEX_HEADER_BYTES) - INDEX_HEADER_BYTES) as u64;
    if index.len() >= INDEX_HEADER_BYTES {
        index[40..48].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32fast::hash(&index[INDEX_HEADER_BYTES..]);
        index[56..60].copy_from_slice(&crc.to_le_bytes());
        let crc = crc32fast::hash(&index[..60]);
        index[60..64].copy_from_slice(&crc.to_le_bytes());
    }
    let storage = base.durable_image();
    storage.put_file("index.idx", index);
    if let Ok(e) = Engine::open_with(config, Arc::new(storage.clone()), Arc::new(clock)) {
        e.check_invariants();
        if let IndexUse::Ignored(_) = e.recovery_report().index {
            assert!(
                storage.contents("index.idx").is_none(),
                "an unused index is removed"
            );
        }
        rt.block_on(async {
            let _ = e.peek(&QueueKey::new("p", "q"), 100).await;
        });
        e.close();
    }
});
