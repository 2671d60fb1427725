//! Message endpoints: post, webhook, reserve, peek, get, delete (one, batch), clear, touch,
//! release, push statuses.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use engine::{DeleteItem, MessageId, NewMessage, QueueKey, ReservationId, ReserveOptions};
use serde::Deserialize;
use serde::de::Visitor;
use serde_json::{Value, json};

use crate::auth::ProjectAuth;
use crate::error::{ApiError, ApiResult};
use crate::extract::{
    JsonBody, RawBody, bool_field, int_field, looks_like_object, parse_json, query_bool, query_int,
    query_params, range, read_body,
};
use crate::hops::ArrivedPath;
use crate::observe::with_messages;
use crate::response::{json_bytes_response, ok, ok_msg};
use crate::settings::Extra;
use crate::state::AppState;

type QPath = Path<(String, String)>;
type MPath = Path<(String, String, String)>;

const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "user-agent",
    "iron-message-id",
    "iron-reservation-id",
    "iron-subscriber-name",
    "iron-subscriber-message-url",
];

/// Validates push headers (§5.1); returns the error text of the first violation.
pub fn check_push_headers(h: &BTreeMap<String, String>) -> Result<(), String> {
    if h.len() > 5 {
        return Err("at most 5 push_headers per message".into());
    }
    for (k, v) in h {
        if k.is_empty() || k.len() > 64 {
            return Err("push header names must be 1 to 64 bytes".into());
        }
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(format!("push header {k} cannot be set"));
        }
        if v.is_empty() || v.len() > 1024 {
            return Err(format!(
                "push header {k} must have a value of 1 to 1024 bytes"
            ));
        }
        crate::settings::check_header(k, v).map_err(|e| format!("push {e}"))?;
    }
    Ok(())
}

/// Whether `key` is an existing push queue (where `subscriber_name` acknowledges).
fn is_push_queue(st: &AppState, key: &QueueKey) -> bool {
    st.engine
        .queue_info_now(key)
        .is_ok_and(|i| i.config.kind.is_push())
}

fn key(auth: &ProjectAuth, name: String) -> QueueKey {
    QueueKey::new(auth.project.clone(), name)
}

fn parse_id(s: &str) -> Result<MessageId, ApiError> {
    MessageId::parse(s).ok_or_else(|| ApiError::not_found("Message not found"))
}

/// A reservation id from a request; `""` is absent. A malformed one matches no reservation:
/// it becomes [`ReservationId::NEVER_ISSUED`], so the engine still answers 404 for a missing
/// queue or message before the 403 a wrong reservation gets.
fn parse_rid(s: Option<&str>) -> Option<ReservationId> {
    match s {
        None | Some("") => None,
        Some(r) => Some(ReservationId::parse(r).unwrap_or(ReservationId::NEVER_ISSUED)),
    }
}

async fn post_and_alert(st: &AppState, key: &QueueKey, msgs: &[NewMessage<'_>]) -> ApiResult {
    let ids = crate::alerts::post(st, key, msgs).await?;
    let n = ids.len() as u64;
    Ok(with_messages(
        json_bytes_response(StatusCode::CREATED, post_reply(&ids)),
        n,
    ))
}

/// The reply to a post, `{"ids":[…],"msg":"Messages put on queue."}`, written by hand like
/// [`reserve_reply`] (keys in the order a `serde_json::Value` sorts them).
fn post_reply(ids: &[MessageId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + ids.len() * 22);
    out.extend_from_slice(b"{\"ids\":[");
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(itoa::Buffer::new().format(id.0).as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"],\"msg\":\"Messages put on queue.\"}");
    out
}

/// A message of a post body. `B` is the type its `body` is read as: [`BodyText`] on the
/// fast path, a `Value` on the slow one (see [`post`]).
#[derive(Deserialize)]
pub struct PostItem<B> {
    body: Option<B>,
    #[serde(default, deserialize_with = "int_field")]
    delay: Option<i64>,
    #[serde(default)]
    push_headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
pub struct PostBody<B> {
    messages: Option<Vec<PostItem<B>>>,
}

/// A message body as posted, borrowed from the request unless it holds escapes. Anything
/// but a JSON string fails the fast path (and is refused on the slow one).
pub struct BodyText<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BodyText<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BodyText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<BodyText<'de>, E> {
                Ok(BodyText(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<BodyText<'de>, E> {
                Ok(BodyText(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<BodyText<'de>, E> {
                Ok(BodyText(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A posted body's bytes, or `None` when it is not a JSON string.
pub trait IntoBody<'a> {
    fn into_body(self) -> Option<Cow<'a, [u8]>>;
}

impl<'a> IntoBody<'a> for BodyText<'a> {
    fn into_body(self) -> Option<Cow<'a, [u8]>> {
        Some(match self.0 {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        })
    }
}

impl IntoBody<'static> for Value {
    fn into_body(self) -> Option<Cow<'static, [u8]>> {
        match self {
            Value::String(s) => Some(Cow::Owned(s.into_bytes())),
            _ => None,
        }
    }
}

/// `POST /queues/{q}/messages`.
///
/// A batch's bodies are borrowed from the request on the fast path: 100 bodies of 100
/// bytes parse in about half the time it takes through a `Value` each. A body the fast
/// path refuses (a repeated key, say) is parsed again the way every JSON body is
/// ([`parse_json`]), for the same result and error text as before.
pub async fn post(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): QPath,
    ArrivedPath(path): ArrivedPath,
    RawBody(bytes): RawBody,
) -> ApiResult {
    let msgs = post_messages(&bytes, &path)?;
    let key = key(&auth, q);
    if let Some(why) = crate::hops::refusal(&path, &st.server, &key) {
        return Err(ApiError::bad_request(why));
    }
    post_and_alert(&st, &key, &msgs).await
}

/// The messages of a post body, checked; their bodies borrow from `bytes` where they can.
fn post_messages<'a>(bytes: &'a [u8], path: &[String]) -> Result<Vec<NewMessage<'a>>, ApiError> {
    let fast = if looks_like_object(bytes) {
        serde_json::from_slice::<PostBody<BodyText>>(bytes).ok()
    } else {
        None
    };
    match fast {
        Some(b) => new_messages(b, path),
        None => new_messages(parse_json::<PostBody<Value>>(bytes)?, path),
    }
}

/// The messages of a parsed post body, checked.
fn new_messages<'a, B: IntoBody<'a>>(
    b: PostBody<B>,
    path: &[String],
) -> Result<Vec<NewMessage<'a>>, ApiError> {
    let items = b.messages.unwrap_or_default();
    if items.is_empty() {
        return Err(ApiError::bad_request(
            "messages must hold at least one message",
        ));
    }
    if items.len() > engine::limits::MESSAGES_PER_POST_MAX {
        return Err(ApiError::bad_request("at most 100 messages per request"));
    }
    let mut msgs = Vec::with_capacity(items.len());
    for it in items {
        let body = match it.body {
            None => return Err(ApiError::bad_request("message body is required")),
            Some(b) => b
                .into_body()
                .ok_or_else(|| ApiError::bad_request("message body must be a string"))?,
        };
        let delay = range("delay", it.delay, engine::limits::DELAY_S_MAX as i64)?.unwrap_or(0);
        let meta = match it.push_headers.filter(|h| !h.is_empty()) {
            None => Vec::new(),
            Some(h) => {
                check_push_headers(&h).map_err(ApiError::bad_request)?;
                serde_json::to_vec(&h).unwrap_or_default()
            }
        };
        let meta = if path.is_empty() {
            meta
        } else {
            crate::hops::set_in_meta(&meta, path)
        };
        msgs.push(NewMessage {
            body,
            delay_s: delay,
            meta,
        });
    }
    Ok(msgs)
}

/// `POST /queues/{q}/webhook`: the raw body is the message; `X-Subscribers-*` headers
/// become push headers (invalid ones dropped).
pub async fn webhook(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): QPath,
    ArrivedPath(path): ArrivedPath,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let key = key(&auth, q);
    if let Some(why) = crate::hops::refusal(&path, &st.server, &key) {
        return Err(ApiError::bad_request(why));
    }
    let bytes = read_body(body).await?;
    let mut h = BTreeMap::new();
    for (name, value) in &headers {
        let n = name.as_str();
        if n.len() > 14
            && n[..14].eq_ignore_ascii_case("x-subscribers-")
            && let Ok(v) = value.to_str()
        {
            let one: BTreeMap<String, String> = [(n[14..].to_string(), v.to_string())].into();
            if check_push_headers(&one).is_ok() && h.len() < 5 {
                h.extend(one);
            }
        }
    }
    let meta = if h.is_empty() {
        Vec::new()
    } else {
        serde_json::to_vec(&h).unwrap_or_default()
    };
    let meta = if path.is_empty() {
        meta
    } else {
        crate::hops::set_in_meta(&meta, &path)
    };
    post_and_alert(
        &st,
        &key,
        &[NewMessage {
            body: bytes.as_ref().into(),
            delay_s: 0,
            meta,
        }],
    )
    .await
}

#[derive(Default, Deserialize)]
pub struct ReserveBody {
    /// `N`, `Timeout`, `Wait`, `Delete`: Go field names, sent by iron_go3's
    /// `GetNWithTimeout` (a malformed tag) and matched by the Go server case-insensitively.
    #[serde(default, alias = "N", deserialize_with = "int_field")]
    n: Option<i64>,
    #[serde(default, alias = "Timeout", deserialize_with = "int_field")]
    timeout: Option<i64>,
    #[serde(default, alias = "Wait", deserialize_with = "int_field")]
    wait: Option<i64>,
    #[serde(default, alias = "Delete", deserialize_with = "bool_field")]
    delete: Option<bool>,
}

/// A reserve's options: the JSON body, and what it leaves out from the query string (the
/// .NET client sends `wait` there, `n` and `timeout` in the body). An extractor, so that
/// the long poll's future holds only the options, not the request's URI.
pub struct ReserveOptionsOf(pub ReserveBody);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ReserveOptionsOf {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, st: &S) -> Result<Self, ApiError> {
        let params = req.uri().query().map(|q| query_params(Some(q)));
        let JsonBody(mut b) = JsonBody::<ReserveBody>::from_request(req, st).await?;
        if let Some(params) = params {
            b.n = b.n.or(query_int(&params, "n")?);
            b.timeout = b.timeout.or(query_int(&params, "timeout")?);
            b.wait = b.wait.or(query_int(&params, "wait")?);
            b.delete = b.delete.or(query_bool(&params, "delete")?);
        }
        Ok(ReserveOptionsOf(b))
    }
}

/// A message as peek and get show it.
fn message_json(m: engine::MessageView) -> Value {
    json!({ "id": m.id.to_string(), "body": body_string(m.body), "reserved_count": m.reserved_count })
}

fn body_string(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `POST /queues/{q}/reservations`.
pub async fn reserve(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): QPath,
    ReserveOptionsOf(b): ReserveOptionsOf,
) -> ApiResult {
    let n = range("n", b.n, engine::limits::MESSAGES_PER_RESERVE_MAX as i64)?.unwrap_or(1) as usize;
    let timeout_s = range("timeout", b.timeout, engine::limits::TIMEOUT_S_MAX as i64)?.unwrap_or(0);
    let wait = match b.wait {
        Some(w) if !(0..=30).contains(&w) => {
            return Err(ApiError::bad_request("wait must be between 0 and 30"));
        }
        Some(w) => w as u64,
        None => 0,
    };
    let delete = b.delete.unwrap_or(false);
    let key = key(&auth, q);
    // A reserve may move messages to the queue's dead-letter queue: its alerts count too.
    // (Boxed: this lives across a long poll's wait, in every waiting request's future.)
    let dead_letter_before = st.engine.dead_letter_size(&key).map(Box::new);
    let got = st
        .engine
        .reserve(
            &key,
            ReserveOptions {
                n,
                timeout_s,
                wait_ms: wait * 1000,
                delete,
            },
        )
        .await?;
    if delete
        && !got.is_empty()
        && let Some(after) = st.engine.size_if_extra(&key)
    {
        crate::alerts::check(&st, &key, after + got.len() as u64, after).await;
    }
    if let Some((dlq, before)) = dead_letter_before.map(|b| *b)
        && let Some(after) = st.engine.size_if_extra(&dlq)
    {
        crate::alerts::check(&st, &dlq, before, after).await;
    }
    let n = got.len() as u64;
    Ok(with_messages(
        json_bytes_response(StatusCode::OK, reserve_reply(&got)),
        n,
    ))
}

/// The reply to a reserve, `{"messages":[…]}`, written by hand: it is the hottest reply of
/// a consumer and most of it is message bodies, which are mostly plain ASCII and then need
/// no escaping. Byte for byte what a `serde_json::Value` (sorted keys) gives, as before;
/// a body that is not valid UTF-8 is shown with replacement characters.
fn reserve_reply(got: &[engine::ReservedMessage]) -> Vec<u8> {
    let size: usize = got.iter().map(|m| m.body.len() + 110).sum();
    let mut out = Vec::with_capacity(16 + size);
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in got.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"body\":");
        json_string(&mut out, &m.body);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(itoa::Buffer::new().format(m.id.0).as_bytes());
        out.push(b'"');
        if let Some(r) = m.reservation_id {
            out.extend_from_slice(b",\"reservation_id\":\"");
            out.extend_from_slice(&r.hex());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"reserved_count\":");
        out.extend_from_slice(itoa::Buffer::new().format(m.reserved_count).as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// `bytes` as a JSON string. Printable ASCII without `"` or `\` is copied as it is;
/// anything else is escaped by serde_json (after a lossy UTF-8 conversion).
fn json_string(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes
        .iter()
        .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
    } else {
        let s = String::from_utf8_lossy(bytes);
        serde_json::to_writer(&mut *out, &*s).expect("writing JSON to a Vec cannot fail");
    }
}

/// `GET /queues/{q}/messages?n=`: peek.
pub async fn peek(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): QPath,
    uri: Uri,
) -> ApiResult {
    let params = query_params(uri.query());
    let n = query_int(&params, "n")?;
    let n = range("n", n, engine::limits::MESSAGES_PER_RESERVE_MAX as i64)?.unwrap_or(1) as usize;
    let got = st.engine.peek(&key(&auth, q), n).await?;
    let msgs: Vec<Value> = got.into_iter().map(message_json).collect();
    Ok(ok(json!({ "messages": msgs })))
}

/// `GET /queues/{q}/messages/{id}`.
pub async fn get(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q, id)): MPath,
) -> ApiResult {
    let id = parse_id(&id)?;
    let key = key(&auth, q);
    let m = st.engine.get(&key, id).await?;
    let mut v = message_json(m);
    // On a push queue the message carries its push statuses too, where Ruby's client and
    // IronMQ's pusher test engine read them (`message.push_statuses`; contract §16).
    if let Ok(info) = st.engine.queue_info_now(&key)
        && info.config.kind.is_push()
        && let Some(push) = Extra::of(&info.config).push
        && let Ok(states) = st.engine.push_statuses(&key, id).await
    {
        v["push_statuses"] = json!(statuses_json(&push, &states));
    }
    Ok(ok(json!({ "message": v })))
}

#[derive(Default, Deserialize)]
pub struct DeleteBody {
    #[serde(default)]
    reservation_id: Option<String>,
    /// With `reservation_id`: a push subscriber acknowledging a delivery it answered with 202.
    #[serde(default)]
    subscriber_name: Option<String>,
}

/// The body of `DELETE …/messages/{id}`. This route answers without a token (a push
/// subscriber acknowledging with its reservation id), so it reads its body before it knows
/// whether the caller may make it: without a valid token the body may hold at most
/// [`ACK_BODY_MAX`] bytes and must arrive within [`ACK_BODY_DEADLINE`] (what an
/// acknowledgement needs), so an anonymous client cannot hold memory or a connection slot
/// by trickling a large body.
pub struct DeleteJson(pub DeleteBody);

pub const ACK_BODY_MAX: usize = 4096;
pub const ACK_BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

impl axum::extract::FromRequest<AppState> for DeleteJson {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, st: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let known =
            crate::auth::presented_token(&parts).is_some_and(|t| st.creds.lookup(&t).is_some());
        let bytes = if known {
            crate::extract::read_body(body).await?
        } else {
            let small = Body::new(http_body_util::Limited::new(body, ACK_BODY_MAX));
            tokio::time::timeout(ACK_BODY_DEADLINE, crate::extract::read_body(small))
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "The request body did not arrive in time",
                    )
                })??
        };
        crate::extract::parse_json(&bytes).map(DeleteJson)
    }
}

/// `DELETE /queues/{q}/messages/{id}`. With `subscriber_name` it is a push acknowledgement,
/// which the `reservation_id` (an unguessable secret sent only to that subscriber) authorizes
/// on its own: subscribers call `Iron-Subscriber-Message-Url` without a token.
pub async fn delete(
    State(st): State<AppState>,
    auth: Result<ProjectAuth, ApiError>,
    token: crate::auth::TokenPresented,
    Path((pid, q, id)): MPath,
    DeleteJson(b): DeleteJson,
) -> ApiResult {
    let id = parse_id(&id)?;
    if let Some(sub) = b.subscriber_name.filter(|s| !s.is_empty()) {
        match &auth {
            Ok(a) => {
                let ack_key = QueueKey::new(a.project.clone(), q.clone());
                let push = is_push_queue(&st, &ack_key);
                if push {
                    let rid = parse_rid(b.reservation_id.as_deref()).ok_or_else(|| {
                        ApiError::bad_request(
                            "reservation_id is required to acknowledge a push delivery",
                        )
                    })?;
                    st.engine.push_ack(&ack_key, id, &sub, rid).await?;
                    return Ok(ok_msg("Deleted"));
                }
                // A pull queue: `subscriber_name` is ignored, an ordinary delete follows.
            }
            Err(auth_error) => {
                // Without a token only a valid acknowledgement passes, and every other
                // answer is the same 403 (a missing queue, a pull queue, a missing message,
                // a wrong reservation): the answer tells nothing about what exists. A token
                // that is no token at all gets its 401 instead.
                let refused = || {
                    if token.0 && auth_error.status == StatusCode::UNAUTHORIZED {
                        ApiError::unauthorized()
                    } else {
                        ApiError::from(engine::Error::ReservationMismatch(id))
                    }
                };
                let project = crate::extract::decode_path(&pid).map_err(|_| refused())?;
                let ack_key = QueueKey::new(project, q);
                let rid = parse_rid(b.reservation_id.as_deref()).ok_or_else(refused)?;
                let push = is_push_queue(&st, &ack_key);
                if !push {
                    return Err(refused());
                }
                return match st.engine.push_ack(&ack_key, id, &sub, rid).await {
                    Ok(()) => Ok(ok_msg("Deleted")),
                    Err(e @ (engine::Error::Failed(_) | engine::Error::Closed)) => Err(e.into()),
                    Err(_) => Err(refused()),
                };
            }
        }
    }
    let auth = auth?;
    let rid = parse_rid(b.reservation_id.as_deref());
    let key = key(&auth, q);
    st.engine.delete(&key, id, rid).await?;
    if let Some(after) = st.engine.size_if_extra(&key) {
        crate::alerts::check(&st, &key, after + 1, after).await;
    }
    Ok(with_messages(ok_msg("Deleted"), 1))
}

/// `DELETE /queues/{q}/messages`: batch delete when the body has `ids`, else clear.
pub async fn delete_many(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q)): QPath,
    RawBody(body): RawBody,
) -> ApiResult {
    let key = key(&auth, q);
    let Some(Batch { items, subscribers }) = delete_many_items(&body)? else {
        let before = st.engine.size_if_extra(&key);
        st.engine.clear(&key).await?;
        if let Some(before) = before {
            crate::alerts::check(&st, &key, before, 0).await;
        }
        return Ok(ok_msg("Cleared"));
    };
    if !subscribers.is_empty() && is_push_queue(&st, &key) {
        return acknowledge_many(&st, &key, items, subscribers).await;
    }
    st.engine.delete_batch(&key, &items).await?;
    if let Some(after) = st.engine.size_if_extra(&key) {
        crate::alerts::check(&st, &key, after + items.len() as u64, after).await;
    }
    Ok(with_messages(ok_msg("Deleted"), items.len() as u64))
}

/// A batch delete on a push queue whose entries carry `subscriber_name`: those entries
/// acknowledge deliveries (as a single delete with `subscriber_name` does), the others
/// delete their messages. Every acknowledgement is checked before anything changes (a
/// hold that ends between the check and its acknowledgement still fails that one alone).
async fn acknowledge_many(
    st: &AppState,
    key: &QueueKey,
    items: Vec<DeleteItem>,
    subscribers: Vec<Option<String>>,
) -> ApiResult {
    let n = items.len() as u64;
    // A message once per subscriber (a multicast message held by two subscribers is two
    // deliveries, acknowledged apart), and not also deleted: a second entry for one
    // delivery, or a delete beside an acknowledgement, would fail after the first took
    // effect. Sorted, a plain delete (`None`) comes first among a message's entries.
    let mut seen: Vec<(u64, Option<&str>)> = items
        .iter()
        .zip(&subscribers)
        .map(|(it, sub)| (it.id.0, sub.as_deref()))
        .collect();
    seen.sort_unstable();
    if seen
        .windows(2)
        .any(|w| w[0].0 == w[1].0 && (w[0].1.is_none() || w[0].1 == w[1].1))
    {
        return Err(ApiError::bad_request(
            "a batch may acknowledge a message once for each subscriber, and may not also \
             delete it",
        ));
    }
    let mut acks = Vec::new();
    let mut deletes = Vec::new();
    for (it, sub) in items.into_iter().zip(subscribers) {
        match sub {
            Some(sub) => {
                let rid = it.reservation_id.ok_or_else(|| {
                    ApiError::bad_request(
                        "reservation_id is required to acknowledge a push delivery",
                    )
                })?;
                st.engine.push_ack_check(key, it.id, &sub, rid)?;
                acks.push((it.id, sub, rid));
            }
            None => deletes.push(it),
        }
    }
    if !deletes.is_empty() {
        st.engine.delete_batch(key, &deletes).await?;
    }
    for (id, sub, rid) in acks {
        st.engine.push_ack(key, id, &sub, rid).await?;
    }
    Ok(with_messages(ok_msg("Deleted"), n))
}

/// What a batch delete names: the messages, and for each the `subscriber_name` it carries
/// (`subscribers` is empty when none does).
#[derive(Debug, PartialEq)]
struct Batch {
    items: Vec<DeleteItem>,
    subscribers: Vec<Option<String>>,
}

impl Batch {
    fn new(len: usize) -> Batch {
        Batch {
            items: Vec::with_capacity(len),
            subscribers: Vec::new(),
        }
    }

    fn push(&mut self, item: DeleteItem, subscriber: Option<&str>) {
        let subscriber = subscriber.filter(|s| !s.is_empty());
        if subscriber.is_some() && self.subscribers.is_empty() {
            self.subscribers.resize(self.items.len(), None);
        }
        if subscriber.is_some() || !self.subscribers.is_empty() {
            self.subscribers.push(subscriber.map(String::from));
        }
        self.items.push(item);
    }
}

/// The body of `DELETE …/messages`: the messages to delete, or `None` (no `ids`) to clear
/// the queue. The usual body (`{"ids": [{"id": …, "reservation_id": …}]}`, plain strings)
/// is read straight into borrowed fields; anything else (an id given as a bare string,
/// escapes, a repeated key, a malformed body) goes through a `serde_json::Value`, which
/// decides the result and the error text.
fn delete_many_items(body: &[u8]) -> Result<Option<Batch>, ApiError> {
    #[derive(Deserialize)]
    struct Fast<'a> {
        #[serde(borrow)]
        ids: Vec<FastItem<'a>>,
    }
    /// Only the exact keys: an entry with any other (`Reservation_Id`, say, which the
    /// `Value` path reads case-insensitively) takes the `Value` path.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FastItem<'a> {
        id: &'a str,
        #[serde(borrow, default)]
        reservation_id: Option<&'a str>,
        #[serde(borrow, default)]
        subscriber_name: Option<&'a str>,
    }
    if looks_like_object(body)
        && let Ok(f) = serde_json::from_slice::<Fast>(body)
    {
        check_ids_count(f.ids.len())?;
        let mut batch = Batch::new(f.ids.len());
        for e in f.ids {
            batch.push(delete_item(e.id, e.reservation_id)?, e.subscriber_name);
        }
        return Ok(Some(batch));
    }
    delete_items_from_value(&parse_json(body)?)
}

/// [`delete_many_items`] for a body already parsed into a `Value`: the reference for
/// what every body means.
fn delete_items_from_value(b: &Value) -> Result<Option<Batch>, ApiError> {
    // Any spelling of `ids` (`Ids`, `IDS`: a Go server matches keys case-insensitively)
    // is a batch delete: read as a clear, it would empty the queue.
    let Some(ids) = b.as_object().and_then(|o| get_ci(o, "ids")) else {
        return Ok(None);
    };
    let arr = ids
        .as_array()
        .ok_or_else(|| ApiError::bad_request("ids must be an array"))?;
    check_ids_count(arr.len())?;
    let mut batch = Batch::new(arr.len());
    for e in arr {
        match e {
            Value::String(s) => batch.push(delete_item(s, None)?, None),
            Value::Object(o) => {
                let id = get_ci(o, "id")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| ApiError::bad_request("each ids entry needs an id"))?;
                let rid = match get_ci(o, "reservation_id") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(_) => {
                        return Err(ApiError::bad_request("reservation_id must be a string"));
                    }
                };
                let sub = match get_ci(o, "subscriber_name") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(_) => {
                        return Err(ApiError::bad_request("subscriber_name must be a string"));
                    }
                };
                batch.push(delete_item(id, rid)?, sub);
            }
            _ => {
                return Err(ApiError::bad_request(
                    "ids entries must be strings or objects",
                ));
            }
        }
    }
    Ok(Some(batch))
}

/// `o[key]`, else the first key equal to `key` ignoring ASCII case.
fn get_ci<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// One entry of a batch delete; `""` as the reservation id is absent.
fn delete_item(id: &str, rid: Option<&str>) -> Result<DeleteItem, ApiError> {
    let id = parse_id(id)?;
    Ok(DeleteItem {
        id,
        reservation_id: parse_rid(rid),
    })
}

fn check_ids_count(n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::bad_request("ids must not be empty"));
    }
    if n > engine::limits::IDS_PER_DELETE_MAX {
        return Err(ApiError::bad_request("at most 100 ids per request"));
    }
    Ok(())
}

#[derive(Default, Deserialize)]
pub struct TouchBody {
    #[serde(default)]
    reservation_id: Option<String>,
    #[serde(default, deserialize_with = "int_field")]
    timeout: Option<i64>,
    #[serde(default, deserialize_with = "int_field")]
    delay: Option<i64>,
}

fn required_rid(s: Option<String>) -> Result<ReservationId, ApiError> {
    parse_rid(s.as_deref()).ok_or_else(|| ApiError::bad_request("reservation_id is required"))
}

/// `POST /queues/{q}/messages/{id}/touch`.
pub async fn touch(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q, id)): MPath,
    JsonBody(b): JsonBody<TouchBody>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let rid = required_rid(b.reservation_id)?;
    let timeout = range("timeout", b.timeout, engine::limits::TIMEOUT_S_MAX as i64)?.unwrap_or(0);
    let (new, _) = st.engine.touch(&key(&auth, q), id, rid, timeout).await?;
    Ok(ok(
        json!({ "reservation_id": new.to_string(), "msg": "Touched" }),
    ))
}

/// `POST /queues/{q}/messages/{id}/release`.
pub async fn release(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q, id)): MPath,
    JsonBody(b): JsonBody<TouchBody>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let rid = required_rid(b.reservation_id)?;
    let delay = range("delay", b.delay, engine::limits::DELAY_S_MAX as i64)?.unwrap_or(0);
    st.engine.release(&key(&auth, q), id, rid, delay).await?;
    Ok(ok_msg("Released"))
}

/// `GET /queues/{q}/messages/{id}/subscribers`: push statuses, one per subscriber in order.
pub async fn push_statuses(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q, id)): MPath,
) -> ApiResult {
    let (push, states) = push_states(&st, key(&auth, q), &id).await?;
    Ok(ok(json!({ "subscribers": statuses_json(&push, &states) })))
}

/// Push status objects (contract §3.6): both `name` and `subscriber_name`, and the rest.
fn statuses_json(push: &crate::settings::Push, states: &[engine::PushSubState]) -> Vec<Value> {
    states
        .iter()
        .map(|s| {
            let mut v = json!({
                "name": s.subscriber, "subscriber_name": s.subscriber,
                "url": push.url_of(&s.subscriber), "status": s.status.as_str(),
                "status_code": s.status_code, "tries": s.tries,
                "retries_remaining": crate::push::decide::retries_remaining(s, push.retries),
                "retries_delay": push.retries_delay, "msg": s.msg,
            });
            if s.last_try_ms > 0 {
                v["last_try_at"] = json!(crate::time::rfc3339_ms(s.last_try_ms, false));
            }
            v
        })
        .collect()
}

/// `GET /queues/{q}/messages/{id}/deliveries`: the delivery log, the last attempts per
/// subscriber (time, status code, latency, error), oldest first.
pub async fn deliveries(
    State(st): State<AppState>,
    auth: ProjectAuth,
    Path((_, q, id)): MPath,
) -> ApiResult {
    let (_, states) = push_states(&st, key(&auth, q), &id).await?;
    let out: Vec<Value> = states
        .iter()
        .map(|s| {
            let attempts: Vec<Value> = s
                .attempts
                .iter()
                .map(|a| {
                    json!({
                        "at": crate::time::rfc3339_ms(a.at_ms, true),
                        "status_code": a.status_code, "latency_ms": a.latency_ms,
                        "error": a.error,
                    })
                })
                .collect();
            json!({"subscriber_name": s.subscriber, "status": s.status.as_str(), "attempts": attempts})
        })
        .collect();
    Ok(ok(json!({ "deliveries": out })))
}

async fn push_states(
    st: &AppState,
    key: QueueKey,
    id: &str,
) -> Result<(crate::settings::Push, Vec<engine::PushSubState>), ApiError> {
    let id = parse_id(id)?;
    let info = st.engine.queue_info(&key).await?;
    let Some(push) = Extra::of(&info.config)
        .push
        .filter(|_| info.config.kind.is_push())
    else {
        return Err(ApiError::bad_request(
            "Pull queues do not have push statuses",
        ));
    };
    let states = st.engine.push_statuses(&key, id).await?;
    Ok((push, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowing_post_parse_agrees_with_the_value_parse() {
        let bodies = [
            r#"{"messages":[{"body":"plain"},{"body":"t\tn\nq\"\\ \u00e9 \ud83d\ude00 /"}]}"#,
            r#"{"messages":[{"body":"a","delay":"5"},{"body":"b","delay":7.0,"push_headers":{"X-A":"1"}}]}"#,
            r#"{"messages":[{"body":"first","body":"second"}]}"#,
            r#"{"messages":[{"body":"a"}],"messages":[{"body":"b"},{"body":"c"}]}"#,
            r#" {"messages":[{"body":"x","extra":{"deep":[1,{"a":null}]}}],"other":1} "#,
            r#"{"messages":[{"body":5}]}"#,
            r#"{"messages":[{"body":{"a":"b"}}]}"#,
            r#"{"messages":[{"body":null}]}"#,
            r#"{"messages":[{"delay":1}]}"#,
            r#"{"messages":[]}"#,
            r#"{"messages":null}"#,
            r#"{}"#,
            r#"   "#,
            r#"[{"body":"x"}]"#,
            r#"{"messages":[{"body":"x"}]"#,
            r#"{"messages":[{"body":"x","delay":-1}]}"#,
            r#"{"messages":[{"body":"x","push_headers":{"Content-Type":"y"}}]}"#,
            "{\"messages\":[{\"body\":\"raw\u{7f}\u{e9}\"}]}",
        ];
        let path = ["elsewhere#q".to_string()];
        for raw in bodies {
            for path in [&[][..], &path[..]] {
                let slow = parse_json::<PostBody<Value>>(raw.as_bytes())
                    .and_then(|b| new_messages(b, path));
                let fast = post_messages(raw.as_bytes(), path);
                match (fast, slow) {
                    (Ok(f), Ok(s)) => assert_eq!(f, s, "{raw}"),
                    (Err(f), Err(s)) => assert_eq!((f.status, f.msg), (s.status, s.msg), "{raw}"),
                    (f, s) => panic!("{raw}: fast {f:?}, slow {s:?}"),
                }
            }
        }
        // A body without escapes is not copied out of the request.
        let raw = br#"{"messages":[{"body":"kept in place"},{"body":"esc\n"}]}"#;
        let m = post_messages(raw, &[]).unwrap();
        assert!(matches!(m[0].body, Cow::Borrowed(_)));
        assert_eq!(&m[1].body[..], b"esc\n");
    }

    const ID: &str = "1000000000000000007";
    const RID: &str = "00112233445566778899aabbccddeeff";

    /// Message ids and reservation ids, or the status and `msg` of the error.
    type Parsed = Result<Option<Vec<(u64, Option<String>)>>, (u16, String)>;

    fn items(body: &str) -> Parsed {
        delete_many_items(body.as_bytes())
            .map(|o| {
                o.map(|b| {
                    b.items
                        .into_iter()
                        .map(|i| (i.id.0, i.reservation_id.map(|r| r.to_string())))
                        .collect()
                })
            })
            .map_err(|e| (e.status.as_u16(), e.msg))
    }

    #[test]
    fn subscriber_names_in_a_batch_are_kept_beside_their_entries() {
        let body = format!(
            r#"{{"ids":["{ID}",{{"id":"{ID}","reservation_id":"{RID}","subscriber_name":"s1"}},{{"id":"{ID}","subscriber_name":""}}]}}"#
        );
        let b = delete_many_items(body.as_bytes()).unwrap().unwrap();
        assert_eq!(b.items.len(), 3);
        assert_eq!(b.subscribers, [None, Some("s1".to_string()), None]);
        let plain = format!(r#"{{"ids":["{ID}","{ID}"]}}"#);
        let b = delete_many_items(plain.as_bytes()).unwrap().unwrap();
        assert!(b.subscribers.is_empty(), "no names, no allocation");
        // Both paths read other spellings of the entries' keys alike.
        let odd = format!(
            r#"{{"ids":[{{"id":"{ID}","Reservation_Id":"{RID}","Subscriber_Name":"s1"}}]}}"#
        );
        let v: Value = serde_json::from_str(&odd).unwrap();
        let b = delete_many_items(odd.as_bytes()).unwrap().unwrap();
        assert_eq!(b, delete_items_from_value(&v).unwrap().unwrap());
        assert_eq!(b.subscribers, [Some("s1".to_string())]);
        // Any spelling of `ids` is a batch delete (a clear would empty the queue).
        let go = format!(r#"{{"Ids":[{{"Id":"{ID}"}}]}}"#);
        assert_eq!(items(&go), Ok(Some(vec![(ID.parse().unwrap(), None)])));
    }

    #[test]
    fn the_reserve_reply_is_what_serde_json_writes() {
        let bodies: [&[u8]; 7] = [
            b"plain ascii body",
            b"",
            b"quote \" and backslash \\ and /",
            b"controls \n\t\r\x08\x0c\x00\x1f and \x7f",
            "unicode \u{e9}\u{1F600} \u{2028}".as_bytes(),
            b"bad utf-8 \xff\xfe end",
            b"{\"json\": [1, 2]}",
        ];
        let got: Vec<engine::ReservedMessage> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| engine::ReservedMessage {
                id: MessageId(MessageId::FLOOR + i as u64 * 999),
                body: b.to_vec(),
                meta: Vec::new(),
                reserved_count: i as u32 + 1,
                reservation_id: (i % 3 != 0).then(|| ReservationId([i as u8 * 37; 16])),
                reserved_until_ms: 0,
            })
            .collect();
        let messages: Vec<Value> = got
            .iter()
            .map(|m| {
                let mut v = json!({
                    "body": String::from_utf8_lossy(&m.body),
                    "id": m.id.to_string(),
                    "reserved_count": m.reserved_count,
                });
                if let Some(r) = m.reservation_id {
                    v["reservation_id"] = json!(r.to_string());
                }
                v
            })
            .collect();
        let want = serde_json::to_vec(&json!({ "messages": messages })).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&reserve_reply(&got)),
            String::from_utf8_lossy(&want)
        );
        assert_eq!(reserve_reply(&[]), b"{\"messages\":[]}");
        let ids = [
            MessageId(MessageId::FLOOR),
            MessageId(MessageId::FLOOR + 42),
        ];
        let want = json!({
            "ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "msg": "Messages put on queue.",
        });
        assert_eq!(post_reply(&ids), serde_json::to_vec(&want).unwrap());
    }

    #[test]
    fn batch_delete_bodies_parse_the_same_on_both_paths() {
        let want = Ok(Some(vec![(1000000000000000007, Some(RID.to_string()))]));
        // The typed path.
        assert_eq!(
            items(&format!(
                r#"{{"ids":[{{"id":"{ID}","reservation_id":"{RID}"}}]}}"#
            )),
            want
        );
        // Through a Value: an escape in a string, a repeated key (the last one wins).
        let escaped = format!(
            r#"{{"ids":[{{"id":"{ID}","reservation_id":"\u0030{}"}}]}}"#,
            &RID[1..]
        );
        assert_eq!(items(&escaped), want);
        assert_eq!(
            items(&format!(
                r#"{{"ids":[],"ids":[{{"id":"{ID}","reservation_id":"{RID}"}}]}}"#
            )),
            want
        );
        // Bare string ids, null and "" reservation ids.
        let none = Ok(Some(vec![(1000000000000000007, None)]));
        assert_eq!(items(&format!(r#"{{"ids":["{ID}"]}}"#)), none);
        assert_eq!(
            items(&format!(
                r#"{{"ids":[{{"id":"{ID}","reservation_id":null}}]}}"#
            )),
            none
        );
        assert_eq!(
            items(&format!(
                r#"{{"ids":[{{"id":"{ID}","reservation_id":""}}]}}"#
            )),
            none
        );
        // No ids: a clear.
        assert_eq!(items(""), Ok(None));
        assert_eq!(items("{}"), Ok(None));
    }

    #[test]
    fn batch_delete_errors_are_the_documented_ones() {
        let bad = |b: &str| items(b).unwrap_err();
        assert_eq!(bad(r#"{"ids":[]}"#), (400, "ids must not be empty".into()));
        assert_eq!(bad(r#"{"ids":{}}"#), (400, "ids must be an array".into()));
        assert_eq!(bad(r#"{"ids":[5]}"#).0, 400);
        assert_eq!(bad(r#"{"ids":[{"reservation_id":"x"}]}"#).0, 400);
        assert_eq!(
            bad(&format!(
                r#"{{"ids":[{{"id":"{ID}","reservation_id":5}}]}}"#
            ))
            .0,
            400
        );
        assert_eq!(bad(r#"[{"ids":["1"]}]"#).0, 400);
        let many: Vec<String> = (0..101).map(|_| format!("\"{ID}\"")).collect();
        assert_eq!(
            bad(&format!(r#"{{"ids":[{}]}}"#, many.join(","))),
            (400, "at most 100 ids per request".into())
        );
        // A malformed id is not found.
        assert_eq!(bad(r#"{"ids":[{"id":"abc"}]}"#).0, 404);
    }

    #[test]
    fn a_malformed_reservation_id_is_one_that_matches_nothing() {
        let Ok(Some(b)) = delete_many_items(
            format!(r#"{{"ids":[{{"id":"{ID}","reservation_id":"zz"}}]}}"#).as_bytes(),
        ) else {
            panic!("parsed");
        };
        assert_eq!(b.items[0].reservation_id, Some(ReservationId::NEVER_ISSUED));
    }

    /// Results in a comparable form: ids and reservation ids, or status and `msg`.
    fn outcome(r: Result<Option<Batch>, ApiError>) -> Parsed {
        r.map(|o| {
            o.map(|b| {
                b.items
                    .into_iter()
                    .map(|i| (i.id.0, i.reservation_id.map(|r| r.to_string())))
                    .collect()
            })
        })
        .map_err(|e| (e.status.as_u16(), e.msg))
    }

    /// JSON text for one `ids` entry (or any value), written by hand so that escapes,
    /// repeated keys and odd types all occur.
    fn json_entry() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let id = prop_oneof![
            Just(format!("\"{ID}\"")),
            Just("\"1000000000000000000\"".to_string()),
            Just("\"\\u0031000000000000000007\"".to_string()),
            Just("\"abc\"".to_string()),
            Just("\"\"".to_string()),
            Just("12".to_string()),
            Just("null".to_string()),
        ];
        let rid = prop_oneof![
            Just(format!("\"{RID}\"")),
            Just(format!("\"{}\"", RID.to_uppercase())),
            Just("\"\"".to_string()),
            Just("\"zz\"".to_string()),
            Just(format!("\"\\u0030{}\"", &RID[1..])),
            Just("null".to_string()),
            Just("5".to_string()),
        ];
        prop_oneof![
            id.clone(),
            (id.clone(), proptest::option::of(rid.clone())).prop_map(|(i, r)| match r {
                Some(r) => format!("{{\"id\":{i},\"reservation_id\":{r}}}"),
                None => format!("{{\"id\":{i}}}"),
            }),
            (id.clone(), rid.clone(), id).prop_map(|(i, r, j)| format!(
                "{{\"reservation_id\":{r},\"id\":{i},\"x\":[1],\"id\":{j}}}"
            )),
            rid.prop_map(|r| format!("{{\"reservation_id\":{r}}}")),
            Just("[]".to_string()),
            Just("{}".to_string()),
        ]
    }

    proptest::proptest! {
        /// The typed path of a batch delete means exactly what the `Value` path means.
        #[test]
        fn batch_delete_bodies_mean_what_their_value_means(
            entries in proptest::collection::vec(json_entry(), 0..4),
            shape in 0u8..5,
        ) {
            let list = entries.join(",");
            let body = match shape {
                0 => format!("{{\"ids\":[{list}]}}"),
                1 => format!("{{\"other\":1,\"ids\":[{list}]}}"),
                2 => format!("{{\"ids\":[],\"ids\":[{list}]}}"),
                3 => format!("{{\"ids\":{}}}", entries.first().cloned().unwrap_or_default()),
                _ => format!(" {{ \"ids\" : [ {list} ] }} "),
            };
            let Ok(v) = serde_json::from_str::<Value>(&body) else {
                // Not JSON at all: both ways end in the same parse error.
                proptest::prop_assert_eq!(items(&body).map_err(|e| e.0), Err(400));
                return Ok(());
            };
            proptest::prop_assert_eq!(items(&body), outcome(delete_items_from_value(&v)), "{}", body);
            if let (Ok(Some(fast)), Ok(Some(slow))) =
                (delete_many_items(body.as_bytes()), delete_items_from_value(&v))
            {
                proptest::prop_assert_eq!(fast, slow, "{}", body);
            }
        }

        /// The hand-written reserve reply is what serde_json writes, for any body bytes.
        #[test]
        fn reserve_replies_match_serde_json_for_any_body(
            bodies in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 1..4),
            count in 0u32..3,
        ) {
            let got: Vec<engine::ReservedMessage> = bodies
                .iter()
                .enumerate()
                .map(|(i, b)| engine::ReservedMessage {
                    id: MessageId(MessageId::FLOOR + i as u64),
                    body: b.clone(),
                    meta: Vec::new(),
                    reserved_count: count,
                    reservation_id: Some(ReservationId([i as u8; 16])),
                    reserved_until_ms: 0,
                })
                .collect();
            let want: Vec<Value> = got
                .iter()
                .map(|m| json!({
                    "body": String::from_utf8_lossy(&m.body),
                    "id": m.id.to_string(),
                    "reservation_id": m.reservation_id.map(|r| r.to_string()),
                    "reserved_count": m.reserved_count,
                }))
                .collect();
            let want = serde_json::to_vec(&json!({ "messages": want })).unwrap();
            proptest::prop_assert_eq!(reserve_reply(&got), want);
        }
    }
}
