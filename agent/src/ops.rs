//! The HTTP port of an agent that pushes nothing (seatable mode, or beside a slave):
//! `GET /healthz` and `GET /metrics` only.

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// Serves `/healthz` and `/metrics` on `listener` until `shutdown`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { render(metrics.as_ref()) }
            }),
        );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "agent HTTP port stopped");
    }
}

fn render(metrics: Option<&PrometheusHandle>) -> Response {
    match metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}
