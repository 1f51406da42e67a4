//! The HTTP JSON twin of the gRPC API, `/metrics`, `/healthz`, the status page's routes and
//! its Server-Sent Events stream, on one listener (5581 by default).
//!
//! Reads (every instance answers from its own watch cache):
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |
//! | `GET /api/v1/lookup/<uuid>` | `{"bucket","node_id","node_url","local_node_url","epoch","moving"}` (owner fields null when unassigned) |
//! | `GET /api/v1/nodes` | `{"revision", "nodes": [NODE]}`: the servers, then the slaves (`"role": "slave"`) |
//! | `GET /api/v1/assignment` | `{"revision", "buckets": [BUCKET x 256]}` |
//! | `GET /api/v1/moves` | `{"revision", "moves": [MOVE]}` |
//! | `GET /api/v1/leader` | `{"leader", "this_instance_leads"}` (asked of etcd) |
//! | `GET /api/v1/status` | STATUS |
//! | `GET /api/v1/events` | SSE: `data: <EVENT>` per event, a `snapshot` event first; keep-alive comments every 15 s |
//!
//! Intents (mutating; [`intent_routes`] is a router of its own so that the admin token guards
//! these alone: with `--admin-token-file` each needs `Authorization: Bearer <token>` and
//! answers 401 `{"code":"unauthorized",...}` without it):
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/rebalance` | PLAN; a dry run with `?dry_run=true` or body `{"dry_run":true}`, an empty body is a real request |
//! | `POST /api/v1/nodes/<id>/cordon` | INTENT |
//! | `POST /api/v1/nodes/<id>/drain` | INTENT |
//! | `POST /api/v1/nodes/<id>/uncordon` | INTENT |
//!
//! With `--tls-cert` the listener speaks HTTPS only (HTTP/1.1 and HTTP/2), and with
//! `--tls-client-ca` it serves only clients that show a certificate from that CA.
//!
//! A cordon, drain or uncordon of a slave's id answers 400 `bad_request`: slaves own no buckets.
//!
//! Errors are ERROR with these statuses: `bad_uuid` and `bad_request` 400, `unknown_node` 404,
//! `not_ready` 503, `etcd_error` 502, `etcd_timeout` 504. The shapes are in [`crate::model`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dtable_core::ClusterView;
use dtable_core::auth::{AdminToken, require_admin};
use dtable_core::tls::ServerTls;
use dtable_core::view::CordonMode;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, ApiState};
use crate::events::Item;

/// How often an idle event stream sends a keep-alive comment.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadUuid(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownNode(_) => StatusCode::NOT_FOUND,
            ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Etcd(_) => StatusCode::BAD_GATEWAY,
            ApiError::EtcdTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code(), "error": self.to_string()});
        (self.status(), Json(body)).into_response()
    }
}

/// The read routes.
pub fn read_routes() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/lookup/{uuid}", get(lookup))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/assignment", get(assignment))
        .route("/api/v1/moves", get(moves))
        .route("/api/v1/leader", get(leader))
        .route("/api/v1/status", get(status))
        .route("/api/v1/events", get(events))
}

/// The mutating routes: intents any instance records and the leader carries out.
pub fn intent_routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/rebalance", post(rebalance))
        .route("/api/v1/nodes/{id}/cordon", post(cordon))
        .route("/api/v1/nodes/{id}/drain", post(drain))
        .route("/api/v1/nodes/{id}/uncordon", post(uncordon))
}

/// The whole HTTP app: reads, the status page and the event stream open to all; the intents
/// behind `admin_token` when there is one.
pub fn router(state: ApiState, admin_token: Option<Arc<AdminToken>>) -> Router {
    read_routes()
        .merge(intent_routes().route_layer(require_admin(admin_token)))
        .merge(crate::status::routes())
        .with_state(state)
}

/// Serves the HTTP API until `shutdown`, over TLS when `tls` is set.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    tls: Option<ServerTls>,
    admin_token: Option<Arc<AdminToken>>,
    shutdown: CancellationToken,
) {
    let app = router(state, admin_token);
    let served = dtable_core::tls::serve_http(listener, app, tls, shutdown).await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP API stopped");
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    match &s.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

async fn lookup(State(s): State<ApiState>, Path(uuid): Path<String>) -> Response {
    s.lookup(&uuid).map(Json).into_response()
}

async fn nodes(State(s): State<ApiState>) -> Response {
    s.nodes()
        .await
        .map(|(revision, nodes)| Json(serde_json::json!({"revision": revision, "nodes": nodes})))
        .into_response()
}

async fn assignment(State(s): State<ApiState>) -> Response {
    s.buckets()
        .map(|(revision, b)| Json(serde_json::json!({"revision": revision, "buckets": b})))
        .into_response()
}

async fn moves(State(s): State<ApiState>) -> Response {
    s.moves()
        .map(|(revision, m)| Json(serde_json::json!({"revision": revision, "moves": m})))
        .into_response()
}

async fn leader(State(s): State<ApiState>) -> Response {
    let l = s.leader().await;
    Json(serde_json::json!({"leader": l.leader, "this_instance_leads": l.this_instance_leads}))
        .into_response()
}

async fn status(State(s): State<ApiState>) -> Response {
    s.status().await.map(Json).into_response()
}

/// The snapshot event: every field of `/api/v1/status` plus `at`, `kind` and `text`.
async fn snapshot_json(s: &ApiState, view: &ClusterView) -> Option<String> {
    let mut json = serde_json::to_value(s.status_of(view).await).ok()?;
    let fields = json.as_object_mut()?;
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    fields.insert("at".into(), at.into());
    fields.insert("kind".into(), "snapshot".into());
    let text = format!("snapshot at revision {}", view.revision);
    fields.insert("text".into(), text.into());
    Some(json.to_string())
}

async fn events(
    State(s): State<ApiState>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    let state = s.clone();
    let stream = s.events.follow(s.shutdown.clone(), move |item| {
        let state = state.clone();
        async move {
            let data = match item {
                Item::Snapshot(view) => snapshot_json(&state, &view).await?,
                Item::Event(e) => serde_json::to_string(&*e).ok()?,
            };
            Some(Ok(sse::Event::default().data(data)))
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

/// The JSON body of `POST /api/v1/rebalance`; unknown fields are refused so that a typo
/// cannot turn a dry run into a real one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceBody {
    #[serde(default)]
    dry_run: bool,
}

/// Whether a rebalance request is a dry run: `dry_run=true|1` (or a bare `dry_run`) in the
/// query, or `{"dry_run":true}` as the body. Either one is enough.
fn dry_run(query: Option<&str>, body: &[u8]) -> Result<bool, ApiError> {
    let mut dry = false;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if name != "dry_run" {
            continue;
        }
        dry |= match value {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "dry_run={other}: want true or false"
                )));
            }
        };
    }
    if !body.iter().all(u8::is_ascii_whitespace) {
        let parsed: RebalanceBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("bad JSON body, want {{\"dry_run\": bool}}: {e}"))
        })?;
        dry |= parsed.dry_run;
    }
    Ok(dry)
}

async fn rebalance(State(s): State<ApiState>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let dry = match dry_run(query.as_deref(), &body) {
        Ok(d) => d,
        Err(e) => return e.into_response(),
    };
    s.rebalance(dry).await.map(Json).into_response()
}

async fn cordon(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    s.set_cordon(&id, CordonMode::Cordon)
        .await
        .map(Json)
        .into_response()
}

async fn drain(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    s.set_cordon(&id, CordonMode::Drain)
        .await
        .map(Json)
        .into_response()
}

async fn uncordon(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    s.uncordon(&id).await.map(Json).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_from_query_or_body() {
        assert!(!dry_run(None, b"").unwrap());
        assert!(!dry_run(None, b"  \n").unwrap());
        assert!(dry_run(Some("dry_run=true"), b"").unwrap());
        assert!(dry_run(Some("x=1&dry_run"), b"").unwrap());
        assert!(!dry_run(Some("dry_run=false"), b"").unwrap());
        assert!(dry_run(None, br#"{"dry_run":true}"#).unwrap());
        assert!(!dry_run(None, br#"{"dry_run":false}"#).unwrap());
        assert!(!dry_run(None, b"{}").unwrap());
        for (q, b) in [
            (Some("dry_run=maybe"), &b""[..]),
            (None, br#"{"dryrun":true}"#),
            (None, b"dry_run"),
        ] {
            let e = dry_run(q, b).unwrap_err();
            assert_eq!(e.code(), "bad_request", "{q:?} {b:?}");
        }
    }
}
