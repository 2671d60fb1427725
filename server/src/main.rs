//! The `ferromq` binary: `ferromq serve [--data-dir DIR] [--listen ADDR] [--config FILE.json]`,
//! and the client subcommands `admin`, `backup` and `restore` (module `cli`).

mod alloc;
mod cli;

#[global_allocator]
static GLOBAL: alloc::Split = alloc::Split;

use std::path::PathBuf;
use std::process::ExitCode;

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
        server: cli::ServerArgs,
        /// Print the server's JSON answer instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: cli::admin::AdminCommand,
    },
    /// Take a hot backup of a running server into a new file, with a progress bar.
    Backup {
        #[command(flatten)]
        server: cli::ServerArgs,
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

/// Resolves at the first SIGINT or SIGTERM. Later ones are logged: the graceful shutdown
/// already under way is bounded by `shutdown_grace_ms`, and a second signal does not cut
/// it short (what is acknowledged is on disk either way; what is in flight gets its answer).
/// SIGHUP is logged and ignored throughout.
async fn shutdown_signal() {
    #[cfg(unix)]
    tokio::spawn(ignore_hangups());
    stop_signal().await;
    tracing::info!(target: "server", "shutdown requested");
    tokio::spawn(async {
        loop {
            stop_signal().await;
            tracing::warn!(
                target: "server",
                "shutdown already under way: in-flight requests are finishing (up to shutdown_grace_ms), then the engine closes"
            );
        }
    });
}

/// The next SIGINT or SIGTERM.
async fn stop_signal() {
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
}

/// SIGHUP (a closed terminal, `systemctl reload`) would end the process at once, without
/// the graceful shutdown. The configuration is read at start only: say so and go on.
#[cfg(unix)]
async fn ignore_hangups() {
    if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        while s.recv().await.is_some() {
            tracing::warn!(
                target: "server",
                "SIGHUP ignored: the configuration is read at start only (restart to change it; SIGTERM stops gracefully)"
            );
        }
    }
}

/// A start that failed exits with this; a usage error (clap) with 2.
const EXIT_START_FAILED: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
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
        } => client_outcome(cli::admin::run(&server, json, command)),
        Command::Backup { server, output } => client_outcome(cli::backup::backup(&server, &output)),
        Command::Restore {
            input,
            data_dir,
            json,
        } => client_outcome(cli::backup::restore(&input, &data_dir, json)),
    }
}

/// A command-line error. `serve`'s goes out as a logfmt `crit` line like any failed start
/// (what runs the server reads its stderr as logfmt); the client subcommands' and
/// `--help`/`--version` as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let serving = std::env::args_os().nth(1).is_some_and(|a| a == "serve");
    let display = matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion);
    if !serving || display {
        e.exit();
    }
    let text = e.to_string();
    crit_line(text.trim_end());
    ExitCode::from(e.exit_code().clamp(1, 255) as u8)
}

/// The client subcommands print their error as anyhow does for `main`: the chain of causes.
fn client_outcome(res: anyhow::Result<()>) -> ExitCode {
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

/// The `crit` line of a start that failed before the log subscriber was installed,
/// formatted as the subscriber would.
fn crit_line(error: &str) {
    eprintln!(
        "{}",
        server::logfmt::line("crit", STOPPED, [("error", error)])
    );
}

const STOPPED: &str = "ferromq stopped";

/// A panic, wherever it happens (a task's panic is caught by tokio and the server goes on;
/// one in `main` ends it), is one logfmt `crit` line on stderr with its message, place and
/// thread, instead of Rust's plain text, so that what reads the log sees it.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| eprintln!("{}", panic_line(info))));
}

/// The `crit` line of a panic.
fn panic_line(info: &std::panic::PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let place = info
        .location()
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("unnamed");
    server::logfmt::line(
        "crit",
        "panic",
        [
            ("error", what),
            ("location", place.as_str()),
            ("thread", name),
        ],
    )
}

/// Runs the server. Every way it ends badly is one logfmt `crit` line on stderr naming the
/// cause, and exit status 1; nothing else is printed.
fn serve(data_dir: Option<PathBuf>, listen: Option<String>, config: Option<PathBuf>) -> ExitCode {
    install_panic_hook();
    let cfg = match configure(data_dir, listen, config) {
        Ok(c) => c,
        Err(e) => {
            crit_line(&format!("{e:#}"));
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    match run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Startup and recovery problems, and an engine failure, end here; the line is
            // printed even when `log_level` filters errors out.
            let error = format!("{e:#}");
            if tracing::enabled!(target: "server", tracing::Level::ERROR) {
                tracing::error!(target: "server", crit = true, error, "{STOPPED}");
            } else {
                crit_line(&error);
            }
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}

/// Loads and checks the configuration and installs the logfmt subscriber at its level.
fn configure(
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<ServerConfig> {
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
    Ok(cfg)
}

fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    server::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        server::run(listener, cfg, shutdown_signal()).await
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    static CAUGHT: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[test]
    fn a_panic_is_one_logfmt_crit_line_with_its_message_place_and_thread() {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            CAUGHT.lock().unwrap().push(super::panic_line(info));
        }));
        let n = 7;
        let r = std::thread::Builder::new()
            .name("worker-x".into())
            .spawn(move || {
                let _ = std::panic::catch_unwind(|| panic!("bad \"thing\" {n}"));
            })
            .unwrap()
            .join();
        std::panic::set_hook(previous);
        r.unwrap();
        let lines = CAUGHT.lock().unwrap().clone();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert!(l.starts_with("t="), "{l}");
        assert!(
            l.contains(
                " lvl=crit msg=panic error=\"bad \\\"thing\\\" 7\" location=server/src/main.rs:"
            ),
            "{l}"
        );
        assert!(l.ends_with(" thread=worker-x"), "{l}");
        assert!(!l.contains('\n'));
    }
}
