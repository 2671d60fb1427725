//! Where a message has been: the queues it passed through on its way from push queue to
//! push queue, on this server or others. Every push request (to an HTTP subscriber or to
//! another server's `ironmq://` queue) carries `X-Ferromq-Path`, the path of the message it
//! delivers plus the queue it leaves; a post or webhook that arrives with it keeps it in the
//! new messages (in their push headers), and so do alert messages and error-queue reports.
//! A message arriving at a queue already on its path is refused: that ends loops the
//! configuration cannot see (a subscriber that is this server's own webhook, an `ironmq://`
//! URL naming this server by address), however many subscribers each step has. A path of
//! [`MAX`] queues is refused too.
//!
//! A queue is named on a path by 16 hex digits of a hash of this server process's id (new
//! at every start, so a server restored from another's backup is another server) and the
//! queue's project and name, so paths are short and say nothing.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use engine::QueueKey;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The header, as sent and as kept in push headers.
pub const HEADER: &str = "X-Ferromq-Path";
/// Paths this long or longer are refused (it also bounds how far one post can spread
/// through queues that fan out to each other by address without a loop).
pub const MAX: usize = 8;

/// The name of queue `key` of server `server` on a path.
pub fn entry(server: &str, key: &QueueKey) -> String {
    let mut h = Sha256::new();
    for part in [server, &key.project, &key.name] {
        h.update((part.len() as u32).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// A path from a header value; `None` if it is not one.
pub fn parse(v: &str) -> Option<Vec<String>> {
    let v = v.trim();
    if v.is_empty() {
        return Some(Vec::new());
    }
    v.split(',')
        .map(|e| {
            let e = e.trim();
            (e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| e.to_ascii_lowercase())
        })
        .collect()
}

/// The path kept in a message's push headers (empty if none).
pub fn of_meta(meta: &[u8]) -> Vec<String> {
    if meta.is_empty() {
        return Vec::new();
    }
    serde_json::from_slice::<std::collections::BTreeMap<String, String>>(meta)
        .ok()
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(HEADER))
                .and_then(|(_, v)| parse(v))
        })
        .unwrap_or_default()
}

/// `meta` (push headers as JSON, or empty) with the path set to `path`.
pub fn set_in_meta(meta: &[u8], path: &[String]) -> Vec<u8> {
    let mut h: std::collections::BTreeMap<String, String> = if meta.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(meta).unwrap_or_default()
    };
    h.retain(|k, _| !k.eq_ignore_ascii_case(HEADER));
    h.insert(HEADER.to_string(), path.join(","));
    serde_json::to_vec(&h).unwrap_or_default()
}

/// The path of a message leaving queue `from` (its own path, then `from`).
pub fn leaving(meta: &[u8], server: &str, from: &QueueKey) -> Vec<String> {
    let mut p = of_meta(meta);
    p.push(entry(server, from));
    p
}

/// Why a message with path `path` may not enter queue `to`, if it may not.
pub fn refusal(path: &[String], server: &str, to: &QueueKey) -> Option<String> {
    if path.is_empty() {
        return None; // a client's own post: nothing to compute
    }
    if path.len() >= MAX {
        return Some(format!(
            "the message passed through {} push queues: too many",
            path.len()
        ));
    }
    let me = entry(server, to);
    path.contains(&me).then(|| {
        format!(
            "the message came from queue {} before: a loop of push queues (a subscriber \
             pointing back at this server?)",
            to.name
        )
    })
}

/// The path a request arrived with (empty without the header); a malformed one is a 400.
pub struct ArrivedPath(pub Vec<String>);

impl<S: Send + Sync> FromRequestParts<S> for ArrivedPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(HEADER) else {
            return Ok(ArrivedPath(Vec::new()));
        };
        v.to_str()
            .ok()
            .and_then(parse)
            .map(ArrivedPath)
            .ok_or_else(|| {
                ApiError::bad_request(format!("{HEADER} must be a list of 16-hex-digit names"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_go_in_and_out_of_push_headers_and_catch_a_return() {
        let (a, b) = (QueueKey::new("p", "a"), QueueKey::new("p", "b"));
        assert_eq!(of_meta(b""), Vec::<String>::new());
        let left = leaving(b"", "s1", &a);
        let meta = set_in_meta(br#"{"X-Trace":"t","x-ferromq-path":"junk"}"#, &left);
        assert_eq!(of_meta(&meta), left);
        assert!(
            String::from_utf8(meta)
                .unwrap()
                .contains("\"X-Trace\":\"t\"")
        );
        assert!(refusal(&left, "s1", &b).is_none());
        assert!(refusal(&left, "s1", &a).is_some(), "back where it was");
        assert!(
            refusal(&left, "s2", &a).is_none(),
            "the same name on another server"
        );
        assert_eq!(parse(" 0123456789ABCDEF ,"), None);
        assert_eq!(parse("0123456789ABCDEF").unwrap(), ["0123456789abcdef"]);
        let long: Vec<String> = (0..MAX).map(|i| format!("{i:016x}")).collect();
        assert!(refusal(&long, "s1", &b).is_some());
    }
}
