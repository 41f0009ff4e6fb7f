//! Running a node: one shared path for every role and for `all` — check the configuration,
//! bind the node and its admin server, serve until a signal, drain, stop the admin server.

use std::net::SocketAddr;
use std::sync::Arc;

use corriente_cluster::Health;
use corriente_control_plane::ControlPlane;
use corriente_edge::Edge;
use corriente_origin::Origin;
use tokio_util::sync::CancellationToken;

use crate::admin::{ActionAccess, Admin, Identity};
use crate::cli::{self, AllArgs, CommonArgs};
use crate::shutdown_on_signals;

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

pub async fn run_all(args: AllArgs) -> anyhow::Result<()> {
    run_node::<AllInOne>(&args.common, args.config(), args.admin()).await
}

/// What the binary needs of a node to run it: a role, or `all` of them in one process.
pub trait Node: Sized {
    /// The role's name, as `/healthz` and the logs give it.
    const ROLE: &'static str;
    type Config: std::fmt::Debug;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Binds every listener, so a port in use fails before anything runs.
    async fn bind(config: Self::Config) -> Result<Self, Self::Error>;
    /// The node id the admin server reports.
    fn node_id(&self) -> String;
    /// What `/readyz` asks, by component.
    fn components(&self) -> Vec<(&'static str, Health)>;
    /// Read-only admin routes (stats).
    fn admin_routes(&self) -> axum::Router;
    /// Admin actions behind the admin guard, if the node has any.
    fn admin_actions(&self) -> Option<axum::Router> {
        None
    }
    /// Told the admin server's address once everything is bound.
    fn started(&self, _admin: SocketAddr) {}
    /// Serves until `shutdown`, then drains.
    async fn serve(self, shutdown: CancellationToken) -> Result<(), Self::Error>;
}

/// Every node's life: check the configuration, bind the node and its admin server, serve
/// until a signal, drain, then stop the admin server (it answers `/readyz` while draining).
pub async fn run_node<N: Node>(
    common: &CommonArgs,
    config: Result<N::Config, String>,
    admin_addr: SocketAddr,
) -> anyhow::Result<()> {
    let config = config.map_err(anyhow::Error::msg)?;
    if check_only(common, &config) {
        return Ok(());
    }
    let shutdown = shutdown_on_signals();
    let node = N::bind(config).await?;
    let identity = Identity {
        role: N::ROLE,
        node: node.node_id(),
        insecure: common.is_insecure(),
    };
    let access = match common.admin_tokens().map_err(anyhow::Error::msg)? {
        Some(tokens) => ActionAccess::Token(Arc::new(tokens)),
        None => ActionAccess::LoopbackOnly,
    };
    let admin = Admin::bind(
        admin_addr,
        identity,
        node.components(),
        node.admin_routes(),
        node.admin_actions(),
        access,
    )
    .await?;
    node.started(admin.local_addr());
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin.serve(admin_stop.clone()));
    let result = node.serve(shutdown).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    Ok(result?)
}

/// A role's `Node`: the role crate's own methods, under the name `/healthz` gives its component.
macro_rules! role_node {
    ($node:ident, $role:literal, $component:literal, $config:ty, $error:ty $(, actions: $actions:ident)?) => {
        impl Node for $node {
            const ROLE: &'static str = $role;
            type Config = $config;
            type Error = $error;

            async fn bind(config: Self::Config) -> Result<Self, Self::Error> {
                $node::bind(config).await
            }
            fn node_id(&self) -> String {
                $node::node_id(self).to_owned()
            }
            fn components(&self) -> Vec<(&'static str, Health)> {
                vec![($component, self.health())]
            }
            fn admin_routes(&self) -> axum::Router {
                $node::admin_routes(self)
            }
            $(fn admin_actions(&self) -> Option<axum::Router> {
                Some($node::$actions(self))
            })?
            async fn serve(self, shutdown: CancellationToken) -> Result<(), Self::Error> {
                $node::serve(self, shutdown).await
            }
        }
    };
}

role_node!(
    Origin,
    "origin",
    "origin",
    corriente_origin::OriginConfig,
    corriente_origin::OriginError
);
role_node!(
    Edge,
    "edge",
    "edge",
    corriente_edge::EdgeConfig,
    corriente_edge::EdgeError
);
role_node!(
    ControlPlane,
    "control-plane",
    "control_plane",
    corriente_control_plane::ControlPlaneConfig,
    corriente_control_plane::ControlPlaneError,
    actions: admin_actions
);

/// `corriente all`: control plane, origin and edge in one process, wired over loopback gRPC.
struct AllInOne {
    control: ControlPlane,
    origin: Origin,
    edge: Edge,
    node_id: String,
    publish_auth: bool,
    /// The TLS listeners as configured, for the banner.
    tls: TlsListeners,
}

/// The addresses of `all`'s TLS listeners, those that are on.
struct TlsListeners {
    origin_rtmps: Option<SocketAddr>,
    edge_rtmps: Option<SocketAddr>,
    edge_https: Option<SocketAddr>,
}

/// Why `all` stopped: the part that failed first.
#[derive(Debug, thiserror::Error)]
enum AllError {
    #[error(transparent)]
    Control(#[from] corriente_control_plane::ControlPlaneError),
    #[error(transparent)]
    Origin(#[from] corriente_origin::OriginError),
    #[error(transparent)]
    Edge(#[from] corriente_edge::EdgeError),
    #[error("control plane task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Node for AllInOne {
    const ROLE: &'static str = "all";
    type Config = cli::AllConfig;
    type Error = AllError;

    async fn bind(config: cli::AllConfig) -> Result<Self, AllError> {
        let cli::AllConfig {
            control,
            mut origin,
            mut edge,
            node_id,
        } = config;
        let publish_auth = control.publish_auth.required;
        let tls = TlsListeners {
            origin_rtmps: origin.rtmps_addr,
            edge_rtmps: edge.rtmps_addr,
            edge_https: edge.https_addr,
        };
        let control = ControlPlane::bind(control).await?;
        // The roles reach the control plane at its bound address, like any other node.
        let control_url = format!("http://{}", control.local_addr());
        origin.control_url = control_url.clone();
        edge.control_url = control_url;
        let origin = Origin::bind(origin).await?;
        let edge = Edge::bind(edge).await?;
        Ok(Self {
            control,
            origin,
            edge,
            node_id,
            publish_auth,
            tls,
        })
    }
    fn node_id(&self) -> String {
        self.node_id.clone()
    }
    fn components(&self) -> Vec<(&'static str, Health)> {
        vec![
            ("control_plane", self.control.health()),
            ("origin", self.origin.health()),
            ("edge", self.edge.health()),
        ]
    }
    fn admin_routes(&self) -> axum::Router {
        self.control
            .admin_routes()
            .merge(self.origin.admin_routes())
            .merge(self.edge.admin_routes())
    }
    fn admin_actions(&self) -> Option<axum::Router> {
        Some(self.control.admin_actions())
    }
    fn started(&self, admin: SocketAddr) {
        print_banner(
            self.origin.rtmp_addr(),
            self.edge.rtmp_addr(),
            self.edge.http_addr(),
            admin,
        );
        print_tls_banner(&self.tls);
        if self.publish_auth {
            print_publish_auth_banner(admin);
        }
    }
    async fn serve(self, shutdown: CancellationToken) -> Result<(), AllError> {
        // The control plane outlives the roles, so origins can release their streams while
        // draining.
        let last = CancellationToken::new();
        let control_task = tokio::spawn(self.control.serve(last.clone()));
        let (origin_result, edge_result) = tokio::join!(
            self.origin.serve(shutdown.clone()),
            self.edge.serve(shutdown)
        );
        last.cancel();
        let control_result = control_task.await?;
        origin_result?;
        edge_result?;
        control_result?;
        Ok(())
    }
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
fn print_tls_banner(tls: &TlsListeners) {
    let mut lines = Vec::new();
    if let Some(addr) = tls.origin_rtmps {
        lines.push(format!("  Publish   rtmps://{addr}/live/STREAM"));
    }
    if let Some(addr) = tls.edge_rtmps {
        lines.push(format!("  Watch     rtmps://{addr}/live/test"));
    }
    if let Some(addr) = tls.edge_https {
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
