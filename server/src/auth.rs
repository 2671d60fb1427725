//! Credentials (projects and tokens, kept in the engine's durable metadata) and the
//! request authentication extractor.
//!
//! Metadata keys: `project/{id}` → `{"id","created_at"}`, `token/{sha256 hex}` →
//! `{"project_id": id}` or `{"admin": true}`. Only token hashes are stored.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use engine::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Token hashes and owners, loaded at start.
pub struct Credentials {
    tokens: Vec<([u8; 32], TokenRecord)>,
}

/// Credentials generated on first start, to print once.
pub struct Generated {
    pub admin_token: String,
    pub project_id: String,
    pub token: String,
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Project ids: 1..64 of `[A-Za-z0-9_-]`.
pub fn valid_project_id(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        // Fall back to time-derived bytes; only reached when the OS RNG is unavailable.
        let seed = crate::time::now_ms().to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed[i % 8].wrapping_mul(31).wrapping_add(i as u8);
        }
    }
    hex::encode(buf)
}

async fn ensure_project(engine: &Engine, id: &str) -> Result<(), engine::Error> {
    let key = format!("project/{id}");
    if engine.meta(&key).is_none() {
        let v = serde_json::json!({ "id": id, "created_at": crate::time::now_rfc3339() });
        engine
            .put_meta(&key, Some(v.to_string().as_bytes()))
            .await?;
    }
    Ok(())
}

async fn ensure_token(
    engine: &Engine,
    token: &str,
    rec: &TokenRecord,
) -> Result<(), engine::Error> {
    let key = format!("token/{}", hex::encode(hash_token(token)));
    let v = serde_json::to_vec(rec).unwrap_or_default();
    if engine.meta(&key).as_deref() != Some(&v[..]) {
        engine.put_meta(&key, Some(&v)).await?;
    }
    Ok(())
}

impl Credentials {
    /// Ensures the configured credentials exist; on a first start with none configured and
    /// none stored, creates an admin token and one project with a token.
    pub async fn bootstrap(
        engine: &Engine,
        admin_token: Option<&str>,
        project_id: Option<&str>,
        token: Option<&str>,
    ) -> Result<(Credentials, Option<Generated>), engine::Error> {
        let mut generated = None;
        if let Some(t) = admin_token {
            ensure_token(
                engine,
                t,
                &TokenRecord {
                    project_id: None,
                    admin: true,
                },
            )
            .await?;
        }
        if let Some(p) = project_id {
            ensure_project(engine, p).await?;
            if let Some(t) = token {
                ensure_token(
                    engine,
                    t,
                    &TokenRecord {
                        project_id: Some(p.to_string()),
                        admin: false,
                    },
                )
                .await?;
            }
        }
        if admin_token.is_none()
            && project_id.is_none()
            && engine.meta_with_prefix("token/").is_empty()
        {
            let g = Generated {
                admin_token: random_hex(16),
                project_id: random_hex(12),
                token: random_hex(16),
            };
            ensure_project(engine, &g.project_id).await?;
            ensure_token(
                engine,
                &g.admin_token,
                &TokenRecord {
                    project_id: None,
                    admin: true,
                },
            )
            .await?;
            ensure_token(
                engine,
                &g.token,
                &TokenRecord {
                    project_id: Some(g.project_id.clone()),
                    admin: false,
                },
            )
            .await?;
            generated = Some(g);
        }
        let mut tokens = Vec::new();
        for (k, v) in engine.meta_with_prefix("token/") {
            let Some(h) = k.strip_prefix("token/").and_then(|h| hex::decode(h).ok()) else {
                continue;
            };
            let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) else {
                continue;
            };
            match serde_json::from_slice::<TokenRecord>(&v) {
                Ok(rec) => tokens.push((h, rec)),
                Err(e) => tracing::warn!(key = %k, error = %e, "ignoring unreadable token record"),
            }
        }
        Ok((Credentials { tokens }, generated))
    }

    /// The owner of `token`, comparing hashes in constant time against every stored one.
    pub fn lookup(&self, token: &str) -> Option<&TokenRecord> {
        let h = hash_token(token);
        let mut found = None;
        for (stored, rec) in &self.tokens {
            if bool::from(stored.ct_eq(&h)) {
                found = Some(rec);
            }
        }
        found
    }
}

/// The presented token: `Authorization: OAuth T` (scheme case-insensitive; `Bearer` also
/// accepted) or `?oauth=T`.
pub fn presented_token(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some((scheme, rest)) = v.split_once(' ')
            && (scheme.eq_ignore_ascii_case("oauth") || scheme.eq_ignore_ascii_case("bearer"))
        {
            let t = rest.trim();
            if !t.is_empty() {
                return Some(t.to_string());
            }
        }
    }
    crate::extract::query_params(parts.uri.query())
        .into_iter()
        .find(|(k, v)| k == "oauth" && !v.is_empty())
        .map(|(_, v)| v)
}

/// An authenticated caller allowed on the project named in the path (`/3/projects/{pid}/...`).
pub struct ProjectAuth {
    pub project: String,
}

/// An authenticated admin.
pub struct AdminAuth;

fn authenticate<'a>(parts: &Parts, st: &'a AppState) -> Result<&'a TokenRecord, ApiError> {
    let token = presented_token(parts).ok_or_else(ApiError::unauthorized)?;
    st.creds.lookup(&token).ok_or_else(ApiError::unauthorized)
}

impl FromRequestParts<AppState> for ProjectAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let rec = authenticate(parts, st)?;
        let mut segs = parts.uri.path().split('/');
        let pid = match (segs.next(), segs.next(), segs.next(), segs.next()) {
            (Some(""), Some("3"), Some("projects"), Some(p)) => crate::extract::decode_path(p)?,
            _ => return Err(ApiError::not_found("Not found")),
        };
        if !valid_project_id(&pid) {
            return Err(ApiError::not_found("Project not found"));
        }
        if rec.admin || rec.project_id.as_deref() == Some(pid.as_str()) {
            Ok(ProjectAuth { project: pid })
        } else {
            Err(ApiError::not_found("Project not found"))
        }
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let rec = authenticate(parts, st)?;
        // IronMQ: a token that is not an admin token "cannot be verified" for this call.
        if rec.admin {
            Ok(AdminAuth)
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "An admin token is required",
            ))
        }
    }
}
