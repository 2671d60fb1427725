//! Settings shared by every bench: short runs, so the whole suite ends in minutes on 2 cores.

use std::time::Duration;

use criterion::Criterion;

/// Ten samples after a one-second warm-up, measured for `measurement_s` seconds.
pub fn config(measurement_s: u64) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measurement_s))
        .configure_from_args()
}

/// The runtime the async benches drive the engine from: multi-thread, 2 workers (one per
/// core of the target machine), like the server's.
#[allow(
    dead_code,
    reason = "each bench includes this module; the single-caller ones do not use it"
)]
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
