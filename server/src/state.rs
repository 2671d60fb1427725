//! Shared application state handed to every handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use engine::Engine;
use parking_lot::Mutex;

use crate::auth::Credentials;

/// Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub creds: Arc<Credentials>,
    /// When each alert (by id) last fired, for `snooze`.
    pub alerts_fired: Arc<Mutex<HashMap<String, Instant>>>,
    /// Backups running at once (`admin::BACKUPS_MAX`).
    pub backups: Arc<tokio::sync::Semaphore>,
}
