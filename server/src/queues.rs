//! Queue endpoints: list, info, create/update (PUT/PATCH), delete, subscribers, alerts.

use axum::extract::{Path, State};
use axum::http::Uri;
use engine::QueueKey;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::ProjectAuth;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, query_get, query_int, query_params};
use crate::response::{ok, ok_msg};
use crate::settings::{self, AlertSpec, Extra, SubscriberSpec};
use crate::state::AppState;

/// `GET /queues?per_page&previous|prev&prefix` (page ignored).
pub async fn list(State(st): State<AppState>, auth: ProjectAuth, uri: Uri) -> ApiResult {
    let params = query_params(uri.query());
    let per_page = match query_int(&params, "per_page")? {
        None => 30,
        Some(n) if n <= 0 => 30,
        Some(n) => n.min(100) as usize,
    };
    let prefix = query_get(&params, &["prefix"]).unwrap_or("");
    let previous = query_get(&params, &["previous", "prev"]);
    let names = st
        .engine
        .list_queues(&auth.project, prefix, previous, per_page)
        .await?;
    let queues: Vec<Value> = names.into_iter().map(|n| json!({ "name": n })).collect();
    Ok(ok(json!({ "queues": queues })))
}

fn key(auth: &ProjectAuth, name: String) -> QueueKey {
    QueueKey::new(auth.project.clone(), name)
}

/// `GET /queues/{q}`.
pub async fn info(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
) -> ApiResult {
    let info = st.engine.queue_info(&key(&auth, q)).await?;
    Ok(ok(json!({ "queue": settings::queue_json(&info, true) })))
}

async fn upsert(st: &AppState, key: &QueueKey, body: Value, create: bool) -> ApiResult {
    let spec = settings::spec_from_body(body)?;
    let dead_letter = spec
        .dead_letter
        .as_ref()
        .and_then(|d| d.queue_name.as_deref());
    if dead_letter == Some(key.name.as_str()) {
        return Err(ApiError::bad_request(
            "a queue cannot be its own dead_letter queue",
        ));
    }
    let info = st
        .engine
        .upsert_queue_linked(
            key,
            create,
            |cur| settings::apply(cur, spec),
            &settings::forward_links,
        )
        .await??;
    create_dead_letter_queue(&st.engine, &info).await?;
    Ok(ok(json!({ "queue": settings::queue_json(&info, !create) })))
}

/// Makes sure the dead-letter queue of the queue `info` describes exists, creating it with
/// default pull settings (dlq doc: "a new queue is automatically created"), so that its
/// consumers can wait on it before the first message moves there.
pub async fn create_dead_letter_queue(
    engine: &engine::Engine,
    info: &engine::QueueInfo,
) -> engine::Result<()> {
    let Some(dl) = &info.config.dead_letter else {
        return Ok(());
    };
    let key = QueueKey::new(info.project.clone(), dl.queue.clone());
    if engine.queue_info_now(&key).is_err() {
        engine
            .upsert_queue(&key, true, |cur| {
                Ok::<_, std::convert::Infallible>(cur.cloned().unwrap_or_default())
            })
            .await?
            .unwrap_or_else(|never| match never {});
    }
    Ok(())
}

/// `PUT /queues/{q}`: create or update.
pub async fn put(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult {
    upsert(&st, &key(&auth, q), body, true).await
}

/// `PATCH /queues/{q}`: update; 404 if missing.
pub async fn patch(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult {
    upsert(&st, &key(&auth, q), body, false).await
}

/// `DELETE /queues/{q}`.
pub async fn delete(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
) -> ApiResult {
    st.engine.delete_queue(&key(&auth, q)).await?;
    Ok(ok_msg("Deleted"))
}

#[derive(Default, Deserialize)]
pub struct SubscribersBody {
    #[serde(default)]
    subscribers: Option<Vec<SubscriberSpec>>,
}

#[derive(Clone, Copy)]
enum Edit {
    Add,
    Replace,
    Remove,
}

async fn edit_subscribers(
    st: &AppState,
    key: &QueueKey,
    body: SubscribersBody,
    edit: Edit,
) -> ApiResult {
    let specs = body
        .subscribers
        .ok_or_else(|| ApiError::bad_request("subscribers is required"))?;
    st.engine
        .upsert_queue_linked(
            key,
            false,
            |cur| {
                let mut c = cur.cloned().unwrap_or_default();
                let mut extra = Extra::of(&c);
                let push = extra
                    .push
                    .as_mut()
                    .filter(|_| c.kind.is_push())
                    .ok_or_else(|| ApiError::bad_request("Pull queues do not have subscribers"))?;
                match edit {
                    Edit::Add => {
                        for s in settings::subscribers_from(specs)? {
                            match push.subscribers.iter_mut().find(|o| o.name == s.name) {
                                Some(o) => *o = s,
                                None => push.subscribers.push(s),
                            }
                        }
                    }
                    Edit::Replace => push.subscribers = settings::subscribers_from(specs)?,
                    Edit::Remove => {
                        // By name only: clients send whole subscriber objects.
                        let names = specs
                            .into_iter()
                            .map(|s| s.name.filter(|n| !n.is_empty()))
                            .collect::<Option<Vec<String>>>()
                            .ok_or_else(|| ApiError::bad_request("subscriber name is required"))?;
                        push.subscribers.retain(|s| !names.contains(&s.name));
                    }
                }
                if push.subscribers.is_empty() {
                    return Err(ApiError::bad_request(
                        "Push queues must have at least one subscriber",
                    ));
                }
                extra.store(&mut c)?;
                Ok(c)
            },
            &settings::forward_links,
        )
        .await??;
    Ok(ok_msg("Updated"))
}

/// `POST /queues/{q}/subscribers`: add or update by name.
pub async fn subscribers_add(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<SubscribersBody>,
) -> ApiResult {
    edit_subscribers(&st, &key(&auth, q), body, Edit::Add).await
}

/// `PUT /queues/{q}/subscribers`: replace.
pub async fn subscribers_replace(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<SubscribersBody>,
) -> ApiResult {
    edit_subscribers(&st, &key(&auth, q), body, Edit::Replace).await
}

/// `DELETE /queues/{q}/subscribers`: remove by name.
pub async fn subscribers_remove(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<SubscribersBody>,
) -> ApiResult {
    edit_subscribers(&st, &key(&auth, q), body, Edit::Remove).await
}

#[derive(Default, Deserialize)]
pub struct AlertsBody {
    #[serde(default)]
    alerts: Option<Vec<AlertSpec>>,
    /// The older Python client wraps the list: `{"queue": {"alerts": [...]}}`.
    #[serde(default)]
    queue: Option<WrappedAlerts>,
}

#[derive(Default, Deserialize)]
pub struct WrappedAlerts {
    #[serde(default)]
    alerts: Option<Vec<AlertSpec>>,
}

impl AlertsBody {
    fn alerts(self) -> Option<Vec<AlertSpec>> {
        self.alerts.or(self.queue.and_then(|q| q.alerts))
    }
}

enum AlertEdit {
    Add(Vec<AlertSpec>),
    Replace(Vec<AlertSpec>),
    Remove(Vec<String>),
}

async fn edit_alerts(st: &AppState, key: &QueueKey, edit: AlertEdit) -> ApiResult {
    let removing = matches!(edit, AlertEdit::Remove(_));
    let info = st
        .engine
        .upsert_queue_linked(
            key,
            false,
            |cur| {
                let mut c = cur.cloned().unwrap_or_default();
                if c.kind.is_push() {
                    return Err(ApiError::bad_request("Push queues do not support alerts."));
                }
                let mut extra = Extra::of(&c);
                extra.alerts = match edit {
                    AlertEdit::Add(specs) => settings::alerts_from(specs, &extra.alerts)?,
                    AlertEdit::Replace(specs) => settings::alerts_from(specs, &[])?,
                    AlertEdit::Remove(ids) => {
                        let before = extra.alerts.len();
                        extra.alerts.retain(|a| !ids.contains(&a.id));
                        if extra.alerts.len() == before {
                            return Err(ApiError::not_found("Alert not found"));
                        }
                        extra.alerts
                    }
                };
                extra.store(&mut c)?;
                Ok(c)
            },
            &settings::forward_links,
        )
        .await??;
    if removing {
        Ok(ok_msg("Deleted"))
    } else {
        Ok(ok(
            json!({ "msg": "Updated", "queue": settings::queue_json(&info, true) }),
        ))
    }
}

/// The alert specs of an add or replace body (`alerts` is required).
fn alert_specs(body: AlertsBody) -> Result<Vec<AlertSpec>, ApiError> {
    body.alerts()
        .ok_or_else(|| ApiError::bad_request("alerts is required"))
}

/// `POST /queues/{q}/alerts`: add.
pub async fn alerts_add(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<AlertsBody>,
) -> ApiResult {
    let edit = AlertEdit::Add(alert_specs(body)?);
    edit_alerts(&st, &key(&auth, q), edit).await
}

/// `PUT /queues/{q}/alerts`: replace.
pub async fn alerts_replace(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<AlertsBody>,
) -> ApiResult {
    let edit = AlertEdit::Replace(alert_specs(body)?);
    edit_alerts(&st, &key(&auth, q), edit).await
}

/// `DELETE /queues/{q}/alerts` with `{"alerts":[{"id"}]}`.
pub async fn alerts_remove(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): Path<(String, String)>,
    JsonBody(body): JsonBody<AlertsBody>,
) -> ApiResult {
    let ids: Vec<String> = body
        .alerts()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| a.id)
        .collect();
    if ids.is_empty() {
        return Err(ApiError::bad_request("alerts with ids are required"));
    }
    edit_alerts(&st, &key(&auth, q), AlertEdit::Remove(ids)).await
}

/// `DELETE /queues/{q}/alerts/{id}`.
pub async fn alert_remove(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q, id)): Path<(String, String, String)>,
) -> ApiResult {
    edit_alerts(&st, &key(&auth, q), AlertEdit::Remove(vec![id])).await
}
