//! What an attempt's outcome means for a message's delivery state: pure functions, so the
//! retry rules are tested without a network.
//!
//! - Delivered (2xx but 202): the subscriber is `deleted`.
//! - Held (202): `reserved` until acknowledged, or until `retries_delay` passes (then the
//!   hold counts as a failed try and is retried if retries remain).
//! - Failed: multicast retries that subscriber alone after the delay, until `retries`
//!   retries are spent (then `error`). Unicast moves at once to the next subscriber not yet
//!   tried in this round; when a round has tried them all it waits the delay and starts the
//!   next round; after `retries` retries of every subscriber all are `error`.

use engine::{PushDelivery, PushStatus, PushSubState, PushUpdate, QueueKind};

use crate::settings::Push;

/// An attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(u16),
    Held,
    Failed { code: u16, msg: String },
}

/// The new states to record, and the subscribers that failed for good (for the error queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub updates: Vec<PushUpdate>,
    pub failed_for_good: Vec<PushSubState>,
}

/// `counted` is false when no request was made (an expired 202 hold with no retry left).
pub fn decide(
    d: &PushDelivery,
    push: &Push,
    outcome: &Outcome,
    counted: bool,
    now_ms: u64,
    latency_ms: u32,
    jitter: &mut dyn FnMut(u64) -> u64,
) -> Decision {
    let prev = d
        .state()
        .cloned()
        .unwrap_or_else(|| PushSubState::queued(&d.subscriber));
    let tries = prev.tries + counted as u32;
    let mine = |status, code, due: Option<u64>, msg: String| PushUpdate {
        subscriber: d.subscriber.clone(),
        status,
        tries,
        status_code: code,
        at_ms: now_ms,
        latency_ms,
        due_ms: due,
        reservation: (status == PushStatus::Reserved).then_some(d.reservation),
        msg,
    };
    let (code, msg) = match outcome {
        Outcome::Delivered(code) => {
            return Decision {
                updates: vec![mine(PushStatus::Deleted, *code, None, String::new())],
                failed_for_good: Vec::new(),
            };
        }
        Outcome::Held => {
            let hold = now_ms + push.retries_delay as u64 * 1000;
            return Decision {
                updates: vec![mine(PushStatus::Reserved, 202, Some(hold), String::new())],
                failed_for_good: Vec::new(),
            };
        }
        Outcome::Failed { code, msg } => (*code, msg.clone()),
    };
    let retries = push.retries;
    if d.config.kind != QueueKind::Unicast {
        if tries > retries {
            let up = mine(PushStatus::Error, code, None, msg);
            let failed = PushSubState {
                status: PushStatus::Error,
                tries,
                status_code: code,
                msg: up.msg.clone(),
                ..prev
            };
            return Decision {
                updates: vec![up],
                failed_for_good: vec![failed],
            };
        }
        let due = now_ms + jitter(push.delay_ms(tries));
        return Decision {
            updates: vec![mine(PushStatus::Retrying, code, Some(due), msg)],
            failed_for_good: Vec::new(),
        };
    }
    // Unicast: rounds over the subscribers.
    let n = d.states.len();
    let me = d
        .states
        .iter()
        .position(|s| s.subscriber == d.subscriber)
        .unwrap_or(0);
    let tries_of = |i: usize| {
        if i == me { tries } else { d.states[i].tries }
    };
    let round = (0..n).map(tries_of).max().unwrap_or(tries);
    let after = |k: usize| (me + k) % n.max(1);
    let untried = (1..n).map(after).find(|&i| tries_of(i) < round);
    let carry = |s: &PushSubState, due: Option<u64>| PushUpdate {
        subscriber: s.subscriber.clone(),
        status: s.status,
        tries: s.tries,
        status_code: s.status_code,
        at_ms: 0,
        latency_ms: 0,
        due_ms: due,
        reservation: None,
        msg: s.msg.clone(),
    };
    if let Some(next) = untried {
        return Decision {
            updates: vec![
                mine(PushStatus::Retrying, code, None, msg),
                carry(&d.states[next], Some(now_ms)),
            ],
            failed_for_good: Vec::new(),
        };
    }
    if round > retries {
        let mut updates = vec![mine(PushStatus::Error, code, None, msg.clone())];
        let mut failed = Vec::new();
        for (i, s) in d.states.iter().enumerate() {
            if i == me {
                failed.push(PushSubState {
                    status: PushStatus::Error,
                    tries,
                    status_code: code,
                    msg: msg.clone(),
                    ..s.clone()
                });
            } else {
                let mut up = carry(s, None);
                up.status = PushStatus::Error;
                updates.push(up);
                failed.push(PushSubState {
                    status: PushStatus::Error,
                    ..s.clone()
                });
            }
        }
        return Decision {
            updates,
            failed_for_good: failed,
        };
    }
    let due = now_ms + jitter(push.delay_ms(round));
    let next = after(1);
    if next == me {
        return Decision {
            updates: vec![mine(PushStatus::Retrying, code, Some(due), msg)],
            failed_for_good: Vec::new(),
        };
    }
    let mut next_up = carry(&d.states[next], Some(due));
    next_up.status = PushStatus::Retrying;
    Decision {
        updates: vec![mine(PushStatus::Retrying, code, None, msg), next_up],
        failed_for_good: Vec::new(),
    }
}

/// `retries_remaining` as the API shows it.
pub fn retries_remaining(s: &PushSubState, retries: u32) -> u32 {
    if s.status == PushStatus::Error {
        0
    } else {
        retries.saturating_sub(s.tries.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{MessageId, QueueConfig, QueueKey, ReservationId};

    fn push(retries: u32) -> Push {
        Push {
            subscribers: Vec::new(),
            retries,
            retries_delay: 60,
            error_queue: String::new(),
            retries_backoff: String::new(),
            retries_delay_max: None,
            signing_secrets: Vec::new(),
        }
    }

    fn delivery(kind: QueueKind, me: &str, states: &[(&str, PushStatus, u32)]) -> PushDelivery {
        PushDelivery {
            queue: 1,
            key: QueueKey::new("p", "q"),
            config: std::sync::Arc::new(QueueConfig {
                kind,
                ..QueueConfig::default()
            }),
            id: MessageId(5),
            subscriber: me.into(),
            reservation: ReservationId([1; 16]),
            body: Vec::new(),
            meta: Vec::new(),
            states: states
                .iter()
                .map(|(n, st, t)| PushSubState {
                    status: *st,
                    tries: *t,
                    ..PushSubState::queued(n)
                })
                .collect(),
        }
    }

    fn fail() -> Outcome {
        Outcome::Failed {
            code: 500,
            msg: "boom".into(),
        }
    }

    #[test]
    fn multicast_retries_then_errors() {
        let mut j = |d| d;
        let d = delivery(QueueKind::Multicast, "a", &[("a", PushStatus::Queued, 0)]);
        let out = decide(&d, &push(1), &fail(), true, 1000, 1, &mut j);
        assert_eq!(out.updates[0].status, PushStatus::Retrying);
        assert_eq!(out.updates[0].due_ms, Some(61_000));
        let d = delivery(QueueKind::Multicast, "a", &[("a", PushStatus::Retrying, 1)]);
        let out = decide(&d, &push(1), &fail(), true, 1000, 1, &mut j);
        assert_eq!(out.updates[0].status, PushStatus::Error);
        assert_eq!(out.updates[0].tries, 2);
        assert_eq!(out.failed_for_good.len(), 1);
        let out = decide(&d, &push(1), &Outcome::Held, true, 1000, 1, &mut j);
        assert_eq!(out.updates[0].reservation, Some(ReservationId([1; 16])));
    }

    #[test]
    fn unicast_moves_on_then_waits_then_errors() {
        let mut j = |d| d;
        let p = push(1);
        let d = delivery(
            QueueKind::Unicast,
            "b",
            &[("a", PushStatus::Queued, 0), ("b", PushStatus::Queued, 0)],
        );
        let out = decide(&d, &p, &fail(), true, 1000, 1, &mut j);
        assert_eq!(out.updates[1].subscriber, "a");
        assert_eq!(out.updates[1].due_ms, Some(1000), "next subscriber at once");
        let d = delivery(
            QueueKind::Unicast,
            "a",
            &[("a", PushStatus::Queued, 0), ("b", PushStatus::Retrying, 1)],
        );
        let out = decide(&d, &p, &fail(), true, 1000, 1, &mut j);
        assert_eq!(out.updates[1].subscriber, "b");
        assert_eq!(out.updates[1].due_ms, Some(61_000), "round over: wait");
        let d = delivery(
            QueueKind::Unicast,
            "a",
            &[
                ("a", PushStatus::Retrying, 1),
                ("b", PushStatus::Retrying, 2),
            ],
        );
        let out = decide(&d, &p, &fail(), true, 1000, 1, &mut j);
        assert!(out.updates.iter().all(|u| u.status == PushStatus::Error));
        assert_eq!(out.failed_for_good.len(), 2);
    }

    #[test]
    fn exponential_backoff_doubles_to_the_cap() {
        let mut p = push(5);
        p.retries_backoff = "exponential".into();
        p.retries_delay = 10;
        p.retries_delay_max = Some(35);
        assert_eq!(
            (1..=4).map(|r| p.delay_ms(r)).collect::<Vec<_>>(),
            vec![10_000, 20_000, 35_000, 35_000]
        );
    }
}
