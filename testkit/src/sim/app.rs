//! The sim's router: every route and layer put together, the shared request state, and the
//! middleware that names the answering node on every response.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

use super::bases::Bases;
use super::ownership::Ownership;
use super::socketio::SocketIndex;
use super::{SimError, routes, rows, socketio, stream};

/// Header carrying the node id of the server that produced a response, on every response.
pub const NODE_HEADER: &str = "x-dtable-node";

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Which buckets the sim owns; also knows the node id.
    pub(crate) ownership: Ownership,
    /// The bases kept in memory, with `--storage-dir`; `None` describes requests back.
    pub(crate) bases: Option<Bases>,
    /// Connected socket.io sockets by bucket.
    pub(crate) sockets: SocketIndex,
    /// Cancelled when the sim shuts down, to end WebSocket sessions.
    pub(crate) shutdown: CancellationToken,
    /// Requests answered on the base routes (the rows API included), for tests that count
    /// how often a base was asked for.
    pub(crate) base_requests: Arc<AtomicU64>,
    /// With `--self-register`: the key registered and its current lease (0 while none).
    pub(crate) registration: Option<(String, Arc<AtomicI64>)>,
}

/// The sim's whole router for `state`, and the socket.io handle to close at shutdown: ping,
/// the base routes, the streaming routes, socket.io, `GET /_sim/state`, and 404 for anything
/// else; every response (errors and upgrades included) stamped with [`NODE_HEADER`].
///
/// # Errors
/// [`SimError::InvalidNodeId`] if the node id is empty or not valid in a header.
pub(crate) fn router(state: AppState) -> Result<(Router, SocketIo), SimError> {
    let node = node_header(state.ownership.node_id())?;
    let (socketio_layer, io) = socketio::layer(state.clone());
    let router = Router::new()
        .route("/ping/", get(ping))
        .route("/_sim/state", get(sim_state))
        .merge(routes::routes())
        .merge(rows::routes())
        .merge(stream::routes())
        .fallback(not_found)
        .with_state(state.clone())
        .layer(socketio_layer)
        .layer(middleware::from_fn_with_state(state, socketio::gate))
        .layer(middleware::from_fn_with_state(node, stamp_node));
    Ok((router, io))
}

/// The node id as a header value, refusing what cannot be one.
pub(crate) fn node_header(node_id: &str) -> Result<HeaderValue, SimError> {
    let invalid = || SimError::InvalidNodeId(node_id.to_owned());
    if node_id.trim().is_empty() {
        return Err(invalid());
    }
    HeaderValue::from_str(node_id).map_err(|_| invalid())
}

/// dtable-server's liveness probe.
async fn ping() -> &'static str {
    "pong"
}

/// `GET /_sim/state`: `{"node_id","mode","role":"server","follows_etcd","revision",
/// "serve_for_ms","storage_dir","base_requests","registration":{"key","lease"}|null,
/// "owned":{"xx":epoch,...}}`, so a test can wait until the sim has seen an assignment.
async fn sim_state(State(state): State<AppState>) -> Response {
    let own = &state.ownership;
    let owned: serde_json::Map<String, serde_json::Value> = own
        .owned()
        .into_iter()
        .map(|(bucket, epoch)| (bucket.to_string(), epoch.into()))
        .collect();
    axum::Json(json!({
        "node_id": own.node_id(),
        "mode": own.source().name(),
        "follows_etcd": own.follows_etcd(),
        "revision": own.revision(),
        "serve_for_ms": own.serve_for().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "storage_dir": state.bases.as_ref().map(|b| b.dir().display().to_string()),
        "role": "server",
        "base_requests": state.base_requests.load(Ordering::Relaxed),
        "registration": state.registration.as_ref().map(|(key, lease)| {
            json!({"key": key, "lease": lease.load(Ordering::SeqCst)})
        }),
        "owned": owned,
    }))
    .into_response()
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
        assert!(matches!(node_header(""), Err(SimError::InvalidNodeId(_))));
        assert!(matches!(node_header("  "), Err(SimError::InvalidNodeId(_))));
        assert!(matches!(
            node_header("a\nb"),
            Err(SimError::InvalidNodeId(_))
        ));
        assert!(node_header("dtable-server-1").is_ok());
    }
}
