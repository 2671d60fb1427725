//! The route table, plus JSON 404/405 fallbacks and the small root endpoints.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
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
async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.metrics.render();
    let len = body.len();
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
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
