//! Helpers shared by the tests that run the real `ferromq` binary: start a server on a
//! free 127.0.0.1 port with env credentials, call it over HTTP, run the CLI subcommands.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PID: &str = "0123456789abcdef01234567";
pub const TOKEN: &str = "project-token-123";
pub const ADMIN: &str = "admin-token-456";

/// A running `ferromq serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
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
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Starts the server on `dir` with the test credentials and `env` on top; waits for
/// `/health`.
pub fn start_env(dir: &Path, env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ferromq"))
        .args(["serve", "--data-dir"])
        .arg(dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("FERROMQ_PROJECT_ID", PID)
        .env("FERROMQ_TOKEN", TOKEN)
        .env("FERROMQ_ADMIN_TOKEN", ADMIN)
        .env("FERROMQ_SYNC", "never")
        .env("FERROMQ_BODY_BYTES_MAX", "1024")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferromq");
    let s = Server { child, port };
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = http.get(format!("{}/health", s.url())).send()
            && r.status() == 200
        {
            return s;
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad json {text:?}: {e}"));
    (status, v)
}

/// Runs `ferromq ARGS` to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferromq"))
        .args(args)
        .env_remove("FERROMQ_URL")
        .env_remove("FERROMQ_ADMIN_TOKEN")
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
