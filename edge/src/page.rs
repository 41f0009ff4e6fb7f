//! The player page: `GET /APP/NAME` on an edge serves a page that plays the stream's HTTP-FLV
//! with mpegts.js, or its LL-HLS (`/APP/NAME.m3u8`) with hls.js where mpegts.js cannot (or the
//! browser's own HLS where there is no MSE, as on older iOS). Both libraries are vendored,
//! pinned, with their licences: the page works offline. The page reads the stream from its own
//! URL, query string included (a playback token passes through).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

// mpegts.js 1.8.2 and hls.js 1.7.4 are vendored in `edge/assets/` (see mpegts.LICENSE.txt and
// hls.LICENSE.txt there).
const PLAYER_HTML: &str = include_str!("../assets/player.html");
const PLAYER_JS: &str = include_str!("../assets/player.js");
const PLAYER_CSS: &str = include_str!("../assets/player.css");
const MPEGTS_JS: &str = include_str!("../assets/mpegts.min.js");
const MPEGTS_LICENSE: &str = include_str!("../assets/mpegts.LICENSE.txt");
const HLS_JS: &str = include_str!("../assets/hls.min.js");
const HLS_LICENSE: &str = include_str!("../assets/hls.LICENSE.txt");

/// The player page for any `/APP/NAME`.
pub fn player() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PLAYER_HTML,
    )
        .into_response()
}

/// Static assets under `/_corriente/`.
pub fn asset(name: &str) -> Response {
    let (body, content_type) = match name {
        "player.js" => (PLAYER_JS, "text/javascript; charset=utf-8"),
        "player.css" => (PLAYER_CSS, "text/css; charset=utf-8"),
        "mpegts.min.js" => (MPEGTS_JS, "text/javascript; charset=utf-8"),
        "mpegts.LICENSE.txt" => (MPEGTS_LICENSE, "text/plain; charset=utf-8"),
        "hls.min.js" => (HLS_JS, "text/javascript; charset=utf-8"),
        "hls.LICENSE.txt" => (HLS_LICENSE, "text/plain; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}
