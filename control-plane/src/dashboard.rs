//! The cluster dashboard: `GET /` on a control plane's admin port. A page that polls the stats
//! API (`/api/v1/streams`, `/api/v1/nodes`) and shows streams, origins and edges; no framework,
//! no external resource.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard.css");

fn page(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `/` and its assets under `/_corriente/`.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(DASHBOARD_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/_corriente/{asset}",
            get(|Path(asset): Path<String>| async move {
                match asset.as_str() {
                    "dashboard.js" => page(DASHBOARD_JS, "text/javascript; charset=utf-8"),
                    "dashboard.css" => page(DASHBOARD_CSS, "text/css; charset=utf-8"),
                    _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
                }
            }),
        )
}
