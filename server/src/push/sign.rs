//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): `webhook-id`,
//! `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! one signature per active secret, space-separated.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The three headers for one delivery.
pub fn headers(
    keys: &[Vec<u8>],
    msg_id: &str,
    timestamp_s: u64,
    body: &[u8],
) -> [(String, String); 3] {
    let ts = timestamp_s.to_string();
    let sigs: Vec<String> = keys
        .iter()
        .map(|k| {
            let mut mac = Hmac::<Sha256>::new_from_slice(k).expect("HMAC takes any key length");
            mac.update(msg_id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            format!("v1,{sig}")
        })
        .collect();
    [
        ("webhook-id".into(), msg_id.to_string()),
        ("webhook-timestamp".into(), ts),
        ("webhook-signature".into(), sigs.join(" ")),
    ]
}
