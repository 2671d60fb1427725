//! The route table, plus JSON 404/405 fallbacks and the small root endpoints.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::json;

use crate::auth::AdminAuth;
use crate::error::{ApiError, ApiResult, ExpectedStatus};
use crate::response::{json_response, ok};
use crate::state::AppState;
use crate::{admin, messages, queues};

async fn health() -> ApiResult {
    Ok(ok(json!({ "msg": "ok" })))
}

/// 200 once recovery is done and writes are accepted; 503 during shutdown or after the
/// engine stopped on an I/O failure. The 503 is the probe's answer, not a failure of the
/// request: it is logged like any request.
async fn ready(State(st): State<AppState>) -> Response {
    if st.ready.load(Ordering::Acquire) && !st.engine.is_failed() {
        ok(json!({ "msg": "ready" }))
    } else {
        let mut resp = json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "msg": "not ready" }),
        );
        resp.extensions_mut().insert(ExpectedStatus);
        resp
    }
}

/// Prometheus metrics, OpenMetrics text.
///
/// With many queues the text is large (about 1 KB per queue) and takes a while to build: it
/// is built off the async workers, and at most [`crate::state::SCRAPES_MAX`] scrapes are
/// built or sent at once (each holds its whole text until its client has read it; more
/// wait their turn), so slow or many scrapers cannot pile copies up in memory.
async fn metrics(State(st): State<AppState>, parts: axum::http::request::Parts) -> Response {
    if let Some(want) = &st.metrics_token
        && !crate::auth::metrics_token_ok(&parts, want)
    {
        return ApiError::unauthorized().into_response();
    }
    let permit = st.scrapes.clone().acquire_owned().await.ok();
    let m = st.metrics.clone();
    let body = tokio::task::spawn_blocking(move || m.render())
        .await
        .unwrap_or_default();
    let len = body.len();
    let body = Held {
        inner: http_body_util::Full::new(bytes::Bytes::from(body)),
        _permit: permit,
    };
    let mut resp = Response::new(Body::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// A response body that keeps a semaphore permit until it is dropped (sent or abandoned).
struct Held<B> {
    inner: B,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `GET /3/stats` (admin token).
async fn stats(State(st): State<AppState>, _admin: AdminAuth) -> ApiResult {
    Ok(ok(st.stats.history_json()))
}

async fn version() -> ApiResult {
    Ok(ok(json!({ "version": env!("CARGO_PKG_VERSION") })))
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
    )
}

/// Builds the router.
pub fn build(state: AppState) -> Router {
    let q = "/3/projects/{pid}/queues/{q}";
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/3/stats", get(stats))
        .route(
            "/3/admin/projects",
            get(admin::list_projects).post(admin::create_project),
        )
        .route(
            "/3/admin/projects/{pid}/tokens",
            get(admin::list_project_tokens).post(admin::create_token),
        )
        .route("/3/admin/tokens", get(admin::list_tokens))
        .route("/3/admin/tokens/{tid}", delete(admin::revoke_token))
        .route("/3/admin/backup", get(admin::backup))
        .route("/3/projects/{pid}/queues", get(queues::list))
        .route(
            q,
            get(queues::info)
                .put(queues::put)
                .patch(queues::patch)
                .delete(queues::delete),
        )
        .route(
            &format!("{q}/subscribers"),
            post(queues::subscribers_add)
                .put(queues::subscribers_replace)
                .delete(queues::subscribers_remove),
        )
        .route(
            &format!("{q}/alerts"),
            post(queues::alerts_add)
                // Ruby's `Queue#add_alerts` (v3 builds that still have it) sends PATCH.
                .patch(queues::alerts_add)
                .put(queues::alerts_replace)
                .delete(queues::alerts_remove),
        )
        .route(&format!("{q}/alerts/{{aid}}"), delete(queues::alert_remove))
        .route(
            &format!("{q}/messages"),
            post(messages::post)
                .get(messages::peek)
                .delete(messages::delete_many),
        )
        .route(&format!("{q}/webhook"), post(messages::webhook))
        .route(&format!("{q}/reservations"), post(messages::reserve))
        .route(
            &format!("{q}/messages/{{id}}"),
            get(messages::get).delete(messages::delete),
        )
        .route(&format!("{q}/messages/{{id}}/touch"), post(messages::touch))
        .route(
            &format!("{q}/messages/{{id}}/release"),
            post(messages::release),
        )
        .route(
            &format!("{q}/messages/{{id}}/subscribers"),
            get(messages::push_statuses),
        )
        .route(
            &format!("{q}/messages/{{id}}/deliveries"),
            get(messages::deliveries),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(crate::observe::ObserveLayer::new(state.clone()))
        .with_state(state)
}
