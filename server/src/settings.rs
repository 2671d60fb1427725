//! Queue settings: parsing create/update bodies, the server-owned part kept in
//! `QueueConfig.extra` (push settings and alerts, as JSON), and the queue JSON object.

use std::collections::BTreeMap;

use engine::{DeadLetter, QueueConfig, QueueInfo, QueueKey, QueueKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::extract::int_field;

/// A push subscriber.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Subscriber {
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Push settings as stored and shown (all four IronMQ fields always present; the opt-in
/// extensions only when set, and signing secrets never shown).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Push {
    pub subscribers: Vec<Subscriber>,
    pub retries: u32,
    pub retries_delay: u32,
    pub error_queue: String,
    /// `"exponential"`: the delay doubles per retry up to `retries_delay_max`, with jitter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub retries_backoff: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries_delay_max: Option<u32>,
    /// Standard Webhooks secrets (`whsec_...`); two during a rotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_secrets: Vec<String>,
}

impl Push {
    /// The URL of the subscriber named `name` ("" if there is none now).
    pub fn url_of(&self, name: &str) -> String {
        self.subscribers
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.url.clone())
            .unwrap_or_default()
    }

    /// The delay before retry number `retry` (1-based), in milliseconds, before jitter.
    pub fn delay_ms(&self, retry: u32) -> u64 {
        let base = self.retries_delay as u64 * 1000;
        if self.retries_backoff != "exponential" {
            return base;
        }
        let cap = self
            .retries_delay_max
            .unwrap_or(3600)
            .max(self.retries_delay) as u64
            * 1000;
        let shift = retry.saturating_sub(1).min(20);
        (base << shift).min(cap)
    }
}

/// Subscribers of one push queue, at most.
pub const SUBSCRIBERS_MAX: usize = engine::limits::SUBSCRIBERS_MAX;

/// Decodes a Standard Webhooks secret (`whsec_` + base64 of 24 to 64 bytes).
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

/// A queue alert.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Alert {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub trigger: u64,
    pub queue: String,
    pub direction: String,
    pub snooze: u64,
}

/// What the server keeps in `QueueConfig.extra`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Extra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<Push>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Alert>,
}

impl Extra {
    pub fn of(c: &QueueConfig) -> Extra {
        if c.extra.is_empty() {
            Extra::default()
        } else {
            serde_json::from_slice(&c.extra).unwrap_or_default()
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.push.is_none() && self.alerts.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }

    /// Stores these settings in `c`: the JSON, and the subscriber names the engine keeps a
    /// delivery state for.
    pub fn store(&self, c: &mut QueueConfig) -> Result<(), ApiError> {
        let subs = self.push.as_ref().map_or(&[][..], |p| &p.subscribers[..]);
        if subs.len() > SUBSCRIBERS_MAX {
            return Err(ApiError::bad_request(format!(
                "a push queue can have at most {SUBSCRIBERS_MAX} subscribers"
            )));
        }
        c.subscribers = subs.iter().map(|s| s.name.clone()).collect();
        c.extra = self.to_bytes();
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscriberSpec {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default, deserialize_with = "headers_or_php_empty")]
    pub headers: Option<BTreeMap<String, String>>,
}

/// A subscriber's `headers`: an object of strings, or `[]` for none, which is what the PHP
/// client sends for an empty one (`json_encode(array())`), in a queue's settings and to the
/// subscriber endpoints alike.
fn headers_or_php_empty<'de, D>(d: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) if a.is_empty() => Ok(Some(BTreeMap::new())),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|_| D::Error::custom("subscriber headers must be an object of strings")),
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct PushSpec {
    #[serde(default)]
    pub subscribers: Option<Vec<SubscriberSpec>>,
    #[serde(default, deserialize_with = "int_field")]
    pub retries: Option<i64>,
    #[serde(default, deserialize_with = "int_field")]
    pub retries_delay: Option<i64>,
    #[serde(default)]
    pub error_queue: Option<String>,
    #[serde(default)]
    pub retries_backoff: Option<String>,
    #[serde(default, deserialize_with = "int_field")]
    pub retries_delay_max: Option<i64>,
    /// One secret, or a list of up to two (rotation); `""` or `[]` removes signing.
    #[serde(default)]
    pub signing_secret: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct DeadLetterSpec {
    #[serde(default)]
    pub queue_name: Option<String>,
    #[serde(default, deserialize_with = "int_field")]
    pub max_reservations: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AlertSpec {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "int_field")]
    pub trigger: Option<i64>,
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default, deserialize_with = "int_field")]
    pub snooze: Option<i64>,
}

/// The settings of a create/update body (`{"queue": {...}}`, or the fields at top level).
#[derive(Debug, Default, Deserialize)]
pub struct QueueSpec {
    #[serde(default, deserialize_with = "int_field")]
    pub message_timeout: Option<i64>,
    #[serde(default, deserialize_with = "int_field")]
    pub message_expiration: Option<i64>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub push: Option<PushSpec>,
    #[serde(default)]
    pub dead_letter: Option<DeadLetterSpec>,
    #[serde(default)]
    pub alerts: Option<Vec<AlertSpec>>,
}

/// Extracts the queue spec from a body value.
pub fn spec_from_body(v: Value) -> Result<QueueSpec, ApiError> {
    let mut inner = match v {
        Value::Object(mut m) => match m.remove("queue") {
            Some(Value::Null) | None => Value::Object(m),
            Some(q @ Value::Object(_)) => q,
            Some(Value::Array(a)) if a.is_empty() => Value::Object(Map::new()),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Invalid JSON: queue must be an object",
                ));
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "Invalid JSON: the body must be a JSON object",
            ));
        }
    };
    php_empty_objects(&mut inner);
    serde_json::from_value(inner).map_err(|e| ApiError::bad_request(format!("Invalid JSON: {e}")))
}

/// PHP's `json_encode(array())` is `[]`, which the PHP client sends for empty options:
/// where an object is expected, an empty array means nothing given (`"push": []`,
/// `"dead_letter": []`); `{"queue": []}` is handled by the caller, a subscriber's
/// `"headers": []` by [`SubscriberSpec`].
fn php_empty_objects(spec: &mut Value) {
    if let Some(m) = spec.as_object_mut() {
        for key in ["push", "dead_letter"] {
            if m.get(key)
                .and_then(Value::as_array)
                .is_some_and(|a| a.is_empty())
            {
                m.remove(key);
            }
        }
    }
}

fn parse_kind(s: &str) -> Result<QueueKind, ApiError> {
    match s {
        "pull" => Ok(QueueKind::Pull),
        "multicast" => Ok(QueueKind::Multicast),
        "unicast" => Ok(QueueKind::Unicast),
        _ => Err(ApiError::bad_request(format!(
            "type must be pull, multicast or unicast, not {s:?}"
        ))),
    }
}

/// Validates and converts subscriber specs.
pub fn subscribers_from(specs: Vec<SubscriberSpec>) -> Result<Vec<Subscriber>, ApiError> {
    let mut out: Vec<Subscriber> = Vec::with_capacity(specs.len());
    for s in specs {
        let url = s
            .url
            .filter(|u| !u.is_empty())
            .ok_or_else(|| ApiError::bad_request("subscriber url is required"))?;
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("ironworker://") {
            return Err(ApiError::bad_request(
                "ironworker:// subscribers are not supported",
            ));
        }
        if !(lower.starts_with("http://")
            || lower.starts_with("https://")
            || lower.starts_with("ironmq://"))
        {
            return Err(ApiError::bad_request(format!(
                "subscriber url {url:?} must be http://, https:// or ironmq://"
            )));
        }
        // Required in v3 (v2 subscribers had none): the name is what acknowledgements,
        // statuses and the subscriber endpoints go by.
        let name = s
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::bad_request("subscriber name is required"))?;
        if name.len() > engine::limits::SUBSCRIBER_NAME_BYTES_MAX {
            return Err(ApiError::bad_request(
                "subscriber name must be at most 255 bytes",
            ));
        }
        if lower.starts_with("ironmq://") {
            crate::push::target::IronMqUrl::parse(&url).map_err(ApiError::bad_request)?;
        } else if reqwest::Url::parse(&url).is_err() {
            return Err(ApiError::bad_request(format!(
                "subscriber url {url:?} is not a valid URL"
            )));
        }
        let headers = s.headers.unwrap_or_default();
        for (k, v) in &headers {
            check_header(k, v)
                .map_err(|e| ApiError::bad_request(format!("subscriber {name:?}: {e}")))?;
        }
        let sub = Subscriber { name, url, headers };
        match out.iter_mut().find(|o| o.name == sub.name) {
            Some(o) => *o = sub,
            None => out.push(sub),
        }
    }
    Ok(out)
}

const NO_SUBSCRIBERS: &str = "Push queues must have at least one subscriber";

/// A queue the server will post to (alert target, error queue, dead-letter queue) must have
/// a name a queue can have, or every one of those posts would fail later.
fn check_target_queue(what: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > engine::limits::QUEUE_NAME_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "{what} must be at most {} bytes",
            engine::limits::QUEUE_NAME_BYTES_MAX
        )));
    }
    Ok(())
}

/// A header the pusher will send must be one HTTP allows: a token for a name, and a value
/// without control characters (CR and LF among them; UTF-8 is sent as its bytes).
/// Headers that describe the push request's framing or connection rather than the
/// message (set by hand they cut bodies short or confuse proxies): never taken from
/// subscriber `headers` or message `push_headers`.
const FRAMING_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "expect",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
];

pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!(
            "header name {name:?} is not a valid HTTP header name"
        ));
    }
    if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "header {name} cannot be set: the push request's framing and connection are the \
             server's"
        ));
    }
    if axum::http::HeaderValue::from_bytes(value.as_bytes()).is_err() {
        return Err(format!(
            "header {name} has a value that is not a valid HTTP header value"
        ));
    }
    Ok(())
}

/// Validates alert specs against `existing` (ids kept when they match), max 5, no duplicates.
pub fn alerts_from(specs: Vec<AlertSpec>, existing: &[Alert]) -> Result<Vec<Alert>, ApiError> {
    let mut out: Vec<Alert> = existing.to_vec();
    for s in specs {
        let kind = s.kind.unwrap_or_default();
        if kind != "fixed" && kind != "progressive" {
            return Err(ApiError::bad_request(
                "alert type must be fixed or progressive",
            ));
        }
        let trigger = match s.trigger {
            Some(t) if t > 0 => t as u64,
            _ => {
                return Err(ApiError::bad_request(
                    "alert trigger must be a positive integer",
                ));
            }
        };
        let queue = s
            .queue
            .filter(|q| !q.is_empty())
            .ok_or_else(|| ApiError::bad_request("alert queue is required"))?;
        check_target_queue("alert queue", &queue)?;
        let direction = match s.direction.as_deref() {
            None | Some("") | Some("asc") => "asc".to_string(),
            Some("desc") => "desc".to_string(),
            Some(_) => return Err(ApiError::bad_request("alert direction must be asc or desc")),
        };
        let snooze = match s.snooze {
            None => 0,
            Some(x) if x >= 0 => x as u64,
            Some(_) => return Err(ApiError::bad_request("alert snooze must be 0 or more")),
        };
        if out
            .iter()
            .any(|a| a.kind == kind && a.direction == direction && a.trigger == trigger)
        {
            return Err(ApiError::bad_request(
                "At least one new alert duplicates current queue alerts.",
            ));
        }
        let id =
            s.id.filter(|i| i.len() == 24 && i.bytes().all(|b| b.is_ascii_hexdigit()))
                .unwrap_or_else(|| crate::auth::random_hex(12));
        out.push(Alert {
            id,
            kind,
            trigger,
            queue,
            direction,
            snooze,
        });
    }
    if out.len() > 5 {
        return Err(ApiError::bad_request("A queue can have at most 5 alerts"));
    }
    Ok(out)
}

/// Applies a create/update spec to the current settings (`None` = new queue).
/// [`apply`] for a queue declared in the configuration file, which states what the queue
/// is rather than what to change: there `dead_letter.queue_name: ""` declares "no
/// dead-letter queue" whether or not the queue has one now (a request may use it only to
/// remove one).
pub fn apply_declared(
    current: Option<&QueueConfig>,
    mut spec: QueueSpec,
) -> Result<QueueConfig, ApiError> {
    let unset = spec
        .dead_letter
        .as_ref()
        .is_some_and(|d| d.queue_name.as_deref() == Some(""));
    if unset && current.is_none_or(|c| c.dead_letter.is_none()) {
        spec.dead_letter = None;
    }
    apply(current, spec)
}

pub fn apply(current: Option<&QueueConfig>, spec: QueueSpec) -> Result<QueueConfig, ApiError> {
    let mut c = current.cloned().unwrap_or_default();
    let mut extra = current.map(Extra::of).unwrap_or_default();
    let requested = spec
        .kind
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(parse_kind)
        .transpose()?;
    let kind = match (current, requested) {
        (Some(cur), Some(k)) if k != cur.kind => {
            return Err(ApiError::forbidden(
                "Trying to Change Immutable Queue Parameters: type cannot be changed",
            ));
        }
        (Some(cur), _) => cur.kind,
        (None, Some(k)) => k,
        (None, None) if spec.push.is_some() => QueueKind::Multicast,
        (None, None) => QueueKind::Pull,
    };
    c.kind = kind;
    if let Some(t) = crate::extract::range(
        "message_timeout",
        spec.message_timeout,
        engine::limits::TIMEOUT_S_MAX as i64,
    )? {
        c.message_timeout_s = t;
    }
    if let Some(e) = crate::extract::range(
        "message_expiration",
        spec.message_expiration,
        engine::limits::EXPIRATION_S_MAX as i64,
    )? {
        c.message_expiration_s = e;
    }
    if let Some(p) = spec.push {
        if !kind.is_push() {
            return Err(ApiError::bad_request(
                "Pull queues cannot have push settings or subscribers",
            ));
        }
        let mut push = extra.push.take().unwrap_or(Push {
            subscribers: Vec::new(),
            retries: 3,
            retries_delay: 60,
            error_queue: String::new(),
            retries_backoff: String::new(),
            retries_delay_max: None,
            signing_secrets: Vec::new(),
        });
        if let Some(s) = p.subscribers {
            push.subscribers = subscribers_from(s)?;
        }
        if let Some(r) = p.retries {
            if !(0..=100).contains(&r) {
                return Err(ApiError::bad_request("retries must be between 0 and 100"));
            }
            push.retries = r as u32;
        }
        match p.retries_delay {
            None | Some(0) => {}
            Some(d) if (3..=86_400).contains(&d) => push.retries_delay = d as u32,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "retries_delay must be between 3 and 86400",
                ));
            }
        }
        if let Some(q) = p.error_queue {
            if !q.is_empty() {
                check_target_queue("error_queue", &q)?;
            }
            push.error_queue = q;
        }
        match p.retries_backoff.as_deref() {
            None => {}
            Some("") | Some("fixed") => push.retries_backoff = String::new(),
            Some("exponential") => push.retries_backoff = "exponential".into(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "retries_backoff must be fixed or exponential",
                ));
            }
        }
        match p.retries_delay_max {
            None | Some(0) => {}
            Some(m) if (3..=86_400).contains(&m) => push.retries_delay_max = Some(m as u32),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "retries_delay_max must be between 3 and 86400",
                ));
            }
        }
        if let Some(v) = p.signing_secret {
            let list: Vec<String> = match v {
                Value::Null => Vec::new(),
                Value::String(s) if s.is_empty() => Vec::new(),
                Value::String(s) => vec![s],
                Value::Array(a) => a
                    .into_iter()
                    .map(|x| match x {
                        Value::String(s) => Ok(s),
                        _ => Err(ApiError::bad_request(
                            "signing_secret entries must be strings",
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(ApiError::bad_request(
                        "signing_secret must be a string or a list of strings",
                    ));
                }
            };
            if list.len() > 2 {
                return Err(ApiError::bad_request(
                    "at most two signing secrets may be active",
                ));
            }
            if list.iter().any(|s| signing_key(s).is_none()) {
                return Err(ApiError::bad_request(
                    "signing_secret must be whsec_ followed by base64 of 24 to 64 bytes",
                ));
            }
            push.signing_secrets = list;
        }
        extra.push = Some(push);
    }
    if kind.is_push() {
        if extra.push.as_ref().is_none_or(|p| p.subscribers.is_empty()) {
            return Err(ApiError::bad_request(NO_SUBSCRIBERS));
        }
    } else {
        extra.push = None;
    }
    if let Some(dl) = spec.dead_letter {
        // `queue_name: ""` removes the setting; no `queue_name` keeps the configured one
        // (so `max_reservations` can be changed alone). Either is an error where none is
        // configured (contract §9: the name must not be empty unless one is configured).
        let name = match dl.queue_name {
            Some(n) if n.is_empty() => match &c.dead_letter {
                Some(_) => None,
                None => {
                    return Err(ApiError::bad_request(
                        "dead_letter queue_name must not be empty",
                    ));
                }
            },
            Some(n) => {
                check_target_queue("dead_letter queue_name", &n)?;
                Some(n)
            }
            None => match &c.dead_letter {
                Some(d) => Some(d.queue.clone()),
                None => {
                    return Err(ApiError::bad_request("dead_letter queue_name is required"));
                }
            },
        };
        match name {
            None => c.dead_letter = None,
            Some(name) => {
                if kind.is_push() {
                    return Err(ApiError::bad_request(
                        "Push queues do not support dead letter queues; use error_queue",
                    ));
                }
                let max = match dl.max_reservations {
                    None | Some(0) => c
                        .dead_letter
                        .as_ref()
                        .map(|d| d.max_reservations)
                        .unwrap_or(10),
                    Some(m) if (1..=1000).contains(&m) => m as u32,
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "dead_letter max_reservations must be between 1 and 1000",
                        ));
                    }
                };
                c.dead_letter = Some(DeadLetter {
                    queue: name,
                    max_reservations: max,
                });
            }
        }
    }
    if let Some(a) = spec.alerts {
        if kind.is_push() && !a.is_empty() {
            return Err(ApiError::bad_request("Push queues do not support alerts."));
        }
        extra.alerts = alerts_from(a, &[])?;
    }
    extra.store(&mut c)?;
    Ok(c)
}

/// The 24-hex queue id derived from the queue number.
pub fn queue_id(number: u32) -> String {
    format!("{:016x}{:08x}", 0x6665_7272_6f6d_7100u64, number)
}

/// The `queue` JSON object; `counts` adds `size` and `total_messages`.
/// The queues a queue forwards messages to on its own (for the engine's cycle check,
/// [`engine::Links`]): a push queue's `ironmq://` subscribers on this server and its error
/// queue; a pull queue's alert targets other than itself (an alert into a push queue that
/// delivers back loops). Conservative for alerts: an alert's own message fires no alerts,
/// so a pull queue alerting itself goes nowhere and is allowed, but two pull queues
/// alerting each other, which would go nowhere either, are refused as a cycle.
pub fn forward_links(key: &QueueKey, c: &QueueConfig) -> Vec<QueueKey> {
    let extra = Extra::of(c);
    if !c.kind.is_push() {
        return extra
            .alerts
            .iter()
            .filter(|a| a.queue != key.name)
            .map(|a| QueueKey::new(key.project.clone(), a.queue.clone()))
            .collect();
    }
    let Some(push) = extra.push else {
        return Vec::new();
    };
    let mut out: Vec<QueueKey> = push
        .subscribers
        .iter()
        .filter(|s| crate::push::target::is_ironmq(&s.url))
        .filter_map(|s| crate::push::target::IronMqUrl::parse(&s.url).ok())
        .filter(|u| u.host.is_none())
        .map(|u| {
            let project = u
                .credentials
                .map_or_else(|| key.project.clone(), |(p, _)| p);
            QueueKey::new(project, u.queue)
        })
        .collect();
    if !push.error_queue.is_empty() {
        out.push(QueueKey::new(key.project.clone(), push.error_queue.clone()));
    }
    out
}

pub fn queue_json(info: &QueueInfo, counts: bool) -> Value {
    let c = &info.config;
    let mut q = json!({
        "id": queue_id(info.number),
        "name": info.name,
        "project_id": info.project,
        "message_timeout": c.message_timeout_s,
        "message_expiration": c.message_expiration_s,
        "type": c.kind.as_str(),
    });
    let m = q.as_object_mut().expect("object literal");
    if counts {
        m.insert("size".into(), json!(info.size));
        m.insert("total_messages".into(), json!(info.total_messages));
    }
    let extra = Extra::of(c);
    if let Some(p) = &extra.push {
        let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut()
            && o.remove("signing_secrets").is_some()
        {
            o.insert("signed".into(), Value::Bool(true));
        }
        m.insert("push".into(), v);
    }
    if !extra.alerts.is_empty() {
        m.insert(
            "alerts".into(),
            serde_json::to_value(&extra.alerts).unwrap_or(Value::Null),
        );
    }
    if let Some(d) = &c.dead_letter {
        m.insert(
            "dead_letter".into(),
            json!({"queue_name": d.queue, "max_reservations": d.max_reservations}),
        );
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_needs_a_name_and_may_have_php_empty_headers() {
        for sub in [
            json!({"url": "http://x"}),
            json!({"name": "", "url": "http://x"}),
        ] {
            let spec = spec_from_body(json!({"push": {"subscribers": [sub]}})).expect("spec");
            let err = apply(None, spec).expect_err("refused");
            assert_eq!(
                (err.status.as_u16(), err.msg.as_str()),
                (400, "subscriber name is required")
            );
        }
        let spec = spec_from_body(
            json!({"push": {"subscribers": [{"name": "a", "url": "http://x", "headers": []}]}}),
        )
        .expect("spec");
        let c = apply(None, spec).expect("apply");
        assert!(
            Extra::of(&c).push.expect("push").subscribers[0]
                .headers
                .is_empty()
        );
        let bad: Result<SubscriberSpec, _> =
            serde_json::from_value(json!({"name": "a", "url": "http://x", "headers": [1]}));
        assert!(bad.is_err());
    }

    #[test]
    fn push_defaults_and_type_rules() {
        let spec = spec_from_body(
            json!({"queue": {"push": {"subscribers": [{"name": "a", "url": "http://x"}]}}}),
        )
        .expect("spec");
        let c = apply(None, spec).expect("apply");
        assert_eq!(c.kind, QueueKind::Multicast);
        let p = Extra::of(&c).push.expect("push");
        assert_eq!(
            (p.retries, p.retries_delay, p.error_queue.as_str()),
            (3, 60, "")
        );
        let change = spec_from_body(json!({"queue": {"type": "unicast"}})).expect("spec");
        assert_eq!(
            apply(Some(&c), change).err().map(|e| e.status.as_u16()),
            Some(403)
        );
        let worker = spec_from_body(
            json!({"push": {"subscribers": [{"name": "w", "url": "ironworker://a"}]}}),
        )
        .expect("spec");
        assert_eq!(
            apply(None, worker).err().map(|e| e.status.as_u16()),
            Some(400)
        );
    }

    #[test]
    fn zero_means_unset_and_dead_letter_removal() {
        let spec = spec_from_body(
            json!({"message_timeout": 0, "message_expiration": 0, "size": 3,
            "dead_letter": {"queue_name": "dlq"}}),
        )
        .expect("spec");
        let c = apply(None, spec).expect("apply");
        assert_eq!((c.message_timeout_s, c.message_expiration_s), (60, 604_800));
        assert_eq!(c.dead_letter.as_ref().map(|d| d.max_reservations), Some(10));
        let rm =
            spec_from_body(json!({"queue": {"dead_letter": {"queue_name": ""}}})).expect("spec");
        assert_eq!(apply(Some(&c), rm).expect("apply").dead_letter, None);
        // max_reservations alone changes the configured dead-letter queue's limit...
        let max = spec_from_body(json!({"dead_letter": {"max_reservations": 7}})).expect("spec");
        let d = apply(Some(&c), max)
            .expect("apply")
            .dead_letter
            .expect("kept");
        assert_eq!((d.queue.as_str(), d.max_reservations), ("dlq", 7));
        // ...and is an error where none is configured, as is an empty name.
        let none = apply(None, spec_from_body(json!({})).expect("spec")).expect("apply");
        let max = spec_from_body(json!({"dead_letter": {"max_reservations": 7}})).expect("spec");
        assert!(apply(Some(&none), max).is_err());
        for q in [None, Some(&none)] {
            let empty =
                spec_from_body(json!({"dead_letter": {"queue_name": "", "max_reservations": 1}}))
                    .expect("spec");
            let e = apply(q, empty).expect_err("refused");
            assert_eq!(
                (e.status.as_u16(), e.msg.as_str()),
                (400, "dead_letter queue_name must not be empty")
            );
        }
    }
}
