//! Background upkeep: `engine.maintain()` once a second on the blocking pool; an engine
//! failure is reported at `crit` and stops the server.

use std::time::Duration;

use engine::Engine;

/// Runs until the engine fails (returns the failure text) — the caller exits non-zero.
pub async fn run(engine: Engine) -> String {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut full = false;
    let mut reserve = false;
    loop {
        tick.tick().await;
        let now_full = engine.storage_full();
        match &now_full {
            Some(why) if !full => tracing::error!(
                error = %why,
                "no room for a new log segment: posts are refused near the end of the \
                 current one until messages are deleted or disk space is freed"
            ),
            None if full => tracing::info!("room for new log segments again: posts resume"),
            _ => {}
        }
        full = now_full.is_some();
        let now_reserve = engine.reserve_segment_held();
        if reserve && !now_reserve && full {
            tracing::warn!(
                "the log rolled into the reserve segment: consumers' records have one segment \
                 left; delete messages (or free disk space) so that old segments can go"
            );
        }
        reserve = now_reserve;
        let e = engine.clone();
        let res = tokio::task::spawn_blocking(move || e.maintain()).await;
        match res {
            Ok(Ok(r)) => {
                if r.segments_dropped + r.messages_relocated + r.messages_expired > 0 {
                    tracing::debug!(
                        segments_dropped = r.segments_dropped,
                        messages_relocated = r.messages_relocated,
                        messages_expired = r.messages_expired,
                        "maintenance"
                    );
                }
                if let Some(ix) = r.index.filter(|ix| ix.written) {
                    tracing::info!(
                        messages = ix.messages,
                        bytes = ix.bytes,
                        lock_held_ms = (ix.lock_held.as_secs_f64() * 1e4).round() / 10.0,
                        "restart index written"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "maintenance failed"),
            Err(e) => tracing::warn!(error = %e, "maintenance task panicked"),
        }
        if engine.is_failed() {
            let msg = "the storage engine stopped after an I/O failure".to_string();
            tracing::error!(crit = true, "{msg}");
            return msg;
        }
    }
}
