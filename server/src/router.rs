//! The route table, plus JSON 404/405 fallbacks and the small root endpoints.

use axum::Router;
use axum::routing::{delete, get, post};
use serde_json::json;

use crate::error::{ApiError, ApiResult};
use crate::response::ok;
use crate::state::AppState;
use crate::{admin, messages, queues};

async fn health() -> ApiResult {
    Ok(ok(json!({ "msg": "ok" })))
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
        .route("/version", get(version))
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
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}
