//! The client subcommands of the `ferromq` binary: `admin` (projects and tokens), `backup`
//! and `restore`. They talk to a running server over its admin endpoints (`server::admin`),
//! except `restore`, which works on a directory no server is using.

pub mod admin;
pub mod backup;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

/// Where the server is, the admin token, and what to trust of its certificate: the
/// arguments of every subcommand that talks to a server.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// Base URL of the server.
    #[arg(long, env = "FERROMQ_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The admin token.
    #[arg(long, env = "FERROMQ_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM file of CA certificates to trust for an https:// URL, besides the public (WebPKI)
    /// roots: the private CA that signed the server's `tls_cert`.
    #[arg(long, env = "FERROMQ_CACERT", value_name = "PATH")]
    pub cacert: Option<PathBuf>,
}

/// Without the token: a `{:?}` of the arguments must not print it.
impl std::fmt::Debug for ServerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerArgs")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("cacert", &self.cacert)
            .finish()
    }
}

/// A blocking HTTP client for the admin endpoints of the server at `url`.
pub struct AdminClient {
    http: reqwest::blocking::Client,
    url: String,
    token: String,
}

impl AdminClient {
    /// `timeout`: for the whole of each request; `None` for long transfers (backups).
    pub fn new(server: &ServerArgs, timeout: Option<Duration>) -> anyhow::Result<AdminClient> {
        let url = server.url.trim_end_matches('/').to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--url must start with http:// or https://, got {url:?}");
        }
        if server.token.is_empty() {
            bail!("an admin token is required (--token or FERROMQ_ADMIN_TOKEN)");
        }
        // rustls with ring, as the server and its pusher: the one TLS stack of the binary.
        server::tls::install_default_provider();
        let mut builder = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(10))
            .timeout(timeout)
            .user_agent(concat!("ferromq-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &server.cacert {
            let certs = server::push::load_roots(ca).map_err(|e| anyhow!("--cacert: {e}"))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(AdminClient {
            http,
            url,
            token: server.token.clone(),
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
    // A queue or project name may hold any character: control characters (a newline, an
    // escape sequence) are shown escaped, so that a row stays one line and the terminal
    // draws only text.
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let rows = &rows;
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

/// `s` with its control characters escaped (`\n`, `\u{1b}`).
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn a_table_row_stays_one_line_whatever_its_names_hold() {
        let rows = vec![
            vec!["p1".to_string(), "line\nbreak".to_string(), "3".to_string()],
            vec![
                "p2".to_string(),
                "esc\u{1b}[31m".to_string(),
                "4".to_string(),
            ],
        ];
        let t = table(&["PROJECT", "QUEUE", "SIZE"], &rows);
        assert_eq!(
            t,
            "PROJECT  QUEUE          SIZE\n\
             p1       line\\nbreak    3\n\
             p2       esc\\u{1b}[31m  4\n"
        );
    }
}
