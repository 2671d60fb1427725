//! Per-request accounting, as a router layer (so the matched route is known): the request
//! latency histogram of [`crate::metrics`] and the intervals of [`crate::stats`].
//!
//! Handlers tell how many messages a response carried with a [`Messages`] response
//! extension (see the counting rules in `stats.rs`).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use tower::{Layer, Service};

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

/// The layer: times each routed request and records it. Hand-written rather than
/// `axum::middleware::from_fn`, whose per-request future holds the whole request and the
/// rest of the stack (about 1.3 KB per request in flight, and a long poll is in flight for
/// up to 30 s); this one keeps the route, the method and the start time beside the inner
/// future.
#[derive(Clone)]
pub struct ObserveLayer {
    st: AppState,
}

impl ObserveLayer {
    pub fn new(st: AppState) -> ObserveLayer {
        ObserveLayer { st }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            st: self.st.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    st: AppState,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let api = req.uri().path().starts_with("/3/projects/");
        let method = req.method().clone();
        let fut = self.inner.call(req);
        let st = self.st.clone();
        Box::pin(async move {
            let Ok(resp) = fut.await;
            let latency = start.elapsed();
            let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
            st.metrics
                .observe_request(method.as_str(), route, resp.status().as_u16(), latency);
            if api {
                st.stats.record(crate::stats::Sample {
                    reserve: route == RESERVE_ROUTE,
                    messages: resp.extensions().get::<Messages>().map_or(0, |m| m.0),
                    latency,
                });
            }
            Ok(resp)
        })
    }
}
