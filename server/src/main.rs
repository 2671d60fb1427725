//! The `ferromq` binary: `ferromq serve [--data-dir DIR] [--listen ADDR] [--config FILE.json]`,
//! and the client subcommands `admin`, `backup` and `restore` (module `cli`).

mod alloc;
mod cli;

#[global_allocator]
static GLOBAL: alloc::Split = alloc::Split;

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
    /// Manage projects and tokens on a running server (needs the admin token).
    Admin {
        #[command(flatten)]
        server: ServerArgs,
        /// Print the server's JSON answer instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: cli::admin::AdminCommand,
    },
    /// Take a hot backup of a running server into a new file, with a progress bar.
    Backup {
        #[command(flatten)]
        server: ServerArgs,
        /// The backup file to write (must not exist).
        #[arg(long)]
        output: PathBuf,
    },
    /// Restore a backup file into an empty (or absent) data directory, verifying every
    /// checksum and running strict recovery on the result. No server may use the directory.
    Restore {
        /// The backup file.
        #[arg(long)]
        input: PathBuf,
        /// The data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the server is and the admin token.
#[derive(clap::Args)]
struct ServerArgs {
    /// Base URL of the server.
    #[arg(long, env = "FERROMQ_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token.
    #[arg(long, env = "FERROMQ_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
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
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            config,
        } => serve(data_dir, listen, config),
        Command::Admin {
            server,
            json,
            command,
        } => cli::admin::run(&server.url, &server.token, json, command),
        Command::Backup { server, output } => {
            cli::backup::backup(&server.url, &server.token, &output)
        }
        Command::Restore {
            input,
            data_dir,
            json,
        } => cli::backup::restore(&input, &data_dir, json),
    }
}

fn serve(
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
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
