//! Arbitrary bytes through the frame check and every payload decoder: never a panic.
#![no_main]

use engine::record::{self, FrameCheck, Kind};
use libfuzzer_sys::fuzz_target;

const KINDS: [Kind; 11] = [
    Kind::QueueDef,
    Kind::QueueDrop,
    Kind::Post,
    Kind::Reserve,
    Kind::Delete,
    Kind::Release,
    Kind::Touch,
    Kind::Clear,
    Kind::Move,
    Kind::Relocate,
    Kind::Meta,
];

fuzz_target!(|data: &[u8]| {
    let seed = record::crc_seed(1);
    if let FrameCheck::Valid { kind, len } = record::check_frame(data, seed, 1 << 20) {
        let _ = record::validate_payload(
            kind,
            &data[record::FRAME_HEADER_BYTES..record::FRAME_HEADER_BYTES + len],
        );
    }
    let _ = record::plausible_frame_start(data, 1 << 20);
    let _ = engine::find_valid_frame(data, 0, seed, 1 << 20);
    for kind in KINDS {
        let _ = record::validate_payload(kind, data);
    }
});
