//! How many times a message was forwarded from one push queue to another: each push
//! request (to an HTTP subscriber or another server's `ironmq://` queue) carries
//! `X-Ferromq-Hops`, one more than the message it delivers had, and a post or webhook that
//! arrives with it keeps the count in the new messages (in their push headers). A post at
//! [`MAX`] hops is refused, which ends loops the configuration cannot see: a subscriber URL
//! that is this server's own webhook, or an `ironmq://` URL naming this server by address.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;

/// The header, as sent and as kept in push headers.
pub const HEADER: &str = "X-Ferromq-Hops";
/// Posts arriving with this many hops or more are refused.
pub const MAX: u32 = 8;

/// The hop count kept in a message's push headers (0 if none).
pub fn of_meta(meta: &[u8]) -> u32 {
    if meta.is_empty() {
        return 0;
    }
    serde_json::from_slice::<std::collections::BTreeMap<String, String>>(meta)
        .ok()
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(HEADER))
                .and_then(|(_, v)| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `meta` (push headers as JSON, or empty) with the hop count set to `hops`.
pub fn set_in_meta(meta: &[u8], hops: u32) -> Vec<u8> {
    let mut h: std::collections::BTreeMap<String, String> = if meta.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(meta).unwrap_or_default()
    };
    h.retain(|k, _| !k.eq_ignore_ascii_case(HEADER));
    h.insert(HEADER.to_string(), hops.to_string());
    serde_json::to_vec(&h).unwrap_or_default()
}

/// The hop count a request arrived with (0 without the header); at [`MAX`] or more the
/// request is refused.
pub struct Hops(pub u32);

impl<S: Send + Sync> FromRequestParts<S> for Hops {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(HEADER) else {
            return Ok(Hops(0));
        };
        let hops: u32 = v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request(format!("{HEADER} must be a number")))?;
        if hops >= MAX {
            return Err(ApiError::bad_request(format!(
                "the message was forwarded {hops} times from push queue to push queue: a \
                 loop of subscribers pointing back at this server?"
            )));
        }
        Ok(Hops(hops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_goes_in_and_out_of_push_headers() {
        assert_eq!(of_meta(b""), 0);
        let m = set_in_meta(b"", 3);
        assert_eq!(of_meta(&m), 3);
        let with = set_in_meta(br#"{"X-Trace":"t","x-ferromq-hops":"1"}"#, 2);
        assert_eq!(
            String::from_utf8(with.clone()).unwrap(),
            r#"{"X-Ferromq-Hops":"2","X-Trace":"t"}"#
        );
        assert_eq!(of_meta(&with), 2);
    }
}
