//! Push delivery state of one push queue: per message and subscriber, where delivery stands
//! (the durable part, restated by `Push` records), and per subscriber a lane of due
//! deliveries (a timer heap, rebuilt from the durable part on open).
//!
//! The engine decides nothing about HTTP, retries or backoff: the server's pusher claims due
//! deliveries, makes the attempt, and writes back the new state it decided. The engine keeps
//! that state, finishes a message when its kind's rule says it is done (multicast: every
//! subscriber delivered or failed for good; unicast: one delivered, or all failed for good),
//! and then keeps the finished message for a while for lookups by id.
//!
//! A message is delivered to the queue's current subscribers: a subscriber added later gets
//! the messages still pending, a removed one stops getting them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crate::ids::ReservationId;
use crate::limits;
use crate::queue::Entry;
use crate::types::{PushAttempt, PushStatus, PushSubState, PushUpdate, QueueConfig, QueueKind};

/// A message's state for one subscriber, plus the in-memory claim of an attempt in flight.
#[derive(Debug, Clone)]
pub(crate) struct Sub {
    pub state: PushSubState,
    /// The reservation id of the attempt in flight, if one is (never logged: a crash redoes it).
    pub inflight: Option<ReservationId>,
    /// Whether a Push record set this state (false: a claim made it up, nothing is logged).
    pub recorded: bool,
}

impl Sub {
    fn queued(name: &str) -> Sub {
        Sub {
            state: PushSubState::queued(name),
            inflight: None,
            recorded: false,
        }
    }
}

/// A finished message, kept for lookups.
#[derive(Debug, Clone)]
pub(crate) struct Done {
    pub entry: Entry,
    pub subs: Vec<PushSubState>,
}

pub(crate) struct PushState {
    unicast: bool,
    names: Vec<Arc<str>>,
    /// Per subscriber (same order as `names`): (due_ms, message id); stale pairs are skipped.
    lanes: Vec<BinaryHeap<Reverse<(u64, u64)>>>,
    /// Messages with any recorded or in-flight delivery state (others are all `queued`).
    msgs: HashMap<u64, Vec<Sub>>,
    done: HashMap<u64, Done>,
    done_order: VecDeque<(u64, u64)>,
}

impl PushState {
    pub fn new(config: &QueueConfig) -> PushState {
        let mut p = PushState {
            unicast: false,
            names: Vec::new(),
            lanes: Vec::new(),
            msgs: HashMap::new(),
            done: HashMap::new(),
            done_order: VecDeque::new(),
        };
        p.set_config(config);
        p.lanes = (0..p.names.len()).map(|_| BinaryHeap::new()).collect();
        p
    }

    /// Takes new settings; the caller rebuilds the lanes (`rebuild`) when the names changed.
    pub fn set_config(&mut self, config: &QueueConfig) -> bool {
        self.unicast = config.kind == QueueKind::Unicast;
        let names: Vec<Arc<str>> = config
            .subscribers
            .iter()
            .map(|s| Arc::from(s.as_str()))
            .collect();
        let changed = names != self.names;
        self.names = names;
        changed
    }

    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    /// The lane a never-attempted unicast message starts on (spreads messages over subscribers).
    fn first_lane(&self, id: u64) -> usize {
        (id % self.names.len().max(1) as u64) as usize
    }

    /// A message arrived (post, relocation): schedule its first attempts.
    pub fn on_insert(&mut self, id: u64, visible_at_ms: u64) {
        if self.names.is_empty() {
            return;
        }
        if self.msgs.contains_key(&id) {
            // A relocation replayed over the original: its state (and lanes) stand.
            return;
        }
        if self.unicast {
            let l = self.first_lane(id);
            self.lanes[l].push(Reverse((visible_at_ms, id)));
        } else {
            for lane in &mut self.lanes {
                lane.push(Reverse((visible_at_ms, id)));
            }
        }
    }

    pub fn on_remove(&mut self, id: u64) {
        self.msgs.remove(&id);
    }

    pub fn on_clear(&mut self) {
        self.msgs.clear();
        for lane in &mut self.lanes {
            lane.clear();
        }
    }

    /// Rebuilds every lane from the live messages (`(id, visible_at_ms)`) and their states.
    pub fn rebuild(&mut self, live: impl Iterator<Item = (u64, u64)>) {
        self.lanes = (0..self.names.len()).map(|_| BinaryHeap::new()).collect();
        for (id, visible_at) in live {
            match self.msgs.get(&id) {
                None => self.on_insert(id, visible_at),
                Some(subs) => {
                    for (l, name) in self.names.iter().enumerate() {
                        match subs.iter().find(|s| *s.state.subscriber == **name) {
                            Some(s) => {
                                if let Some(due) = s.state.due_ms
                                    && s.inflight.is_none()
                                {
                                    self.lanes[l].push(Reverse((due, id)));
                                }
                            }
                            None if !self.unicast => self.lanes[l].push(Reverse((visible_at, id))),
                            None => {}
                        }
                    }
                    self.hand_over(id, visible_at);
                }
            }
        }
    }

    /// A unicast message is due at one subscriber at a time until it finishes. When the one
    /// it waited on is no longer a subscriber (removed with its delivery due, held or given
    /// back), no current subscriber has anything due: it is handed over to the first current
    /// one, from its starting lane on, not tried yet, or else not failed for good. Returns
    /// that lane.
    ///
    /// Derived from the logged states and the list alone, and checked again whenever a lane
    /// pair is met (`valid`): nothing is stored for it, so a restart, a later record, or the
    /// removed subscriber coming back (with its due delivery) decides it afresh, and the
    /// message is never due at two subscribers.
    fn hand_over_lane(&self, id: u64) -> Option<usize> {
        if !self.unicast || self.names.is_empty() {
            return None;
        }
        // Never attempted: its starting lane has it.
        let subs = self.msgs.get(&id)?;
        if subs.iter().any(|s| s.inflight.is_some()) || self.rule(subs) {
            return None;
        }
        let state = |name: &Arc<str>| subs.iter().find(|s| *s.state.subscriber == **name);
        if self
            .names
            .iter()
            .any(|n| state(n).is_some_and(|s| s.state.due_ms.is_some()))
        {
            return None;
        }
        let n = self.names.len();
        let start = self.first_lane(id);
        let order = || (0..n).map(move |k| (start + k) % n);
        // One not tried yet first (one that failed this round is not asked again at once),
        // then any that has not failed for good.
        let untried =
            |l: &usize| state(&self.names[*l]).is_none_or(|s| s.state.status == PushStatus::Queued);
        let not_failed =
            |l: &usize| state(&self.names[*l]).is_none_or(|s| s.state.status != PushStatus::Error);
        order().find(untried).or_else(|| order().find(not_failed))
    }

    /// Puts a handed-over unicast message (see [`PushState::hand_over_lane`]) on its lane,
    /// due at `at`.
    fn hand_over(&mut self, id: u64, at: u64) {
        if let Some(l) = self.hand_over_lane(id) {
            self.lanes[l].push(Reverse((at, id)));
        }
    }

    /// Whether a lane's pair is still a due delivery.
    fn valid(&self, lane: usize, due: u64, id: u64) -> bool {
        let name = &self.names[lane];
        match self.msgs.get(&id) {
            None => !self.unicast || self.first_lane(id) == lane,
            Some(subs) => {
                let own = match subs.iter().find(|s| *s.state.subscriber == **name) {
                    None => !self.unicast,
                    Some(s) => s.inflight.is_none() && s.state.due_ms == Some(due),
                };
                // The hand-over is worked out only for a pair that is not due on its own.
                own || self.hand_over_lane(id) == Some(lane)
            }
        }
    }

    /// Drops stale pairs from the top of `lane`; returns the due time of the first real one.
    pub fn lane_top(&mut self, lane: usize, is_live: impl Fn(u64) -> bool) -> Option<u64> {
        while let Some(&Reverse((due, id))) = self.lanes[lane].peek() {
            if is_live(id) && self.valid(lane, due, id) {
                return Some(due);
            }
            self.lanes[lane].pop();
        }
        None
    }

    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Takes the top pair of `lane` (checked by `lane_top`) as an attempt in flight.
    pub fn claim_top(&mut self, lane: usize, rid: ReservationId) -> Option<u64> {
        let Reverse((due, id)) = self.lanes[lane].pop()?;
        let name = self.names[lane].clone();
        let subs = self.msgs.entry(id).or_default();
        let sub = match subs.iter_mut().position(|s| *s.state.subscriber == *name) {
            Some(i) => &mut subs[i],
            None => {
                let mut s = Sub::queued(&name);
                s.state.due_ms = Some(due);
                subs.push(s);
                subs.last_mut().expect("just pushed")
            }
        };
        sub.inflight = Some(rid);
        Some(id)
    }

    /// Every current subscriber's state for a message, in subscriber order.
    pub fn states(&self, id: u64) -> Vec<PushSubState> {
        let subs = self.msgs.get(&id);
        self.names
            .iter()
            .map(|name| {
                subs.and_then(|v| v.iter().find(|s| *s.state.subscriber == **name))
                    .map(|s| s.state.clone())
                    .unwrap_or_else(|| Sub::queued(name).state)
            })
            .collect()
    }

    /// What a client is shown for a live message: [`PushState::states`], with each
    /// delivery whose attempt is in flight `reserved` (contract §7.2: a failed delivery is
    /// `retrying`, "or `reserved` while in flight"). Only what is shown: the recorded state
    /// stands, and a crash makes the attempt due again, `queued` or `retrying` as before.
    pub fn shown_states(&self, id: u64) -> Vec<PushSubState> {
        let mut states = self.states(id);
        let subs = self.msgs.get(&id);
        for s in &mut states {
            let inflight = subs.is_some_and(|v| {
                v.iter()
                    .any(|x| x.inflight.is_some() && x.state.subscriber == s.subscriber)
            });
            if inflight && !s.status.is_terminal() {
                s.status = PushStatus::Reserved;
            }
        }
        states
    }

    /// The states a finished message keeps: those of every subscriber tried, current or
    /// not, the current ones first in list order, then the others by name. One never tried
    /// is left out (no attempt will ever be made), and one still `retrying` or `reserved`
    /// (a unicast message delivered elsewhere, or a subscriber removed meanwhile) shows
    /// `error`, so that no entry of a finished message looks pending to a client polling
    /// for it. Built from the logged states alone, so a replay keeps the same ones even when
    /// the list changed after the message finished.
    pub fn final_states(&self, id: u64) -> Vec<PushSubState> {
        let Some(subs) = self.msgs.get(&id) else {
            return Vec::new();
        };
        let pos = |name: &str| {
            self.names
                .iter()
                .position(|n| **n == *name)
                .unwrap_or(usize::MAX)
        };
        let mut states: Vec<PushSubState> = subs
            .iter()
            .filter(|s| s.state.status != PushStatus::Queued)
            .map(|s| s.state.clone())
            .collect();
        states.sort_by(|a, b| {
            (pos(&a.subscriber), &a.subscriber).cmp(&(pos(&b.subscriber), &b.subscriber))
        });
        for s in &mut states {
            if !s.status.is_terminal() {
                s.status = PushStatus::Error;
                s.due_ms = None;
                s.reservation = None;
            }
        }
        states
    }

    /// The in-flight claim or 202 hold of `subscriber` on message `id`, if `rid` matches.
    pub fn holds(&self, id: u64, subscriber: &str, rid: ReservationId) -> bool {
        self.msgs
            .get(&id)
            .and_then(|v| v.iter().find(|s| *s.state.subscriber == *subscriber))
            .is_some_and(|s| {
                s.inflight == Some(rid)
                    || (s.state.status == PushStatus::Reserved && s.state.reservation == Some(rid))
            })
    }

    /// Whether `subscriber` has an attempt in flight on message `id` under `rid`.
    pub fn is_inflight(&self, id: u64, subscriber: &str, rid: ReservationId) -> bool {
        self.msgs
            .get(&id)
            .and_then(|v| v.iter().find(|s| *s.state.subscriber == *subscriber))
            .is_some_and(|s| s.inflight == Some(rid))
    }

    /// Forgets an in-flight claim without a result (the attempt will be made again).
    pub fn unclaim(&mut self, id: u64, subscriber: &str) {
        let lane = self.names.iter().position(|n| **n == *subscriber);
        if let Some(s) = self
            .msgs
            .get_mut(&id)
            .and_then(|v| v.iter_mut().find(|s| *s.state.subscriber == *subscriber))
            && s.inflight.take().is_some()
            && let (Some(l), Some(due)) = (lane, s.state.due_ms)
        {
            self.lanes[l].push(Reverse((due, id)));
        }
        // A claim of a subscriber removed meanwhile: the message goes to one that is left.
        self.hand_over(id, 0);
    }

    /// Applies the updates of a Push record. Returns true when the message is now finished:
    /// as `decided` says (what the record says, see [`PushState::would_finish`]), or, for a
    /// record that says nothing (written by builds before 2026-12-07), by the kind's rule.
    pub fn apply(
        &mut self,
        id: u64,
        attempt: bool,
        ups: &[PushUpdate],
        decided: Option<bool>,
    ) -> bool {
        apply_to(self.msgs.entry(id).or_default(), attempt, ups);
        for u in ups {
            if let Some(due) = u.due_ms
                && let Some(l) = self.names.iter().position(|n| **n == *u.subscriber)
            {
                self.lanes[l].push(Reverse((due, id)));
            }
        }
        let finished = decided.unwrap_or_else(|| self.finished(id));
        if !finished {
            // The outcome of an attempt by a subscriber removed meanwhile may leave nothing
            // due at the current ones. (On a replay this lane is planned again at the end.)
            self.hand_over(id, 0);
        }
        finished
    }

    /// Whether applying `ups` would finish message `id` now. Decided when the record is
    /// written and written into it, so that replay finishes the same messages whatever the
    /// subscribers became later (replay knows only the latest list: a subscriber added
    /// afterwards would otherwise bring back every finished message still in the log).
    pub fn would_finish(&self, id: u64, ups: &[PushUpdate]) -> bool {
        let mut subs = self.msgs.get(&id).cloned().unwrap_or_default();
        apply_to(&mut subs, false, ups);
        self.rule(&subs)
    }

    /// The kind's rule: multicast is done when every current subscriber is delivered or
    /// failed; unicast when it was delivered (to any subscriber, one removed since too), or
    /// every current one failed.
    fn finished(&self, id: u64) -> bool {
        self.msgs.get(&id).is_some_and(|subs| self.rule(subs))
    }

    fn rule(&self, subs: &[Sub]) -> bool {
        let status = |name: &Arc<str>| {
            subs.iter()
                .find(|s| *s.state.subscriber == **name)
                .filter(|s| s.inflight.is_none())
                .map(|s| s.state.status)
        };
        if self.unicast {
            subs.iter()
                .any(|s| s.inflight.is_none() && s.state.status == PushStatus::Deleted)
                || self
                    .names
                    .iter()
                    .all(|n| status(n) == Some(PushStatus::Error))
        } else {
            self.names
                .iter()
                .all(|n| status(n).is_some_and(PushStatus::is_terminal))
        }
    }

    /// The messages the current subscribers leave finished (a subscriber whose delivery was
    /// still pending was removed), in id order, each with the one update of the Push record
    /// that finishes it: a final state restated (the record's flag, not its updates,
    /// finishes the message; a removed subscriber's pending state shows `error` among the
    /// final states anyway).
    pub fn left_finished(&self) -> Vec<(u64, Vec<PushUpdate>)> {
        let mut out: Vec<(u64, Vec<PushUpdate>)> = self
            .msgs
            .iter()
            .filter(|(_, subs)| self.rule(subs))
            .filter_map(|(&id, subs)| {
                // The rule holds only with some state final (and none in flight).
                let last = subs.iter().find(|s| s.state.status.is_terminal())?;
                Some((id, vec![update_of(&last.state)]))
            })
            .collect();
        out.sort_unstable_by_key(|m| m.0);
        out
    }

    /// Keeps a finished message (already out of the queue) with its final `subs` states.
    pub fn finish_with(&mut self, entry: Entry, subs: Vec<PushSubState>, now_ms: u64) {
        self.msgs.remove(&entry.id);
        self.done.insert(entry.id, Done { entry, subs });
        self.done_order.push_back((now_ms, entry.id));
        self.prune_done(now_ms);
    }

    /// Forgets finished messages beyond the count and age limits.
    pub fn prune_done(&mut self, now_ms: u64) {
        while let Some(&(at, id)) = self.done_order.front() {
            if self.done_order.len() <= limits::PUSH_DONE_KEPT
                && at + limits::PUSH_DONE_KEPT_MS > now_ms
            {
                break;
            }
            self.done_order.pop_front();
            self.done.remove(&id);
        }
    }

    pub fn done(&self, id: u64) -> Option<&Done> {
        self.done.get(&id)
    }

    /// The durable part, for the restart index: every message with recorded states (claims
    /// in flight are not logged, so they are left out), with those states, in no order.
    pub fn recorded_states(
        &self,
    ) -> impl Iterator<Item = (u64, impl Iterator<Item = &PushSubState> + Clone)> {
        self.msgs.iter().filter_map(|(id, subs)| {
            let states = subs.iter().filter(|s| s.recorded).map(|s| &s.state);
            states.clone().next().is_some().then_some((*id, states))
        })
    }

    /// How many messages have any delivery state (an upper bound of `recorded_states`).
    pub fn states_len(&self) -> usize {
        self.msgs.len()
    }

    /// Finished messages kept for lookups, oldest first, with when they finished.
    pub fn finished_messages(&self) -> impl Iterator<Item = (u64, &Done)> {
        self.done_order
            .iter()
            .filter_map(|(at, id)| self.done.get(id).map(|d| (*at, d)))
    }

    /// Takes back what `recorded_states` and `finished` gave the restart index. The lanes
    /// are planned afterwards by `rebuild` (as after a replay).
    pub fn restore(&mut self, states: Vec<(u64, Vec<PushSubState>)>, done: Vec<(u64, Done)>) {
        for (id, subs) in states {
            let subs = subs
                .into_iter()
                .map(|state| Sub {
                    state,
                    inflight: None,
                    recorded: true,
                })
                .collect();
            self.msgs.insert(id, subs);
        }
        for (at, d) in done {
            let id = d.entry.id;
            if self.done.insert(id, d).is_none() {
                self.done_order.push_back((at, id));
            }
        }
    }

    /// Recorded state of a live message, for restating it after relocation: what Push
    /// records set, not what a claim made up (as the restart index keeps it).
    pub fn recorded(&self, id: u64) -> Vec<PushUpdate> {
        self.msgs
            .get(&id)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.recorded)
                    .map(|s| update_of(&s.state))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A subscriber's state as the update that restates it.
fn update_of(s: &PushSubState) -> PushUpdate {
    PushUpdate {
        subscriber: s.subscriber.clone(),
        status: s.status,
        tries: s.tries,
        status_code: s.status_code,
        at_ms: s.last_try_ms,
        latency_ms: 0,
        due_ms: s.due_ms,
        reservation: s.reservation,
        msg: s.msg.clone(),
    }
}

/// Applies a Push record's updates to one message's subscriber states (lanes aside).
fn apply_to(subs: &mut Vec<Sub>, attempt: bool, ups: &[PushUpdate]) {
    for u in ups {
        let i = match subs.iter().position(|s| s.state.subscriber == u.subscriber) {
            Some(i) => i,
            None => {
                subs.push(Sub::queued(&u.subscriber));
                subs.len() - 1
            }
        };
        let s = &mut subs[i];
        s.inflight = None;
        s.recorded = true;
        let st = &mut s.state;
        st.status = u.status;
        st.tries = u.tries;
        st.status_code = u.status_code;
        if u.at_ms > 0 {
            st.last_try_ms = u.at_ms;
        }
        st.due_ms = u.due_ms;
        st.reservation = u.reservation;
        st.msg = u.msg.clone();
        if attempt && u.at_ms > 0 {
            if st.attempts.len() >= limits::PUSH_ATTEMPTS_KEPT {
                st.attempts.remove(0);
            }
            st.attempts.push(PushAttempt {
                at_ms: u.at_ms,
                status_code: u.status_code,
                latency_ms: u.latency_ms,
                error: u.msg.clone(),
            });
        }
    }
}
