//! The `ferromq` binary: `ferromq serve [--data-dir DIR] [--listen ADDR] [--config FILE.json]`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::ServerConfig;

#[derive(Parser)]
#[command(
    name = "ferromq",
    version,
    about = "A self-hosted message queue speaking the IronMQ v3 HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Data directory (default ./data; env FERROMQ_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address (default 127.0.0.1:8080; env FERROMQ_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// JSON configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Command::Serve {
        data_dir,
        listen,
        config,
    } = cli.command;
    let mut cfg = ServerConfig::load(config.as_deref())?;
    if let Some(d) = data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = listen {
        cfg.listen = l;
    }
    cfg.validate()?;
    server::logfmt::init(&cfg.log_level)
        .map_err(|e| anyhow::anyhow!("configuration key `log_level`: {e}"))?;
    server::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let res = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        server::run(listener, cfg, shutdown_signal()).await
    });
    if let Err(e) = &res {
        // Startup and recovery problems, and an engine failure, end here: log the cause.
        tracing::error!(crit = true, error = %format!("{e:#}"), "ferromq stopped");
    }
    res
}
