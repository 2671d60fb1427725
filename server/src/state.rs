//! Shared application state handed to every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use engine::Engine;
use parking_lot::Mutex;

use crate::auth::Credentials;
use crate::metrics::Metrics;
use crate::stats::Stats;

/// Cheap to clone: one reference count, however many parts there are (every request
/// clones it on its way through the router and drops it at the end).
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Parts {
    pub engine: Engine,
    pub creds: Arc<Credentials>,
    /// When each alert (by id) last fired, for `snooze`.
    pub alerts_fired: Arc<Mutex<HashMap<String, Instant>>>,
    /// Request and message counts per interval, for `GET /3/stats`.
    pub stats: Arc<Stats>,
    /// Prometheus metrics, for `GET /metrics`.
    pub metrics: Arc<Metrics>,
    /// True from the end of recovery until shutdown begins (`GET /ready`).
    pub ready: Arc<AtomicBool>,
    /// Backups running at once (`admin::BACKUPS_MAX`).
    pub backups: Arc<tokio::sync::Semaphore>,
    /// `/metrics` scrapes built or sent at once ([`SCRAPES_MAX`]).
    pub scrapes: Arc<tokio::sync::Semaphore>,
    /// This process's id on message paths (`hops`).
    pub server: Arc<str>,
    /// SHA-256 of the token `GET /metrics` requires, if one is configured.
    pub metrics_token: Option<[u8; 32]>,
}

/// `/metrics` scrapes built or sent at once.
pub const SCRAPES_MAX: usize = 2;

impl AppState {
    /// The state of a server about to serve: fresh stats and metrics, not ready yet.
    /// `metrics_token`: SHA-256 of the token `GET /metrics` requires, if any.
    pub fn new(
        engine: Engine,
        creds: Credentials,
        stats_interval: Duration,
        metrics_token: Option<[u8; 32]>,
    ) -> AppState {
        // New at every start: a copy of the data dir (a restored backup) is another server,
        // and a message on its way across a restart makes at most one more trip.
        let server = crate::auth::random_hex(8).into();
        AppState(Arc::new(Parts {
            metrics: Arc::new(Metrics::new(engine.clone())),
            engine,
            creds: Arc::new(creds),
            alerts_fired: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(Stats::new(stats_interval)),
            ready: Arc::new(AtomicBool::new(false)),
            backups: Arc::new(tokio::sync::Semaphore::new(crate::admin::BACKUPS_MAX)),
            scrapes: Arc::new(tokio::sync::Semaphore::new(SCRAPES_MAX)),
            server,
            metrics_token,
        }))
    }
}
