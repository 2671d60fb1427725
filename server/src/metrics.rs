//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format (`prometheus-client`).
//!
//! Two kinds of metric live here. Those the server observes itself (request latency by
//! route, push attempts by outcome) are `prometheus-client` families held in [`Metrics`].
//! Those the engine already knows (per-queue gauges, message counters, fsync latency) are
//! read from the engine at scrape time by a collector, so they cost nothing between scrapes.

use std::fmt;
use std::time::Duration;

use engine::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The Content-Type of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Push attempt outcomes shown (at 0) from the start: the subscriber answered 2xx
/// (`delivered`), answered 202 (`held` until acknowledged), answered something else
/// (`rejected`), did not answer in time (`timeout`), or could not be reached (`error`).
/// [`Metrics::push_attempt`] takes any other outcome too.
pub const PUSH_OUTCOMES: [&str; 5] = ["delivered", "held", "rejected", "timeout", "error"];

/// Upper bounds of the request latency buckets, seconds (long polls wait up to 30 s).
const REQUEST_BUCKETS_S: [f64; 15] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    /// The matched route pattern (`/3/projects/{pid}/queues/{q}/messages`), or `unmatched`.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    project: String,
    queue: String,
}

/// Reads one per-queue gauge's value.
type QueueValue = fn(&engine::QueueInfo) -> u64;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS_S)
}

/// The server's metrics; one per process, in `AppState`.
pub struct Metrics {
    registry: Registry,
    requests: HistogramFamily<RouteLabels>,
    push_attempts: Family<OutcomeLabels, Counter>,
}

impl Metrics {
    pub fn new(engine: Engine) -> Metrics {
        let mut registry = Registry::default();
        let requests: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "ferromq_http_request_duration_seconds",
            "HTTP request latency by method, matched route and status",
            requests.clone(),
        );
        let push_attempts = Family::<OutcomeLabels, Counter>::default();
        for outcome in PUSH_OUTCOMES {
            // An empty family is not exported at all; these make the series read 0.
            let _ = push_attempts.get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            });
        }
        registry.register(
            "ferromq_push_attempts",
            "Push delivery attempts by outcome",
            push_attempts.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { engine }));
        Metrics {
            registry,
            requests,
            push_attempts,
        }
    }

    /// Records one answered request.
    /// `method` is a label only when it is a standard one: any other counts as `OTHER`, so
    /// that made-up methods cannot grow the registry (and the scrape) without bound.
    pub fn observe_request(&self, method: &str, route: &str, status: u16, latency: Duration) {
        const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
        let method = KNOWN.into_iter().find(|m| *m == method).unwrap_or("OTHER");
        self.requests
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .observe(latency.as_secs_f64());
    }

    /// Counts one push delivery attempt with its outcome (one of [`PUSH_OUTCOMES`], or any
    /// other short word): `ferromq_push_attempts_total{outcome="…"}`.
    pub fn push_attempt(&self, outcome: &str) {
        self.push_attempts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The scrape body.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Only a formatting error of our own values can get here; a partial scrape would
            // be misread, so send the marker alone.
            tracing::error!(error = %e, "encoding metrics failed");
            out.clear();
            out.push_str("# EOF\n");
        }
        out
    }
}

/// Reads the engine's counters and queue sizes at scrape time.
struct EngineCollector {
    engine: Engine,
}

impl fmt::Debug for EngineCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EngineCollector")
    }
}

/// A histogram whose buckets were counted elsewhere (per bucket, not cumulative).
struct BucketedHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl fmt::Debug for BucketedHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketedHistogram")
            .field("count", &self.count)
            .finish()
    }
}

impl EncodeMetric for BucketedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        // Queues first: reading them expires what is due, which the counters below include.
        let queues = self.engine.all_queues();
        let s = self.engine.stats();
        counter(
            &mut enc,
            "ferromq_messages_posted",
            "Messages posted since start",
            s.messages_posted,
        )?;
        counter(
            &mut enc,
            "ferromq_messages_reserved",
            "Messages handed out by reserve since start (with or without delete)",
            s.messages_reserved,
        )?;
        counter(
            &mut enc,
            "ferromq_messages_deleted",
            "Messages deleted since start (by id, by reserve with delete, or by a clear)",
            s.messages_deleted,
        )?;
        counter(
            &mut enc,
            "ferromq_messages_expired",
            "Messages dropped on expiry since start",
            s.messages_expired,
        )?;
        let mut buckets: Vec<(f64, u64)> = engine::FSYNC_BUCKET_BOUNDS_S
            .iter()
            .copied()
            .zip(s.fsync_buckets.iter().copied())
            .collect();
        buckets.push((f64::INFINITY, s.fsync_buckets[s.fsync_buckets.len() - 1]));
        let h = BucketedHistogram {
            sum: s.fsync_seconds,
            count: s.fsyncs,
            buckets,
        };
        h.encode(enc.encode_descriptor(
            "ferromq_fsync_duration_seconds",
            "Latency of the log's group-commit fdatasync",
            None,
            h.metric_type(),
        )?)?;
        gauge(
            &mut enc,
            "ferromq_log_segments",
            "Segment files in the log",
            s.segments as i64,
        )?;
        gauge(
            &mut enc,
            "ferromq_live_message_bytes",
            "Bytes of live messages in the log",
            s.live_message_bytes as i64,
        )?;
        gauge(&mut enc, "ferromq_queues", "Queues", s.queues as i64)?;
        gauge(
            &mut enc,
            "ferromq_storage_full",
            "1 while no new log segment can be made for want of space (posts near the end of the current one are refused)",
            s.storage_full as i64,
        )?;
        gauge(
            &mut enc,
            "ferromq_reserve_segment",
            "1 while the reserve segment is held (a spare kept back for consumers on a full disk)",
            s.reserve_segment as i64,
        )?;

        let per_queue: [(&str, &str, QueueValue); 3] = [
            (
                "ferromq_queue_size",
                "Messages in the queue (visible, reserved and delayed)",
                |q| q.size,
            ),
            (
                "ferromq_queue_reserved",
                "Reserved messages in the queue",
                |q| q.reserved,
            ),
            (
                "ferromq_queue_delayed",
                "Delayed messages in the queue",
                |q| q.delayed,
            ),
        ];
        for (name, help, value) in per_queue {
            let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for q in &queues {
                let labels = QueueLabels {
                    project: q.project.clone(),
                    queue: q.name.clone(),
                };
                ConstGauge::new(value(q) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_attempts_are_counted_by_outcome() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(engine::EngineConfig::new(dir.path())).expect("open");
        let m = Metrics::new(engine.clone());
        m.push_attempt("delivered");
        m.push_attempt("delivered");
        m.push_attempt("timeout");
        m.observe_request("GET", "/health", 200, Duration::from_millis(2));
        for made_up in ["FOO", "BAR", "get"] {
            m.observe_request(made_up, "unmatched", 405, Duration::from_millis(1));
        }
        let text = m.render();
        let other = text
            .lines()
            .filter(|l| l.starts_with("ferromq_http_request") && l.contains("method=\"OTHER\""))
            .count();
        assert!(
            other > 0 && !text.contains("FOO") && !text.contains("BAR"),
            "{text}"
        );
        assert!(
            text.contains("ferromq_push_attempts_total{outcome=\"delivered\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("ferromq_push_attempts_total{outcome=\"timeout\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("ferromq_push_attempts_total{outcome=\"error\"} 0\n"),
            "{text}"
        );
        assert!(text.contains(
            "ferromq_http_request_duration_seconds_bucket{le=\"0.0025\",method=\"GET\",route=\"/health\",status=\"200\"} 1\n"
        ), "{text}");
        assert!(text.ends_with("# EOF\n"));
        engine.close();
    }
}
