//! The rows API under every base path prefix, served from the sim's in-memory bases with
//! write-through to the shared storage (`--storage-dir`):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET …/rows/` | `{"rows": [...]}` |
//! | `POST …/rows/` with `{"row": {...}}` or a bare object | `{"_id": id}`; a fresh id unless `_id` is given (409 `row_exists` if taken) |
//! | `GET …/rows/<id>` | the row (404 `no_row`) |
//! | `PUT …/rows/<id>` with an object (or `{"row": {...}}`) | `{"_id": id}`; its fields set on the row (404 `no_row`) |
//! | `DELETE …/rows/<id>` | `{"_id": id, "deleted": true}` (404 `no_row`) |
//!
//! Without a storage directory these paths describe the request back like every base route.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use super::app::AppState;
use super::bases::{BaseError, RowOp};
use super::routes::{RequestError, delay, describe, not_owner, parse_base};
use crate::store::Row;

/// Largest request body the rows API reads.
const MAX_BODY: usize = 1 << 20;
/// Longest row id accepted in a path or `_id`.
const MAX_ROW_ID: usize = 64;

/// Every prefix a base is served under.
const PREFIXES: &[&str] = &[
    "/dtables/{uuid}",
    "/api/v1/dtables/{uuid}",
    "/api/v1/internal/dtables/{uuid}",
    "/dtable-server/api/v1/dtables/{uuid}",
];

/// The rows routes, any method, under every prefix.
pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for prefix in PREFIXES {
        for path in [format!("{prefix}/rows"), format!("{prefix}/rows/")] {
            router = router.route(&path, any(rows));
        }
        for path in [
            format!("{prefix}/rows/{{row_id}}"),
            format!("{prefix}/rows/{{row_id}}/"),
        ] {
            router = router.route(&path, any(rows));
        }
    }
    router
}

/// The path parameters of a rows route.
#[derive(serde::Deserialize)]
struct RowPath {
    uuid: String,
    row_id: Option<String>,
}

/// `…/rows/` and `…/rows/<id>`: the rows API, or the request described back without storage.
async fn rows(
    State(state): State<AppState>,
    Path(path): Path<RowPath>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if state.bases.is_none() {
        return echo(state, method, uri, headers, body).await;
    }
    state
        .base_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    respond(serve(state, path, method, uri, body).await)
}

/// Without storage: what every base route answers.
async fn echo(
    state: AppState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(describe(state, method, uri, headers, body).await)
}

fn respond(result: Result<Response, RequestError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The rows API proper, with errors as values.
async fn serve(
    state: AppState,
    path: RowPath,
    method: Method,
    uri: Uri,
    body: Body,
) -> Result<Response, RequestError> {
    let (uuid, bucket) = parse_base(&path.uuid)?;
    let row_id = path.row_id.map(check_row_id).transpose()?;
    let delay = delay(&uri)?;
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(RequestError::BadBody)?;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let Some(bases) = &state.bases else {
        return Err(RequestError::BadRow(
            "the sim has no --storage-dir".to_owned(),
        ));
    };
    let own = &state.ownership;
    let base_error = |e: BaseError| match e {
        BaseError::NotOwner => not_owner(&state, bucket),
        BaseError::NoRow(id) => RequestError::NoRow(id),
        BaseError::RowExists(id) => RequestError::RowExists(id),
        BaseError::Storage(e) => RequestError::Storage(e.to_string()),
    };
    let written = |id: String| axum::Json(json!({ "_id": id })).into_response();
    match (method, row_id) {
        (Method::GET, None) => {
            let rows = bases.rows(own, bucket, &uuid).await.map_err(base_error)?;
            Ok(axum::Json(json!({ "rows": rows })).into_response())
        }
        (Method::GET, Some(id)) => {
            let rows = bases.rows(own, bucket, &uuid).await.map_err(base_error)?;
            let row = rows
                .into_iter()
                .find(|r| crate::store::row_id(r) == Some(id.as_str()))
                .ok_or(RequestError::NoRow(id))?;
            Ok(axum::Json(row).into_response())
        }
        (Method::POST, None) => {
            let row = row_body(&body)?;
            if let Some(id) = row.get("_id") {
                let id = id
                    .as_str()
                    .ok_or_else(|| bad_row("`_id` must be a string"))?;
                check_row_id(id.to_owned())?;
            }
            let op = RowOp::Create(row);
            let id = bases
                .write(own, bucket, &uuid, op)
                .await
                .map_err(base_error)?;
            Ok(written(id))
        }
        (Method::PUT, Some(id)) => {
            let op = RowOp::Update(id, row_body(&body)?);
            let id = bases
                .write(own, bucket, &uuid, op)
                .await
                .map_err(base_error)?;
            Ok(written(id))
        }
        (Method::DELETE, Some(id)) => {
            let op = RowOp::Delete(id);
            let id = bases
                .write(own, bucket, &uuid, op)
                .await
                .map_err(base_error)?;
            Ok(axum::Json(json!({ "_id": id, "deleted": true })).into_response())
        }
        _ => Ok((StatusCode::METHOD_NOT_ALLOWED, "method not allowed").into_response()),
    }
}

/// The row in a request body: `{"row": {...}}` or the object itself.
fn row_body(body: &Bytes) -> Result<Row, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| bad_row(&format!("body is not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(bad_row("body must be a JSON object"));
    };
    if object.len() == 1
        && let Some(Value::Object(row)) = object.get_mut("row")
    {
        return Ok(std::mem::take(row));
    }
    Ok(object)
}

/// A row id: 1..=64 visible ASCII characters.
fn check_row_id(id: String) -> Result<String, RequestError> {
    let ok = !id.is_empty() && id.len() <= MAX_ROW_ID && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(id)
    } else {
        Err(bad_row(&format!(
            "bad row id {id:?}: want 1..={MAX_ROW_ID} visible ASCII"
        )))
    }
}

fn bad_row(detail: &str) -> RequestError {
    RequestError::BadRow(detail.to_owned())
}
