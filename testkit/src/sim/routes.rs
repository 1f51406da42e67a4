//! The base routes (`/dtables/<uuid>` and the API paths under it): check the UUID, optionally
//! wait, check ownership, and describe the request back as JSON (the rows API in `rows.rs`
//! takes the `…/rows/` paths). With a storage directory, `GET /dtables/<uuid>` also loads
//! the base and answers its `rows`, as dtable-server answers a base's content: that is what a
//! slave loads through the proxy. Also the JSON errors every part of the sim answers with.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use dtable_core::Bucket;
use dtable_core::bucket::normalize_base_uuid;
use futures::StreamExt;
use serde_json::{Value, json};

use super::app::AppState;

/// Header on a 409 that says the server does not own the base's bucket, so a proxy may retry
/// elsewhere: by contract nothing was done.
pub const NOT_OWNER_HEADER: &str = "x-dtable-not-owner";
/// Request header carrying the bucket epoch the proxy routed with; echoed as `request_epoch`.
pub const EPOCH_HEADER: &str = "x-dtable-epoch";
/// Longest `?delay_ms=` a request may ask for.
pub const MAX_DELAY_MS: u64 = 30_000;

/// Why a request is refused. Turned into a JSON response at the edge.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// The base UUID is missing or malformed: 400 `malformed_uuid`.
    #[error("{0}")]
    MalformedUuid(String),
    /// The sim does not own the base's bucket: 409 `not_owner` with `X-Dtable-Not-Owner: 1`.
    #[error("bucket {bucket} is not owned by {node_id}")]
    NotOwner {
        /// The base's bucket.
        bucket: Bucket,
        /// This sim's node id.
        node_id: String,
    },
    /// The query string cannot be decoded or a parameter is out of range: 400 with `kind`.
    #[error("{detail}")]
    BadQuery {
        /// The `error` field: `bad_query` or `bad_delay`.
        kind: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The request body could not be read: 400 `bad_body`.
    #[error("reading the request body: {0}")]
    BadBody(axum::Error),
    /// A row or row id in the request is not acceptable: 400 `bad_row`.
    #[error("{0}")]
    BadRow(String),
    /// No row has the id asked for: 404 `no_row`.
    #[error("no row {0:?}")]
    NoRow(String),
    /// A new row's `_id` is taken: 409 `row_exists`, without `X-Dtable-Not-Owner`.
    #[error("row {0:?} exists")]
    RowExists(String),
    /// The storage failed, so the write was not acknowledged: 500 `storage_error`.
    #[error("{0}")]
    Storage(String),
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        let (kind, detail) = match self {
            RequestError::NotOwner { bucket, node_id } => {
                let body = json!({
                    "error": "not_owner",
                    "bucket": bucket.to_string(),
                    "node_id": node_id,
                });
                let mut response = (StatusCode::CONFLICT, axum::Json(body)).into_response();
                response.headers_mut().insert(
                    HeaderName::from_static(NOT_OWNER_HEADER),
                    HeaderValue::from_static("1"),
                );
                return response;
            }
            RequestError::MalformedUuid(_) => ("malformed_uuid", detail),
            RequestError::BadQuery { kind, .. } => (kind, detail),
            RequestError::BadBody(_) => ("bad_body", detail),
            RequestError::BadRow(_) => ("bad_row", detail),
            RequestError::NoRow(_) => ("no_row", detail),
            RequestError::RowExists(_) => ("row_exists", detail),
            RequestError::Storage(_) => ("storage_error", detail),
        };
        let status = match kind {
            "no_row" => StatusCode::NOT_FOUND,
            "row_exists" => StatusCode::CONFLICT,
            "storage_error" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = json!({ "error": kind, "detail": detail });
        (status, axum::Json(body)).into_response()
    }
}

/// Every path shape dtable-server serves a base under. `{*rest}` needs at least one character,
/// so each shape also has its bare trailing-slash form.
pub(crate) const BASE_PATHS: &[&str] = &[
    "/dtables/{uuid}",
    "/dtables/{uuid}/",
    "/dtables/{uuid}/{*rest}",
    "/api/v1/dtables/{uuid}/",
    "/api/v1/dtables/{uuid}/{*rest}",
    "/api/v1/internal/dtables/{uuid}/",
    "/api/v1/internal/dtables/{uuid}/{*rest}",
    "/dtable-server/api/v1/dtables/{uuid}/",
    "/dtable-server/api/v1/dtables/{uuid}/{*rest}",
];

/// The base routes, any method.
pub(crate) fn routes() -> Router<AppState> {
    BASE_PATHS
        .iter()
        .fold(Router::new(), |router, path| router.route(path, any(base)))
}

/// Describes the request back once the base is found owned (after the optional delay); a
/// `GET` of the base itself (`/dtables/<uuid>[/]`) with storage also carries its `rows`.
async fn base(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let whole_base = matches!(method, Method::GET | Method::HEAD) && is_base_itself(uri.path());
    let described = describe(state.clone(), method, uri, headers, body).await;
    match described {
        Ok(response) if whole_base && state.bases.is_some() => with_rows(&state, response)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Whether `path` is `/dtables/<uuid>` or `/dtables/<uuid>/`.
fn is_base_itself(path: &str) -> bool {
    path.strip_prefix("/dtables/")
        .is_some_and(|rest| !rest.trim_end_matches('/').contains('/'))
}

/// Adds the base's rows, loaded as the rows API loads them, to a description.
async fn with_rows(state: &AppState, described: Response) -> Result<Response, RequestError> {
    let Some(bases) = &state.bases else {
        return Ok(described);
    };
    let body = axum::body::to_bytes(described.into_body(), usize::MAX)
        .await
        .map_err(RequestError::BadBody)?;
    let mut description: Value =
        serde_json::from_slice(&body).map_err(|e| RequestError::Storage(e.to_string()))?;
    let uuid = description["dtable_uuid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (uuid, bucket) = parse_base(&uuid)?;
    let rows = bases
        .rows(&state.ownership, bucket, &uuid)
        .await
        .map_err(|e| match e {
            super::bases::BaseError::Storage(e) => RequestError::Storage(e.to_string()),
            _ => not_owner(state, bucket),
        })?;
    description["rows"] = Value::from(rows.into_iter().map(Value::Object).collect::<Vec<_>>());
    Ok(axum::Json(description).into_response())
}

/// The work of [`base`], with errors as values: describes the request back.
pub(crate) async fn describe(
    state: AppState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RequestError> {
    state
        .base_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let raw = uuid_segment(uri.path())
        .ok_or_else(|| RequestError::MalformedUuid("no base UUID after `dtables`".to_owned()))?;
    let (uuid, bucket) = parse_base(raw)?;
    let delay = delay(&uri)?;
    let body_bytes = count_body(body).await.map_err(RequestError::BadBody)?;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let epoch = owned_epoch(&state, bucket)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let request_epoch = header(EPOCH_HEADER).map(|raw| {
        raw.trim()
            .parse::<i64>()
            .map_or_else(|_| Value::from(raw), Value::from)
    });
    Ok(axum::Json(json!({
        "node_id": state.ownership.node_id(),
        "dtable_uuid": uuid,
        "method": method.as_str(),
        "path": uri.path(),
        "epoch": epoch,
        "request_epoch": request_epoch,
        "forwarded_for": header("x-forwarded-for"),
        "forwarded_proto": header("x-forwarded-proto"),
        "forwarded_host": header("x-forwarded-host"),
        "body_bytes": body_bytes,
    }))
    .into_response())
}

/// The path segment after the first `dtables` segment.
pub(crate) fn uuid_segment(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    segments.find(|s| *s == "dtables")?;
    segments.next()
}

/// Normalizes a base UUID and finds its bucket.
pub(crate) fn parse_base(raw: &str) -> Result<(String, Bucket), RequestError> {
    let malformed = |e: dtable_core::BucketError| RequestError::MalformedUuid(e.to_string());
    let uuid = normalize_base_uuid(raw).map_err(malformed)?;
    let bucket = Bucket::of_base(&uuid).map_err(malformed)?;
    Ok((uuid, bucket))
}

/// The sim's epoch of `bucket`, or [`RequestError::NotOwner`].
fn owned_epoch(state: &AppState, bucket: Bucket) -> Result<i64, RequestError> {
    state
        .ownership
        .epoch(bucket)
        .ok_or_else(|| not_owner(state, bucket))
}

/// The refusal of a request for `bucket`, which this sim does not serve.
pub(crate) fn not_owner(state: &AppState, bucket: Bucket) -> RequestError {
    RequestError::NotOwner {
        bucket,
        node_id: state.ownership.node_id().to_owned(),
    }
}

/// Checks that the sim owns the base named by `raw`.
pub(crate) fn check_base(state: &AppState, raw: &str) -> Result<(), RequestError> {
    let (_, bucket) = parse_base(raw)?;
    owned_epoch(state, bucket).map(|_| ())
}

/// The query parameters of `uri`.
pub(crate) fn query(uri: &Uri) -> Result<HashMap<String, String>, RequestError> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| bad_query("bad_query", e.body_text()))
}

/// A [`RequestError::BadQuery`].
pub(crate) fn bad_query(kind: &'static str, detail: String) -> RequestError {
    RequestError::BadQuery { kind, detail }
}

/// The `?delay_ms=` of a request, at most [`MAX_DELAY_MS`].
pub(crate) fn delay(uri: &Uri) -> Result<Option<Duration>, RequestError> {
    let Some(raw) = query(uri)?.remove("delay_ms") else {
        return Ok(None);
    };
    match raw.parse::<u64>() {
        Ok(ms) if ms <= MAX_DELAY_MS => Ok(Some(Duration::from_millis(ms))),
        _ => Err(bad_query(
            "bad_delay",
            format!("delay_ms={raw:?}: want an integer 0..={MAX_DELAY_MS}"),
        )),
    }
}

/// Reads a request body to its end, one chunk at a time, and returns its length.
async fn count_body(body: Body) -> Result<u64, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        n += chunk?.len() as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_uuid_segment() {
        assert_eq!(uuid_segment("/dtables/ab"), Some("ab"));
        assert_eq!(uuid_segment("/api/v1/dtables/ab/rows/"), Some("ab"));
        assert_eq!(uuid_segment("/dtables/"), Some(""));
        assert_eq!(uuid_segment("/ping/"), None);
    }

    #[test]
    fn tells_the_base_itself_from_paths_under_it() {
        assert!(is_base_itself("/dtables/ab"));
        assert!(is_base_itself("/dtables/ab/"));
        assert!(!is_base_itself("/dtables/ab/x"));
        assert!(!is_base_itself("/api/v1/dtables/ab/"));
    }

    #[test]
    fn delay_is_bounded() {
        let uri = |q: &str| format!("/dtables/x?{q}").parse::<Uri>().unwrap();
        assert_eq!(delay(&uri("a=1")).unwrap(), None);
        assert_eq!(
            delay(&uri("delay_ms=30000")).unwrap(),
            Some(Duration::from_secs(30))
        );
        assert!(delay(&uri("delay_ms=30001")).is_err());
        assert!(delay(&uri("delay_ms=-1")).is_err());
        assert!(delay(&uri("delay_ms=x")).is_err());
    }
}
