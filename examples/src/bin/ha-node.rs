//! ha-node: one member of an ha group as a process, with an HTTP/JSON
//! client API.
//!
//! ```sh
//! ha-node --id 1 --listen 127.0.0.1:7001 --data-dir ./data/1 \
//!   --members 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --http 127.0.0.1:8001
//! ha-node --config node1.toml           # the same settings, kebab-case keys
//! ```
//!
//! SIGTERM or SIGINT stops it cleanly: a leader hands leadership over
//! first. See the README's "Running members as processes".

use clap::Parser;
use ha_examples::node::{Flags, Settings, run};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = match Settings::from_flags(Flags::parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ha-node: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ha-node: cannot install signal handlers: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let stop = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    };
    match run(settings, stop).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ha-node: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
