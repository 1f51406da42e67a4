//! The live status page at `GET /`: the bucket map, nodes, moves, recent events and the
//! leader, updated over the HTTP API's event stream. HTML, JS and CSS are embedded.
//!
//! The page loads nothing from outside this server: its script reads `GET /api/v1/status`
//! and follows `GET /api/v1/events`, and the Content-Security-Policy sent with every asset
//! holds it to that, so it works on a closed network and cannot be made to load anything else.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// Where the page's script is served.
pub const SCRIPT_PATH: &str = "/assets/status.js";
/// Where the page's stylesheet is served.
pub const STYLE_PATH: &str = "/assets/status.css";

/// The page itself: a static shell the script fills in.
const PAGE_HTML: &str = include_str!("../assets/status.html");
/// Renders the API's status and applies its events.
const PAGE_JS: &str = include_str!("../assets/status.js");
/// The page's look.
const PAGE_CSS: &str = include_str!("../assets/status.css");

/// Same-origin only: scripts, styles and API calls come from this server, nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The status page's routes, merged into the HTTP API.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PAGE_HTML) }),
        )
        .route(
            SCRIPT_PATH,
            get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }),
        )
        .route(
            STYLE_PATH,
            get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }),
        )
}

/// One embedded asset with its type. `no-cache` makes a browser revalidate, so an upgraded
/// control plane never runs a stale script against a newer API.
fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_the_assets_it_is_served_with() {
        assert!(PAGE_HTML.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(PAGE_HTML.contains(&format!("href=\"{STYLE_PATH}\"")));
    }

    #[test]
    fn the_assets_load_nothing_from_elsewhere() {
        for (name, text) in [
            ("status.html", PAGE_HTML),
            ("status.js", PAGE_JS),
            ("status.css", PAGE_CSS),
        ] {
            for needle in [
                "http://",
                "https://",
                "src=\"//",
                "href=\"//",
                "@import",
                "url(",
            ] {
                assert!(
                    !text.contains(needle),
                    "{name} contains {needle:?}: the page must be self-contained"
                );
            }
        }
    }

    #[test]
    fn the_script_reads_the_api_it_is_built_for() {
        assert!(PAGE_JS.contains("\"/api/v1/status\""));
        assert!(PAGE_JS.contains("\"/api/v1/events\""));
        assert!(PAGE_JS.contains("new EventSource("));
    }
}
