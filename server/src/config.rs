//! Server configuration: defaults, then a JSON file, then `FERROMQ_*` environment
//! variables, then command-line flags. Unknown keys and bad values stop the start.

use std::path::{Path, PathBuf};

use engine::{EngineConfig, RecoveryMode, SyncPolicy};
use figment::Figment;
use figment::providers::{Env, Format, Json, Serialized};
use serde::{Deserialize, Serialize};

/// Everything the server can be configured with. Field names are the config-file keys;
/// the environment variable of a key is `FERROMQ_` + the key in upper case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory of the engine's log segments.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: String,
    /// Durability: `always`, `never` or `interval:MS`.
    pub sync: String,
    /// Log level: `debug`, `info`, `warn`, `error` (or a tracing filter directive).
    pub log_level: String,
    /// Damaged log tail handling on open: `strict` or `tolerate-tail`.
    pub recovery: String,
    /// Largest message body, bytes.
    pub body_bytes_max: u32,
    /// Log segment size, bytes.
    pub segment_bytes: u64,
    /// Largest request body, bytes; 0 means `body_bytes_max * 100 + 65536`.
    pub request_bytes_max: u64,
    /// Largest request head (request line + headers), bytes (at least 8192).
    pub header_bytes_max: usize,
    /// Concurrent connections; further ones wait in the listen backlog.
    pub connections_max: usize,
    /// Time allowed to send a complete request head, milliseconds.
    pub header_read_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this, milliseconds.
    pub keep_alive_timeout_ms: u64,
    /// How long shutdown waits for in-flight requests, milliseconds.
    pub shutdown_grace_ms: u64,
    /// Admin token to ensure at start (env `FERROMQ_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Project to ensure at start (env `FERROMQ_PROJECT_ID`).
    pub project_id: Option<String>,
    /// Token of `project_id` to ensure at start (env `FERROMQ_TOKEN`).
    pub token: Option<String>,
    /// Token `GET /metrics` requires when set (env `FERROMQ_METRICS_TOKEN`); unset, the
    /// metrics need none.
    pub metrics_token: Option<String>,

    // ---- push delivery ----
    /// How long a push subscriber has to answer, milliseconds.
    pub push_timeout_ms: u64,
    /// Push attempts in flight at most, in total.
    pub push_concurrency: usize,
    /// Push attempts in flight at most per subscriber.
    pub push_concurrency_per_subscriber: usize,
    /// Base URL of this server as subscribers reach it, for `Iron-Subscriber-Message-Url`;
    /// empty means `http://` + the listen address.
    pub push_base_url: String,
    /// PEM file of extra root certificates trusted for `https://` subscribers (besides the
    /// WebPKI roots), e.g. an internal CA.
    pub push_tls_ca: Option<PathBuf>,

    // ---- Operations: stats, request log, TLS, declared queues ----
    /// Length of one `GET /3/stats` interval, seconds (IronMQ's `stats.interval`).
    pub stats_interval: u64,
    /// Level of the one log line per API request: `off`, `debug`, `info`, `warn`, `error`.
    /// A 5xx is always logged at `eror` with its cause.
    pub log_requests_level: String,
    /// PEM certificate chain (leaf first); with `tls_key`, the listener speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Queues created or updated at start: objects with `project`, `name` and the queue
    /// settings of `PUT /3/projects/{pid}/queues/{name}` (validated the same way).
    pub queues: Vec<serde_json::Value>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:8080".into(),
            sync: "always".into(),
            log_level: "info".into(),
            recovery: "strict".into(),
            body_bytes_max: engine::limits::BODY_BYTES_DEFAULT,
            segment_bytes: engine::limits::SEGMENT_BYTES_DEFAULT,
            request_bytes_max: 0,
            header_bytes_max: 64 * 1024,
            connections_max: 10_000,
            header_read_timeout_ms: 30_000,
            keep_alive_timeout_ms: 75_000,
            shutdown_grace_ms: 5_000,
            admin_token: None,
            project_id: None,
            token: None,
            metrics_token: None,
            push_timeout_ms: 10_000,
            push_concurrency: 512,
            push_concurrency_per_subscriber: 64,
            push_base_url: String::new(),
            push_tls_ca: None,

            stats_interval: 60,
            log_requests_level: "debug".into(),
            tls_cert: None,
            tls_key: None,
            queues: Vec::new(),
        }
    }
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {}", without_profile(.0))]
    Load(Box<figment::Error>),
    #[error("configuration key `{key}`: {msg}")]
    Invalid { key: &'static str, msg: String },
    /// The engine refused its settings in a way that names no key.
    #[error("configuration: {0}")]
    Engine(engine::Error),
    /// A key built at run time, e.g. `queues[2].colour`.
    #[error("configuration key `{key}`: {msg}")]
    InvalidAt { key: String, msg: String },
}

/// figment names a file's keys after its profile (`for key "default.colour"`); there is
/// one profile here, so the key is given as the file spells it.
fn without_profile(e: &figment::Error) -> String {
    e.to_string().replace("for key \"default.", "for key \"")
}

const ENV_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "sync",
    "log_level",
    "recovery",
    "body_bytes_max",
    "segment_bytes",
    "request_bytes_max",
    "header_bytes_max",
    "connections_max",
    "header_read_timeout_ms",
    "keep_alive_timeout_ms",
    "shutdown_grace_ms",
    "push_timeout_ms",
    "push_concurrency",
    "push_concurrency_per_subscriber",
    "push_base_url",
    "push_tls_ca",
];

/// Environment keys of the operations block. `queues` comes from `FERROMQ_QUEUES` as JSON.
const OPS_ENV_KEYS: &[&str] = &[
    "stats_interval",
    "log_requests_level",
    "tls_cert",
    "tls_key",
];

/// A set `request_bytes_max` leaves at least this much room over `body_bytes_max`: the
/// JSON around one message's body (`{"messages":[{"body":…,"delay":…}]}`) and then some.
const REQUEST_BYTES_OVER_BODY: u64 = 1024;

/// The other `FERROMQ_*` variables something in this project reads: the credentials and
/// declared queues (`load`), the client subcommands' server and CA certificate, and the
/// settings of the project's own tests, benchmarks and fuzzing (which may be exported in
/// the shell that starts a server).
const OTHER_ENV: &[&str] = &[
    "FERROMQ_QUEUES",
    "FERROMQ_ADMIN_TOKEN",
    "FERROMQ_PROJECT_ID",
    "FERROMQ_TOKEN",
    "FERROMQ_METRICS_TOKEN",
    "FERROMQ_URL",
    "FERROMQ_CACERT",
    "FERROMQ_BIN",
    "FERROMQ_CRASH_ROUNDS",
    "FERROMQ_BENCH_TMP",
    "FERROMQ_BENCH_RECOVER_N",
    "FERROMQ_BENCH_SEGMENT_BYTES",
    "FERROMQ_FUZZ_CASES",
];

/// Every `FERROMQ_*` variable something reads.
fn known_env() -> Vec<String> {
    ENV_KEYS
        .iter()
        .chain(OPS_ENV_KEYS)
        .map(|k| format!("FERROMQ_{}", k.to_ascii_uppercase()))
        .chain(OTHER_ENV.iter().map(|v| v.to_string()))
        .collect()
}

/// Of the variable names `names`, those that start with `FERROMQ_` but that nothing reads
/// (a misspelling such as `FERROMQ_SYNC_POLICY` would otherwise leave its key at the
/// default without a word), each with the known name closest to it, if one is close.
pub fn unknown_env(names: impl IntoIterator<Item = String>) -> Vec<(String, Option<String>)> {
    let known = known_env();
    let mut unknown: Vec<_> = names
        .into_iter()
        .filter(|n| n.starts_with("FERROMQ_") && !known.contains(n))
        .map(|n| {
            let near = nearest_env(&n, &known);
            (n, near)
        })
        .collect();
    unknown.sort();
    unknown
}

/// The known variable an unknown `FERROMQ_*` name most likely meant: one a word longer or
/// shorter (`FERROMQ_SYNC_POLICY`), or a few letters off (`FERROMQ_DATADIR`); a host or
/// port means `listen`.
fn nearest_env(name: &str, known: &[String]) -> Option<String> {
    let suffix = &name["FERROMQ_".len()..];
    if ["HOST", "PORT", "ADDR", "ADDRESS", "BIND"].contains(&suffix) {
        return Some("FERROMQ_LISTEN".to_string());
    }
    known
        .iter()
        .map(|k| {
            let ks = &k["FERROMQ_".len()..];
            let a_word_apart = |long: &str, short: &str| {
                long.strip_prefix(short)
                    .is_some_and(|rest| rest.starts_with('_'))
            };
            let score = if a_word_apart(suffix, ks) || a_word_apart(ks, suffix) {
                0.9
            } else {
                strsim::normalized_damerau_levenshtein(suffix, ks)
            };
            (score, k)
        })
        .filter(|(score, _)| *score >= 0.6)
        // The best score, the first of equals (`FERROMQ_LOG`: `log_level` before
        // `log_requests_level`).
        .min_by(|a, b| b.0.total_cmp(&a.0))
        .map(|(_, k)| k.clone())
}

/// Longest stats interval, seconds (one day).
const STATS_INTERVAL_S_MAX: u64 = 86_400;
/// Configured tokens shorter than this are logged as a warning at start. (Generated ones
/// are 32 hex characters.)
pub const TOKEN_BYTES_WARN: usize = 16;

impl ServerConfig {
    /// Loads defaults < `file` < environment. Credentials come from the plain environment
    /// (`FERROMQ_ADMIN_TOKEN`, `FERROMQ_PROJECT_ID`, `FERROMQ_TOKEN`) so that numeric-looking
    /// values stay strings.
    pub fn load(file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(ServerConfig::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    msg: format!("file {} does not exist", f.display()),
                });
            }
            // figment reads a path that is not a file (a directory) as no file at all.
            if !f.is_file() {
                return Err(ConfigError::Invalid {
                    key: "--config",
                    msg: format!("{} is not a file", f.display()),
                });
            }
            fig = fig.merge(Json::file(f));
        }
        let env_keys = [ENV_KEYS, OPS_ENV_KEYS].concat();
        fig = fig.merge(Env::prefixed("FERROMQ_").only(&env_keys));
        let mut c: ServerConfig = fig.extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        if let Ok(v) = std::env::var("FERROMQ_QUEUES")
            && !v.trim().is_empty()
        {
            c.queues = serde_json::from_str(&v).map_err(|e| ConfigError::Invalid {
                key: "queues",
                msg: format!("FERROMQ_QUEUES must be a JSON array of queue objects: {e}"),
            })?;
        }
        for (var, slot) in [
            ("FERROMQ_ADMIN_TOKEN", &mut c.admin_token),
            ("FERROMQ_PROJECT_ID", &mut c.project_id),
            ("FERROMQ_TOKEN", &mut c.token),
            ("FERROMQ_METRICS_TOKEN", &mut c.metrics_token),
        ] {
            if let Ok(v) = std::env::var(var)
                && !v.is_empty()
            {
                *slot = Some(v);
            }
        }
        Ok(c)
    }

    /// Checks every value; returns the first problem with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, msg: &str| {
            Err(ConfigError::Invalid {
                key,
                msg: msg.to_string(),
            })
        };
        self.sync_policy()?;
        self.recovery_mode()?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            // HOST may be a name (`localhost:8080`), resolved when binding.
            match self.listen.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() => {
                    if port.parse::<u16>().is_err() {
                        return bad("listen", "the port must be a number from 0 to 65535");
                    }
                }
                _ => return bad("listen", "must be HOST:PORT"),
            }
        }
        let one_message = self.body_bytes_max as u64 + REQUEST_BYTES_OVER_BODY;
        if self.request_bytes_max != 0 && self.request_bytes_max < one_message {
            return Err(ConfigError::Invalid {
                key: "request_bytes_max",
                msg: format!(
                    "must be 0 (automatic) or at least {one_message}: body_bytes_max plus \
                     {REQUEST_BYTES_OVER_BODY}, so that a post of one message of the largest \
                     size fits in a request"
                ),
            });
        }
        if self.header_bytes_max < 8192 {
            return bad("header_bytes_max", "must be at least 8192");
        }
        if self.connections_max == 0 || self.connections_max > (u32::MAX >> 3) as usize {
            return bad("connections_max", "must be between 1 and 536870911");
        }
        if self.header_read_timeout_ms == 0 {
            return bad("header_read_timeout_ms", "must be positive");
        }
        if self.keep_alive_timeout_ms == 0 {
            return bad("keep_alive_timeout_ms", "must be positive");
        }
        if self.push_timeout_ms == 0 || self.push_timeout_ms > 600_000 {
            return bad("push_timeout_ms", "must be between 1 and 600000");
        }
        if self.push_concurrency == 0 || self.push_concurrency > 100_000 {
            return bad("push_concurrency", "must be between 1 and 100000");
        }
        if self.push_concurrency_per_subscriber == 0 {
            return bad("push_concurrency_per_subscriber", "must be positive");
        }
        let base = &self.push_base_url;
        if !(base.is_empty() || base.starts_with("http://") || base.starts_with("https://")) {
            return bad("push_base_url", "must start with http:// or https://");
        }
        if let Some(ca) = &self.push_tls_ca {
            crate::push::load_roots(ca).map_err(|msg| ConfigError::Invalid {
                key: "push_tls_ca",
                msg,
            })?;
        }
        if let (Some(_), None) = (&self.token, &self.project_id) {
            return bad("token", "FERROMQ_TOKEN needs FERROMQ_PROJECT_ID");
        }
        if let Some(p) = &self.project_id
            && !crate::auth::valid_project_id(p)
        {
            return bad(
                "project_id",
                "must be 1 to 64 characters of A-Z a-z 0-9 _ -",
            );
        }
        // Any length an operator or a test script picks is taken (a short one is warned
        // about at start, see `short_tokens`); it has to fit in `Authorization: OAuth …`.
        for (key, t) in self.tokens() {
            if t.is_some_and(|t| {
                t.is_empty() || t.len() > 256 || t.chars().any(|c| !c.is_ascii_graphic())
            }) {
                return bad(
                    key,
                    "must be 1 to 256 printable ASCII characters, without spaces",
                );
            }
        }
        if let (Some(admin), Some(token)) = (&self.admin_token, &self.token)
            && admin == token
        {
            // The one token would be stored once, as the project's: no admin token at all.
            return bad(
                "admin_token",
                "must differ from `token` (FERROMQ_ADMIN_TOKEN equals FERROMQ_TOKEN): the \
                 admin token cannot also be a project token",
            );
        }
        self.engine_config().validate().map_err(|e| match e {
            engine::Error::Config { key, msg } => ConfigError::Invalid { key, msg },
            other => ConfigError::Engine(other),
        })?;
        self.validate_ops()?;
        Ok(())
    }

    /// The configured tokens, by configuration key.
    fn tokens(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("admin_token", self.admin_token.as_deref()),
            ("token", self.token.as_deref()),
            ("metrics_token", self.metrics_token.as_deref()),
        ]
    }

    /// The configured tokens shorter than [`TOKEN_BYTES_WARN`]: allowed, but easy to guess.
    pub fn short_tokens(&self) -> Vec<&'static str> {
        self.tokens()
            .into_iter()
            .filter(|(_, t)| t.is_some_and(|t| t.len() < TOKEN_BYTES_WARN))
            .map(|(key, _)| key)
            .collect()
    }

    /// Checks the operations block.
    fn validate_ops(&self) -> Result<(), ConfigError> {
        let bad = |key, msg: &str| {
            Err(ConfigError::Invalid {
                key,
                msg: msg.to_string(),
            })
        };
        if !(1..=STATS_INTERVAL_S_MAX).contains(&self.stats_interval) {
            return bad("stats_interval", "must be between 1 and 86400 seconds");
        }
        self.request_log_level()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return bad("tls_key", "tls_cert needs tls_key"),
            (None, Some(_)) => return bad("tls_cert", "tls_key needs tls_cert"),
            _ => {}
        }
        crate::declared::parse(&self.queues)?;
        Ok(())
    }

    /// The level of request log lines; `None` is `off`.
    pub fn request_log_level(&self) -> Result<Option<tracing::Level>, ConfigError> {
        use tracing::Level;
        match self.log_requests_level.trim() {
            "off" => Ok(None),
            "debug" | "dbug" => Ok(Some(Level::DEBUG)),
            "info" => Ok(Some(Level::INFO)),
            "warn" => Ok(Some(Level::WARN)),
            "error" | "eror" => Ok(Some(Level::ERROR)),
            other => Err(ConfigError::Invalid {
                key: "log_requests_level",
                msg: format!("{other:?} is not one of off, debug, info, warn, error"),
            }),
        }
    }

    pub fn sync_policy(&self) -> Result<SyncPolicy, ConfigError> {
        let s = self.sync.trim();
        match s {
            "always" => Ok(SyncPolicy::Always),
            "never" => Ok(SyncPolicy::Never),
            _ => match s
                .strip_prefix("interval:")
                .and_then(|ms| ms.parse::<u64>().ok())
            {
                Some(ms) if ms > 0 => Ok(SyncPolicy::IntervalMs(ms)),
                _ => Err(ConfigError::Invalid {
                    key: "sync",
                    msg: format!("{s:?} is not one of always, never, interval:MS"),
                }),
            },
        }
    }

    pub fn recovery_mode(&self) -> Result<RecoveryMode, ConfigError> {
        match self.recovery.as_str() {
            "strict" => Ok(RecoveryMode::Strict),
            "tolerate-tail" => Ok(RecoveryMode::TolerateTail),
            other => Err(ConfigError::Invalid {
                key: "recovery",
                msg: format!("{other:?} is not strict or tolerate-tail"),
            }),
        }
    }

    /// The effective request body limit (see `validate`: a set one is at least
    /// `body_bytes_max`).
    pub fn request_limit(&self) -> usize {
        if self.request_bytes_max > 0 {
            self.request_bytes_max as usize
        } else {
            self.body_bytes_max as usize * 100 + 64 * 1024
        }
    }

    /// The pusher's settings; `listen` is the bound address (for the default base URL).
    pub fn push_config(&self, listen: std::net::SocketAddr) -> crate::push::PushConfig {
        let base_url = if self.push_base_url.is_empty() {
            let host = match listen.ip() {
                ip if ip.is_unspecified() => "127.0.0.1".to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            let scheme = if self.tls_cert.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}:{}", listen.port())
        } else {
            self.push_base_url.trim_end_matches('/').to_string()
        };
        crate::push::PushConfig {
            timeout: std::time::Duration::from_millis(self.push_timeout_ms),
            concurrency: self.push_concurrency,
            concurrency_per_subscriber: self.push_concurrency_per_subscriber,
            base_url,
            shutdown_grace: std::time::Duration::from_millis(self.shutdown_grace_ms),
            tls_ca: self.push_tls_ca.clone(),
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        let mut e = EngineConfig::new(&self.data_dir);
        e.body_bytes_max = self.body_bytes_max;
        e.segment_bytes = self.segment_bytes;
        e.sync = self.sync_policy().unwrap_or(SyncPolicy::Always);
        e.recovery = self.recovery_mode().unwrap_or_default();
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_key_in_the_file_is_named_as_the_file_spells_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"colour": 1}"#).unwrap();
        let msg = ServerConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(msg.contains(r#"for key "colour""#), "{msg}");
        assert!(!msg.contains("default."), "{msg}");
    }

    #[test]
    fn the_default_push_base_url_is_a_url_for_every_listen_address() {
        let c = ServerConfig::default();
        for (listen, base) in [
            ("127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("0.0.0.0:8080", "http://127.0.0.1:8080"),
            ("[::]:8080", "http://127.0.0.1:8080"),
            ("[::1]:18488", "http://[::1]:18488"),
        ] {
            assert_eq!(c.push_config(listen.parse().unwrap()).base_url, base);
        }
    }

    #[test]
    fn any_printable_token_is_taken_and_short_ones_are_flagged() {
        let with = |admin: &str, token: &str| ServerConfig {
            admin_token: Some(admin.into()),
            project_id: Some("000000000000000000000001".into()),
            token: Some(token.into()),
            ..ServerConfig::default()
        };
        let short = with("adm", "tok1");
        assert!(short.validate().is_ok());
        assert_eq!(short.short_tokens(), ["admin_token", "token"]);
        let long = with("0123456789abcdef", "fedcba9876543210");
        assert!(long.validate().is_ok() && long.short_tokens().is_empty());
        for bad in ["", "has space", "tab\there", &"x".repeat(257)] {
            assert!(with("0123456789abcdef", bad).validate().is_err(), "{bad:?}");
        }
    }

    fn invalid_key(c: &ServerConfig) -> Option<String> {
        match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => Some(key.to_string()),
            Err(other) => panic!("not a keyed error: {other}"),
            Ok(()) => None,
        }
    }

    #[test]
    fn engine_limits_are_reported_under_their_own_key() {
        let segment = |n| ServerConfig {
            segment_bytes: n,
            ..ServerConfig::default()
        };
        for n in [0, 1024, engine::limits::SEGMENT_BYTES_MAX + 1] {
            assert_eq!(
                invalid_key(&segment(n)).as_deref(),
                Some("segment_bytes"),
                "{n}"
            );
        }
        // Too small for a full batch of default-size bodies: the segment is what to change.
        let small = segment(engine::limits::SEGMENT_BYTES_MIN);
        assert_eq!(invalid_key(&small).as_deref(), Some("segment_bytes"));
        let err = small.validate().expect_err("too small").to_string();
        assert!(
            err.starts_with("configuration key `segment_bytes`:"),
            "{err}"
        );
        for b in [0, engine::limits::BODY_BYTES_MAX + 1] {
            let c = ServerConfig {
                body_bytes_max: b,
                ..ServerConfig::default()
            };
            assert_eq!(invalid_key(&c).as_deref(), Some("body_bytes_max"), "{b}");
        }
        assert_eq!(invalid_key(&ServerConfig::default()), None);
    }

    #[test]
    fn unknown_ferromq_variables_are_found_with_the_name_meant() {
        let names = [
            "FERROMQ_SYNC",
            "FERROMQ_SYNC_POLICY",
            "FERROMQ_LISTN",
            "FERROMQ_TOKEN",
            "FERROMQ_QUEUES",
            "FERROMQ_BENCH_TMP",
            "FERROMQ_TLS_CERT",
            "FERROMQ_COLOUR_SCHEME_OF_THE_DAY",
            "FERROMQ_DATADIR",
            "FERROMQ_PORT",
            "FERROMQ_LOG",
            "PATH",
            "ferromq_sync",
        ]
        .map(String::from);
        let pair = |a: &str, b: Option<&str>| (a.to_string(), b.map(String::from));
        assert_eq!(
            unknown_env(names),
            vec![
                pair("FERROMQ_COLOUR_SCHEME_OF_THE_DAY", None),
                pair("FERROMQ_DATADIR", Some("FERROMQ_DATA_DIR")),
                pair("FERROMQ_LISTN", Some("FERROMQ_LISTEN")),
                pair("FERROMQ_LOG", Some("FERROMQ_LOG_LEVEL")),
                pair("FERROMQ_PORT", Some("FERROMQ_LISTEN")),
                pair("FERROMQ_SYNC_POLICY", Some("FERROMQ_SYNC")),
            ]
        );
    }

    #[test]
    fn a_listen_port_out_of_range_and_a_request_limit_below_one_message_are_named() {
        for listen in [
            "127.0.0.1:70000",
            "localhost:http",
            "127.0.0.1:",
            ":8080",
            "8080",
        ] {
            let c = ServerConfig {
                listen: listen.into(),
                ..ServerConfig::default()
            };
            assert_eq!(invalid_key(&c).as_deref(), Some("listen"), "{listen}");
        }
        for listen in ["localhost:8080", "[::1]:0", "0.0.0.0:65535"] {
            let c = ServerConfig {
                listen: listen.into(),
                ..ServerConfig::default()
            };
            assert_eq!(invalid_key(&c), None, "{listen}");
        }
        let d = ServerConfig::default();
        let with = |n| ServerConfig {
            request_bytes_max: n,
            ..ServerConfig::default()
        };
        let least = d.body_bytes_max as u64 + REQUEST_BYTES_OVER_BODY;
        assert_eq!(
            invalid_key(&with(least - 1)).as_deref(),
            Some("request_bytes_max")
        );
        assert_eq!(invalid_key(&with(1)).as_deref(), Some("request_bytes_max"));
        assert_eq!(invalid_key(&with(least)), None);
        assert_eq!(invalid_key(&with(0)), None);
    }

    #[test]
    fn an_admin_token_equal_to_the_project_token_is_refused_naming_both() {
        let c = ServerConfig {
            admin_token: Some("same-token-0123456789".into()),
            project_id: Some("000000000000000000000001".into()),
            token: Some("same-token-0123456789".into()),
            ..ServerConfig::default()
        };
        let err = c.validate().expect_err("refused").to_string();
        assert!(
            err.contains("`admin_token`")
                && err.contains("`token`")
                && err.contains("FERROMQ_ADMIN_TOKEN")
                && err.contains("FERROMQ_TOKEN"),
            "{err}"
        );
    }
}
