//! The HTTP server: our own accept loop over hyper's HTTP/1 connection so that every limit
//! is ours (connections, header size and read timeout, idle keep-alive, body size), plus
//! the per-request wrapper (method override, body limit, JSON errors, request log).
//! With a TLS acceptor every connection is HTTPS; the handshake must finish within the
//! header read timeout and counts against the connection cap like any connection.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use axum::routing::future::RouteFuture;
use futures_util::FutureExt;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::config::ServerConfig;
use crate::error::{ApiError, ErrorCause, ExpectedStatus};
use axum::response::IntoResponse;

/// Limits applied by the accept loop and the request wrapper.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_bytes_max: usize,
    pub header_bytes_max: usize,
    pub connections_max: usize,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Level of the request log line; `None`: only 5xx are logged.
    pub request_log: Option<tracing::Level>,
}

impl Limits {
    pub fn from_config(c: &ServerConfig) -> Limits {
        Limits {
            request_bytes_max: c.request_limit(),
            header_bytes_max: c.header_bytes_max,
            connections_max: c.connections_max,
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            keep_alive_timeout: Duration::from_millis(c.keep_alive_timeout_ms),
            shutdown_grace: Duration::from_millis(c.shutdown_grace_ms),
            request_log: c.request_log_level().unwrap_or(Some(tracing::Level::DEBUG)),
        }
    }
}

/// Per-connection activity, for the idle keep-alive timeout.
struct Activity {
    inflight: AtomicUsize,
    last_ms: AtomicU64,
    born: Instant,
    /// Woken when the last request in flight ends (the idle clock starts again).
    idle: tokio::sync::Notify,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        Duration::from_millis(
            (self.born.elapsed().as_millis() as u64)
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }
}

/// Applies `X-HTTP-Method-Override` on POST.
fn method_override(req: &mut axum::http::request::Parts) {
    if req.method != Method::POST {
        return;
    }
    let Some(v) = req
        .headers
        .get("x-http-method-override")
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let m = match v.trim().to_ascii_uppercase().as_str() {
        "DELETE" => Method::DELETE,
        "PATCH" => Method::PATCH,
        "PUT" => Method::PUT,
        "GET" => Method::GET,
        _ => return,
    };
    req.method = m;
}

/// Makes sure an error response is JSON `{"msg"}` (axum's own rejections are plain text).
/// Applied to every answer of the router (public for the `http_api` fuzz target, which
/// drives the router directly).
pub fn ensure_json(resp: Response<Body>) -> Response<Body> {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if is_json || resp.status().is_success() {
        return resp;
    }
    let status = resp.status();
    let msg = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "Request body is too large",
        s if s.is_client_error() => "Bad request",
        _ => "Internal server error",
    };
    ApiError::new(status, msg).into_response()
}

/// The path and query for the log, with any `oauth` token value replaced by `REDACTED`.
pub fn logged_target(path: &str, query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return path.to_string();
    };
    let parts: Vec<&str> = q
        .split('&')
        .map(|p| {
            let key = p.split_once('=').map_or(p, |(k, _)| k);
            // Compared as the auth code reads it: form-decoded (`%6Fauth` is `oauth`).
            let key = key.replace('+', " ");
            let key = percent_encoding::percent_decode_str(&key).decode_utf8_lossy();
            if key.trim().eq_ignore_ascii_case("oauth") {
                "oauth=REDACTED"
            } else {
                p
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

/// The project and queue named by an API path (`/3/projects/{pid}/queues/{q}/...`).
pub fn project_and_queue(path: &str) -> (Option<String>, Option<String>) {
    let mut segs = path.split('/');
    let decode = |s: &str| crate::extract::decode_path(s).unwrap_or_else(|_| s.to_string());
    match (segs.next(), segs.next(), segs.next(), segs.next()) {
        (Some(""), Some("3"), Some("projects"), Some(p)) if !p.is_empty() => {
            let queue = match (segs.next(), segs.next()) {
                (Some("queues"), Some(q)) if !q.is_empty() => Some(decode(q)),
                _ => None,
            };
            (Some(decode(p)), queue)
        }
        _ => (None, None),
    }
}

/// The level of a request's log line: `level` (the configured one, `None` for off), or
/// `eror` for a 5xx unless the response marks it as an expected answer
/// ([`ExpectedStatus`], the 503 of `GET /ready`).
fn request_line_level(
    level: Option<tracing::Level>,
    status: u16,
    expected: bool,
) -> Option<tracing::Level> {
    use tracing::Level;
    match level {
        _ if status >= 500 && !expected => Some(Level::ERROR),
        None => None,
        Some(l) if l <= Level::INFO => Some(l),
        Some(_) => Some(Level::DEBUG),
    }
}

/// What the request log line says of one answered request.
struct Answered<'a> {
    status: u16,
    /// The 5xx is an answer, not a failure.
    expected: bool,
    ms: f64,
    cause: Option<&'a str>,
}

/// One line per request: at `level`, or at `eror` with the cause for a 5xx.
fn log_request(level: Option<tracing::Level>, method: &Method, target: &str, a: Answered<'_>) {
    use tracing::Level;
    let Answered {
        status,
        expected,
        ms,
        cause,
    } = a;
    let Some(lvl) = request_line_level(level, status, expected) else {
        return;
    };
    // The fields below cost a few allocations and a float format: skip them when the
    // subscriber would drop the line anyway (the default request level is debug).
    let enabled = match lvl {
        Level::ERROR => tracing::enabled!(Level::ERROR),
        Level::WARN => tracing::enabled!(Level::WARN),
        Level::INFO => tracing::enabled!(Level::INFO),
        _ => tracing::enabled!(Level::DEBUG),
    };
    if !enabled {
        return;
    }
    let (project, queue) = project_and_queue(target.split('?').next().unwrap_or(target));
    let (project, queue) = (project.as_deref(), queue.as_deref());
    let duration_ms = format!("{ms:.1}");
    let method = method.as_str();
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                method,
                path = target,
                status,
                duration_ms,
                project,
                queue,
                error = cause,
                "request"
            )
        };
    }
    match lvl {
        Level::ERROR => emit!(Level::ERROR),
        Level::WARN => emit!(Level::WARN),
        Level::INFO => emit!(Level::INFO),
        _ => emit!(Level::DEBUG),
    }
}

/// The limits on a request: the size of its head, the size of its body, and the longest
/// wait for more of the body.
#[derive(Clone, Copy)]
struct BodyRules {
    head_max: usize,
    bytes_max: usize,
    idle_max: Duration,
}

/// The size of a request head as sent: request line and header lines, CRLFs included.
fn head_bytes(req: &axum::http::request::Parts) -> usize {
    let target = req.uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method.as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 2;
    let headers: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + headers + 2
}

/// A request body as the router gets it: at most the request limit, and given up when it
/// stops arriving.
type LimitedBody = http_body_util::Limited<IdleTimeoutBody<Incoming>>;

/// Where a request body the router left unread comes back to, to be drained.
type UnreadSlot<B = LimitedBody> = Arc<parking_lot::Mutex<Option<B>>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body handed to the router. Dropped before its end (a handler that ignores
/// the body, or stops at an error of its own), it puts the rest back in its slot: the
/// response then waits until [`drain`] has read it. hyper closes a connection whose request
/// body was left unread, and with bytes still unread in the socket the kernel sends a TCP
/// reset, which can destroy the response before the client has read it.
struct ReturnOnDrop<B: http_body::Body = LimitedBody> {
    /// `None` once the body ended or failed (nothing to drain then).
    body: Option<B>,
    slot: UnreadSlot<B>,
}

impl<B: http_body::Body> Drop for ReturnOnDrop<B> {
    fn drop(&mut self) {
        if let Some(b) = self.body.take().filter(|b| !b.is_end_stream()) {
            *self.slot.lock() = Some(b);
        }
    }
}

impl<B> http_body::Body for ReturnOnDrop<B>
where
    B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        use std::task::Poll;
        let Some(body) = self.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            // Ended, over the limit, or stalled: nothing more to read.
            self.body = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

/// How much of an unread request body [`drain`] reads at most, and for how long, before it
/// gives up and closes the connection instead. Draining is for the common case (a client
/// that sends a body, even a large one, with a request that ignores it, and reads the
/// answer); without a bound, a client could keep a connection (and its slot) busy with a
/// slow body after a 401.
const DRAIN_BYTES_MAX: usize = 1 << 20;
const DRAIN_TIME_MAX: Duration = Duration::from_secs(2);

/// Reads and discards the rest of a request body the router left unread, then lets the
/// response go: up to [`DRAIN_BYTES_MAX`] within [`DRAIN_TIME_MAX`]. A body larger or slower
/// than that, over the request limit (only a chunked one can be: a declared length over it
/// is refused before routing), or broken leaves the answer as it is, on a connection that
/// then closes: the handler has acted on the request, so its answer is the truth (a 413
/// after a queue was deleted would say the request failed).
async fn drain<B>(mut body: B, mut resp: Response<Body>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes, Error = BoxError> + Unpin,
{
    use http_body_util::BodyExt;
    let read_all = async {
        let mut read = 0usize;
        loop {
            match body.frame().await {
                None => return Ok(()),
                Some(Ok(f)) => {
                    read += f.data_ref().map_or(0, bytes::Bytes::len);
                    if read > DRAIN_BYTES_MAX {
                        return Err(format!("over {DRAIN_BYTES_MAX} bytes"));
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    };
    let why = match tokio::time::timeout(DRAIN_TIME_MAX, read_all).await {
        Ok(Ok(())) => return resp,
        Ok(Err(e)) => e,
        Err(_) => format!("not done in {DRAIN_TIME_MAX:?}"),
    };
    tracing::debug!(error = %why, "the unread request body was not drained; closing");
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Why a request body was given up: no data came for this long. Read as a 408.
#[derive(Debug, thiserror::Error)]
#[error("no request body data came for {0:?}")]
pub struct BodyStalled(pub Duration);

/// A request body that fails with [`BodyStalled`] when no data arrives for `idle`. hyper's
/// header read timeout ends with the headers: a client that then stalls, or stops in the
/// middle of its body, would hold its connection (and a connection slot) forever. The
/// timer is made only once the body has to be waited for; a small body that came with the
/// headers costs nothing.
struct IdleTimeoutBody<B> {
    inner: B,
    idle: Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// A frame came since the timer was last armed.
    progressed: bool,
}

impl<B> IdleTimeoutBody<B> {
    fn new(inner: B, idle: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            idle,
            timer: None,
            progressed: false,
        }
    }
}

impl<B> http_body::Body for IdleTimeoutBody<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            this.progressed = true;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let idle = this.idle;
        let timer = match &mut this.timer {
            Some(t) => {
                if std::mem::take(&mut this.progressed) {
                    t.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                t
            }
            None => {
                this.progressed = false;
                this.timer.insert(Box::pin(tokio::time::sleep(idle)))
            }
        };
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What [`handle`] keeps of a request while the router works on it.
struct Pending {
    start: Instant,
    method: Method,
    target: String,
    /// Where the request body comes back if the router leaves some of it unread; `None`
    /// for a request without a body.
    unread: Option<UnreadSlot>,
    /// The client waits for `100 Continue` before it sends the body: a body left unread is
    /// not drained (that would ask for the upload), and the connection closes after the
    /// answer, which says so.
    expects_continue: bool,
}

/// Prepares a request for the router: the size limit on the body, the method override, and
/// an early 413 when the declared length is over the limit. The request itself moves into
/// the router's future here, outside `handle`'s state, so a long poll does not keep a
/// second copy of it.
fn route(
    router: &mut Router,
    rules: BodyRules,
    req: Request<Incoming>,
) -> (Pending, Result<RouteFuture<Infallible>, Response<Body>>) {
    let start = Instant::now();
    let limit = rules.bytes_max;
    let (mut parts, body) = req.into_parts();
    let head_too_large = head_bytes(&parts) > rules.head_max;
    method_override(&mut parts);
    let mut pending = Pending {
        start,
        method: parts.method.clone(),
        target: logged_target(parts.uri.path(), parts.uri.query()),
        unread: None,
        expects_continue: false,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if head_too_large {
        let msg = format!(
            "Request header fields too large: the request line and headers may take at most {} bytes",
            rules.head_max
        );
        let err = ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, msg);
        return (pending, Err(err.into_response()));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return (
            pending,
            Err(ApiError::too_large("Request body is too large").into_response()),
        );
    }
    let body = http_body_util::Limited::new(IdleTimeoutBody::new(body, rules.idle_max), limit);
    // A client waiting for `100 Continue` has not sent its body: nothing to drain, and
    // reading it would ask for the upload (see `Pending::expects_continue`).
    pending.expects_continue = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let body = if http_body::Body::is_end_stream(&body) {
        Body::new(body)
    } else {
        let slot = UnreadSlot::default();
        pending.unread = Some(slot.clone());
        Body::new(ReturnOnDrop {
            body: Some(body),
            slot,
        })
    };
    let req = Request::from_parts(parts, body);
    // `Router` is always ready (its `poll_ready` returns `Ready`), so it is called directly.
    (pending, Ok(router.call(req)))
}

/// Serves one request. Not an `async fn`: its arguments would stay in the future for as
/// long as the request runs (a long poll: up to 30 s), so the request is handed to the
/// router first and the future keeps only the router's future and what the log line needs.
/// A body the router left unread is drained (see [`ReturnOnDrop`]) before the answer goes.
fn handle(
    mut router: Router,
    rules: BodyRules,
    request_log: Option<tracing::Level>,
    req: Request<Incoming>,
) -> impl Future<Output = Response<Body>> {
    let (mut pending, routed) = route(&mut router, rules, req);
    let fut = match routed {
        Ok(f) => Either::Left(f),
        Err(r) => Either::Right(std::future::ready(Ok(r))),
    };
    fut.then(move |routed| {
        let resp = match routed {
            Ok(r) => r,
            Err(never) => match never {},
        };
        match pending.unread.take().and_then(|slot| slot.lock().take()) {
            None => Either::Left(std::future::ready(finish(resp, pending, request_log))),
            Some(_) if pending.expects_continue => {
                // hyper closes a connection whose body was never asked for: say so
                // (RFC 9110 §10.1.1), so that the client does not send its next request on it.
                let mut resp = resp;
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                Either::Left(std::future::ready(finish(resp, pending, request_log)))
            }
            Some(body) => Either::Right(Box::pin(async move {
                let resp = drain(body, resp).await;
                finish(resp, pending, request_log)
            })),
        }
    })
}

/// The router's response made JSON (a 5xx always carries a cause, unless it is an expected
/// answer), then logged.
fn finish(
    routed: Response<Body>,
    pending: Pending,
    request_log: Option<tracing::Level>,
) -> Response<Body> {
    let expected = routed.extensions().get::<ExpectedStatus>().is_some();
    let mut resp = if routed.status().is_server_error()
        && !expected
        && routed.extensions().get::<ErrorCause>().is_none()
    {
        let status = routed.status();
        let mut r = ensure_json(routed);
        r.extensions_mut().insert(ErrorCause(format!(
            "{status} from the router without a cause"
        )));
        r
    } else {
        ensure_json(routed)
    };
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let answered = Answered {
        status: resp.status().as_u16(),
        expected,
        ms: pending.start.elapsed().as_secs_f64() * 1000.0,
        cause: resp.extensions().get::<ErrorCause>().map(|c| c.0.as_str()),
    };
    log_request(request_log, &pending.method, &pending.target, answered);
    resp
}

/// Serves one accepted connection (plain or TLS) until it ends or shutdown closes it.
///
/// Not an `async fn`, for the same reason as [`handle`]: the connection is built here, and
/// the future keeps only it and the idle clock (this future is most of what an idle long
/// poll costs in memory).
fn serve_connection<I>(
    io: I,
    router: Router,
    limits: Limits,
    mut stop_rx: watch::Receiver<bool>,
) -> impl Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let act = Arc::new(Activity {
        inflight: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
        born: Instant::now(),
        idle: tokio::sync::Notify::new(),
    });
    let act2 = act.clone();
    let rules = BodyRules {
        head_max: limits.header_bytes_max,
        bytes_max: limits.request_bytes_max,
        idle_max: limits.header_read_timeout,
    };
    let request_log = limits.request_log;
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let act = act2.clone();
        act.inflight.fetch_add(1, Ordering::Relaxed);
        handle(router.clone(), rules, request_log, req).map(move |resp| {
            act.touch();
            if act.inflight.fetch_sub(1, Ordering::Relaxed) == 1 {
                act.idle.notify_one();
            }
            Ok::<_, Infallible>(resp)
        })
    });
    let mut conn = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper answers a head over its read buffer with a bare 431 (no JSON body), so its
            // buffer is twice our limit and `route` gives heads over the limit a JSON 431.
            .max_buf_size(limits.header_bytes_max * 2)
            // No `half_close`: a client's EOF ends its request. A long poll whose client has
            // gone must stop waiting rather than reserve a message nobody will receive (with
            // `half_close`, hyper does not even read the socket while a request runs).
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc)),
    );
    let keep_alive_timeout = limits.keep_alive_timeout;
    async move {
        let mut closing = *stop_rx.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        // The idle keep-alive clock: one timer per connection, armed for when the connection
        // would have been idle too long; no wakeups while a request (a long poll) is in flight.
        loop {
            let busy = act.inflight.load(Ordering::Relaxed) > 0;
            let idle_deadline =
                tokio::time::Instant::now() + keep_alive_timeout.saturating_sub(act.idle_for());
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                _ = stop_rx.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = act.idle.notified(), if !closing && busy => {}
                _ = tokio::time::sleep_until(idle_deadline), if !closing && !busy => {
                    if act.inflight.load(Ordering::Relaxed) == 0
                        && act.idle_for() >= keep_alive_timeout
                    {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown` resolves,
/// then drains connections for at most `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let sem = Arc::new(Semaphore::new(limits.connections_max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = sem.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (sock, _addr) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = sock.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        let router = router.clone();
        let limits = limits.clone();
        let stop_rx = stop_rx.clone();
        let tls = tls.clone();
        // Plain and TLS connections are separate tasks: a task's memory is the size of its
        // largest state, and a waiting plain connection must not pay for the TLS session
        // (10,000 idle long polls are a target).
        match tls {
            None => {
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_connection(sock, router, limits, stop_rx).await;
                });
            }
            Some(tls) => {
                tokio::spawn(Box::pin(async move {
                    let _permit = permit;
                    match tokio::time::timeout(limits.header_read_timeout, tls.accept(sock)).await {
                        Ok(Ok(stream)) => serve_connection(stream, router, limits, stop_rx).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }));
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = limits.connections_max as u32;
    if tokio::time::timeout(limits.shutdown_grace, sem.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; cutting the remaining connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_targets_never_carry_a_token() {
        assert_eq!(logged_target("/3/stats", None), "/3/stats");
        assert_eq!(
            logged_target(
                "/3/projects/p/queues",
                Some("per_page=5&oauth=s3cr3t&OAUTH=x")
            ),
            "/3/projects/p/queues?per_page=5&oauth=REDACTED&oauth=REDACTED"
        );
        // However the key is encoded, as long as it decodes to `oauth`.
        assert_eq!(
            logged_target("/3/stats", Some("%6Fauth=s3cr3t&o%61uth=x&a=1")),
            "/3/stats?oauth=REDACTED&oauth=REDACTED&a=1"
        );
        assert_eq!(
            project_and_queue("/3/projects/p1/queues/a%20b/messages/1"),
            (Some("p1".to_string()), Some("a b".to_string()))
        );
        assert_eq!(
            project_and_queue("/3/projects/p1/queues"),
            (Some("p1".to_string()), None)
        );
        assert_eq!(project_and_queue("/health"), (None, None));
    }

    /// Collects formatted log output.
    #[derive(Clone, Default)]
    struct Captured(Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(level: &str, f: impl FnOnce()) -> String {
        let out = Captured::default();
        let w = out.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(move || w.clone())
            .event_format(crate::logfmt::Logfmt)
            .finish();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(out.0.lock().clone()).expect("utf-8")
    }

    /// A body that sends one byte every 10 ms, forever.
    struct Trickle(Option<std::pin::Pin<Box<tokio::time::Sleep>>>);

    impl http_body::Body for Trickle {
        type Data = bytes::Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
            use std::task::Poll;
            let sleep = self
                .0
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(10))));
            match sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    self.0 = None;
                    Poll::Ready(Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(
                        b"x",
                    )))))
                }
            }
        }
    }

    /// A body whose data never comes.
    struct Silent;

    impl http_body::Body for Silent {
        type Data = bytes::Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
            std::task::Poll::Pending
        }
    }

    fn full(n: usize, limit: usize) -> http_body_util::Limited<http_body_util::Full<bytes::Bytes>> {
        http_body_util::Limited::new(http_body_util::Full::new(vec![b'x'; n].into()), limit)
    }

    fn answer() -> Response<Body> {
        crate::response::ok(serde_json::json!({ "msg": "handled" }))
    }

    #[tokio::test]
    async fn an_unread_body_is_drained_up_to_the_limit_and_over_it_closes() {
        use http_body_util::BodyExt;
        let text = |r: Response<Body>| async move {
            let status = r.status();
            let close = r.headers().get(header::CONNECTION).cloned();
            let b = r.into_body().collect().await.expect("body").to_bytes();
            (status, close, String::from_utf8(b.to_vec()).expect("utf-8"))
        };
        // Within the limit: read to its end, the handler's answer unchanged.
        let (s, close, b) = text(drain(full(100_000, 200_000), answer()).await).await;
        assert_eq!(
            (s, close, b.as_str()),
            (StatusCode::OK, None, "{\"msg\":\"handled\"}")
        );
        // Over it: the handler's answer stands (it has acted), and the connection closes.
        let (s, close, b) = text(drain(full(300_000, 200_000), answer()).await).await;
        assert_eq!(
            (s, close, b.as_str()),
            (
                StatusCode::OK,
                Some(HeaderValue::from_static("close")),
                "{\"msg\":\"handled\"}"
            )
        );
        // Within the limit but over what a drain reads: the connection closes.
        let (s, close, _) = text(drain(full(DRAIN_BYTES_MAX + 1, 30 << 20), answer()).await).await;
        assert_eq!(
            (s, close),
            (StatusCode::OK, Some(HeaderValue::from_static("close")))
        );
        // A body that keeps trickling is given up after the drain's time limit.
        let started = Instant::now();
        let (s, close, _) = text(drain(Trickle(None), answer()).await).await;
        assert_eq!(
            (s, close),
            (StatusCode::OK, Some(HeaderValue::from_static("close")))
        );
        assert!(started.elapsed() < DRAIN_TIME_MAX + Duration::from_secs(1));
        // A body that stops arriving is given up after the idle limit; the answer stands
        // and the connection closes.
        let stalled = http_body_util::Limited::new(
            IdleTimeoutBody::new(Silent, Duration::from_millis(20)),
            1000,
        );
        let (s, close, _) = text(drain(stalled, answer()).await).await;
        assert_eq!(
            (s, close),
            (StatusCode::OK, Some(HeaderValue::from_static("close")))
        );
    }

    #[tokio::test]
    async fn a_body_dropped_unread_comes_back_to_its_slot_and_a_read_one_does_not() {
        use http_body_util::BodyExt;
        let wrap = |n| {
            let slot: UnreadSlot<_> = Arc::default();
            let body = ReturnOnDrop {
                body: Some(full(n, 1000)),
                slot: slot.clone(),
            };
            (body, slot)
        };
        let (body, slot) = wrap(500);
        drop(body);
        let back = slot.lock().take().expect("the unread body came back");
        assert_eq!(back.collect().await.expect("rest").to_bytes().len(), 500);

        let (body, slot) = wrap(500);
        let got = body.collect().await.expect("read").to_bytes();
        assert_eq!(got.len(), 500);
        assert!(slot.lock().is_none(), "read to its end: nothing to drain");

        // Over the limit when read: the handler's own 413 stands, nothing is drained.
        let (body, slot) = wrap(5000);
        assert!(body.collect().await.is_err());
        assert!(slot.lock().is_none());
    }

    fn answered(status: u16, ms: f64, cause: Option<&str>) -> Answered<'_> {
        Answered {
            status,
            expected: false,
            ms,
            cause,
        }
    }

    #[test]
    fn request_lines_follow_the_level_and_a_5xx_is_an_error_with_its_cause() {
        let get = Method::GET;
        let text = logged("info", || {
            log_request(
                Some(tracing::Level::DEBUG),
                &get,
                "/3/projects/p/queues/q",
                answered(200, 1.25, None),
            );
            log_request(
                None,
                &get,
                "/3/projects/p/queues/q/messages",
                answered(500, 3.0, Some("fdatasync failed: \"disk\"")),
            );
            log_request(
                Some(tracing::Level::INFO),
                &get,
                "/health",
                answered(200, 0.5, None),
            );
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(" lvl=eror msg=request method=GET path=/3/projects/p/queues/q/messages status=500 duration_ms=3.0 project=p queue=q error=\"fdatasync failed: \\\"disk\\\"\""),
            "{text}"
        );
        assert!(
            lines[1].ends_with(
                " lvl=info msg=request method=GET path=/health status=200 duration_ms=0.5"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_expected_5xx_takes_the_request_level_and_any_other_5xx_is_an_error() {
        use tracing::Level;
        for level in [None, Some(Level::DEBUG), Some(Level::INFO)] {
            assert_eq!(request_line_level(level, 503, false), Some(Level::ERROR));
            assert_eq!(request_line_level(level, 500, false), Some(Level::ERROR));
            assert_eq!(request_line_level(level, 503, true), level);
            assert_eq!(request_line_level(level, 200, false), level);
        }
        // `warn` and `error` as request levels are not made louder by an expected 503.
        assert_eq!(
            request_line_level(Some(Level::WARN), 503, true),
            Some(Level::WARN)
        );
    }

    /// The 503 of `GET /ready` from the real router, through the request wrapper's
    /// `finish`: logged at the request level, without an error cause; and not at all with
    /// the request log off.
    #[tokio::test]
    async fn ready_503_is_logged_like_any_request() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = engine::Engine::open(engine::EngineConfig::new(dir.path())).expect("open");
        let (creds, _) =
            crate::auth::Credentials::bootstrap(&engine, Some("adm-token"), None, None)
                .await
                .expect("credentials");
        let state =
            crate::state::AppState::new(engine.clone(), creds, Duration::from_secs(60), None);
        let router = crate::router::build(state);
        let not_ready = || async {
            let req = Request::get("/ready").body(Body::empty()).expect("request");
            let resp = router.clone().oneshot(req).await.expect("call");
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            resp
        };
        let pending = || Pending {
            start: Instant::now(),
            method: Method::GET,
            target: "/ready".into(),
            unread: None,
            expects_continue: false,
        };
        let resp = not_ready().await;
        let text = logged("info", || {
            let resp = finish(resp, pending(), Some(tracing::Level::INFO));
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(resp.extensions().get::<ErrorCause>().is_none());
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].contains(" lvl=info msg=request method=GET path=/ready status=503 "),
            "{text}"
        );
        assert!(!lines[0].contains("error="), "{text}");
        let resp = not_ready().await;
        let text = logged("debug", || {
            finish(resp, pending(), None);
        });
        assert_eq!(text, "", "request log off: no line for the 503 of /ready");
        engine.close();
    }
}
/// Every connection waiting in a long poll keeps these futures alive, so their sizes are
/// the server's memory per idle connection (target: 10,000 long polls in 100 MB, with
/// hyper's two 8 KiB buffers on top). A change that puts a request, a connection or a rare
/// path inline again fails here rather than in the benchmark.
#[cfg(test)]
mod future_sizes {
    use axum::extract::{Path, State};
    use hyper::body::Incoming;

    use crate::auth::ProjectAuth;
    use crate::messages::ReserveOptionsOf;
    use crate::state::AppState;

    /// The size of the future `f` returns, without calling it.
    fn ret<A, F>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_futures_of_a_waiting_long_poll_stay_small() {
        let conn = ret(
            |x: (
                tokio::net::TcpStream,
                axum::Router,
                super::Limits,
                tokio::sync::watch::Receiver<bool>,
            )| super::serve_connection(x.0, x.1, x.2, x.3),
        );
        let handle = ret(|x: (axum::Router, axum::http::Request<Incoming>)| {
            let rules = super::BodyRules {
                head_max: 1,
                bytes_max: 1,
                idle_max: std::time::Duration::from_secs(1),
            };
            super::handle(x.0, rules, None, x.1)
        });
        type ReserveArgs = (
            State<AppState>,
            ProjectAuth,
            Path<(String, String)>,
            ReserveOptionsOf,
        );
        let reserve = ret(|x: ReserveArgs| crate::messages::reserve(x.0, x.1, x.2, x.3));
        eprintln!("serve_connection {conn} B, handle {handle} B, reserve {reserve} B");
        assert!(conn <= 512, "serve_connection's future is {conn} B");
        assert!(handle <= 512, "handle's future is {handle} B");
        assert!(
            reserve <= 1024,
            "the reserve handler's future is {reserve} B"
        );
    }
}
