//! Request input: a lenient JSON body extractor (missing body = `{}`, any Content-Type,
//! rejections are 400 `{"msg"}`, oversize is 413), query-string parsing, path decoding and
//! typed number and boolean fields.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer};

use crate::error::ApiError;

/// Reads the whole (already size-limited) body; a body over the limit is 413.
pub async fn read_body(body: Body) -> Result<bytes::Bytes, ApiError> {
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(ApiError::too_large("Request body is too large"));
                }
                if let Some(stalled) = s.downcast_ref::<crate::http::BodyStalled>() {
                    return Err(ApiError::new(
                        axum::http::StatusCode::REQUEST_TIMEOUT,
                        format!("The request body stopped arriving: {stalled}"),
                    ));
                }
                src = s.source();
            }
            Err(ApiError::bad_request("Could not read the request body"))
        }
    }
}

/// Parses a JSON object body; an empty body counts as `{}`.
///
/// An object body is first parsed straight into `T`. Only when that fails is it parsed
/// through a `serde_json::Value`, which gives the same result and error text as before
/// (for instance, a repeated key: the last one wins). The `Value` step used to run on
/// every request and cost about a quarter of the server's CPU on batch posts.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if looks_like_object(bytes)
        && let Ok(t) = serde_json::from_slice::<T>(bytes)
    {
        return Ok(t);
    }
    let trimmed = bytes.iter().all(|b| b.is_ascii_whitespace());
    let v: serde_json::Value = if trimmed {
        serde_json::Value::Object(Default::default())
    } else {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            // A string cut in the middle of a UTF-16 pair (what JavaScript's and Python's
            // encoders write for half an emoji) is valid JSON that Rust strings cannot hold:
            // each lone half becomes U+FFFD, as Go's decoder (IronMQ's) makes it.
            Err(e) => match replace_lone_surrogates(bytes) {
                Some(fixed) => serde_json::from_slice(&fixed),
                None => Err(e),
            }
            .map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}")))?,
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "Invalid JSON: the body must be a JSON object",
        ));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}")))
}

/// `bytes` with every `\u` escape of a lone UTF-16 surrogate (a high half not followed by
/// an escaped low half, or a low half on its own) written as `\ufffd`; `None` when there is
/// none. Only escapes inside strings are looked at; what is not JSON is left for the parser
/// to refuse.
fn replace_lone_surrogates(bytes: &[u8]) -> Option<Vec<u8>> {
    /// The code unit of the `\uXXXX` escape at `i`, if there is one.
    fn unit_at(bytes: &[u8], i: usize) -> Option<u16> {
        let esc = bytes.get(i..i + 6)?;
        if &esc[..2] != b"\\u" {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&esc[2..]).ok()?, 16).ok()
    }
    let high = |u: u16| (0xD800..0xDC00).contains(&u);
    let low = |u: u16| (0xDC00..0xE000).contains(&u);
    let mut out: Option<Vec<u8>> = None;
    let (mut i, mut copied, mut in_string) = (0, 0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => match unit_at(bytes, i) {
                Some(u) if high(u) && unit_at(bytes, i + 6).is_some_and(low) => i += 12,
                Some(u) if high(u) || low(u) => {
                    let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len()));
                    o.extend_from_slice(&bytes[copied..i]);
                    o.extend_from_slice(b"\\ufffd");
                    i += 6;
                    copied = i;
                }
                _ => i += 2,
            },
            _ => i += 1,
        }
    }
    let mut out = out?;
    out.extend_from_slice(&bytes[copied..]);
    Some(out)
}

/// A JSON body of type `T`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(req.into_body()).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The raw request body (size-limited like [`JsonBody`]), for handlers that parse it
/// themselves.
pub struct RawBody(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        read_body(req.into_body()).await.map(RawBody)
    }
}

/// Whether `bytes` is a JSON object at first sight (its first non-space byte is `{`). A
/// struct also deserializes from a JSON array, so only such a body may take a typed path.
pub fn looks_like_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Percent-decodes one path segment; `+` stays literal.
pub fn decode_path(seg: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(seg)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("Path is not valid UTF-8"))
}

/// Query parameters, form-decoded (`+` is a space), in order.
pub fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = q else { return Vec::new() };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                let s = s.replace('+', " ");
                percent_encoding::percent_decode_str(&s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// The integer query parameter `name`, if given. One past 64 bits is out of range rather
/// than malformed: it comes back as `i64::MAX` (or `MIN`) for the caller's range check.
pub fn query_int(params: &[(String, String)], name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = query_get(params, &[name]) else {
        return Ok(None);
    };
    match v.trim().parse::<i64>() {
        Ok(n) => Ok(Some(n)),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => Ok(Some(i64::MAX)),
        Err(e) if *e.kind() == std::num::IntErrorKind::NegOverflow => Ok(Some(i64::MIN)),
        Err(_) => Err(ApiError::bad_request(format!("{name} must be an integer"))),
    }
}

/// The boolean query parameter `name` (`true` or `false`, any case), if given.
pub fn query_bool(params: &[(String, String)], name: &str) -> Result<Option<bool>, ApiError> {
    match query_get(params, &[name]).map(str::trim) {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be true or false"
        ))),
    }
}

/// The first non-empty value of any of `names`.
pub fn query_get<'a>(params: &'a [(String, String)], names: &[&str]) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, v)| names.contains(&k.as_str()) && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

/// An integer field: a JSON number with no fraction (`60` or `60.0`, JSON having one
/// number type). `null` and `""` are unset (contract §15.6: clients send `""` for fields
/// they leave empty). Anything else, a numeric string such as `"60"` included, is a
/// wrong type: 400, as the original server answered.
pub fn int_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        I(i64),
        F(f64),
        S(String),
        Other(serde::de::IgnoredAny),
    }
    let v: Option<N> = Option::deserialize(d)?;
    Ok(match v {
        None => None,
        Some(N::I(i)) => Some(i),
        Some(N::F(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        Some(N::S(s)) if s.is_empty() => None,
        Some(N::S(s)) => {
            return Err(serde::de::Error::custom(format!(
                "expected an integer, found the string {s:?}"
            )));
        }
        Some(N::F(_) | N::Other(_)) => {
            return Err(serde::de::Error::custom("expected an integer"));
        }
    })
}

/// A boolean field: `true` or `false`; `null` and `""` are unset. Numbers and strings
/// such as `1` or `"true"` are a wrong type: 400.
pub fn bool_field<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Flag(bool),
        S(String),
        Other(serde::de::IgnoredAny),
    }
    let v: Option<B> = Option::deserialize(d)?;
    Ok(match v {
        None => None,
        Some(B::Flag(b)) => Some(b),
        Some(B::S(s)) if s.is_empty() => None,
        Some(B::S(_) | B::Other(_)) => {
            return Err(serde::de::Error::custom("expected true or false"));
        }
    })
}

/// Checks `v` (absent or 0 = `None`) against `0..=max`.
pub fn range(name: &str, v: Option<i64>, max: i64) -> Result<Option<u32>, ApiError> {
    match v {
        None | Some(0) => Ok(None),
        Some(x) if x < 0 || x > max => Err(ApiError::bad_request(format!(
            "{name} must be between 0 and {max}"
        ))),
        Some(x) => Ok(Some(x as u32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_path_decoding() {
        let q = query_params(Some("prefix=a+b&prev=&per_page=%33"));
        assert_eq!(query_get(&q, &["prefix"]), Some("a b"));
        assert_eq!(query_get(&q, &["previous", "prev"]), None);
        assert_eq!(query_get(&q, &["per_page"]), Some("3"));
        assert_eq!(decode_path("a+b%20c").ok().as_deref(), Some("a+b c"));
    }

    #[test]
    fn lone_surrogates_become_replacement_characters_and_pairs_stay() {
        let body = |raw: &str| {
            parse_json::<serde_json::Value>(raw.as_bytes())
                .map(|v| v["b"].as_str().unwrap_or_default().to_string())
                .map_err(|e| e.msg)
        };
        // Half an emoji, as JavaScript's JSON.stringify and Python's json.dumps write it.
        assert_eq!(body(r#"{"b":"cut: \ud83d"}"#).unwrap(), "cut: \u{fffd}");
        assert_eq!(
            body(r#"{"b":"\uDE00 low first"}"#).unwrap(),
            "\u{fffd} low first"
        );
        assert_eq!(body(r#"{"b":"\ud83d\ud83d\ude00"}"#).unwrap(), "\u{fffd}😀");
        // A whole pair, escaped or not, is kept; an escaped backslash before `ud83d` is text.
        assert_eq!(body(r#"{"b":"\ud83d\ude00 ok"}"#).unwrap(), "😀 ok");
        assert_eq!(body(r#"{"b":"\\ud83d"}"#).unwrap(), "\\ud83d");
        // Keys are strings too; outside strings nothing is touched, and bad JSON stays bad.
        let v = parse_json::<serde_json::Value>(br#"{"k\ud800":1}"#).unwrap();
        assert_eq!(v["k\u{fffd}"], 1);
        assert!(body(r#"{"b":"\ud83d"#).is_err());
        assert!(body(r#"{"b":"\ud83"}"#).is_err());
        assert_eq!(replace_lone_surrogates(br#"{"b":"plain \n"}"#), None);
    }
}
