//! The client subcommands of the `ferromq` binary: `admin` (projects and tokens), `backup`
//! and `restore`. They talk to a running server over its admin endpoints (`server::admin`),
//! except `restore`, which works on a directory no server is using.

pub mod admin;
pub mod backup;

use std::time::Duration;

use anyhow::{Context, bail};

/// A blocking HTTP client for the admin endpoints of the server at `url`.
pub struct AdminClient {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl AdminClient {
    /// `timeout`: for the whole of each request; `None` for long transfers (backups).
    pub fn new(url: &str, token: &str, timeout: Option<Duration>) -> anyhow::Result<AdminClient> {
        let url = url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--url must start with http:// or https://, got {url:?}");
        }
        if token.is_empty() {
            bail!("an admin token is required (--token or FERROMQ_ADMIN_TOKEN)");
        }
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .user_agent(concat!("ferromq-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(AdminClient {
            http,
            url,
            token: token.to_string(),
        })
    }

    /// Sends a request to `path` and returns the response if it is a success; otherwise an
    /// error with the server's `msg`.
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let url = format!("{}{path}", self.url);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header("Authorization", format!("OAuth {}", self.token));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .with_context(|| format!("{method} {url}: could not reach the server"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["msg"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("{method} {url}: the server answered {status}: {msg}")
    }

    /// A JSON request; returns the JSON answer.
    pub fn json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let resp = self.send(method, path, body)?;
        resp.json().context("the server's answer is not JSON")
    }
}

/// Renders rows as a plain text table with a header line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// A JSON field as table text: strings bare, null as `-`.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) if s.is_empty() => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
