//! Alert firing: after a size change, each alert whose trigger was crossed posts a JSON
//! alert message to its target queue (respecting `snooze`).

use std::time::{Duration, Instant};

use engine::{NewMessage, QueueKey};
use serde_json::json;

use crate::settings::{Alert, Extra};
use crate::state::AppState;

/// Whether moving from `before` to `after` crosses `a`'s trigger.
pub fn crossed(a: &Alert, before: u64, after: u64) -> bool {
    let t = a.trigger;
    match (a.kind.as_str(), a.direction.as_str()) {
        ("fixed", "asc") => before < t && after >= t,
        ("fixed", _) => before > t && after <= t,
        (_, "asc") => after > before && after / t > before / t && after >= t,
        // desc progressive: some multiple k*t (k >= 1) with after <= k*t < before.
        _ => after < before && before > t && (before - 1) / t >= after.div_ceil(t).max(1),
    }
}

/// Checks the alerts of `key` after its size went from `before` to `after`.
pub async fn check(st: &AppState, key: &QueueKey, before: u64, after: u64) {
    if before == after {
        return;
    }
    let Ok(info) = st.engine.queue_info_now(key) else {
        return;
    };
    let extra = Extra::of(&info.config);
    for a in extra.alerts.iter().filter(|a| crossed(a, before, after)) {
        {
            let mut fired = st.alerts_fired.lock();
            if let Some(last) = fired.get(&a.id)
                && a.snooze > 0
                && last.elapsed() < Duration::from_secs(a.snooze)
            {
                continue;
            }
            fired.insert(a.id.clone(), Instant::now());
        }
        let body = json!({
            "source_queue": key.name,
            "queue_size": after,
            "alert_id": a.id,
            "alert_type": a.kind,
            "alert_direction": a.direction,
            "alert_trigger": a.trigger,
            "created_at": crate::time::rfc3339_ms(crate::time::now_ms(), false),
        });
        let target = QueueKey::new(key.project.clone(), a.queue.clone());
        let msg = NewMessage {
            body: body.to_string().into_bytes(),
            delay_s: 0,
            meta: Vec::new(),
        };
        if let Err(e) = st.engine.post(&target, &[msg], true).await {
            tracing::warn!(queue = %a.queue, error = %e, "could not post alert message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str, dir: &str, t: u64) -> Alert {
        Alert {
            id: "x".into(),
            kind: kind.into(),
            trigger: t,
            queue: "q".into(),
            direction: dir.into(),
            snooze: 0,
        }
    }

    #[test]
    fn crossing_rules() {
        assert!(crossed(&alert("fixed", "asc", 5), 4, 5));
        assert!(!crossed(&alert("fixed", "asc", 5), 5, 6));
        assert!(crossed(&alert("fixed", "desc", 5), 6, 5));
        assert!(crossed(&alert("progressive", "asc", 5), 9, 10));
        assert!(!crossed(&alert("progressive", "asc", 5), 10, 11));
        assert!(crossed(&alert("progressive", "desc", 5), 11, 10));
        assert!(!crossed(&alert("progressive", "desc", 5), 10, 9));
    }
}
