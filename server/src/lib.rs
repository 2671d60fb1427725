//! ferromq: a self-hosted message queue server speaking the IronMQ v3 HTTP API.
//!
//! [`run`] opens the engine, ensures credentials, and serves until `shutdown` resolves.

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod config;
pub mod declared;
pub mod error;
pub mod extract;
pub mod hops;
pub mod http;
pub mod logfmt;
pub mod maintenance;
pub mod messages;
pub mod metrics;
pub mod observe;
pub mod push;
pub mod queues;
pub mod response;
pub mod router;
pub mod settings;
pub mod state;
pub mod stats;
pub mod time;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use config::ServerConfig;

use crate::auth::{Credentials, Generated};
use crate::state::AppState;

fn print_generated(g: &Generated, host: &str, port: u16, scheme: &str) {
    let iron = serde_json::json!({
        "project_id": g.project_id, "token": g.token, "host": host, "port": port,
        "protocol": scheme, "scheme": scheme,
    });
    let iron = serde_json::to_string_pretty(&iron).unwrap_or_default();
    println!(
        "ferromq: first start, created credentials (printed only this once):\n  admin token:   {}\n  project id:    {}\n  project token: {}\n\niron.json:\n{iron}\n",
        g.admin_token, g.project_id, g.token
    );
}

/// Logs what the open found: a torn tail means the last run did not stop cleanly.
fn log_recovery(engine: &engine::Engine) {
    let r = engine.recovery_report();
    match &r.index {
        engine::IndexUse::Absent => tracing::info!(
            records_replayed = r.records_replayed,
            "no restart index: replayed the whole log"
        ),
        engine::IndexUse::Loaded { covers } => tracing::info!(
            segment = covers.segment().0,
            offset = covers.offset(),
            records_replayed = r.records_replayed,
            "restart index loaded: replayed only the log after it"
        ),
        engine::IndexUse::Ignored(why) => tracing::warn!(
            reason = %why,
            records_replayed = r.records_replayed,
            "restart index unusable, removed: replayed the whole log"
        ),
    }
    if let Some(segment) = r.damaged_header_cut {
        tracing::warn!(
            segment = segment.0,
            "recovery tolerates a torn tail: removed the last segment, whose header was bad, with the records after it"
        );
    }
    if r.unstarted_removed > 0 {
        tracing::info!(
            files = r.unstarted_removed,
            "removed an unstarted segment (named ahead of a roll the last run did not reach)"
        );
    }
    match r.torn_tail {
        None => tracing::info!(segments = r.segments, torn_tail = false, "log opened"),
        Some((segment, offset)) => tracing::warn!(
            segments = r.segments,
            torn_tail = true,
            segment = segment.0,
            offset,
            "log opened: zeroed a torn tail (the last run did not stop cleanly)"
        ),
    }
}

/// Serves on `listener` until `shutdown` resolves, or until the engine fails (an error).
///
/// Shutdown: `/ready` turns 503, waiting long polls answer at once with no messages, the
/// listener closes, in-flight requests get `shutdown_grace_ms` to finish, then the engine
/// writes out, syncs and closes (so the next start finds no torn tail).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    for (var, near) in
        config::unknown_env(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()))
    {
        match near {
            Some(near) => tracing::warn!(
                var,
                "environment variable {var} is not a ferromq setting and is ignored (did you mean {near}?)"
            ),
            None => tracing::warn!(
                var,
                "environment variable {var} is not a ferromq setting and is ignored"
            ),
        }
    }
    for key in config.short_tokens() {
        tracing::warn!(
            key,
            "the configured {key} is shorter than {} characters: easy to guess",
            config::TOKEN_BYTES_WARN
        );
    }
    if let Some(p) = config.project_id.as_deref()
        && !auth::is_hex_project_id(p)
    {
        tracing::warn!(
            project_id = p,
            "the configured project_id is not 24 hex digits: some IronMQ clients (Ruby) refuse such ids"
        );
    }
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
    let ecfg = config.engine_config();
    let engine = tokio::task::spawn_blocking(move || engine::Engine::open(ecfg)).await??;
    log_recovery(&engine);
    // The open checked only the log after the restart index: check the rest while serving.
    // Damage there stops the engine (and so the server) with the file and offset.
    let verifying = engine.clone();
    tokio::task::spawn_blocking(move || match verifying.verify_log_before_index() {
        Ok(Some(records)) => tracing::info!(records, "log before the restart index verified"),
        Ok(None) => {}
        Err(e) => tracing::error!(
            crit = true,
            error = %e,
            "the log is damaged before its tail; the server stops"
        ),
    });
    // Declared queues that cannot be applied stop the start before a first start creates its
    // credentials (printed only once: a start that failed after it would lose them).
    declared::check(&engine, &config.queues, config.project_id.as_deref())?;
    let (creds, generated) = Credentials::bootstrap(
        &engine,
        config.admin_token.as_deref(),
        config.project_id.as_deref(),
        config.token.as_deref(),
    )
    .await?;
    if !creds.has_admin() {
        tracing::warn!(
            "no admin token: projects, tokens, stats and backups cannot be managed; set \
             FERROMQ_ADMIN_TOKEN to create one at the next start"
        );
    }
    let addr = listener.local_addr()?;
    if let Some(g) = &generated {
        // Clients put `host` between `scheme://` and `:port`: an IPv6 address goes in
        // brackets there.
        let host = match addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        print_generated(g, &host, addr.port(), scheme);
    }
    declared::apply(&engine, &config.queues).await?;
    let state = AppState::new(
        engine.clone(),
        creds,
        Duration::from_secs(config.stats_interval),
        config.metrics_token.as_deref().map(auth::hash_token),
    );
    let ready = state.ready.clone();
    // The pusher stops when shutdown begins, and has the grace period to finish attempts.
    let push_stop = Arc::new(tokio::sync::Notify::new());
    let pusher = tokio::spawn(push::run(state.clone(), config.push_config(addr), {
        let push_stop = push_stop.clone();
        async move { push_stop.notified().await }
    }));
    let router = router::build(state);
    let limits = http::Limits::from_config(&config);
    tracing::info!(
        addr = %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        data_dir = %config.data_dir.display(),
        "listening"
    );
    ready.store(true, Ordering::Release);
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<String>();
    let maint = tokio::spawn({
        let engine = engine.clone();
        async move {
            let msg = maintenance::run(engine).await;
            let _ = fail_tx.send(msg);
        }
    });
    let mut failed = None;
    {
        let stop = async {
            tokio::select! {
                _ = shutdown => {}
                r = fail_rx => { if let Ok(m) = r { failed = Some(m); } }
            }
            ready.store(false, Ordering::Release);
            engine.stop_waiting();
            push_stop.notify_one();
            tracing::info!(
                grace_ms = config.shutdown_grace_ms,
                "shutting down: not accepting, long polls answered, in-flight requests finishing"
            );
        };
        http::serve(listener, router, limits, tls, stop).await;
    }
    maint.abort();
    push_stop.notify_one();
    let _ = pusher.await;
    tracing::info!("closing the engine");
    let e = engine.clone();
    if let Err(err) = tokio::task::spawn_blocking(move || e.close()).await {
        tracing::error!(error = %err, "closing the engine panicked");
    }
    match failed {
        Some(m) => Err(anyhow::anyhow!(m)),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}
