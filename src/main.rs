//! The `corriente` binary: parses the command line and runs one role, or all of them.

mod admin;
mod cli;
mod logging;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use corriente_control_plane::ControlPlane;
use corriente_edge::Edge;
use corriente_origin::Origin;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin::{ActionAccess, Admin, Identity};
use crate::cli::{AllArgs, Cli, Command, CommonArgs};

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

fn check_only(common: &CommonArgs, config: &dyn std::fmt::Debug) -> bool {
    if common.check_config {
        if let Err(e) = common.admin_tokens() {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        println!("configuration OK\n{config:#?}");
    }
    common.check_config
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => run_all(cli.all).await,
        Some(Command::All(args)) => run_all(args).await,
        Some(Command::Origin(args)) => {
            let config = args.config().map_err(anyhow::Error::msg)?;
            if check_only(&args.common, &config) {
                return Ok(());
            }
            let shutdown = shutdown_on_signals();
            let origin = Origin::bind(config).await?;
            let identity = Identity {
                role: "origin",
                node: origin.node_id().to_owned(),
                insecure: args.common.is_insecure(),
            };
            let admin = bind_admin(
                &args.common,
                identity,
                vec![("origin", origin.health())],
                origin.admin_routes(),
                None,
            )
            .await?;
            let admin_stop = CancellationToken::new();
            let admin_task = tokio::spawn(admin.serve(admin_stop.clone()));
            let result = origin.serve(shutdown).await;
            admin_stop.cancel();
            let _ = admin_task.await;
            Ok(result?)
        }
        Some(Command::Edge(args)) => {
            let config = args.config().map_err(anyhow::Error::msg)?;
            if check_only(&args.common, &config) {
                return Ok(());
            }
            let shutdown = shutdown_on_signals();
            let edge = Edge::bind(config).await?;
            let identity = Identity {
                role: "edge",
                node: edge.node_id().to_owned(),
                insecure: args.common.is_insecure(),
            };
            let admin = bind_admin(
                &args.common,
                identity,
                vec![("edge", edge.health())],
                edge.admin_routes(),
                None,
            )
            .await?;
            let admin_stop = CancellationToken::new();
            let admin_task = tokio::spawn(admin.serve(admin_stop.clone()));
            let result = edge.serve(shutdown).await;
            admin_stop.cancel();
            let _ = admin_task.await;
            Ok(result?)
        }
        Some(Command::Healthcheck(_)) => Ok(()),
        Some(Command::ControlPlane(args)) => {
            let config = args.config().map_err(anyhow::Error::msg)?;
            if check_only(&args.common, &config) {
                return Ok(());
            }
            let shutdown = shutdown_on_signals();
            let control = ControlPlane::bind(config).await?;
            let identity = Identity {
                role: "control-plane",
                node: args
                    .common
                    .node_id
                    .clone()
                    .unwrap_or_else(|| cli::default_node_id("control-plane")),
                insecure: args.common.is_insecure(),
            };
            let admin = bind_admin(
                &args.common,
                identity,
                vec![("control_plane", control.health())],
                control.admin_routes(),
                Some(control.admin_actions()),
            )
            .await?;
            let admin_task = tokio::spawn(admin.serve(shutdown.clone()));
            let result = control.serve(shutdown).await;
            let _ = admin_task.await;
            Ok(result?)
        }
    }
}

async fn bind_admin(
    common: &CommonArgs,
    identity: Identity,
    components: Vec<(&'static str, corriente_cluster::Health)>,
    routes: axum::Router,
    actions: Option<axum::Router>,
) -> anyhow::Result<Admin> {
    let addr = common
        .admin
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 9090)));
    Admin::bind(
        addr,
        identity,
        components,
        routes,
        actions,
        action_access(common)?,
    )
    .await
}

/// Who may run admin actions: holders of the admin token, or loopback clients without one.
fn action_access(common: &CommonArgs) -> anyhow::Result<ActionAccess> {
    Ok(match common.admin_tokens().map_err(anyhow::Error::msg)? {
        Some(tokens) => ActionAccess::Token(std::sync::Arc::new(tokens)),
        None => ActionAccess::LoopbackOnly,
    })
}

/// Control plane, origin and edge in one process, wired over loopback gRPC.
async fn run_all(args: AllArgs) -> anyhow::Result<()> {
    let mut config = args.config().map_err(anyhow::Error::msg)?;
    if check_only(
        &args.common,
        &(&config.control, &config.origin, &config.edge),
    ) {
        return Ok(());
    }
    let shutdown = shutdown_on_signals();
    let control = ControlPlane::bind(config.control.clone()).await?;
    let control_url = format!("http://{}", control.local_addr());
    config.origin.control_url = control_url.clone();
    config.edge.control_url = control_url;
    let origin = Origin::bind(config.origin).await?;
    let edge = Edge::bind(config.edge).await?;
    let routes = control
        .admin_routes()
        .merge(origin.admin_routes())
        .merge(edge.admin_routes());
    let identity = Identity {
        role: "all",
        node: args
            .common
            .node_id
            .clone()
            .unwrap_or_else(|| cli::default_node_id("all")),
        insecure: args.common.is_insecure(),
    };
    let admin = Admin::bind(
        args.admin(),
        identity,
        vec![
            ("control_plane", control.health()),
            ("origin", origin.health()),
            ("edge", edge.health()),
        ],
        routes,
        Some(control.admin_actions()),
        action_access(&args.common)?,
    )
    .await?;
    print_banner(
        origin.rtmp_addr(),
        edge.rtmp_addr(),
        edge.http_addr(),
        admin.local_addr(),
    );
    print_tls_banner(&args);
    if config.control.publish_auth.required {
        print_publish_auth_banner(admin.local_addr());
    }

    // The control plane and admin server outlive the roles, so origins can release their
    // streams while draining.
    let last = CancellationToken::new();
    let control_task = tokio::spawn(control.serve(last.clone()));
    let admin_task = tokio::spawn(admin.serve(last.clone()));
    let (origin_result, edge_result) =
        tokio::join!(origin.serve(shutdown.clone()), edge.serve(shutdown.clone()));
    last.cancel();
    let control_result = control_task.await.context("control plane task")?;
    let _ = admin_task.await;
    origin_result?;
    edge_result?;
    control_result?;
    Ok(())
}

/// How to get a stream key, when `all` requires one to publish.
fn print_publish_auth_banner(admin: std::net::SocketAddr) {
    println!(
        "Publishing needs a key (--publish-auth). Create one for live/test:\n\
         \x20 curl -d '{{\"stream\":\"live/test\"}}' http://{admin}/api/v1/keys\n\
         and use its \"secret\" as the stream key.\n"
    );
}

/// The TLS URLs of `all`, when its TLS listeners are on.
fn print_tls_banner(args: &AllArgs) {
    let mut lines = Vec::new();
    if let Some(addr) = args.origin_rtmps {
        lines.push(format!("  Publish   rtmps://{addr}/live/STREAM"));
    }
    if let Some(addr) = args.edge_rtmps {
        lines.push(format!("  Watch     rtmps://{addr}/live/test"));
    }
    if let Some(addr) = args.edge_https {
        lines.push(format!(
            "  Watch     https://{addr}/live/test.flv  https://{addr}/live/test (player page)"
        ));
    }
    if !lines.is_empty() {
        println!("Over TLS:\n{}\n", lines.join("\n"));
    }
}

fn print_banner(
    ingest: std::net::SocketAddr,
    rtmp: std::net::SocketAddr,
    http: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) {
    println!(
        "\nCorriente {version} is running: control plane, origin and edge in one process.\n\n\
         \x20 Publish   rtmp://{ingest}/live/STREAM\n\
         \x20           (OBS: Server rtmp://{ingest}/live, Stream key: any name, e.g. test)\n\
         \x20           ffmpeg -re -i input.mp4 -c:v libx264 -c:a aac -f flv rtmp://{ingest}/live/test\n\
         \x20 Watch     rtmp://{rtmp}/live/test\n\
         \x20           http://{http}/live/test.flv\n\
         \x20           ffplay http://{http}/live/test.flv\n\
         \x20 Operate   http://{admin}/metrics  /healthz  /readyz  /api/v1/streams\n\n\
         Stop with Ctrl-C.\n",
        version = env!("CARGO_PKG_VERSION"),
    );
}
