//! `registry-node`: runs one registry node until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use registry_node::config::LogFormat;
use registry_node::{Cli, StartError};
use tracing_subscriber::EnvFilter;

/// EX_USAGE: the configuration was refused.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match cli.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("registry-node: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.check_config {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("registry-node: cannot print config: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
    // Listen for signals before the node says it is ready, so a SIGTERM sent
    // right after that line is a graceful shutdown, not the default kill.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("registry-node: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match registry_node::start(config).await {
        Ok(n) => n,
        Err(e @ StartError::Config(_)) => {
            eprintln!("registry-node: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("registry-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = node.shutdown_token();
    tokio::spawn(async move {
        signals.wait().await;
        shutdown.cancel();
    });
    node.stopped().await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, either of which starts the graceful shutdown.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
