//! The admin port (5555): `POST /rebalance/` as SeaTable documents it, base lookups, the slave
//! pool, metrics and health.
//!
//! `GET /api/v1/slaves[?dtable_uuid=<uuid>]` answers, with the slave listener on,
//! `{"revision", "slaves": [{"node_id","local_node_url","weight","in_flight"}]}` (the slaves
//! that take requests, as this proxy sees them) and, for a base, `"dtable_uuid"` (normalized)
//! and `"slave"`: the slave its requests go to, `null` when none is healthy. With the slave
//! listener off it answers 404 `{"code":"slaves_off"}`; a malformed UUID gets 400
//! `bad_dtable_uuid`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtable_core::KeyLayout;
use dtable_core::auth::{AdminToken, require_admin};
use dtable_core::etcd::{CALL_TIMEOUT, ViewRx};
use dtable_core::tls::{ServerTls, serve_http};
use etcd_client::Client;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::slaves::SlavePool;

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
    /// The slave pool, when the slave listener is on.
    pub slave_pool_rx: Option<watch::Receiver<Arc<SlavePool>>>,
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
        .route("/api/v1/slaves", get(slaves))
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
/// and answers with the moves the leader's placement plans from this proxy's view (as the
/// control plane's `POST /api/v1/rebalance` does).
async fn rebalance(State(s): State<AdminState>) -> Response {
    let view = s.view_rx.borrow().clone();
    if view.revision == 0 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the cluster view is not loaded yet",
        );
    }
    let planned = view.rebalance_plan();
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
    tracing::info!(planned = planned.len(), "rebalance requested");
    let moves: Vec<_> = planned
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

/// The query of `GET /api/v1/slaves`.
#[derive(serde::Deserialize)]
struct SlavesQuery {
    dtable_uuid: Option<String>,
}

async fn slaves(State(s): State<AdminState>, Query(q): Query<SlavesQuery>) -> Response {
    let Some(pool_rx) = &s.slave_pool_rx else {
        return error(
            StatusCode::NOT_FOUND,
            "slaves_off",
            "the slave listener is off (--slave-listen)",
        );
    };
    let pool = Arc::clone(&pool_rx.borrow());
    let listed: Vec<_> = pool
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "node_id": m.slave.node_id(),
                "local_node_url": format!("{}://{}{}/", m.slave.upstream.scheme, m.slave.upstream.authority, m.slave.upstream.prefix),
                "weight": m.weight,
                "in_flight": m.slave.in_flight(),
            })
        })
        .collect();
    let mut body = serde_json::json!({"revision": pool.revision, "slaves": listed});
    if let Some(raw) = q.dtable_uuid {
        let uuid = match dtable_core::bucket::normalize_base_uuid(&raw) {
            Ok(u) => u,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_dtable_uuid", e),
        };
        let slave = pool.by_hash(&uuid, None).map(|s| s.node_id().to_owned());
        body["dtable_uuid"] = uuid.into();
        body["slave"] = slave.into();
    }
    Json(body).into_response()
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
