//! The admin port (5555): `POST /rebalance/` as SeaTable documents it, base lookups, metrics
//! and health.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtable_core::KeyLayout;
use dtable_core::auth::{AdminToken, require_admin};
use dtable_core::etcd::{CALL_TIMEOUT, ViewRx};
use dtable_core::placement::{Policy, place};
use dtable_core::tls::{ServerTls, serve_http};
use etcd_client::Client;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The proxy's cluster view.
    pub view_rx: ViewRx,
    /// For writing rebalance requests.
    pub client: Client,
    /// Key layout.
    pub keys: KeyLayout,
    /// Prometheus renderer, when installed.
    pub metrics: Option<PrometheusHandle>,
}

fn error(status: StatusCode, code: &str, msg: impl std::fmt::Display) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "error": msg.to_string()})),
    )
        .into_response()
}

/// Serves the admin API until `shutdown`; `POST /rebalance/` demands `token` when there is
/// one, everything else is open.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    tls: Option<ServerTls>,
    token: Option<Arc<AdminToken>>,
    shutdown: CancellationToken,
) {
    let mutating = Router::new()
        .route("/rebalance/", post(rebalance))
        .route("/rebalance", post(rebalance))
        .route_layer(require_admin(token));
    let app = Router::new()
        .route("/api/v1/lookup/{uuid}", get(lookup))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(mutating)
        .with_state(state);
    if let Err(e) = serve_http(listener, app, tls, shutdown).await {
        tracing::error!(error = %e, "admin listener stopped");
    }
}

/// Asks the control-plane leader for a full rebalance by writing the request key it watches,
/// and answers with the moves the placement plans from this proxy's view.
async fn rebalance(State(s): State<AdminState>) -> Response {
    let view = s.view_rx.borrow().clone();
    if view.revision == 0 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the cluster view is not loaded yet",
        );
    }
    let placement = place(&view.table(), &view.eligible(), &Policy::default());
    let request = serde_json::json!({
        "requested_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "by": "dtable-proxy",
    });
    let mut c = s.client.clone();
    let put = tokio::time::timeout(
        CALL_TIMEOUT,
        c.put(s.keys.rebalance_request(), request.to_string(), None),
    )
    .await;
    match put {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return error(StatusCode::BAD_GATEWAY, "etcd_error", e),
        Err(_) => {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "etcd_timeout",
                "etcd did not answer",
            );
        }
    }
    tracing::info!(planned = placement.moves.len(), "rebalance requested");
    let moves: Vec<_> = placement
        .moves
        .iter()
        .map(|m| {
            serde_json::json!({
                "bucket": m.bucket.to_string(),
                "from": m.from.as_ref().map(|n| n.as_str()),
                "to": m.to.as_ref().map(|n| n.as_str()),
            })
        })
        .collect();
    Json(serde_json::json!({"requested": true, "revision": view.revision, "planned_moves": moves}))
        .into_response()
}

async fn lookup(State(s): State<AdminState>, Path(uuid): Path<String>) -> Response {
    let view = s.view_rx.borrow().clone();
    match view.lookup(&uuid) {
        Ok(l) => Json(l).into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, "bad_dtable_uuid", e),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    match &s.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.view_rx.borrow().revision > 0 {
        "ready".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster view not loaded yet",
        )
            .into_response()
    }
}
