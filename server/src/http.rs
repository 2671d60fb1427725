//! The HTTP server: our own accept loop over hyper's HTTP/1 connection so that every limit
//! is ours (connections, header size and read timeout, idle keep-alive, body size), plus
//! the per-request wrapper (method override, body limit, JSON errors, request log).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::error::ApiError;
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
        }
    }
}

/// Per-connection activity, for the idle keep-alive timeout.
struct Activity {
    inflight: AtomicUsize,
    last_ms: AtomicU64,
    born: Instant,
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
fn method_override(req: &mut Request<Body>) {
    if req.method() != Method::POST {
        return;
    }
    let Some(v) = req
        .headers()
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
    *req.method_mut() = m;
}

/// Makes sure an error response is JSON `{"msg"}` (axum's own rejections are plain text).
fn ensure_json(resp: Response<Body>) -> Response<Body> {
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

async fn handle(router: Router, limit: usize, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let mut req = Request::from_parts(parts, Body::new(http_body_util::Limited::new(body, limit)));
    method_override(&mut req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut resp = if declared.is_some_and(|n| n > limit as u64) {
        let mut r = ApiError::too_large("Request body is too large").into_response();
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else {
        match router.oneshot(req).await {
            Ok(r) => ensure_json(r),
            Err(never) => match never {},
        }
    };
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = resp.status().as_u16();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    if status >= 400 {
        tracing::info!(method = %method, path = %path, status, duration_ms = format!("{ms:.1}"), "request");
    } else {
        tracing::debug!(method = %method, path = %path, status, duration_ms = format!("{ms:.1}"), "request");
    }
    resp
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains connections for
/// at most `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
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
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let act = Arc::new(Activity {
                inflight: AtomicUsize::new(0),
                last_ms: AtomicU64::new(0),
                born: Instant::now(),
            });
            let act2 = act.clone();
            let limit = limits.request_bytes_max;
            let svc = tower::service_fn(move |req: Request<Incoming>| {
                let router = router.clone();
                let act = act2.clone();
                async move {
                    act.inflight.fetch_add(1, Ordering::Relaxed);
                    let resp = handle(router, limit, req).await;
                    act.inflight.fetch_sub(1, Ordering::Relaxed);
                    act.touch();
                    Ok::<_, Infallible>(resp)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.header_bytes_max)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(sock), TowerToHyperService::new(svc));
            tokio::pin!(conn);
            let tick = (limits.keep_alive_timeout / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(1));
            let mut closing = false;
            loop {
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
                    _ = tokio::time::sleep(tick), if !closing => {
                        if act.inflight.load(Ordering::Relaxed) == 0 && act.idle_for() >= limits.keep_alive_timeout {
                            closing = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
        });
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
