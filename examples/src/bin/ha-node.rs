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
//! first; so does the end of standard input with `--exit-on-stdin-close`. See the README's "Running members as processes".

use clap::Parser;
use ha_examples::node::{Flags, Settings, run};
use std::io::Read;

use tokio::signal::unix::{SignalKind, signal};

/// Resolves when standard input reaches its end (or fails). A plain
/// thread reads it: tokio's stdin is a blocking read underneath anyway.
async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = rx.await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch standard input; only signals stop this member");
            std::future::pending::<()>().await;
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let flags = Flags::parse();
    let exit_on_stdin_close = flags.exit_on_stdin_close;
    let settings = match Settings::from_flags(flags) {
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
            _ = stdin_closed(), if exit_on_stdin_close => tracing::info!("standard input closed"),
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
