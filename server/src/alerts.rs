//! Alert firing: after a size change, each alert whose trigger was crossed posts a JSON
//! alert message to its target queue (respecting `snooze`).

use std::time::{Duration, Instant};

use engine::{MessageId, NewMessage, QueueKey};
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

/// Posts `msgs` to `key` durably, then fires the alerts the post crossed. Every post the
/// server makes goes through here: clients' posts, `ironmq://` deliveries and error-queue
/// messages alike (alert messages themselves do not, so alerts cannot chain).
pub async fn post(
    st: &AppState,
    key: &QueueKey,
    msgs: &[NewMessage<'_>],
) -> engine::Result<Vec<MessageId>> {
    let ids = st.engine.post(key, msgs, true).await?;
    if let Some(after) = st.engine.size_if_extra(key) {
        // The messages of one post share the path they arrived by (`hops`); an alert they
        // fire goes on along it.
        let path = msgs
            .first()
            .map(|m| crate::hops::of_meta(&m.meta))
            .unwrap_or_default();
        check_along(
            st,
            key,
            after.saturating_sub(ids.len() as u64),
            after,
            &path,
        )
        .await;
    }
    Ok(ids)
}

/// Checks the alerts of `key` after its size went from `before` to `after`, and posts the
/// message of every alert that fires.
pub async fn check(st: &AppState, key: &QueueKey, before: u64, after: u64) {
    check_along(st, key, before, after, &[]).await
}

/// [`check`] for a change made by messages that arrived along `path`.
async fn check_along(st: &AppState, key: &QueueKey, before: u64, after: u64, path: &[String]) {
    let due = due(st, key, before, after, path);
    if !due.is_empty() {
        // Boxed: alerts fire rarely, and the futures of the request handlers that call
        // this (a long poll among them) should not carry the post's state inline.
        Box::pin(post_all(st, due)).await;
    }
}

/// The alert messages to post, with their target queues; records each as fired.
fn due(
    st: &AppState,
    key: &QueueKey,
    before: u64,
    after: u64,
    path: &[String],
) -> Vec<(QueueKey, NewMessage<'static>)> {
    if before == after {
        return Vec::new();
    }
    let mut path = path.to_vec();
    path.push(crate::hops::entry(&st.server, key));
    let Ok(info) = st.engine.queue_info_now(key) else {
        return Vec::new();
    };
    let extra = Extra::of(&info.config);
    let mut due = Vec::new();
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
        // (An alert into its own queue is no loop: an alert's message fires no alerts.)
        if target != *key
            && let Some(why) = crate::hops::refusal(&path, &st.server, &target)
        {
            tracing::warn!(queue = %key.name, alert = %a.id, target = %target.name, reason = %why, "alert message not posted");
            continue;
        }
        let msg = NewMessage {
            body: body.to_string().into_bytes().into(),
            delay_s: 0,
            meta: crate::hops::set_in_meta(&[], &path),
        };
        due.push((target, msg));
    }
    due
}

async fn post_all(st: &AppState, due: Vec<(QueueKey, NewMessage<'static>)>) {
    for (target, msg) in due {
        if let Err(e) = st.engine.post(&target, &[msg], true).await {
            tracing::warn!(queue = %target.name, error = %e, "could not post alert message");
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
