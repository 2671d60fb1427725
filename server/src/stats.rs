//! `GET /3/stats`: request and message counts in fixed intervals, the last 60 kept.
//!
//! What counts (README "Stats"): every request to `/3/projects/…` once answered, whatever
//! its status, goes into `totals`; reserve requests (`POST …/reservations`) also go into
//! `reserved`. `messages` is, for `reserved`, the messages the reserves returned, and for
//! `totals`, messages posted (ids returned) + messages returned by reserves + messages
//! deleted by id (one or a batch). `avg_latency_ms` is the mean time from the request
//! reaching the router to its response, over the requests of the interval (0 with none).
//! A request falls in the interval in which it was answered.
//!
//! Intervals are aligned on the server's start: interval `i` spans
//! `[start + i·L, start + (i+1)·L)`. Only completed intervals are shown; an interval with no
//! request is shown with zero counts. Intervals are measured on the monotonic clock and
//! labelled with wall-clock times derived from the start.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::{Value, json};

/// Intervals kept (the IronMQ documentation's "last 60 intervals").
pub const INTERVALS_KEPT: usize = 60;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    requests: u64,
    messages: u64,
    latency_ms_sum: f64,
}

impl Bucket {
    fn add(&mut self, messages: u64, latency: Duration) {
        self.requests += 1;
        self.messages += messages;
        self.latency_ms_sum += latency.as_secs_f64() * 1000.0;
    }

    fn json(&self) -> Value {
        let avg = if self.requests == 0 {
            0.0
        } else {
            self.latency_ms_sum / self.requests as f64
        };
        json!({ "requests": self.requests, "messages": self.messages, "avg_latency_ms": avg })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counts {
    reserved: Bucket,
    totals: Bucket,
}

struct History {
    /// Index of the interval being filled.
    current_index: u64,
    current: Counts,
    /// Completed intervals, oldest first, at most [`INTERVALS_KEPT`].
    done: VecDeque<(u64, Counts)>,
}

/// The stats history. Shared by every request; the lock is held for a few additions.
pub struct Stats {
    interval: Duration,
    origin: Instant,
    origin_wall: SystemTime,
    history: Mutex<History>,
}

/// One request, as the stats see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub reserve: bool,
    pub messages: u64,
    pub latency: Duration,
}

impl Stats {
    /// Starts the history now, with intervals of `interval` (at least 1 ms).
    pub fn new(interval: Duration) -> Stats {
        Stats::starting_at(interval, Instant::now(), SystemTime::now())
    }

    fn starting_at(interval: Duration, origin: Instant, origin_wall: SystemTime) -> Stats {
        Stats {
            interval: interval.max(Duration::from_millis(1)),
            origin,
            origin_wall,
            history: Mutex::new(History {
                current_index: 0,
                current: Counts::default(),
                done: VecDeque::with_capacity(INTERVALS_KEPT + 1),
            }),
        }
    }

    /// Where interval `i` starts, from the origin.
    fn offset(&self, i: u64) -> Duration {
        Duration::from_nanos((self.interval.as_nanos() as u64).saturating_mul(i))
    }

    fn index_of(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.interval.as_nanos()) as u64
    }

    /// Closes every interval that ended before `now` (empty ones included, at most the
    /// number kept).
    fn roll(&self, h: &mut History, now: Instant) {
        let idx = self.index_of(now);
        if idx <= h.current_index {
            return;
        }
        let closed = std::mem::take(&mut h.current);
        h.done.push_back((h.current_index, closed));
        let empty_from = (h.current_index + 1).max(idx.saturating_sub(INTERVALS_KEPT as u64));
        for i in empty_from..idx {
            h.done.push_back((i, Counts::default()));
            if h.done.len() > INTERVALS_KEPT {
                h.done.pop_front();
            }
        }
        while h.done.len() > INTERVALS_KEPT {
            h.done.pop_front();
        }
        h.current_index = idx;
    }

    /// Records one answered request at `now`.
    pub fn record_at(&self, now: Instant, s: Sample) {
        let mut h = self.history.lock();
        self.roll(&mut h, now);
        h.current.totals.add(s.messages, s.latency);
        if s.reserve {
            h.current.reserved.add(s.messages, s.latency);
        }
    }

    pub fn record(&self, s: Sample) {
        self.record_at(Instant::now(), s);
    }

    /// `{"stat_history": [...]}` as of `now`, oldest interval first.
    pub fn history_json_at(&self, now: Instant) -> Value {
        let done: Vec<(u64, Counts)> = {
            let mut h = self.history.lock();
            self.roll(&mut h, now);
            h.done.iter().copied().collect()
        };
        let list: Vec<Value> = done
            .into_iter()
            .map(|(i, c)| {
                let start = self.origin_wall + self.offset(i);
                let end = start + self.interval;
                json!({
                    "stats": { "reserved": c.reserved.json(), "totals": c.totals.json() },
                    "start_time": crate::time::rfc3339_nanos(start),
                    "end_time": crate::time::rfc3339_nanos(end),
                })
            })
            .collect();
        json!({ "stat_history": list })
    }

    pub fn history_json(&self) -> Value {
        self.history_json_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(60);

    fn sample(reserve: bool, messages: u64, ms: u64) -> Sample {
        Sample {
            reserve,
            messages,
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn counts_land_in_the_interval_they_were_answered_in() {
        let t0 = Instant::now();
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_425_057_453);
        let s = Stats::starting_at(L, t0, wall);
        s.record_at(t0 + Duration::from_secs(1), sample(false, 3, 10));
        s.record_at(t0 + Duration::from_secs(2), sample(true, 2, 30));
        // Not shown before the interval is over.
        let h = s.history_json_at(t0 + Duration::from_secs(59));
        assert_eq!(h["stat_history"], json!([]));
        s.record_at(t0 + Duration::from_secs(61), sample(true, 0, 5));
        let h = s.history_json_at(t0 + Duration::from_secs(125));
        let list = h["stat_history"].as_array().expect("list");
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0]["stats"],
            json!({
                "reserved": {"requests": 1, "messages": 2, "avg_latency_ms": 30.0},
                "totals": {"requests": 2, "messages": 5, "avg_latency_ms": 20.0},
            })
        );
        assert_eq!(list[0]["start_time"], "2015-02-27T17:17:33.000000000Z");
        assert_eq!(list[0]["end_time"], "2015-02-27T17:18:33.000000000Z");
        assert_eq!(list[1]["start_time"], list[0]["end_time"]);
        assert_eq!(list[1]["stats"]["reserved"]["requests"], 1);
        assert_eq!(list[1]["stats"]["totals"]["messages"], 0);
    }

    #[test]
    fn keeps_the_last_sixty_intervals_including_idle_ones() {
        let t0 = Instant::now();
        let s = Stats::starting_at(L, t0, SystemTime::UNIX_EPOCH);
        s.record_at(t0, sample(false, 1, 1));
        s.record_at(t0 + L * 69 + Duration::from_secs(1), sample(false, 7, 1));
        let h = s.history_json_at(t0 + L * 70 + Duration::from_secs(1));
        let list = h["stat_history"].as_array().expect("list");
        assert_eq!(list.len(), INTERVALS_KEPT);
        // Intervals 10..=69: the first one (with 1 message) has been dropped.
        assert_eq!(
            list[0]["start_time"],
            crate::time::rfc3339_nanos(SystemTime::UNIX_EPOCH + L * 10)
        );
        assert_eq!(list[59]["stats"]["totals"]["messages"], 7);
        let total: u64 = list
            .iter()
            .map(|i| i["stats"]["totals"]["requests"].as_u64().expect("n"))
            .sum();
        assert_eq!(total, 1);
        // A long idle gap keeps exactly the last 60 (empty) intervals.
        let h = s.history_json_at(t0 + L * 10_000);
        let list = h["stat_history"].as_array().expect("list");
        assert_eq!(list.len(), INTERVALS_KEPT);
        assert_eq!(
            list[59]["end_time"],
            crate::time::rfc3339_nanos(SystemTime::UNIX_EPOCH + L * 10_000)
        );
    }
}
