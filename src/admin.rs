//! The admin HTTP server every node runs: `/healthz` (alive), `/readyz` (ready for traffic),
//! `/metrics` (Prometheus text format), the roles' read-only stats routes, and their admin
//! actions (publish keys; any request that is not a read), which need the admin token — or,
//! when none is configured, a client on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use corriente_cluster::Health;
use corriente_core::access::AdminReader;
use corriente_core::secret::SecretFile;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Who this node is, added to every `corriente_` series as `role` and `node` labels.
#[derive(Clone)]
pub struct Identity {
    pub role: &'static str,
    pub node: String,
    /// Running exposed without cluster credentials (`--insecure`): said in `/readyz`.
    pub insecure: bool,
}

/// Who may run admin actions.
#[derive(Clone, Debug)]
pub enum ActionAccess {
    /// Clients presenting `Authorization: Bearer TOKEN` with a token of this file (one per
    /// line; re-read when it changes).
    Token(Arc<SecretFile>),
    /// No admin token configured: clients on loopback only.
    LoopbackOnly,
}

/// What a guard covers: admin actions (every request), or read-only routes (requests other
/// than GET and HEAD).
#[derive(Clone)]
struct Guard {
    access: ActionAccess,
    writes_only: bool,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Lets an admin action through only with the admin token (or from loopback when there is no
/// token); a refusal is a 401 or 403 with a JSON error and a log line.
async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if guard.writes_only && matches!(*request.method(), Method::GET | Method::HEAD) {
        // Reads are open; whether the reader is trusted decides what personal data they see.
        let trusted = match &guard.access {
            ActionAccess::Token(tokens) => {
                bearer(&request).is_some_and(|t| tokens.matches(t.as_bytes()))
            }
            ActionAccess::LoopbackOnly => peer.is_some_and(|p| p.ip().to_canonical().is_loopback()),
        };
        request.extensions_mut().insert(AdminReader { trusted });
        return next.run(request).await;
    }
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let client = peer.map(|p| p.to_string()).unwrap_or_default();
    match &guard.access {
        ActionAccess::Token(tokens) => match bearer(&request) {
            None => {
                warn!(%method, %path, %client, "admin action refused: no admin token");
                return refuse(
                    StatusCode::UNAUTHORIZED,
                    "admin token required: Authorization: Bearer TOKEN",
                );
            }
            Some(token) if !tokens.matches(token.as_bytes()) => {
                warn!(%method, %path, %client, "admin action refused: wrong admin token");
                return refuse(StatusCode::FORBIDDEN, "wrong admin token");
            }
            Some(_) => {}
        },
        ActionAccess::LoopbackOnly => {
            if !peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) {
                warn!(%method, %path, %client, "admin action refused: no admin token is configured and the client is not on loopback");
                return refuse(
                    StatusCode::FORBIDDEN,
                    "admin actions are accepted from loopback only, unless the node runs with --admin-token-file",
                );
            }
        }
    }
    info!(%method, %path, %client, "admin action");
    next.run(request).await
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(request: &Request) -> Option<&str> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A bound admin server.
pub struct Admin {
    listener: TcpListener,
    router: Router,
}

impl Admin {
    /// Binds `addr`. `components` are the parts whose readiness `/readyz` reports; `routes`
    /// are the roles' own read-only admin routes (anything but GET and HEAD there is guarded
    /// like an action); `actions` are admin actions (at least one route), all guarded by
    /// `access`.
    pub async fn bind(
        addr: SocketAddr,
        identity: Identity,
        components: Vec<(&'static str, Health)>,
        routes: Router,
        actions: Option<Router>,
        access: ActionAccess,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (admin)"))?;
        let router = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route(
                "/readyz",
                get(move || {
                    let components = components.clone();
                    let insecure = identity.insecure;
                    async move { readiness(&components, insecure) }
                }),
            )
            .route(
                "/metrics",
                get({
                    let identity = identity.clone();
                    move || metrics(identity.clone())
                }),
            )
            .merge(routes)
            .route_layer(from_fn_with_state(
                Guard {
                    access: access.clone(),
                    writes_only: true,
                },
                guard,
            ));
        let router = match actions {
            Some(actions) => router.merge(actions.route_layer(from_fn_with_state(
                Guard {
                    access,
                    writes_only: false,
                },
                guard,
            ))),
            None => router,
        };
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown`.
    pub async fn serve(self, shutdown: CancellationToken) {
        info!(listener = "admin", addr = %self.local_addr(), "listening");
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            warn!(error = %e, "admin server failed");
        }
    }
}

fn readiness(components: &[(&'static str, Health)], insecure: bool) -> axum::response::Response {
    let mut ready = true;
    let mut details = serde_json::Map::new();
    for (name, health) in components {
        let r = health.readiness();
        ready &= r.ready;
        details.insert(
            (*name).to_owned(),
            serde_json::to_value(&r).unwrap_or(serde_json::Value::Null),
        );
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::json!({ "ready": ready, "components": details });
    if insecure {
        body["insecure"] = serde_json::Value::String(
            "running with --insecure: internal ports are open to anyone who reaches them (no cluster token)".to_owned(),
        );
    }
    (status, Json(body)).into_response()
}

async fn metrics(identity: Identity) -> axum::response::Response {
    let mut families = prometheus::gather();
    for family in families
        .iter_mut()
        .filter(|f| f.name().starts_with("corriente_"))
    {
        for metric in family.mut_metric() {
            let mut labels = metric.take_label();
            for (name, value) in [("role", identity.role), ("node", identity.node.as_str())] {
                if !labels.iter().any(|l| l.name() == name) {
                    let mut pair = prometheus::proto::LabelPair::default();
                    pair.set_name(name.to_owned());
                    pair.set_value(value.to_owned());
                    labels.push(pair);
                }
            }
            metric.set_label(labels);
        }
    }
    match prometheus::TextEncoder::new().encode_to_string(&families) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
