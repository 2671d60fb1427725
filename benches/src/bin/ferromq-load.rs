//! `ferromq-load`: a bounded HTTP/1.1 load generator for the IronMQ v3 API of ferromq.
//!
//! One keep-alive connection per task (TCP_NODELAY). By default each connection is a plain
//! HTTP/1.1 exchange written and read by its own task (`--client lean`: one `write` and
//! usually one `read` per request, heads parsed with `httparse`); `--client hyper` uses
//! hyper 1's client, which runs a second task per connection. Modes:
//!
//! * `post`     — POST batches of `--batch` messages of `--body-bytes` bytes (default 100 × 100 B).
//! * `post1`    — POST one message per request.
//! * `cycle`    — half the connections post batches, half reserve `n=100` and DELETE the
//!   reserved batch with ids and reservation ids; throughput = consumed messages/s. The
//!   summary also gives the messages produced and the queue's size at the end (`backlog`):
//!   closed-loop producers outrun the consumers and the queue grows; with `--rate` pacing
//!   the producers, a backlog that stays small means the consumers kept up.
//! * `longpoll` — all connections but `--producers` long-poll with `wait=30`; producers post
//!   single messages carrying their send time (at `--rate`, default 200/s); reports the
//!   wake latency (post sent → message received by a waiting consumer).
//!
//! * `push`     — starts a local subscriber on 127.0.0.1 that answers 200 at once, makes the
//!   queue a push queue delivering to it, and posts batches of `--batch` messages carrying
//!   their send time (at `--rate` requests/s, or closed-loop); reports deliveries/s and the
//!   post-to-delivery latency (post sent → request received by the subscriber).
//!
//! `--raw-url` (post mode): POST the same body to that exact URL instead (for comparing
//! against nginx's `return 200`). The run always ends by itself: `--duration` is capped at
//! 120 s and in-flight requests are abandoned at the deadline. Only the given URL is
//! contacted. Progress goes to stderr every second; the summary to stdout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use counters::Shared;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const DURATION_CAP_S: u64 = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Post,
    Post1,
    Cycle,
    Longpoll,
    Push,
}

#[derive(Debug, Parser)]
#[command(
    name = "ferromq-load",
    about = "Bounded HTTP load generator for ferromq (IronMQ v3 API)"
)]
struct Args {
    /// What to run.
    #[arg(value_enum)]
    mode: Mode,
    /// Base URL of the server, plain HTTP.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Project id.
    #[arg(
        long,
        env = "FERROMQ_PROJECT_ID",
        default_value = "000000000000000000000001"
    )]
    project: String,
    /// OAuth token.
    #[arg(long, env = "FERROMQ_TOKEN", default_value = "")]
    token: String,
    /// Queue name.
    #[arg(long, default_value = "bench")]
    queue: String,
    /// Concurrent keep-alive connections (one task each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds to run (capped at 120).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Fixed total request rate (req/s) instead of closed-loop; in `cycle` it paces the
    /// producers, in `longpoll` it is the message rate (default 200).
    #[arg(long)]
    rate: Option<f64>,
    /// Messages per POST (`post`, `cycle`).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Bytes per message body.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Messages per reservation (`cycle`).
    #[arg(long, default_value_t = 100)]
    reserve_n: usize,
    /// Producer connections in `longpoll` mode.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// `post` mode only: POST the same body to this exact URL instead of the queue.
    #[arg(long)]
    raw_url: Option<String>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds at the start whose latencies are not recorded (connections open, caches warm).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// List the stalls: requests slower than this many ms, grouped into time clusters with
    /// their wall-clock start (to match against server-side timestamps).
    #[arg(long)]
    slow_ms: Option<u64>,
    /// The HTTP client: `lean` (one task per connection writes the request and reads the
    /// response itself) or `hyper` (hyper 1's client: a request task and a connection task).
    #[arg(long, value_enum, default_value_t = Client::Lean)]
    client: Client,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Client {
    Lean,
    Hyper,
}

/// Counters and histograms shared by all tasks.
mod counters {
    use super::*;

    pub struct Shared {
        pub requests: AtomicU64,
        pub messages: AtomicU64,
        /// `cycle` and `push`: messages the producers posted (`messages` counts them when
        /// consumed or delivered).
        pub produced: AtomicU64,
        /// `cycle`: the queue's size at the end (GET of the queue), if it could be read.
        pub backlog: std::sync::Mutex<Option<u64>>,
        pub errors: AtomicU64,
        pub error_kinds: std::sync::Mutex<BTreeMap<String, u64>>,
        pub hists: std::sync::Mutex<BTreeMap<&'static str, Histogram<u64>>>,
        /// Slowest latency (µs) since the last progress line.
        pub window_max: AtomicU64,
        /// (intended send time as µs since the Unix epoch, latency µs) of slow requests.
        pub slow: std::sync::Mutex<Vec<(u64, u64)>>,
    }

    impl Shared {
        pub fn new() -> Shared {
            Shared {
                requests: AtomicU64::new(0),
                messages: AtomicU64::new(0),
                produced: AtomicU64::new(0),
                backlog: std::sync::Mutex::new(None),
                errors: AtomicU64::new(0),
                error_kinds: std::sync::Mutex::new(BTreeMap::new()),
                hists: std::sync::Mutex::new(BTreeMap::new()),
                window_max: AtomicU64::new(0),
                slow: std::sync::Mutex::new(Vec::new()),
            }
        }

        pub fn error(&self, kind: String) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut m) = self.error_kinds.lock() {
                *m.entry(kind).or_insert(0) += 1;
            }
        }

        pub fn merge(&self, name: &'static str, h: &Histogram<u64>) {
            if let Ok(mut m) = self.hists.lock() {
                let e = m.entry(name).or_insert_with(new_hist);
                let _ = e.add(h);
            }
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds")
}

/// Where to connect and what to send.
#[derive(Clone)]
struct Target {
    authority: String,
    connect: String,
    auth: String,
    client: Client,
}

impl Target {
    fn parse(url: &str, token: &str, client: Client) -> Result<(Target, String)> {
        let uri: Uri = url.parse().with_context(|| format!("bad url {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only plain http:// URLs are supported: {url}");
        }
        let auth = uri
            .authority()
            .ok_or_else(|| anyhow!("url without host: {url}"))?;
        let port = auth.port_u16().unwrap_or(80);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok((
            Target {
                authority: auth.as_str().to_string(),
                connect: format!(
                    "{}:{port}",
                    auth.host().trim_start_matches('[').trim_end_matches(']')
                ),
                auth: format!("OAuth {token}"),
                client,
            },
            path,
        ))
    }
}

/// One keep-alive connection, reconnected after a failure.
struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// `--client lean`: the connection, the request being written, and what has been read.
    stream: Option<TcpStream>,
    out: Vec<u8>,
    input: BytesMut,
}

impl Conn {
    fn new(target: Target) -> Conn {
        Conn {
            target,
            sender: None,
            stream: None,
            out: Vec::new(),
            input: BytesMut::new(),
        }
    }

    async fn connect(target: &Target) -> Result<TcpStream> {
        let stream = TcpStream::connect(&target.connect)
            .await
            .context("connect")?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(stream)
    }

    /// Sends one request; returns status and the whole response body.
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        match self.target.client {
            Client::Lean => {
                let r = self.exchange_lean(method, path, &body).await;
                if r.is_err() {
                    self.stream = None;
                }
                r
            }
            Client::Hyper => self.send_hyper(method, path, body).await,
        }
    }

    /// `--client lean`: writes the request and reads its response on this task.
    async fn exchange_lean(
        &mut self,
        method: Method,
        path: &str,
        body: &[u8],
    ) -> Result<(StatusCode, Bytes)> {
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if self.stream.is_none() {
            self.stream = Some(Conn::connect(&self.target).await?);
            self.input.clear();
        }
        let stream = self.stream.as_mut().expect("connected");
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.target.authority,
            self.target.auth,
            body.len()
        )
        .expect("write to a Vec");
        self.out.extend_from_slice(body);
        stream.write_all(&self.out).await.context("write")?;
        let mut head: Option<Head> = None;
        loop {
            if head.is_none() {
                head = Head::parse(&self.input)?;
            }
            if let Some(h) = &head
                && let Some((body_start, body_end)) =
                    h.body_span(&self.input, method == Method::HEAD)?
            {
                let mut all = self.input.split_to(body_end);
                let body = if h.chunked {
                    Bytes::from(dechunk(&all[body_start..]))
                } else {
                    all.advance(body_start);
                    all.freeze()
                };
                if h.close {
                    self.stream = None;
                }
                return Ok((h.status, body));
            }
            self.input.reserve(16 * 1024);
            if stream.read_buf(&mut self.input).await.context("read")? == 0 {
                bail!("connection closed by the server mid-response");
            }
        }
    }

    /// `--client hyper`.
    async fn send_hyper(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes)> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.target.authority)
            .header(hyper::header::AUTHORIZATION, &self.target.auth)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .context("build request")?;
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = Conn::connect(&self.target).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().expect("connected");
        if let Err(e) = sender.ready().await {
            self.sender = None;
            return Err(anyhow!("connection: {e}"));
        }
        let res = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(anyhow!("request: {e}"));
            }
        };
        let status = res.status();
        match res.into_body().collect().await {
            Ok(b) => Ok((status, b.to_bytes())),
            Err(e) => {
                self.sender = None;
                Err(anyhow!("response body: {e}"))
            }
        }
    }
}

/// A parsed response head (`--client lean`).
struct Head {
    status: StatusCode,
    /// Bytes of the head, CRLFCRLF included.
    len: usize,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Head {
    /// The head at the start of `buf`, or `None` while it is incomplete.
    fn parse(buf: &[u8]) -> Result<Option<Head>> {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf).context("malformed response head")? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return Ok(None),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).with_context(|| format!("status {code}"))?;
        let mut head = Head {
            status,
            len,
            content_length: None,
            chunked: false,
            close: resp.version == Some(0),
        };
        for h in resp.headers.iter() {
            let value = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                head.content_length = Some(value.parse().context("bad Content-Length")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.to_ascii_lowercase().contains("chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                head.close = v.contains("close") || (head.close && !v.contains("keep-alive"));
            }
        }
        if code < 200 {
            bail!("informational response {code} not expected");
        }
        Ok(Some(head))
    }

    /// Where the body lies in `buf` (from the start of the head), once all of it is there.
    /// A response without a length (and not chunked) runs to the end of the connection,
    /// which a load tool cannot wait for: that is an error.
    fn body_span(&self, buf: &[u8], head_request: bool) -> Result<Option<(usize, usize)>> {
        let start = self.len;
        if head_request
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Some((start, start)));
        }
        if self.chunked {
            return Ok(chunked_end(&buf[start..])?.map(|n| (start, start + n)));
        }
        let Some(n) = self.content_length else {
            bail!("a response without Content-Length or chunked encoding");
        };
        Ok((buf.len() >= start + n).then_some((start, start + n)))
    }
}

/// The length of a complete chunked body at the start of `buf` (trailers included), or
/// `None` while it is incomplete.
fn chunked_end(buf: &[u8]) -> Result<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(eol) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + eol]).context("chunk size")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).with_context(|| format!("chunk size {hex:?}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        at += size + 2;
    }
}

/// The data of a complete chunked body (as [`chunked_end`] found it).
fn dechunk(mut buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find_crlf(buf) {
        let hex = std::str::from_utf8(&buf[..eol]).unwrap_or("0");
        let size =
            usize::from_str_radix(hex.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&buf[eol + 2..eol + 2 + size]);
        buf = &buf[eol + 2 + size + 2..];
    }
    out
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Paces a task at `interval` (open loop: latency counts from the intended send time, so
/// a slow server does not hide its queueing), or runs closed-loop without one.
///
/// The slots come from the [`Ticker`] thread, not from tokio's timer: tokio's timer has a
/// 1 ms granularity, so a `sleep_until` wakes up to 1 ms after the intended time, and that
/// lateness (tool error, not server queueing) would be counted in every latency.
struct Pacer {
    slots: Option<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
}

impl Pacer {
    /// Waits for the next slot; returns the time latency is measured from, or `None` once
    /// the run is over.
    async fn tick(&mut self) -> Option<Instant> {
        match &mut self.slots {
            None => Some(Instant::now()),
            Some(rx) => rx.recv().await,
        }
    }
}

/// One OS thread that hands out the open-loop send slots of every paced task, woken by a
/// high-resolution timed wait, until the deadline.
struct Ticker {
    shared: Arc<(std::sync::Mutex<TickerState>, std::sync::Condvar)>,
}

struct TickerState {
    /// (next slot, interval, index into `senders`), earliest first.
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, Duration, usize)>>,
    senders: Vec<tokio::sync::mpsc::UnboundedSender<Instant>>,
    done: bool,
}

impl Ticker {
    fn start(deadline: Instant) -> Ticker {
        let shared = Arc::new((
            std::sync::Mutex::new(TickerState {
                heap: std::collections::BinaryHeap::new(),
                senders: Vec::new(),
                done: false,
            }),
            std::sync::Condvar::new(),
        ));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || {
                let (m, cv) = &*s;
                let Ok(mut st) = m.lock() else { return };
                loop {
                    let now = Instant::now();
                    if now >= deadline {
                        st.done = true;
                        st.senders.clear();
                        return;
                    }
                    let wait_until = match st.heap.peek() {
                        Some(std::cmp::Reverse((at, _, _))) if *at <= now => {
                            let Some(std::cmp::Reverse((at, iv, i))) = st.heap.pop() else {
                                continue;
                            };
                            if at < deadline {
                                let _ = st.senders[i].send(at);
                                st.heap.push(std::cmp::Reverse((at + iv, iv, i)));
                            }
                            continue;
                        }
                        Some(std::cmp::Reverse((at, _, _))) => (*at).min(deadline),
                        None => deadline,
                    };
                    st = match cv.wait_timeout(st, wait_until - now) {
                        Ok((g, _)) => g,
                        Err(_) => return,
                    };
                }
            })
            .expect("spawn the ticker thread");
        Ticker { shared }
    }

    /// A pacer whose slots are `first`, `first + interval`, ... (closed loop without one).
    fn pacer(&self, interval: Option<Duration>, first: Instant) -> Pacer {
        let Some(iv) = interval else {
            return Pacer { slots: None };
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (m, cv) = &*self.shared;
        if let Ok(mut st) = m.lock()
            && !st.done
        {
            let i = st.senders.len();
            st.senders.push(tx);
            st.heap.push(std::cmp::Reverse((first, iv, i)));
        }
        cv.notify_one();
        Pacer { slots: Some(rx) }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn messages_body(n: usize, body_bytes: usize) -> Bytes {
    let body = "x".repeat(body_bytes);
    let msgs: Vec<_> = (0..n)
        .map(|_| serde_json::json!({ "body": body }))
        .collect();
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "messages": msgs })).expect("json"))
}

fn short(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(80)]).replace('\n', " ")
}

struct Ctx {
    args: Args,
    target: Target,
    raw_target: Option<(Target, String)>,
    messages_path: String,
    reservations_path: String,
    shared: Shared,
    start: Instant,
    deadline: Instant,
    /// Hands out the open-loop send slots.
    ticker: Ticker,
    /// Push mode: the subscriber's delivery-latency histogram.
    push_hist: std::sync::Mutex<Option<Arc<std::sync::Mutex<Histogram<u64>>>>>,
}

impl Ctx {
    /// Records the latency of a request meant to start at `from`, unless it falls in the
    /// warm-up.
    fn record(&self, hist: &mut Histogram<u64>, from: Instant) {
        if from < self.start + Duration::from_secs(self.args.warmup) {
            return;
        }
        let us = micros(from.elapsed());
        hist.saturating_record(us);
        self.shared.window_max.fetch_max(us, Ordering::Relaxed);
        if self.args.slow_ms.is_some_and(|ms| us >= ms * 1000)
            && let Ok(mut v) = self.shared.slow.lock()
            && v.len() < 1_000_000
        {
            let ago = from.elapsed();
            v.push((now_unix_us().saturating_sub(micros(ago)), us));
        }
    }
}

/// A producer: POSTs `body` (holding `count` messages) until the deadline.
async fn producer(
    ctx: Arc<Ctx>,
    body: Bytes,
    count: u64,
    interval: Option<Duration>,
    phase: Duration,
) {
    let (target, path) = match &ctx.raw_target {
        Some((t, p)) => (t.clone(), p.clone()),
        None => (ctx.target.clone(), ctx.messages_path.clone()),
    };
    let post = Post {
        target,
        path,
        any_2xx: ctx.raw_target.is_some(),
        count,
        produced: 0,
    };
    paced_poster(ctx, post, interval, phase, move || body.clone()).await
}

/// A consumer: reserve `n`, then DELETE what it got, until the deadline.
async fn consumer(ctx: Arc<Ctx>) {
    let mut conn = Conn::new(ctx.target.clone());
    let (mut h_res, mut h_del) = (new_hist(), new_hist());
    let reserve = Bytes::from(
        serde_json::to_vec(
            &serde_json::json!({ "n": ctx.args.reserve_n, "timeout": 60, "wait": 1 }),
        )
        .expect("json"),
    );
    while Instant::now() < ctx.deadline {
        let t = Instant::now();
        let r = tokio::time::timeout_at(
            ctx.deadline.into(),
            conn.send(Method::POST, &ctx.reservations_path, reserve.clone()),
        )
        .await;
        let Ok(r) = r else { break };
        ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
        let (body, n) = match r {
            Ok((StatusCode::OK, b)) => match reserved_ids(&b) {
                Ok(x) => x,
                Err(e) => {
                    ctx.shared.error(format!("reserve: {e}"));
                    continue;
                }
            },
            Ok((st, b)) => {
                ctx.shared
                    .error(format!("reserve: HTTP {st}: {}", short(&b)));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                ctx.shared.error(format!("reserve: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        ctx.record(&mut h_res, t);
        if n == 0 {
            continue;
        }
        let t = Instant::now();
        let r = tokio::time::timeout_at(
            ctx.deadline.into(),
            conn.send(Method::DELETE, &ctx.messages_path, body),
        )
        .await;
        let Ok(r) = r else { break };
        ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok((StatusCode::OK, _)) => {
                ctx.record(&mut h_del, t);
                ctx.shared.messages.fetch_add(n, Ordering::Relaxed);
            }
            Ok((st, b)) => ctx
                .shared
                .error(format!("delete: HTTP {st}: {}", short(&b))),
            Err(e) => ctx.shared.error(format!("delete: {e}")),
        }
    }
    ctx.shared.merge("reserve", &h_res);
    ctx.shared.merge("delete", &h_del);
}

/// `{"messages":[{"id","reservation_id",..}]}` → the DELETE body
/// `{"ids":[{"id","reservation_id"}]}` and its number of ids. Typed and borrowed, because
/// the tool shares the machine's cores with the server it measures.
fn reserved_ids(body: &[u8]) -> Result<(Bytes, u64)> {
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        messages: Vec<Msg<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        id: &'a str,
        reservation_id: Option<&'a str>,
    }
    let r: Reply = serde_json::from_slice(body).context("reserve response")?;
    let mut out = Vec::with_capacity(16 + r.messages.len() * 80);
    out.extend_from_slice(b"{\"ids\":[");
    for (i, m) in r.messages.iter().enumerate() {
        let rid = m
            .reservation_id
            .ok_or_else(|| anyhow!("message without reservation_id"))?;
        if i > 0 {
            out.push(b',');
        }
        // Ids are decimal digits and reservation ids hex: nothing to escape.
        if !(m.id.bytes().all(|b| b.is_ascii_digit()) && rid.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bail!("unexpected id {:?} or reservation id {:?}", m.id, rid);
        }
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(m.id.as_bytes());
        out.extend_from_slice(b"\",\"reservation_id\":\"");
        out.extend_from_slice(rid.as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
    Ok((Bytes::from(out), r.messages.len() as u64))
}

fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// Long-poll consumer: reserve n=1 with wait=30; the body holds the send time in µs.
async fn waiter(ctx: Arc<Ctx>) {
    let mut conn = Conn::new(ctx.target.clone());
    let mut wake = new_hist();
    let reserve = Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "n": 1, "timeout": 60, "wait": 30 }))
            .expect("json"),
    );
    while Instant::now() < ctx.deadline {
        let r = tokio::time::timeout_at(
            ctx.deadline.into(),
            conn.send(Method::POST, &ctx.reservations_path, reserve.clone()),
        )
        .await;
        let Ok(r) = r else { break };
        let got = now_unix_us();
        ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
        let b = match r {
            Ok((StatusCode::OK, b)) => b,
            Ok((st, b)) => {
                ctx.shared
                    .error(format!("reserve: HTTP {st}: {}", short(&b)));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(e) => {
                ctx.shared.error(format!("reserve: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        let Some(msgs) = v.get("messages").and_then(|m| m.as_array()) else {
            ctx.shared
                .error("reserve: response without messages".into());
            continue;
        };
        let mut ids = Vec::new();
        for m in msgs {
            if let Some(sent) = m
                .get("body")
                .and_then(|b| b.as_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                wake.saturating_record(got.saturating_sub(sent).max(1));
                ctx.shared.messages.fetch_add(1, Ordering::Relaxed);
            }
            if let (Some(id), Some(rid)) = (m.get("id"), m.get("reservation_id")) {
                ids.push(serde_json::json!({ "id": id, "reservation_id": rid }));
            }
        }
        if !ids.is_empty() {
            let body =
                Bytes::from(serde_json::to_vec(&serde_json::json!({ "ids": ids })).expect("json"));
            let r = tokio::time::timeout_at(
                ctx.deadline.into(),
                conn.send(Method::DELETE, &ctx.messages_path, body),
            )
            .await;
            let Ok(r) = r else { break };
            ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
            match r {
                Ok((StatusCode::OK, _)) => {}
                Ok((st, b)) => ctx
                    .shared
                    .error(format!("delete: HTTP {st}: {}", short(&b))),
                Err(e) => ctx.shared.error(format!("delete: {e}")),
            }
        }
    }
    ctx.shared.merge("wake", &wake);
}

/// Long-poll producer: one message per POST, the body being the send time in µs.
async fn stamper(ctx: Arc<Ctx>, interval: Duration, phase: Duration) {
    let mut conn = Conn::new(ctx.target.clone());
    let mut hist = new_hist();
    let mut pacer = ctx.ticker.pacer(Some(interval), ctx.start + phase);
    loop {
        let Some(from) = pacer.tick().await else {
            break;
        };
        if Instant::now() >= ctx.deadline {
            break;
        }
        let body = Bytes::from(
            serde_json::to_vec(
                &serde_json::json!({ "messages": [{ "body": now_unix_us().to_string() }] }),
            )
            .expect("json"),
        );
        let r = tokio::time::timeout_at(
            ctx.deadline.into(),
            conn.send(Method::POST, &ctx.messages_path, body),
        )
        .await;
        let Ok(r) = r else { break };
        ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok((StatusCode::CREATED | StatusCode::OK, _)) => ctx.record(&mut hist, from),
            Ok((st, b)) => ctx.shared.error(format!("post: HTTP {st}: {}", short(&b))),
            Err(e) => ctx.shared.error(format!("post: {e}")),
        }
    }
    ctx.shared.merge("post", &hist);
}

fn fmt_ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.duration == 0 || args.duration > DURATION_CAP_S {
        eprintln!("duration capped to {DURATION_CAP_S} s");
        args.duration = args.duration.clamp(1, DURATION_CAP_S);
    }
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.mode == Mode::Post1 {
        args.batch = 1;
    }
    if args.raw_url.is_some() && args.mode != Mode::Post && args.mode != Mode::Post1 {
        bail!("--raw-url works with post and post1 only");
    }
    if args.mode == Mode::Cycle && args.connections < 2 {
        bail!("cycle needs at least 2 connections");
    }
    if args.mode == Mode::Longpoll && args.connections <= args.producers {
        bail!("longpoll needs more connections than --producers");
    }
    let (target, base) = Target::parse(&args.url, &args.token, args.client)?;
    let base = base.trim_end_matches('/').to_string();
    let raw_target = match &args.raw_url {
        Some(u) => Some(Target::parse(u, &args.token, args.client)?),
        None => None,
    };
    let queue_path = format!("{base}/3/projects/{}/queues/{}", args.project, args.queue);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let start = Instant::now();
    let ctx = Arc::new(Ctx {
        messages_path: format!("{queue_path}/messages"),
        reservations_path: format!("{queue_path}/reservations"),
        target,
        raw_target,
        shared: Shared::new(),
        start,
        deadline: start + Duration::from_secs(args.duration),
        ticker: Ticker::start(start + Duration::from_secs(args.duration)),
        push_hist: std::sync::Mutex::new(None),
        args,
    });
    let wall = rt.block_on(run(ctx.clone()));
    summary(&ctx, wall);
    // Abandon anything still in flight (e.g. a long poll): the run is over.
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// Creates the queue (`PUT .../queues/{queue}`) so that consumers started before any
/// producer do not get 404s. A failure is reported and the run goes on.
async fn ensure_queue(ctx: &Ctx) {
    let path = ctx.messages_path.trim_end_matches("/messages").to_string();
    let mut conn = Conn::new(ctx.target.clone());
    let r = tokio::time::timeout_at(
        ctx.deadline.into(),
        conn.send(Method::PUT, &path, Bytes::from_static(b"{\"queue\":{}}")),
    )
    .await;
    match r {
        Ok(Ok((st, _))) if st.is_success() => {}
        Ok(Ok((st, b))) => eprintln!("create queue: HTTP {st}: {}", short(&b)),
        Ok(Err(e)) => eprintln!("create queue: {e}"),
        Err(_) => eprintln!("create queue: timed out"),
    }
}

/// `cycle`: reads the queue's size after the run (`GET .../queues/{queue}`), so the summary
/// shows whether the consumers kept up with the producers. A failure is reported.
async fn read_backlog(ctx: &Ctx) {
    #[derive(serde::Deserialize)]
    struct Info {
        queue: Size,
    }
    #[derive(serde::Deserialize)]
    struct Size {
        size: u64,
    }
    let path = ctx.messages_path.trim_end_matches("/messages").to_string();
    let mut conn = Conn::new(ctx.target.clone());
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        conn.send(Method::GET, &path, Bytes::new()),
    )
    .await;
    match r {
        Ok(Ok((StatusCode::OK, b))) => match serde_json::from_slice::<Info>(&b) {
            Ok(i) => {
                if let Ok(mut v) = ctx.shared.backlog.lock() {
                    *v = Some(i.queue.size);
                }
            }
            Err(e) => eprintln!("queue info: {e}"),
        },
        Ok(Ok((st, b))) => eprintln!("queue info: HTTP {st}: {}", short(&b)),
        Ok(Err(e)) => eprintln!("queue info: {e}"),
        Err(_) => eprintln!("queue info: timed out"),
    }
}

async fn run(ctx: Arc<Ctx>) -> Duration {
    let a = &ctx.args;
    if matches!(a.mode, Mode::Cycle | Mode::Longpoll) {
        ensure_queue(&ctx).await;
    }
    let mut push_sub = None;
    if a.mode == Mode::Push {
        match push_subscriber(ctx.clone()).await {
            Ok(h) => push_sub = Some(h),
            Err(e) => {
                eprintln!("push subscriber: {e}");
                return Duration::from_secs(1);
            }
        }
    }
    let n = a.connections;
    let mut tasks = Vec::new();
    let per_task = |rate: Option<f64>, tasks: usize| {
        rate.filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(tasks as f64 / r))
    };
    let phase = |i: usize, iv: Option<Duration>, tasks: usize| {
        iv.map_or(Duration::ZERO, |iv| iv * i as u32 / tasks as u32)
    };
    match a.mode {
        Mode::Post | Mode::Post1 => {
            let body = messages_body(a.batch, a.body_bytes);
            let iv = per_task(a.rate, n);
            for i in 0..n {
                tasks.push(tokio::spawn(producer(
                    ctx.clone(),
                    body.clone(),
                    a.batch as u64,
                    iv,
                    phase(i, iv, n),
                )));
            }
        }
        Mode::Cycle => {
            let producers = n / 2;
            let body = messages_body(a.batch, a.body_bytes);
            let iv = per_task(a.rate, producers);
            for i in 0..producers {
                tasks.push(tokio::spawn(producer_uncounted(
                    ctx.clone(),
                    body.clone(),
                    iv,
                    phase(i, iv, producers),
                )));
            }
            for _ in producers..n {
                tasks.push(tokio::spawn(consumer(ctx.clone())));
            }
        }
        Mode::Push => {
            let iv = per_task(a.rate, n);
            for i in 0..n {
                tasks.push(tokio::spawn(push_producer(
                    ctx.clone(),
                    iv,
                    phase(i, iv, n),
                )));
            }
        }
        Mode::Longpoll => {
            let p = a.producers;
            let iv = per_task(Some(a.rate.unwrap_or(200.0)), p).expect("positive rate");
            for _ in p..n {
                tasks.push(tokio::spawn(waiter(ctx.clone())));
            }
            // Let the waiters park first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0..p {
                tasks.push(tokio::spawn(stamper(
                    ctx.clone(),
                    iv,
                    Duration::from_millis(500) + phase(i, Some(iv), p),
                )));
            }
        }
    }
    let progress = tokio::spawn(progress(ctx.clone()));
    let hard = ctx.deadline + Duration::from_secs(5);
    for t in tasks {
        let _ = tokio::time::timeout_at(hard.into(), t).await;
    }
    progress.abort();
    if a.mode == Mode::Cycle {
        read_backlog(&ctx).await;
    }
    if let Some(h) = push_sub {
        h.abort();
    }
    let delivered = ctx.push_hist.lock().ok().and_then(|h| h.clone());
    if let Some(h) = delivered
        && let Ok(h) = h.lock()
    {
        ctx.shared.merge("delivery", &h);
    }
    ctx.start.elapsed().min(ctx.deadline - ctx.start)
}

/// The push subscriber: answers 200 to every POST, counting deliveries made before the
/// deadline and recording how long each took from its post (the body is the send time, µs).
async fn push_subscriber(ctx: Arc<Ctx>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hist = Arc::new(std::sync::Mutex::new(new_hist()));
    *ctx.push_hist.lock().expect("not poisoned") = Some(hist.clone());
    let sub_ctx = ctx.clone();
    let handle = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let ctx = sub_ctx.clone();
            let hist = hist.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ctx = ctx.clone();
                    let hist = hist.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        let got = now_unix_us();
                        if let Ok(b) = body
                            && Instant::now() < ctx.deadline
                        {
                            if let Some(sent) = std::str::from_utf8(&b)
                                .ok()
                                .and_then(|s| s.split('-').next())
                                .and_then(|s| s.parse::<u64>().ok())
                                && let Ok(mut h) = hist.lock()
                            {
                                h.saturating_record(got.saturating_sub(sent).max(1));
                            }
                            ctx.shared.messages.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    // Make the queue a push queue delivering there.
    let path = ctx.messages_path.trim_end_matches("/messages").to_string();
    let def = serde_json::json!({"queue": {"type": "multicast", "push": {
        "subscribers": [{"name": "bench", "url": format!("http://{addr}/deliver")}],
        "retries": 3, "retries_delay": 60}}});
    let mut conn = Conn::new(ctx.target.clone());
    match conn
        .send(Method::PUT, &path, Bytes::from(serde_json::to_vec(&def)?))
        .await
    {
        Ok((st, _)) if st.is_success() => Ok(handle),
        Ok((st, b)) => bail!("create push queue: HTTP {st}: {}", short(&b)),
        Err(e) => bail!("create push queue: {e}"),
    }
}

/// Push-mode producer: batches whose bodies are the send time (µs) plus padding.
async fn push_producer(ctx: Arc<Ctx>, interval: Option<Duration>, phase: Duration) {
    let pad = "x".repeat(ctx.args.body_bytes.saturating_sub(17));
    let batch = ctx.args.batch;
    let post = Post::uncounted(&ctx);
    paced_poster(ctx, post, interval, phase, move || {
        let sent = now_unix_us();
        let msgs: Vec<serde_json::Value> = (0..batch)
            .map(|_| serde_json::json!({ "body": format!("{sent}-{pad}") }))
            .collect();
        Bytes::from(serde_json::to_vec(&serde_json::json!({ "messages": msgs })).expect("json"))
    })
    .await
}

/// Cycle-mode producer: its posts count as requests but messages count when consumed.
async fn producer_uncounted(
    ctx: Arc<Ctx>,
    body: Bytes,
    interval: Option<Duration>,
    phase: Duration,
) {
    let post = Post::uncounted(&ctx);
    paced_poster(ctx, post, interval, phase, move || body.clone()).await
}

/// Where a paced poster posts, and how its answers count.
struct Post {
    target: Target,
    path: String,
    /// Any 2xx is success (a raw URL), not only 200/201.
    any_2xx: bool,
    /// Messages counted per successful post (0: counted elsewhere, e.g. when consumed).
    count: u64,
    /// Messages counted as produced per successful post (`cycle`, `push`).
    produced: u64,
}

impl Post {
    /// Posts of `--batch` messages counted as produced, not as messages (those count
    /// when consumed or delivered).
    fn uncounted(ctx: &Ctx) -> Post {
        Post {
            target: ctx.target.clone(),
            path: ctx.messages_path.clone(),
            any_2xx: false,
            count: 0,
            produced: ctx.args.batch as u64,
        }
    }
}

/// POSTs `make_body()` at the pace given until the deadline; counts requests (and
/// `post.count` messages per success) and records the post latency.
async fn paced_poster(
    ctx: Arc<Ctx>,
    post: Post,
    interval: Option<Duration>,
    phase: Duration,
    make_body: impl Fn() -> Bytes,
) {
    let mut conn = Conn::new(post.target.clone());
    let mut hist = new_hist();
    let mut pacer = ctx.ticker.pacer(interval, ctx.start + phase);
    loop {
        let Some(from) = pacer.tick().await else {
            break;
        };
        if Instant::now() >= ctx.deadline {
            break;
        }
        let r = tokio::time::timeout_at(
            ctx.deadline.into(),
            conn.send(Method::POST, &post.path, make_body()),
        )
        .await;
        let Ok(r) = r else { break };
        ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok((st, _))
                if (post.any_2xx && st.is_success())
                    || st == StatusCode::CREATED
                    || st == StatusCode::OK =>
            {
                ctx.record(&mut hist, from);
                ctx.shared.messages.fetch_add(post.count, Ordering::Relaxed);
                ctx.shared
                    .produced
                    .fetch_add(post.produced, Ordering::Relaxed);
            }
            Ok((st, b)) => ctx.shared.error(format!("post: HTTP {st}: {}", short(&b))),
            Err(e) => {
                ctx.shared.error(format!("post: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    ctx.shared.merge("post", &hist);
}

async fn progress(ctx: Arc<Ctx>) {
    let (mut last_r, mut last_m) = (0u64, 0u64);
    let mut tick = tokio::time::interval_at(
        (ctx.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        let r = ctx.shared.requests.load(Ordering::Relaxed);
        let m = ctx.shared.messages.load(Ordering::Relaxed);
        let e = ctx.shared.errors.load(Ordering::Relaxed);
        let max = ctx.shared.window_max.swap(0, Ordering::Relaxed);
        eprintln!(
            "[{:>4.0}s] {:>9} req/s {:>11} msg/s  max {:>8} ms  errors {}",
            ctx.start.elapsed().as_secs_f64(),
            r - last_r,
            m - last_m,
            fmt_ms(max),
            e
        );
        (last_r, last_m) = (r, m);
    }
}

fn summary(ctx: &Ctx, wall: Duration) {
    let a = &ctx.args;
    let secs = wall.as_secs_f64().max(1e-9);
    let r = ctx.shared.requests.load(Ordering::Relaxed);
    let m = ctx.shared.messages.load(Ordering::Relaxed);
    let e = ctx.shared.errors.load(Ordering::Relaxed);
    let url = a.raw_url.as_deref().unwrap_or(&a.url);
    println!(
        "mode={:?} url={url} connections={} duration={:.1}s batch={} body_bytes={} rate={}",
        a.mode,
        a.connections,
        secs,
        a.batch,
        a.body_bytes,
        a.rate.map_or("max".to_string(), |r| format!("{r}/s"))
    );
    println!(
        "requests={r} requests/s={:.0} messages={m} messages/s={:.0} errors={e}",
        r as f64 / secs,
        m as f64 / secs
    );
    if matches!(a.mode, Mode::Cycle | Mode::Push) {
        let p = ctx.shared.produced.load(Ordering::Relaxed);
        let backlog = ctx.shared.backlog.lock().ok().and_then(|b| *b);
        println!(
            "produced={p} produced/s={:.0}{}",
            p as f64 / secs,
            backlog.map_or(String::new(), |b| format!(" backlog={b}"))
        );
    }
    if let Ok(h) = ctx.shared.hists.lock() {
        for (name, h) in h.iter() {
            if h.is_empty() {
                continue;
            }
            println!(
                "{name} latency ms: n={} p50={} p99={} p999={} max={}",
                h.len(),
                fmt_ms(h.value_at_quantile(0.5)),
                fmt_ms(h.value_at_quantile(0.99)),
                fmt_ms(h.value_at_quantile(0.999)),
                fmt_ms(h.max())
            );
        }
    }
    if let Some(ms) = a.slow_ms
        && let Ok(mut v) = ctx.shared.slow.lock()
    {
        print_stalls(&mut v, ms);
    }
    if let Ok(k) = ctx.shared.error_kinds.lock() {
        for (kind, n) in k.iter().take(10) {
            println!("error x{n}: {kind}");
        }
    }
}

/// Groups slow requests into stalls (slow requests whose intended send times lie within
/// 50 ms of each other) and prints each: wall-clock start, span, count, worst latency.
fn print_stalls(v: &mut [(u64, u64)], ms: u64) {
    v.sort_unstable();
    println!("slow (>= {ms} ms): {} requests", v.len());
    let mut i = 0;
    let mut shown = 0;
    while i < v.len() {
        let (t0, _) = v[i];
        let (mut t1, mut worst, mut n) = (t0, 0, 0);
        while i < v.len() && v[i].0 <= t1 + 50_000 {
            t1 = v[i].0;
            worst = worst.max(v[i].1);
            n += 1;
            i += 1;
        }
        if shown < 40 {
            println!(
                "  stall at unix {}.{:06} s: span {} ms, {n} requests, worst {} ms",
                t0 / 1_000_000,
                t0 % 1_000_000,
                fmt_ms(t1 - t0),
                fmt_ms(worst)
            );
        }
        shown += 1;
    }
    if shown > 40 {
        println!("  ... {} more stalls", shown - 40);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a response fed to the lean client's parser `step` bytes at a time:
    /// `None` until the whole response is there, then status, body and `close`.
    fn parse_in_steps(resp: &[u8], step: usize) -> (StatusCode, Vec<u8>, bool) {
        let mut n = 0;
        loop {
            n = (n + step).min(resp.len());
            let buf = &resp[..n];
            if let Some(h) = Head::parse(buf).unwrap()
                && let Some((s, e)) = h.body_span(buf, false).unwrap()
            {
                assert_eq!(e, resp.len(), "the whole response is consumed, no more");
                let body = if h.chunked {
                    dechunk(&buf[s..e])
                } else {
                    buf[s..e].to_vec()
                };
                return (h.status, body, h.close);
            }
            assert!(n < resp.len(), "complete response not recognised");
        }
    }

    #[test]
    fn lean_client_reads_length_and_chunked_bodies() {
        let plain = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\ncontent-type: x\r\n\r\nhello";
        for step in [1, 3, plain.len()] {
            assert_eq!(
                parse_in_steps(plain, step),
                (StatusCode::CREATED, b"hello".to_vec(), false)
            );
        }
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nwiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        for step in [1, 7, chunked.len()] {
            assert_eq!(
                parse_in_steps(chunked, step),
                (StatusCode::OK, b"wikipedia".to_vec(), false)
            );
        }
        let close =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_in_steps(close, 4),
            (StatusCode::SERVICE_UNAVAILABLE, vec![], true)
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert!(
            parse_in_steps(old, 100).2,
            "HTTP/1.0 closes unless keep-alive"
        );
    }

    #[test]
    fn lean_client_refuses_what_it_cannot_frame() {
        let h = Head::parse(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert!(h.body_span(b"HTTP/1.1 200 OK\r\n\r\n", false).is_err());
        assert!(Head::parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(Head::parse(b"garbage\r\n\r\n").is_err());
        assert!(
            Head::parse(b"HTTP/1.1 200 OK\r\nContent-Le")
                .unwrap()
                .is_none()
        );
    }
}
