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
