//! Helpers shared by the tests that run the real `ferromq` binary: start `ferromq serve` on
//! a free 127.0.0.1 port with env credentials (stderr kept in a log file), restart it on the
//! same data and port, call it over raw HTTP or reqwest, run the CLI subcommands.
//!
//! Everything here blocks (std processes and sockets, `reqwest::blocking`): from an async
//! test, start through [`Start::run_async`] and [`Server::restart_async`].

#![allow(dead_code)]

pub mod wire;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PID: &str = "0123456789abcdef01234567";
pub const TOKEN: &str = "project-token-123";
pub const ADMIN: &str = "admin-token-456";

/// How long a start may take before the test fails (debug build, shared machine), and how
/// long a start that must fail may run before it counts as started.
const START_LIMIT: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

// ---- starting the server ----

/// How to run `ferromq serve`: the data dir, the environment on top of the test
/// credentials, extra arguments. Logs go to files in the test's directory.
#[derive(Clone, Debug)]
pub struct Start {
    /// Where the server logs go (the test's temporary directory).
    dir: PathBuf,
    data: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Start {
    /// The server on `dir/data`, logging into `dir`, with `FERROMQ_SYNC=never` (override it
    /// with [`Start::env`] where durability is under test).
    pub fn new(dir: &Path) -> Start {
        Start {
            dir: dir.to_path_buf(),
            data: dir.join("data"),
            env: vec![("FERROMQ_SYNC".into(), "never".into())],
            args: Vec::new(),
        }
    }

    /// Another data dir than `dir/data` (a restored one, say).
    pub fn data_dir(mut self, data: &Path) -> Start {
        self.data = data.to_path_buf();
        self
    }

    /// One environment variable; a later one wins over an earlier one of the same name.
    pub fn env(mut self, key: &str, val: &str) -> Start {
        self.env.push((key.into(), val.into()));
        self
    }

    pub fn envs(self, env: &[(&str, &str)]) -> Start {
        env.iter().fold(self, |s, (k, v)| s.env(k, v))
    }

    pub fn args(mut self, args: &[&str]) -> Start {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// A log file name not used yet in the test's directory.
    fn log_path(&self, stem: &str) -> PathBuf {
        (0..)
            .map(|n| self.dir.join(format!("{stem}-{n}.log")))
            .find(|p| !p.exists())
            .expect("a free log file name")
    }

    fn spawn(&self, port: u16, log: &Path) -> Child {
        self.spawn_to(port, Stdio::null(), log)
    }

    fn spawn_to(&self, port: u16, stdout: Stdio, log: &Path) -> Child {
        Command::new(env!("CARGO_BIN_EXE_ferromq"))
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(&self.args)
            .env("FERROMQ_PROJECT_ID", PID)
            .env("FERROMQ_TOKEN", TOKEN)
            .env("FERROMQ_ADMIN_TOKEN", ADMIN)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(stdout)
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .expect("spawn ferromq")
    }

    /// Starts the server on `port` and waits until `probe(port)` sees it answer. `None` if
    /// it exited because another process holds the port; any other early exit fails the
    /// test with the server's log.
    fn start_on(self, port: u16, probe: &impl Fn(u16) -> bool) -> Option<Server> {
        let log = self.log_path("server");
        let child = self.spawn(port, &log);
        let mut s = Server {
            child,
            port,
            log,
            start: self,
        };
        let deadline = Instant::now() + START_LIMIT;
        while !probe(port) {
            if let Some(st) = s.child.try_wait().expect("try_wait") {
                let text = s.log_text();
                assert!(
                    text.contains(&format!("binding 127.0.0.1:{port}")),
                    "the server exited ({st}) at start:\n{text}"
                );
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start in {START_LIMIT:?}:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Some(s)
    }

    /// Starts the server, waiting for `GET /health`.
    pub fn run(self) -> Server {
        self.run_probed(health)
    }

    /// Starts the server and waits until `probe(port)` sees it answer. The port is free
    /// when picked but another process may take it before the server binds: then it tries
    /// another.
    pub fn run_probed(self, probe: impl Fn(u16) -> bool) -> Server {
        for _attempt in 0..3 {
            if let Some(s) = self.clone().start_on(free_port(), &probe) {
                return s;
            }
        }
        panic!("no free port could be bound in 3 tries");
    }

    /// [`Start::run`] for async tests, on tokio's blocking pool.
    pub async fn run_async(self) -> Server {
        off_runtime(move || self.run()).await
    }

    /// Runs `ferromq serve` expecting it to refuse to start; returns its stderr.
    pub fn refused(self) -> String {
        self.refused_on(free_port()).stderr
    }

    /// Runs `ferromq serve` on `port` expecting it to refuse to start; returns its exit
    /// status and what it printed.
    pub fn refused_on(self, port: u16) -> Refused {
        let log = self.log_path("refused");
        let out = self.log_path("refused-stdout");
        let stdout = Stdio::from(std::fs::File::create(&out).expect("stdout file"));
        let mut child = self.spawn_to(port, stdout, &log);
        let deadline = Instant::now() + START_LIMIT;
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server started with env {:?} args {:?}",
                    self.env, self.args
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = std::fs::read_to_string(&log).expect("log");
        assert!(
            !status.success(),
            "exit status of a refused start: {status}\n{stderr}"
        );
        Refused {
            status,
            stdout: std::fs::read_to_string(&out).expect("stdout"),
            stderr,
        }
    }
}

/// What a start that failed left.
pub struct Refused {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs blocking `f` on tokio's blocking pool; a panic in it goes on in the caller.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `GET /health` answers 200 on `port`.
pub fn health(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(wire::request_text("GET", "/health", None, "", "").as_bytes())
            .is_ok()
            && {
                let mut b = Vec::new();
                let _ = s.read_to_end(&mut b);
                b.starts_with(b"HTTP/1.1 200")
            }
    })
}

/// A running `ferromq serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// Its stderr.
    pub log: PathBuf,
    start: Start,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read the server log")
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `HUP`, …) to the server.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{name}");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("wait for the killed server");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A new server on the same data dir, port and settings (for clients that hold URLs
    /// with this port), waiting for `GET /health`. This one is killed first if it still
    /// runs.
    pub fn restart(self) -> Server {
        let (start, port) = (self.start.clone(), self.port);
        drop(self);
        start.start_on(port, &health).unwrap_or_else(|| {
            panic!("port {port} was taken by another process before the restart")
        })
    }

    /// [`Server::restart`] for async tests, on tokio's blocking pool.
    pub async fn restart_async(self) -> Server {
        off_runtime(move || self.restart()).await
    }
}

/// A response body as JSON (every answer of the API is JSON, errors included).
pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("bad json {body:?}: {e}"))
}

/// The path of queue `q` of the test project.
pub fn qp(q: &str) -> String {
    format!("/3/projects/{PID}/queues/{q}")
}

// ---- reqwest ----

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// One request with `Authorization: OAuth token`; returns the status and the JSON body
/// (every answer of the server is JSON, errors included).
pub fn call(
    http: &reqwest::blocking::Client,
    srv: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = http.request(method, format!("{}{path}", srv.url()));
    if let Some(t) = token {
        req = req.header("Authorization", format!("OAuth {t}"));
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    assert_eq!(
        resp.headers()
            .get("content-type")
            .map(|v| v.as_bytes().to_vec()),
        Some(b"application/json".to_vec()),
        "{path}"
    );
    let text = resp.text().expect("body");
    (status, json_of(&text))
}

// ---- the CLI ----

/// Runs `ferromq ARGS` to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferromq"))
        .args(args)
        .env_remove("FERROMQ_URL")
        .env_remove("FERROMQ_ADMIN_TOKEN")
        .env_remove("FERROMQ_CACERT")
        .stdin(Stdio::null())
        .output()
        .expect("run ferromq")
}

/// Runs `ferromq ARGS`, asserts success, returns stdout.
pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "ferromq {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
