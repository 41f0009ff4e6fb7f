//! The `corriente` binary: parses the command line and runs one role, or all of them.

mod admin;
mod cli;
mod logging;
mod node;

use std::process::ExitCode;

use clap::Parser;
use corriente_control_plane::ControlPlane;
use corriente_edge::Edge;
use corriente_origin::Origin;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, role) = match &cli.command {
        None => (&cli.all.common, "all"),
        Some(Command::All(a)) => (&a.common, "all"),
        Some(Command::Origin(a)) => (&a.common, "origin"),
        Some(Command::Edge(a)) => (&a.common, "edge"),
        Some(Command::ControlPlane(a)) => (&a.common, "control-plane"),
        Some(Command::Healthcheck(args)) => return healthcheck(args),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let telemetry = runtime.block_on(async { logging::init(common.log_format, role) });
    // One TLS implementation for the whole process (Redis over TLS, HTTPS, RTMPS).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Every viewer is a socket: use all the file descriptors the hard limit allows.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open files limit");
    }
    if common.is_insecure() {
        tracing::warn!(
            "INSECURE: running with --insecure and no cluster token; anyone who reaches this \
             node's control, relay or admin ports can register streams, pull relays and act on \
             the cluster. Give every node --cluster-token-file instead."
        );
    }
    let result = runtime.block_on(run(cli));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `corriente healthcheck`: a plain HTTP/1.0 GET of /healthz or /readyz; no runtime needed.
fn healthcheck(args: &cli::HealthcheckArgs) -> ExitCode {
    use std::io::{Read, Write};
    let mut addr = args.admin;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let result = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, args.timeout)?;
        stream.set_read_timeout(Some(args.timeout))?;
        stream.set_write_timeout(Some(args.timeout))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.take(64 << 10).read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response)
            if response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200") =>
        {
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!(
                "{path} on {addr}: {}",
                response.lines().next().unwrap_or("")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{path} on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels the returned token on SIGINT or SIGTERM; a second signal exits at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down: draining connections (signal again to stop at once)");
        cancel.cancel();
        wait_for_signal().await;
        error!("second signal: stopping now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => node::run_all(cli.all).await,
        Some(Command::All(args)) => node::run_all(args).await,
        Some(Command::Origin(args)) => {
            node::run_node::<Origin>(&args.common, args.config(), args.common.role_admin()).await
        }
        Some(Command::Edge(args)) => {
            node::run_node::<Edge>(&args.common, args.config(), args.common.role_admin()).await
        }
        Some(Command::ControlPlane(args)) => {
            node::run_node::<ControlPlane>(&args.common, args.config(), args.common.role_admin())
                .await
        }
        Some(Command::Healthcheck(_)) => Ok(()),
    }
}
