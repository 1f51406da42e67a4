//! Slave mode (`--role slave`): the sim stands in for SeaTable's dtable-server-slave, a read
//! replica. It owns no bucket and never touches the storage: it loads a base with
//! `GET <proxy-url>/dtables/<uuid>` (through the proxy, which routes it to the owner; an owning
//! sim answers with the base's rows), keeps it for `--cache-ttl-ms`, and serves reads of it
//! from that copy. Every answer carries `X-Dtable-Node: <node_id>` and `X-Dtable-Slave: 1`.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /ping/` | `pong` |
//! | `GET …/rows/` under any base path | `{"rows": [...]}` from the cached base |
//! | `GET …/rows/<id>` | the row (404 `no_row`) |
//! | `GET` any other base path | `{"node_id","dtable_uuid","slave":true,"source_node","age_ms","base"}`: `base` is the document the origin answered, `source_node` its `X-Dtable-Node` |
//! | any other method on a base path | 405 `{"error":"read_only","detail"}` with `Allow: GET, HEAD` |
//! | `GET /_sim/state` | `{"node_id","mode":"slave","role":"slave","proxy_url","cache_ttl_ms","cached","origin_fetches","cache_hits","owned":{}}` |
//!
//! A malformed UUID gets 400 `malformed_uuid` without a fetch; an origin that cannot be
//! reached gets 502 `origin_unavailable`, one that answers an error 502 `origin_error` with its
//! `status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::SlaveOptions;
use super::app::{self, NODE_HEADER};
use super::routes::{BASE_PATHS, RequestError, parse_base, uuid_segment};

/// Header on every answer of a slave.
pub const SLAVE_HEADER: &str = "x-dtable-slave";

/// How long a load from the origin may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached bases kept before expired ones are swept.
const SWEEP_AT: usize = 1024;
/// Longest origin error text echoed back.
const MAX_DETAIL: usize = 512;

/// Why a read could not be served.
#[derive(Debug, thiserror::Error)]
enum SlaveError {
    /// The request itself is bad (malformed UUID).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The origin could not be reached or did not answer in time.
    #[error("cannot load the base from {url}: {detail}")]
    Unavailable {
        /// The URL fetched.
        url: String,
        /// Why.
        detail: String,
    },
    /// The origin answered with an error or something that is not JSON.
    #[error("{url} answered {status}: {detail}")]
    Origin {
        /// The URL fetched.
        url: String,
        /// Its status.
        status: u16,
        /// Its body, shortened.
        detail: String,
    },
    /// The cached base has no row with that id.
    #[error("no row {0:?}")]
    NoRow(String),
}

impl IntoResponse for SlaveError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        match self {
            SlaveError::Request(e) => e.into_response(),
            SlaveError::Unavailable { .. } => (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({"error": "origin_unavailable", "detail": detail})),
            )
                .into_response(),
            SlaveError::Origin { status, .. } => (
                StatusCode::BAD_GATEWAY,
                axum::Json(json!({"error": "origin_error", "status": status, "detail": detail})),
            )
                .into_response(),
            SlaveError::NoRow(_) => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"error": "no_row", "detail": detail})),
            )
                .into_response(),
        }
    }
}

/// One loaded base.
struct Cached {
    /// The origin's document.
    base: Arc<Value>,
    /// The origin's `X-Dtable-Node`.
    source_node: Option<String>,
    /// When it was loaded.
    loaded_at: Instant,
}

/// What the slave's handlers share. Cheap to clone.
#[derive(Clone)]
pub(crate) struct SlaveState {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    options: SlaveOptions,
    client: reqwest::Client,
    /// Per base, its slot; a slot's lock makes concurrent misses load once.
    cache: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>>,
    /// Loads from the origin.
    fetches: AtomicU64,
    /// Reads served from a fresh copy.
    hits: AtomicU64,
}

impl SlaveState {
    /// A slave named `node_id` loading from `options.proxy_url`.
    pub(crate) fn new(node_id: &str, options: SlaveOptions) -> SlaveState {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("an HTTP client without custom TLS builds");
        SlaveState {
            inner: Arc::new(Inner {
                node_id: node_id.to_owned(),
                options,
                client,
                cache: Mutex::default(),
                fetches: AtomicU64::new(0),
                hits: AtomicU64::new(0),
            }),
        }
    }

    /// The base `uuid` (normalized): the cached copy while it is fresh, else loaded again.
    /// Returns the document, the origin's node id, and the copy's age.
    async fn base(&self, uuid: &str) -> Result<(Arc<Value>, Option<String>, Duration), SlaveError> {
        let slot = {
            let mut cache = self.lock_cache();
            if cache.len() >= SWEEP_AT {
                let ttl = self.inner.options.cache_ttl;
                cache.retain(|_, slot| {
                    slot.try_lock().map_or(true, |c| {
                        c.as_ref().is_some_and(|c| c.loaded_at.elapsed() < ttl)
                    })
                });
            }
            Arc::clone(cache.entry(uuid.to_owned()).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            let age = c.loaded_at.elapsed();
            if age < self.inner.options.cache_ttl {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                return Ok((Arc::clone(&c.base), c.source_node.clone(), age));
            }
        }
        let (base, source_node) = self.fetch(uuid).await?;
        let base = Arc::new(base);
        *slot = Some(Cached {
            base: Arc::clone(&base),
            source_node: source_node.clone(),
            loaded_at: Instant::now(),
        });
        Ok((base, source_node, Duration::ZERO))
    }

    /// `GET <proxy-url>/dtables/<uuid>`.
    async fn fetch(&self, uuid: &str) -> Result<(Value, Option<String>), SlaveError> {
        let url = format!("{}/dtables/{uuid}", self.inner.options.proxy_url);
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let unavailable = |detail: String| SlaveError::Unavailable {
            url: url.clone(),
            detail,
        };
        let resp = self
            .inner
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let source_node = resp
            .headers()
            .get(NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
        let origin = |detail: String| SlaveError::Origin {
            url: url.clone(),
            status: status.as_u16(),
            detail,
        };
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(origin(text.chars().take(MAX_DETAIL).collect()));
        }
        let base = serde_json::from_slice(&body)
            .map_err(|e| origin(format!("not a JSON document: {e}")))?;
        tracing::info!(uuid, url, source_node, "loaded a base from the origin");
        Ok((base, source_node))
    }

    fn lock_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Option<Cached>>>>> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The slave's router: ping, reads under every base path, 405 for writes, its state page, and
/// 404 for the rest; every answer stamped with [`NODE_HEADER`] and [`SLAVE_HEADER`].
pub(crate) fn router(state: SlaveState) -> Result<Router, super::SimError> {
    let node = app::node_header(&state.inner.node_id)?;
    let mut router = Router::new()
        .route("/ping/", get(|| async { "pong" }))
        .route("/_sim/state", get(sim_state));
    for path in BASE_PATHS {
        router = router.route(path, any(read));
    }
    Ok(router
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
        .layer(middleware::from_fn_with_state(node, stamp)))
}

/// Any request under a base path.
async fn read(State(state): State<SlaveState>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let detail = format!(
            "dtable-server-slave {} serves reads only: send {method} to the server that owns \
             the base",
            state.inner.node_id
        );
        let mut response = (
            StatusCode::METHOD_NOT_ALLOWED,
            axum::Json(json!({"error": "read_only", "detail": detail})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    serve_read(&state, uri.path())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn serve_read(state: &SlaveState, path: &str) -> Result<Response, SlaveError> {
    let raw = uuid_segment(path)
        .ok_or_else(|| RequestError::MalformedUuid("no base UUID after `dtables`".to_owned()))?;
    let (uuid, _bucket) = parse_base(raw)?;
    let (base, source_node, age) = state.base(&uuid).await?;
    let rows = || base.get("rows").cloned().unwrap_or_else(|| json!([]));
    match rows_path(path) {
        Some(None) => Ok(axum::Json(json!({ "rows": rows() })).into_response()),
        Some(Some(id)) => {
            let row = rows()
                .as_array()
                .and_then(|rows| {
                    rows.iter()
                        .find(|r| r.get("_id") == Some(&json!(id)))
                        .cloned()
                })
                .ok_or_else(|| SlaveError::NoRow(id.to_owned()))?;
            Ok(axum::Json(row).into_response())
        }
        None => Ok(axum::Json(json!({
            "node_id": state.inner.node_id,
            "dtable_uuid": uuid,
            "slave": true,
            "source_node": source_node,
            "age_ms": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            "base": *base,
        }))
        .into_response()),
    }
}

/// For a path `…/dtables/<uuid>/rows[/]` `Some(None)`, for `…/rows/<id>[/]` `Some(Some(id))`,
/// for any other path `None`.
fn rows_path(path: &str) -> Option<Option<&str>> {
    let mut segments = path.split('/');
    segments.find(|s| *s == "dtables")?;
    segments.next()?;
    if segments.next()? != "rows" {
        return None;
    }
    match segments.next() {
        None | Some("") => Some(None),
        Some(id) => segments.all(str::is_empty).then_some(Some(id)),
    }
}

/// `GET /_sim/state` of a slave.
async fn sim_state(State(state): State<SlaveState>) -> Response {
    let inner = &state.inner;
    let cached = state.lock_cache().len();
    axum::Json(json!({
        "node_id": inner.node_id,
        "mode": "slave",
        "role": "slave",
        "proxy_url": inner.options.proxy_url,
        "cache_ttl_ms": u64::try_from(inner.options.cache_ttl.as_millis()).unwrap_or(u64::MAX),
        "cached": cached,
        "origin_fetches": inner.fetches.load(Ordering::Relaxed),
        "cache_hits": inner.hits.load(Ordering::Relaxed),
        "owned": {},
    }))
    .into_response()
}

/// Adds `X-Dtable-Node` and `X-Dtable-Slave: 1` to every answer.
async fn stamp(State(node): State<HeaderValue>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(HeaderName::from_static(NODE_HEADER), node);
    headers.insert(
        HeaderName::from_static(SLAVE_HEADER),
        HeaderValue::from_static("1"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_rows_paths_from_the_rest() {
        assert_eq!(rows_path("/dtables/ab"), None);
        assert_eq!(rows_path("/dtables/ab/"), None);
        assert_eq!(rows_path("/api/v1/dtables/ab/rows/"), Some(None));
        assert_eq!(rows_path("/api/v1/dtables/ab/rows"), Some(None));
        assert_eq!(rows_path("/dtables/ab/rows/r1"), Some(Some("r1")));
        assert_eq!(rows_path("/dtables/ab/rows/r1/"), Some(Some("r1")));
        assert_eq!(rows_path("/dtables/ab/rows/r1/x"), None);
        assert_eq!(rows_path("/api/v1/dtables/ab/metadata/"), None);
    }
}
