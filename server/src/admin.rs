//! Admin endpoints (admin token only; anything else is 401): projects and tokens, what
//! IronAuth did on-premise, and the hot backup stream.
//!
//! | method | path | answer |
//! |---|---|---|
//! | POST | `/3/admin/projects` `{"name"?}` | `{"project": P}` |
//! | GET | `/3/admin/projects` | `{"projects": [P]}` |
//! | POST | `/3/admin/projects/{id}/tokens` `{"name"?}` | `{"token": T + "token": secret}` |
//! | GET | `/3/admin/projects/{id}/tokens` | `{"tokens": [T]}` |
//! | GET | `/3/admin/tokens` | `{"tokens": [T]}`, admin tokens included |
//! | DELETE | `/3/admin/tokens/{token_id}` | `{"msg": "Revoked", "token": T}` |
//! | GET | `/3/admin/backup` | the backup file (`application/octet-stream`) |

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::{AdminAuth, ProjectRecord, TokenRecord};
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, decode_path};
use crate::response::ok;
use crate::state::AppState;

/// Backups running at once; one more is refused with 409.
pub const BACKUPS_MAX: usize = 1;
/// Bytes per chunk sent down the backup response.
const BACKUP_CHUNK_BYTES: usize = 256 * 1024;
/// Chunks buffered between the copying thread and the connection.
const BACKUP_CHUNKS_BUFFERED: usize = 8;
/// A client that takes no data for this long loses its backup: the snapshot's pin holds
/// retention back, so a stalled reader must not keep it forever.
const BACKUP_STALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Default, Deserialize)]
pub struct NameBody {
    #[serde(default)]
    name: Option<String>,
}

fn project_json(p: &ProjectRecord) -> Value {
    json!({ "id": p.id, "name": p.name, "created_at": p.created_at })
}

fn token_json(t: &TokenRecord) -> Value {
    json!({
        "id": t.id, "project_id": t.project_id, "admin": t.admin, "name": t.name,
        "created_at": t.created_at,
    })
}

/// `POST /3/admin/projects`.
pub async fn create_project(
    State(st): State<AppState>,
    _: AdminAuth,
    JsonBody(body): JsonBody<NameBody>,
) -> ApiResult {
    let p = st.creds.create_project(&st.engine, body.name).await?;
    tracing::info!(project = %p.id, "project created");
    Ok(ok(json!({ "project": project_json(&p) })))
}

/// `GET /3/admin/projects`.
pub async fn list_projects(State(st): State<AppState>, _: AdminAuth) -> ApiResult {
    let projects: Vec<Value> = st
        .creds
        .projects(&st.engine)
        .iter()
        .map(project_json)
        .collect();
    Ok(ok(json!({ "projects": projects })))
}

/// `POST /3/admin/projects/{id}/tokens`: the secret is in this answer only.
pub async fn create_token(
    State(st): State<AppState>,
    _: AdminAuth,
    Path(pid): Path<String>,
    JsonBody(body): JsonBody<NameBody>,
) -> ApiResult {
    let pid = decode_path(&pid)?;
    let (secret, t) = st.creds.create_token(&st.engine, &pid, body.name).await?;
    tracing::info!(project = %pid, token_id = t.id.as_deref().unwrap_or(""), "token created");
    let mut v = token_json(&t);
    v["token"] = json!(secret);
    Ok(ok(json!({ "token": v })))
}

/// `GET /3/admin/projects/{id}/tokens`.
pub async fn list_project_tokens(
    State(st): State<AppState>,
    _: AdminAuth,
    Path(pid): Path<String>,
) -> ApiResult {
    let pid = decode_path(&pid)?;
    if !st.creds.projects(&st.engine).iter().any(|p| p.id == pid) {
        return Err(ApiError::not_found("Project not found"));
    }
    let tokens: Vec<Value> = st.creds.tokens(Some(&pid)).iter().map(token_json).collect();
    Ok(ok(json!({ "tokens": tokens })))
}

/// `GET /3/admin/tokens`.
pub async fn list_tokens(State(st): State<AppState>, _: AdminAuth) -> ApiResult {
    let tokens: Vec<Value> = st.creds.tokens(None).iter().map(token_json).collect();
    Ok(ok(json!({ "tokens": tokens })))
}

/// `DELETE /3/admin/tokens/{token_id}`.
pub async fn revoke_token(
    State(st): State<AppState>,
    _: AdminAuth,
    Path(tid): Path<String>,
) -> ApiResult {
    let tid = decode_path(&tid)?;
    let t = st.creds.revoke(&st.engine, &tid).await?;
    tracing::info!(token_id = %tid, "token revoked");
    Ok(ok(json!({ "msg": "Revoked", "token": token_json(&t) })))
}

/// `GET /3/admin/backup`: a consistent snapshot of the log, streamed as the backup file
/// (engine/FORMAT.md, "Backup file"). The snapshot's segments stay pinned against
/// retention until the copy ends or the client goes away.
pub async fn backup(State(st): State<AppState>, _: AdminAuth) -> ApiResult {
    let permit = st
        .backups
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::new(StatusCode::CONFLICT, "A backup is already running"))?;
    let snap = st.engine.snapshot().await?;
    let len = snap.encoded_bytes();
    let h = snap.header();
    tracing::info!(
        segments = h.segment_count,
        cut_segment = h.cut.segment().0,
        cut_offset = h.cut.offset(),
        bytes = len,
        "backup started"
    );
    let (tx, rx) = mpsc::channel(BACKUP_CHUNKS_BUFFERED);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(BACKUP_CHUNK_BYTES),
            runtime,
        };
        match snap.write_to(&mut w) {
            Ok(n) => tracing::info!(bytes = n, "backup sent"),
            Err(e) => {
                tracing::warn!(error = %e, "backup aborted");
                let _ = w.tx.try_send(Err(io::Error::other(e.to_string())));
            }
        }
        // Dropping the snapshot here releases its pin.
        drop(snap);
    });
    let mut resp = Response::new(Body::new(ChannelBody { rx }));
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

/// Hands the encoder's output to the response body in chunks; fails once the client is
/// gone or has stalled, which ends the copy.
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
    runtime: tokio::runtime::Handle,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(BACKUP_CHUNK_BYTES));
        let send = tokio::time::timeout(BACKUP_STALL_TIMEOUT, self.tx.send(Ok(Bytes::from(chunk))));
        match self.runtime.block_on(send) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no data for 60 s",
            )),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(BACKUP_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == BACKUP_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data)))
    }
}
