//! The admin HTTP server every node runs: `/healthz` (alive), `/readyz` (ready for traffic),
//! `/metrics` (Prometheus text format), and the roles' stats routes.

use std::net::SocketAddr;

use anyhow::Context;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use corriente_control_plane::Health;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Who this node is, added to every `corriente_` series as `role` and `node` labels.
#[derive(Clone)]
pub struct Identity {
    pub role: &'static str,
    pub node: String,
}

/// A bound admin server.
pub struct Admin {
    listener: TcpListener,
    router: Router,
}

impl Admin {
    /// Binds `addr`. `components` are the parts whose readiness `/readyz` reports; `routes`
    /// are the roles' own admin routes.
    pub async fn bind(
        addr: SocketAddr,
        identity: Identity,
        components: Vec<(&'static str, Health)>,
        routes: Router,
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
                    async move { readiness(&components) }
                }),
            )
            .route("/metrics", get(move || metrics(identity.clone())))
            .merge(routes);
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
        if let Err(e) = axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
        {
            warn!(error = %e, "admin server failed");
        }
    }
}

fn readiness(components: &[(&'static str, Health)]) -> axum::response::Response {
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
    (
        status,
        Json(serde_json::json!({ "ready": ready, "components": details })),
    )
        .into_response()
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
