//! ferromq: a self-hosted message queue server speaking the IronMQ v3 HTTP API.
//!
//! [`run`] opens the engine, ensures credentials, and serves until `shutdown` resolves.

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod http;
pub mod logfmt;
pub mod maintenance;
pub mod messages;
pub mod queues;
pub mod response;
pub mod router;
pub mod settings;
pub mod state;
pub mod time;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

pub use config::ServerConfig;

use crate::auth::{Credentials, Generated};
use crate::state::AppState;

fn print_generated(g: &Generated, host: &str, port: u16) {
    let iron = serde_json::json!({
        "project_id": g.project_id, "token": g.token, "host": host, "port": port,
        "protocol": "http", "scheme": "http",
    });
    let iron = serde_json::to_string_pretty(&iron).unwrap_or_default();
    println!(
        "ferromq: first start, created credentials (printed only this once):\n  admin token:   {}\n  project id:    {}\n  project token: {}\n\niron.json:\n{iron}\n",
        g.admin_token, g.project_id, g.token
    );
}

/// Serves on `listener` until `shutdown` resolves (then drains and closes the engine), or
/// until the engine fails (an error).
pub async fn run(
    listener: tokio::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate()?;
    let ecfg = config.engine_config();
    let engine = tokio::task::spawn_blocking(move || engine::Engine::open(ecfg)).await??;
    let (creds, generated) = Credentials::bootstrap(
        &engine,
        config.admin_token.as_deref(),
        config.project_id.as_deref(),
        config.token.as_deref(),
    )
    .await?;
    let addr = listener.local_addr()?;
    if let Some(g) = &generated {
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        print_generated(g, &host, addr.port());
    }
    let state = AppState {
        engine: engine.clone(),
        creds: Arc::new(creds),
        alerts_fired: Arc::new(parking_lot::Mutex::new(HashMap::new())),
        backups: Arc::new(tokio::sync::Semaphore::new(admin::BACKUPS_MAX)),
    };
    let router = router::build(state);
    let limits = http::Limits::from_config(&config);
    tracing::info!(addr = %addr, data_dir = %config.data_dir.display(), "listening");
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
        };
        http::serve(listener, router, limits, stop).await;
    }
    maint.abort();
    tracing::info!("closing the engine");
    let e = engine.clone();
    let _ = tokio::task::spawn_blocking(move || e.close()).await;
    match failed {
        Some(m) => Err(anyhow::anyhow!(m)),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
