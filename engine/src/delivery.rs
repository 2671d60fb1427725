//! The engine's side of push delivery (the state lives in `push.rs`, per queue).
//!
//! The pusher (in the server) loops: `push_ready` lists the subscribers of push queues that
//! have deliveries due; `push_claim` takes some as attempts in flight (in memory only: after a
//! crash they are simply due again); after each attempt `push_complete` writes the new state
//! the pusher decided as one durable `Push` record. `push_ack` is the subscriber's
//! acknowledgement of a 202. Each of these wakes the pusher through `push_wake`.

use std::sync::Arc;

use crate::engine::{Engine, Pending, State};
use crate::error::{Error, Result};
use crate::ids::{LogPos, MessageId, QueueKey, QueueNo, ReservationId};
use crate::log::Log;
use crate::record::{self, Kind};
use crate::types::{PushDelivery, PushLane, PushStatus, PushSubState, PushUpdate};

impl Engine {
    /// Woken whenever deliveries may have become due.
    pub fn push_wake(&self) -> Arc<tokio::sync::Notify> {
        self.push_wake_handle().clone()
    }

    /// The subscribers with deliveries due at `now_ms`, and the earliest due time after it.
    pub fn push_ready(&self, now_ms: u64) -> (Vec<PushLane>, Option<u64>) {
        let (state, ..) = self.parts();
        let mut guard = state.lock();
        let st = &mut *guard;
        let mut ready = Vec::new();
        let mut next: Option<u64> = None;
        for no in &st.push_queues {
            let Some(q) = st.queues.get_mut(no) else {
                continue;
            };
            let lanes = q.push.as_ref().map_or(0, |p| p.lanes());
            for lane in 0..lanes {
                let Some(due) = q.push_lane_top(lane) else {
                    continue;
                };
                if due <= now_ms {
                    let names = q.push.as_ref().map(|p| p.names()).unwrap_or_default();
                    ready.push(PushLane {
                        queue: no.0,
                        lane: lane as u16,
                        key: q.key.clone(),
                        subscriber: names[lane].to_string(),
                    });
                } else {
                    next = Some(next.map_or(due, |n| n.min(due)));
                }
            }
        }
        (ready, next)
    }

    /// Claims up to `max` due deliveries of `lane` as attempts in flight, each with a new
    /// reservation id. Only durable messages are handed out.
    pub async fn push_claim(
        &self,
        lane: &PushLane,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<PushDelivery>> {
        let (claimed, held, config) = {
            let (state, ..) = self.parts();
            let mut guard = state.lock();
            let st = &mut *guard;
            let Some(q) = st.queues.get_mut(&QueueNo(lane.queue)) else {
                return Ok(Vec::new());
            };
            let l = lane.lane as usize;
            let same = q.key == lane.key
                && q.push
                    .as_ref()
                    .is_some_and(|p| p.names().get(l).is_some_and(|n| **n == *lane.subscriber));
            if !same {
                return Ok(Vec::new());
            }
            let mut claimed = Vec::new();
            while claimed.len() < max {
                match q.push_lane_top(l) {
                    Some(due) if due <= now_ms => {}
                    _ => break,
                }
                let rid = st.rids.next();
                let p = q.push.as_mut().expect("push queue");
                let Some(id) = p.claim_top(l, rid) else { break };
                let states = p.states(id);
                let e = *q.get(MessageId(id)).expect("lane_top checked the message");
                claimed.push((Pending::of(&e, None), rid, states));
            }
            // Handled with a failed read below, which gives the claims back.
            let held = self.hold(claimed.iter().map(|(p, _, _)| p));
            (claimed, held, Arc::new(q.config.clone()))
        };
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        // Only durable messages are delivered: wait for the end of the last claimed body
        // (not the whole log, which would wait for unrelated appends).
        let need = claimed
            .iter()
            .map(|(p, _, _)| LogPos::new(p.segment, p.offset + p.body_len + p.meta_len as u32))
            .max()
            .expect("not empty");
        let (_, log, ..) = self.parts();
        let settled = log.wait_durable(need).await;
        let (pendings, rest): (Vec<_>, Vec<_>) = claimed
            .into_iter()
            .map(|(p, rid, states)| (p, (rid, states)))
            .unzip();
        let ids: Vec<u64> = pendings.iter().map(|p| p.id.0).collect();
        let read = match settled.and_then(|()| self.read_bodies(pendings, &held)) {
            Ok(r) => r,
            Err(e) => {
                let (state, ..) = self.parts();
                let mut st = state.lock();
                if let Some(p) = st
                    .queues
                    .get_mut(&QueueNo(lane.queue))
                    .and_then(|q| q.push.as_mut())
                {
                    for id in ids {
                        p.unclaim(id, &lane.subscriber);
                    }
                }
                return Err(e);
            }
        };
        Ok(read
            .into_iter()
            .zip(rest)
            .map(|((p, body, meta), (rid, states))| PushDelivery {
                queue: lane.queue,
                key: lane.key.clone(),
                config: config.clone(),
                id: p.id,
                subscriber: lane.subscriber.clone(),
                reservation: rid,
                body,
                meta,
                states,
            })
            .collect())
    }

    /// Records the outcome of a claimed attempt: `updates` (this subscriber's new state, and
    /// for unicast possibly the next subscriber's) as one durable record. Returns false, and
    /// records nothing, when the claim no longer stands (the message was deleted, cleared or
    /// acknowledged meanwhile).
    pub async fn push_complete(&self, d: &PushDelivery, updates: &[PushUpdate]) -> Result<bool> {
        self.push_record(d.queue, &d.key, d.id, true, updates, |p, id| {
            p.is_inflight(id, &d.subscriber, d.reservation)
        })
        .await
        .map(|r| r.is_some())
    }

    /// Gives a claimed delivery back without an outcome (it is due again at once).
    pub fn push_unclaim(&self, d: &PushDelivery) {
        let (state, ..) = self.parts();
        let mut st = state.lock();
        if let Some(p) = st
            .queues
            .get_mut(&QueueNo(d.queue))
            .and_then(|q| q.push.as_mut())
            && p.is_inflight(d.id.0, &d.subscriber, d.reservation)
        {
            p.unclaim(d.id.0, &d.subscriber);
        }
        drop(st);
        self.push_wake_handle().notify_one();
    }

    /// Checks what [`Engine::push_ack`] would check, changing nothing (to check a batch of
    /// acknowledgements before any of them is made).
    pub fn push_ack_check(
        &self,
        key: &QueueKey,
        id: MessageId,
        subscriber: &str,
        rid: ReservationId,
    ) -> Result<()> {
        self.ack_target(key, id, subscriber, rid).map(drop)
    }

    /// The queue an acknowledgement is for, if it would be accepted.
    fn ack_target(
        &self,
        key: &QueueKey,
        id: MessageId,
        subscriber: &str,
        rid: ReservationId,
    ) -> Result<QueueNo> {
        let (state, ..) = self.parts();
        let st = state.lock();
        let no = *st.by_key.get(key).ok_or(Error::QueueNotFound)?;
        let q = &st.queues[&no];
        let p = q.push.as_ref().ok_or(Error::NotForQueueType(
            "acknowledgements are for push queues",
        ))?;
        if q.get(id).is_none() {
            return Err(Error::MessageNotFound);
        }
        if !p.holds(id.0, subscriber, rid) {
            return Err(Error::ReservationMismatch(id));
        }
        Ok(no)
    }

    /// A subscriber's acknowledgement of a delivery it answered with 202 (or is answering):
    /// `rid` must be the reservation of that delivery.
    pub async fn push_ack(
        &self,
        key: &QueueKey,
        id: MessageId,
        subscriber: &str,
        rid: ReservationId,
    ) -> Result<()> {
        let no = self.ack_target(key, id, subscriber, rid)?;
        let done = |s: &PushSubState| PushUpdate {
            subscriber: s.subscriber.clone(),
            status: PushStatus::Deleted,
            tries: s.tries,
            status_code: s.status_code,
            at_ms: 0,
            latency_ms: 0,
            due_ms: None,
            reservation: None,
            msg: String::new(),
        };
        let recorded = self
            .push_record_with(no.0, key, id, false, |p, id| {
                p.holds(id, subscriber, rid).then(|| {
                    p.states(id)
                        .iter()
                        .filter(|s| s.subscriber == subscriber)
                        .map(done)
                        .collect()
                })
            })
            .await?;
        match recorded {
            Some(_) => Ok(()),
            None => Err(Error::ReservationMismatch(id)),
        }
    }

    /// Every current subscriber's delivery state of a message (pending, or delivered recently).
    pub async fn push_statuses(&self, key: &QueueKey, id: MessageId) -> Result<Vec<PushSubState>> {
        let out = {
            let (state, ..) = self.parts();
            let st = state.lock();
            let no = *st.by_key.get(key).ok_or(Error::QueueNotFound)?;
            let q = &st.queues[&no];
            let p = q
                .push
                .as_ref()
                .ok_or(Error::NotForQueueType("push statuses are for push queues"))?;
            if q.get(id).is_some() {
                p.shown_states(id.0)
            } else {
                p.done(id.0)
                    .map(|d| d.subs.clone())
                    .ok_or(Error::MessageNotFound)?
            }
        };
        self.settle().await?;
        Ok(out)
    }

    async fn push_record(
        &self,
        queue: u32,
        key: &QueueKey,
        id: MessageId,
        attempt: bool,
        updates: &[PushUpdate],
        stands: impl FnOnce(&crate::push::PushState, u64) -> bool,
    ) -> Result<Option<()>> {
        self.push_record_with(queue, key, id, attempt, |p, id| {
            stands(p, id).then(|| updates.to_vec())
        })
        .await
    }

    /// Under the lock: if `decide` returns updates, logs them as one Push record and applies
    /// them; then waits for durability and wakes the pusher.
    async fn push_record_with(
        &self,
        queue: u32,
        key: &QueueKey,
        id: MessageId,
        attempt: bool,
        decide: impl FnOnce(&crate::push::PushState, u64) -> Option<Vec<PushUpdate>>,
    ) -> Result<Option<()>> {
        let end = {
            let (state, log, clock, ..) = self.parts();
            let mut guard = state.lock();
            let st = &mut *guard;
            let no = QueueNo(queue);
            let Some(q) = st.queues.get_mut(&no) else {
                return Ok(None);
            };
            if q.key != *key || q.get(id).is_none() {
                return Ok(None);
            }
            let Some(p) = q.push.as_ref() else {
                return Ok(None);
            };
            let Some(updates) = decide(p, id.0) else {
                return Ok(None);
            };
            if updates.is_empty() {
                return Ok(None);
            }
            for u in &updates {
                if u.subscriber.is_empty()
                    || u.subscriber.len() > crate::limits::SUBSCRIBER_NAME_BYTES_MAX
                {
                    return Err(Error::Invalid("subscriber name must be 1 to 255 bytes"));
                }
            }
            let updates: Vec<PushUpdate> = updates
                .into_iter()
                .map(|mut u| {
                    truncate_utf8(&mut u.msg, crate::limits::PUSH_MSG_BYTES_MAX);
                    u
                })
                .collect();
            let finished = p.would_finish(id.0, &updates);
            let now = clock.now_ms();
            append_push(st, log, no, id, attempt, finished, &updates, now)?
        };
        let (_, log, ..) = self.parts();
        log.wait_durable(end).await?;
        self.push_wake_handle().notify_one();
        Ok(Some(()))
    }
}

/// Logs `updates` of message `id` as one Push record that says whether it finishes the
/// message, and applies it. Returns the log's end after it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_push(
    st: &mut State,
    log: &Log,
    no: QueueNo,
    id: MessageId,
    attempt: bool,
    finished: bool,
    updates: &[PushUpdate],
    now_ms: u64,
) -> Result<LogPos> {
    let flags = record::push_flags(attempt, finished);
    st.scratch.clear();
    record::put_push(&mut st.scratch, no, id, flags, updates);
    let floors = st.floors();
    let (_, end) = log.append(Kind::Push, &st.scratch, floors)?;
    if let Some(q) = st.queues.get_mut(&no) {
        q.apply_push(id, attempt, updates, Some(finished), now_ms, &mut st.live);
    }
    Ok(end)
}

/// After the subscribers of push queue `no` changed: logs and finishes every message they
/// leave finished (see [`crate::push::PushState::left_finished`]). Returns the log's end
/// after the last record, if any was written.
pub(crate) fn finish_left_behind(
    st: &mut State,
    log: &Log,
    no: QueueNo,
    now_ms: u64,
) -> Result<Option<LogPos>> {
    let Some(q) = st.queues.get(&no) else {
        return Ok(None);
    };
    let Some(p) = q.push.as_ref() else {
        return Ok(None);
    };
    let left: Vec<_> = p
        .left_finished()
        .into_iter()
        .filter(|(id, _)| q.get(MessageId(*id)).is_some())
        .collect();
    let mut end = None;
    for (id, updates) in left {
        end = Some(append_push(
            st,
            log,
            no,
            MessageId(id),
            false,
            true,
            &updates,
            now_ms,
        )?);
    }
    Ok(end)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}
