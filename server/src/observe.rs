//! Per-request accounting, as a router layer (so the matched route is known): the request
//! latency histogram of [`crate::metrics`] and the intervals of [`crate::stats`].
//!
//! Handlers tell how many messages a response carried with a [`Messages`] response
//! extension (see the counting rules in `stats.rs`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::state::AppState;

/// The route of `POST …/reservations`, the requests the stats' `reserved` bucket counts.
pub const RESERVE_ROUTE: &str = "/3/projects/{pid}/queues/{q}/reservations";

/// Messages a response counts for the stats: posted, reserved (returned) or deleted by id.
#[derive(Debug, Clone, Copy)]
pub struct Messages(pub u64);

/// Adds the [`Messages`] count to a response.
pub fn with_messages(mut resp: Response, n: u64) -> Response {
    resp.extensions_mut().insert(Messages(n));
    resp
}

/// The layer's function: times the request and records it.
pub async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let api = req.uri().path().starts_with("/3/projects/");
    let method = req.method().clone();
    let resp = next.run(req).await;
    let latency = start.elapsed();
    let route = route.as_deref().unwrap_or("unmatched");
    st.metrics
        .observe_request(method.as_str(), route, resp.status().as_u16(), latency);
    if api {
        st.stats.record(crate::stats::Sample {
            reserve: route == RESERVE_ROUTE,
            messages: resp.extensions().get::<Messages>().map_or(0, |m| m.0),
            latency,
        });
    }
    resp
}
