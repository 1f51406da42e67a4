//! Streaming test endpoints under `/_sim/`: an upload that hashes the body as it arrives, a
//! download of deterministic bytes generated chunk by chunk, and a WebSocket echo. None of
//! them checks ownership; each takes an optional `dtable_uuid` query only so that a proxy can
//! route it.

use std::convert::Infallible;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::app::AppState;
use super::routes::{RequestError, bad_query, query};

/// Size of each chunk the download endpoint sends.
pub const DOWNLOAD_CHUNK: usize = 64 * 1024;

/// The streaming routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/_sim/upload", post(upload))
        .route("/_sim/download", get(download))
        .route("/_sim/ws", get(websocket))
}

/// `len` bytes of the deterministic pattern for `seed`, starting at byte `offset`. Byte `i` of
/// the pattern depends only on `seed` and `i`, so any split into chunks yields the same stream.
pub fn pattern_chunk(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let end = offset.saturating_add(len as u64);
    let mut pos = offset;
    while pos < end {
        let word = pattern_word(seed, pos / 8).to_le_bytes();
        let start = (pos % 8) as usize;
        let take = (8 - start).min(usize::try_from(end - pos).unwrap_or(usize::MAX));
        out.extend_from_slice(&word[start..start + take]);
        pos += take as u64;
    }
    out
}

/// Lowercase hex SHA-256 of the first `bytes` bytes of the pattern for `seed`, computed in
/// [`DOWNLOAD_CHUNK`]s: what `GET /_sim/download?bytes=<bytes>&seed=<seed>` must hash to.
pub fn pattern_sha256(seed: u64, bytes: u64) -> String {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < bytes {
        let len = chunk_len(bytes - offset);
        hasher.update(pattern_chunk(seed, offset, len));
        offset += len as u64;
    }
    hex::encode(hasher.finalize())
}

/// Word `index` of the pattern: splitmix64 of the seed mixed with the index.
fn pattern_word(seed: u64, index: u64) -> u64 {
    let mut z =
        (seed ^ index.wrapping_mul(0xD6E8_FEB8_6659_FD93)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The length of the next chunk when `remaining` bytes are left.
fn chunk_len(remaining: u64) -> usize {
    usize::try_from(remaining).map_or(DOWNLOAD_CHUNK, |r| r.min(DOWNLOAD_CHUNK))
}

/// `POST /_sim/upload`: reads the body chunk by chunk and answers `{"bytes","sha256"}`.
async fn upload(body: Body) -> Response {
    let mut stream = body.into_data_stream();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Err(e) => return RequestError::BadBody(e).into_response(),
        }
    }
    let sha256 = hex::encode(hasher.finalize());
    axum::Json(json!({ "bytes": bytes, "sha256": sha256 })).into_response()
}

/// `GET /_sim/download?bytes=N&seed=S`: N bytes of the pattern for S (default 0), generated
/// one [`DOWNLOAD_CHUNK`] at a time as the client reads.
async fn download(uri: Uri) -> Response {
    let params = match query(&uri) {
        Ok(params) => params,
        Err(e) => return e.into_response(),
    };
    let number = |name: &str, default: Option<u64>| match params.get(name) {
        None => default.ok_or_else(|| format!("{name} is required")),
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| format!("{name}={raw:?}: want an unsigned integer")),
    };
    let (total, seed) = match (number("bytes", None), number("seed", Some(0))) {
        (Ok(total), Ok(seed)) => (total, seed),
        (Err(e), _) | (_, Err(e)) => return bad_query("bad_query", e).into_response(),
    };
    let chunks = futures::stream::unfold(0u64, move |offset| async move {
        (offset < total).then(|| {
            let len = chunk_len(total - offset);
            let chunk = Bytes::from(pattern_chunk(seed, offset, len));
            (Ok::<_, Infallible>(chunk), offset + len as u64)
        })
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `GET /_sim/ws`: upgrades, says `hello from <node_id>`, then echoes every message.
async fn websocket(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| echo(socket, state))
}

/// The WebSocket session: the greeting, then an echo of each text or binary message until
/// the client closes or the sim shuts down.
async fn echo(mut socket: WebSocket, state: AppState) {
    let hello = format!("hello from {}", state.ownership.node_id());
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        let message = tokio::select! {
            _ = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            message = socket.recv() => message,
        };
        let reply = match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_independent_of_chunking() {
        let whole = pattern_chunk(7, 0, 1000);
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for len in [1usize, 3, 8, 13, 64, 911] {
            pieces.extend(pattern_chunk(7, offset, len));
            offset += len as u64;
        }
        assert_eq!(pieces, whole);
        assert_ne!(pattern_chunk(8, 0, 1000), whole);
        assert!(pattern_chunk(7, u64::MAX - 2, 10).len() <= 10);
    }

    #[test]
    fn pattern_sha256_hashes_the_pattern() {
        let n = DOWNLOAD_CHUNK as u64 * 2 + 5;
        let direct = hex::encode(Sha256::digest(pattern_chunk(3, 0, n as usize)));
        assert_eq!(pattern_sha256(3, n), direct);
    }
}
