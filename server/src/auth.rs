//! Credentials (projects and tokens, kept in the engine's durable metadata), the admin
//! operations on them, and the request authentication extractors.
//!
//! Metadata keys: `project/{id}` → `{"id","name","created_at"}`, `token/{sha256 hex}` →
//! `{"id","project_id","name","created_at"}` or `{"id","admin":true,...}`. Only token hashes
//! are stored; a token's `id` (24 hex) names it for listing and revocation.
//!
//! The token table is also held in memory for authentication. Every change is made durable
//! first and then applied to the table, under one lock, so a revoked token is refused from
//! the moment the revoke is answered.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use engine::Engine;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Projects that can exist at once.
pub const PROJECTS_MAX: usize = 10_000;
/// Tokens that can exist at once, admin tokens included.
pub const TOKENS_MAX: usize = 10_000;
/// Project and token names, bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Names the token in listings and revocation (24 hex); never the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

impl TokenRecord {
    fn same_owner(&self, other: &TokenRecord) -> bool {
        self.project_id == other.project_id && self.admin == other.admin
    }
}

/// A project, as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A token's hash and its record.
type StoredToken = ([u8; 32], Arc<TokenRecord>);

/// Tokens by the SHA-256 of their secret, bucketed by the first 8 bytes of it.
///
/// A lookup finds the bucket of the presented token's hash and compares the full hashes
/// in it in constant time. Comparing against every stored hash (as before) cost each
/// request ~100 µs at [`TOKENS_MAX`] tokens; the bucket choice depends only on the hash of
/// what was presented, which tells nothing about a stored secret.
#[derive(Default)]
struct TokenTable {
    buckets: HashMap<u64, Vec<StoredToken>>,
    len: usize,
}

impl TokenTable {
    fn bucket(hash: &[u8; 32]) -> u64 {
        u64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
    }

    fn get(&self, hash: &[u8; 32]) -> Option<Arc<TokenRecord>> {
        let mut found = None;
        for (stored, rec) in self.buckets.get(&Self::bucket(hash))? {
            if bool::from(stored.ct_eq(hash)) {
                found = Some(Arc::clone(rec));
            }
        }
        found
    }

    fn insert(&mut self, hash: [u8; 32], rec: Arc<TokenRecord>) {
        let b = self.buckets.entry(Self::bucket(&hash)).or_default();
        match b.iter_mut().find(|(h, _)| *h == hash) {
            Some(slot) => slot.1 = rec,
            None => {
                b.push((hash, rec));
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, hash: &[u8; 32]) {
        let key = Self::bucket(hash);
        if let Some(b) = self.buckets.get_mut(&key) {
            let before = b.len();
            b.retain(|(h, _)| h != hash);
            self.len -= before - b.len();
            if b.is_empty() {
                self.buckets.remove(&key);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &StoredToken> {
        self.buckets.values().flatten()
    }
}

/// Token hashes and owners, loaded at start and kept in step with the metadata.
pub struct Credentials {
    /// Shared records, so that authenticating a request copies no strings.
    tokens: RwLock<TokenTable>,
    /// Serialises admin changes, so that their checks and writes do not interleave.
    changes: tokio::sync::Mutex<()>,
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

/// Whether `p` is an id of the form IronMQ gives projects (24 hex digits), which some clients
/// (Ruby) insist on.
pub fn is_hex_project_id(p: &str) -> bool {
    p.len() == 24 && p.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `n` random bytes as lowercase hex for an id (never a secret: see [`secure_hex`]).
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

/// `n` random bytes as lowercase hex for a secret or an id: no fallback.
fn secure_hex(n: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| {
        tracing::error!(error = %e, "the OS random number generator failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    })?;
    Ok(hex::encode(buf))
}

fn project_key(id: &str) -> String {
    format!("project/{id}")
}

fn token_key(hash: &[u8; 32]) -> String {
    format!("token/{}", hex::encode(hash))
}

async fn ensure_project(engine: &Engine, id: &str) -> Result<(), engine::Error> {
    let key = project_key(id);
    if engine.meta(&key).is_none() {
        let v = ProjectRecord {
            id: id.to_string(),
            name: None,
            created_at: Some(crate::time::now_rfc3339()),
        };
        let v = serde_json::to_vec(&v).unwrap_or_default();
        engine.put_meta(&key, Some(&v)).await?;
    }
    Ok(())
}

/// Makes sure `token` exists with the owner in `rec`. A stored record with the same owner
/// is kept (with its id); one without an id gets one.
async fn ensure_token(
    engine: &Engine,
    token: &str,
    rec: &TokenRecord,
) -> Result<(), engine::Error> {
    let key = token_key(&hash_token(token));
    let stored = engine
        .meta(&key)
        .and_then(|v| serde_json::from_slice::<TokenRecord>(&v).ok());
    if let Some(s) = &stored
        && s.same_owner(rec)
        && s.id.is_some()
    {
        return Ok(());
    }
    let mut rec = rec.clone();
    rec.id = Some(random_hex(12));
    rec.created_at = Some(crate::time::now_rfc3339());
    if let Some(s) = stored.filter(|s| s.same_owner(&rec)) {
        rec.name = s.name;
        rec.created_at = s.created_at.or(rec.created_at);
    }
    let v = serde_json::to_vec(&rec).unwrap_or_default();
    engine.put_meta(&key, Some(&v)).await
}

fn admin_record() -> TokenRecord {
    TokenRecord {
        id: None,
        project_id: None,
        admin: true,
        name: Some("admin".into()),
        created_at: None,
    }
}

fn project_record(project: &str) -> TokenRecord {
    TokenRecord {
        id: None,
        project_id: Some(project.to_string()),
        admin: false,
        name: None,
        created_at: None,
    }
}

/// Checks an optional name; `""` means none.
fn check_name(name: Option<String>) -> Result<Option<String>, ApiError> {
    match name {
        None => Ok(None),
        Some(n) if n.is_empty() => Ok(None),
        Some(n) if n.len() > NAME_BYTES_MAX => Err(ApiError::bad_request(format!(
            "name must be at most {NAME_BYTES_MAX} bytes"
        ))),
        Some(n) if n.chars().any(char::is_control) => Err(ApiError::bad_request(
            "name must not contain control characters",
        )),
        Some(n) => Ok(Some(n)),
    }
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
            ensure_token(engine, t, &admin_record()).await?;
        }
        if let Some(p) = project_id {
            ensure_project(engine, p).await?;
            if let Some(t) = token {
                ensure_token(engine, t, &project_record(p)).await?;
            }
        }
        if admin_token.is_none()
            && project_id.is_none()
            && engine.meta_with_prefix("token/").is_empty()
        {
            // Secrets from the OS generator or not at all (no time-derived fallback).
            let secret = || {
                secure_hex(16)
                    .map_err(|_| engine::Error::Invalid("the OS random number generator failed"))
            };
            let g = Generated {
                admin_token: secret()?,
                project_id: random_hex(12),
                token: secret()?,
            };
            ensure_project(engine, &g.project_id).await?;
            ensure_token(engine, &g.admin_token, &admin_record()).await?;
            ensure_token(engine, &g.token, &project_record(&g.project_id)).await?;
            generated = Some(g);
        }
        let mut tokens = TokenTable::default();
        for (k, v) in engine.meta_with_prefix("token/") {
            let Some(h) = k.strip_prefix("token/").and_then(|h| hex::decode(h).ok()) else {
                continue;
            };
            let Ok(h) = <[u8; 32]>::try_from(h.as_slice()) else {
                continue;
            };
            match serde_json::from_slice::<TokenRecord>(&v) {
                Ok(mut rec) => {
                    if rec.id.is_none() {
                        // Written before tokens had ids: give it one, durably.
                        rec.id = Some(random_hex(12));
                        let v = serde_json::to_vec(&rec).unwrap_or_default();
                        engine.put_meta(&k, Some(&v)).await?;
                    }
                    tokens.insert(h, Arc::new(rec));
                }
                Err(e) => tracing::warn!(key = %k, error = %e, "ignoring unreadable token record"),
            }
        }
        let creds = Credentials {
            tokens: RwLock::new(tokens),
            changes: tokio::sync::Mutex::new(()),
        };
        Ok((creds, generated))
    }

    /// Whether any admin token exists (without one, nothing can reach the admin API).
    pub fn has_admin(&self) -> bool {
        self.tokens.read().iter().any(|(_, rec)| rec.admin)
    }

    /// The owner of `token`, found by the token's hash.
    pub fn lookup(&self, token: &str) -> Option<Arc<TokenRecord>> {
        self.tokens.read().get(&hash_token(token))
    }

    /// Every project, in id order.
    pub fn projects(&self, engine: &Engine) -> Vec<ProjectRecord> {
        engine
            .meta_with_prefix("project/")
            .into_iter()
            .filter_map(|(k, v)| match serde_json::from_slice::<ProjectRecord>(&v) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(key = %k, error = %e, "ignoring unreadable project record");
                    None
                }
            })
            .collect()
    }

    /// Creates a project with a new random 24-hex id.
    pub async fn create_project(
        &self,
        engine: &Engine,
        name: Option<String>,
    ) -> Result<ProjectRecord, ApiError> {
        let name = check_name(name)?;
        let _g = self.changes.lock().await;
        let count = engine.meta_with_prefix("project/").len();
        if count >= PROJECTS_MAX {
            return Err(ApiError::bad_request(format!(
                "There are {count} projects; the limit is {PROJECTS_MAX}"
            )));
        }
        let id = loop {
            let id = secure_hex(12)?;
            if engine.meta(&project_key(&id)).is_none() {
                break id;
            }
        };
        let rec = ProjectRecord {
            id,
            name,
            created_at: Some(crate::time::now_rfc3339()),
        };
        let v = serde_json::to_vec(&rec).unwrap_or_default();
        engine.put_meta(&project_key(&rec.id), Some(&v)).await?;
        Ok(rec)
    }

    /// Creates a token for an existing project. Returns the secret (shown only this once)
    /// and the stored record.
    pub async fn create_token(
        &self,
        engine: &Engine,
        project: &str,
        name: Option<String>,
    ) -> Result<(String, TokenRecord), ApiError> {
        let name = check_name(name)?;
        let _g = self.changes.lock().await;
        if !valid_project_id(project) || engine.meta(&project_key(project)).is_none() {
            return Err(ApiError::not_found("Project not found"));
        }
        let count = self.tokens.read().len;
        if count >= TOKENS_MAX {
            return Err(ApiError::bad_request(format!(
                "There are {count} tokens; the limit is {TOKENS_MAX}"
            )));
        }
        let secret = secure_hex(16)?;
        let hash = hash_token(&secret);
        let rec = TokenRecord {
            id: Some(secure_hex(12)?),
            project_id: Some(project.to_string()),
            admin: false,
            name,
            created_at: Some(crate::time::now_rfc3339()),
        };
        let v = serde_json::to_vec(&rec).unwrap_or_default();
        engine.put_meta(&token_key(&hash), Some(&v)).await?;
        self.tokens.write().insert(hash, Arc::new(rec.clone()));
        Ok((secret, rec))
    }

    /// Tokens of `project` (every token, admin ones included, when `None`), by creation.
    pub fn tokens(&self, project: Option<&str>) -> Vec<TokenRecord> {
        let mut v: Vec<TokenRecord> = self
            .tokens
            .read()
            .iter()
            .map(|(_, r)| r)
            .filter(|r| project.is_none() || r.project_id.as_deref() == project)
            .map(|r| TokenRecord::clone(r))
            .collect();
        v.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        v
    }

    /// Revokes the token with this id: durably removed, then refused at once. The last
    /// admin token cannot be revoked.
    pub async fn revoke(&self, engine: &Engine, id: &str) -> Result<TokenRecord, ApiError> {
        let _g = self.changes.lock().await;
        let (hash, rec, admins) = {
            let tokens = self.tokens.read();
            let admins = tokens.iter().filter(|(_, r)| r.admin).count();
            let (h, r) = tokens
                .iter()
                .find(|(_, r)| r.id.as_deref() == Some(id))
                .ok_or_else(|| ApiError::not_found("Token not found"))?;
            (*h, TokenRecord::clone(r), admins)
        };
        if rec.admin && admins <= 1 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "The last admin token cannot be revoked",
            ));
        }
        engine.put_meta(&token_key(&hash), None).await?;
        self.tokens.write().remove(&hash);
        Ok(rec)
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

/// Whether the request carries the metrics token hashed as `want`, as any token is
/// presented (`Authorization: Bearer TOKEN`, which is what Prometheus sends, `OAuth TOKEN`
/// or `?oauth=TOKEN`). Compared as hashes, in constant time.
pub fn metrics_token_ok(parts: &Parts, want: &[u8; 32]) -> bool {
    presented_token(parts).is_some_and(|t| bool::from(hash_token(&t).ct_eq(want)))
}

/// An authenticated caller allowed on the project named in the path (`/3/projects/{pid}/...`).
pub struct ProjectAuth {
    pub project: String,
}

/// An authenticated admin.
pub struct AdminAuth;

/// Whether the request carries a token at all (valid or not).
pub struct TokenPresented(pub bool);

impl<S: Sync> FromRequestParts<S> for TokenPresented {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(TokenPresented(presented_token(parts).is_some()))
    }
}

fn authenticate(parts: &Parts, st: &AppState) -> Result<Arc<TokenRecord>, ApiError> {
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
        // An admin token reaches every project there is, but creates none: a queue under an
        // id no project has would be out of every project token's reach.
        let allowed = if rec.admin {
            st.engine.meta(&project_key(&pid)).is_some()
        } else {
            rec.project_id.as_deref() == Some(pid.as_str())
        };
        if allowed {
            Ok(ProjectAuth { project: pid })
        } else {
            Err(ApiError::not_found("Project not found"))
        }
    }
}

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        // A project token is not an admin credential: 401, as for no token at all.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> Arc<TokenRecord> {
        Arc::new(TokenRecord {
            id: Some(id.to_string()),
            project_id: None,
            admin: false,
            name: None,
            created_at: None,
        })
    }

    #[test]
    fn the_token_table_finds_by_full_hash_within_a_bucket() {
        let mut t = TokenTable::default();
        let a = hash_token("secret-a");
        // Same bucket (first 8 bytes) as `a`, different hash.
        let mut b = a;
        b[31] ^= 1;
        t.insert(a, rec("a"));
        t.insert(b, rec("b"));
        t.insert(hash_token("secret-c"), rec("c"));
        assert_eq!(t.len, 3);
        assert_eq!(t.get(&a).and_then(|r| r.id.clone()).as_deref(), Some("a"));
        assert_eq!(t.get(&b).and_then(|r| r.id.clone()).as_deref(), Some("b"));
        assert!(t.get(&hash_token("secret-d")).is_none());
        t.insert(a, rec("a2"));
        assert_eq!(t.len, 3);
        assert_eq!(t.get(&a).and_then(|r| r.id.clone()).as_deref(), Some("a2"));
        t.remove(&a);
        t.remove(&a);
        assert_eq!(t.len, 2);
        assert!(t.get(&a).is_none());
        assert!(t.get(&b).is_some());
        assert_eq!(t.iter().count(), 2);
    }
}
