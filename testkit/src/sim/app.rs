//! The sim's HTTP routes and the middleware that names the answering node on every response.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;

use super::SimError;

/// Header carrying the node id of the server that produced a response, on every response.
pub const NODE_HEADER: &str = "x-dtable-node";

/// The sim's router for node `node_id`: `GET /ping/` → `pong`, anything else 404, and every
/// response (errors included) stamped with [`NODE_HEADER`].
///
/// # Errors
/// [`SimError::InvalidNodeId`] if `node_id` is empty or not valid in a header.
pub fn router(node_id: &str) -> Result<Router, SimError> {
    let invalid = || SimError::InvalidNodeId(node_id.to_owned());
    if node_id.trim().is_empty() {
        return Err(invalid());
    }
    let node = HeaderValue::from_str(node_id).map_err(|_| invalid())?;
    Ok(Router::new()
        .route("/ping/", get(ping))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(node, stamp_node)))
}

/// dtable-server's liveness probe.
async fn ping() -> &'static str {
    "pong"
}

/// Any path the sim does not serve.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found")
}

/// Adds `X-Dtable-Node` to the response and logs the request.
async fn stamp_node(State(node): State<HeaderValue>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let uri = request.uri().clone();
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(HeaderName::from_static(NODE_HEADER), node);
    tracing::debug!(%method, %uri, status = response.status().as_u16(), "request");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_node_ids() {
        assert!(matches!(router(""), Err(SimError::InvalidNodeId(_))));
        assert!(matches!(router("  "), Err(SimError::InvalidNodeId(_))));
        assert!(matches!(router("a\nb"), Err(SimError::InvalidNodeId(_))));
        assert!(router("dtable-server-1").is_ok());
    }
}
