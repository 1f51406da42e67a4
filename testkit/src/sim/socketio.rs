//! socket.io at `/socket.io/` (Engine.IO v4, polling and websocket) through `socketioxide`:
//! the handshake is refused like any base request when the sim does not own the base named by
//! `?dtable_uuid=`, `join-room` is acknowledged and answered with `joined`, and connected
//! sockets are indexed by bucket so that a released bucket's sockets can be told
//! `dtable-server-mismatch` and disconnected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dtable_core::Bucket;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::layer::SocketIoLayer;
use socketioxide::socket::{DisconnectReason, Sid};

use super::app::AppState;
use super::routes::{check_base, parse_base, query};

/// Path prefix socket.io is served under.
pub const SOCKETIO_PATH: &str = "/socket.io";
/// The Engine.IO v4 close packet, as a polling response body.
const ENGINEIO_CLOSE: &str = "1";
/// Event a client sends to join its base's room.
pub const JOIN_EVENT: &str = "join-room";
/// Event the sim answers [`JOIN_EVENT`] with: `{"node_id","dtable_uuid"}`.
pub const JOINED_EVENT: &str = "joined";
/// Event sent to a socket right before the sim disconnects it because it no longer owns the
/// socket's base: `{"node_id","bucket","dtable_uuid"}`.
pub const MISMATCH_EVENT: &str = "dtable-server-mismatch";

/// The connected sockets of each bucket. Cheap to clone; all clones share one index.
#[derive(Clone, Default)]
pub struct SocketIndex {
    by_bucket: Arc<Mutex<HashMap<Bucket, HashMap<Sid, Connected>>>>,
}

/// One connected socket and the base it was opened for.
#[derive(Clone)]
struct Connected {
    socket: SocketRef,
    uuid: String,
}

impl SocketIndex {
    /// How many sockets are connected for bases in `bucket`.
    pub fn count(&self, bucket: Bucket) -> usize {
        self.lock().get(&bucket).map_or(0, HashMap::len)
    }

    /// Sends [`MISMATCH_EVENT`] to every socket of `bucket`, then disconnects it. Returns how
    /// many sockets were disconnected.
    pub fn disconnect_bucket(&self, bucket: Bucket, node_id: &str) -> usize {
        // Take them out under the lock; emit and disconnect after releasing it, because the
        // disconnect handler takes the lock again.
        let sockets = self.lock().remove(&bucket).unwrap_or_default();
        for connected in sockets.values() {
            let message = json!({
                "node_id": node_id,
                "bucket": bucket.to_string(),
                "dtable_uuid": connected.uuid,
            });
            let _ = connected.socket.emit(MISMATCH_EVENT, &message);
            let _ = connected.socket.clone().disconnect();
        }
        if !sockets.is_empty() {
            tracing::info!(%bucket, sockets = sockets.len(), "disconnected the bucket's sockets");
        }
        sockets.len()
    }

    fn insert(&self, bucket: Bucket, socket: SocketRef, uuid: String) {
        let sid = socket.id;
        let connected = Connected { socket, uuid };
        self.lock()
            .entry(bucket)
            .or_default()
            .insert(sid, connected);
    }

    fn remove(&self, bucket: Bucket, sid: Sid) {
        let mut index = self.lock();
        if let Some(sockets) = index.get_mut(&bucket) {
            sockets.remove(&sid);
            if sockets.is_empty() {
                index.remove(&bucket);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Bucket, HashMap<Sid, Connected>>> {
        // A panic while holding the lock leaves the map consistent; keep using it.
        self.by_bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The socket.io layer to put on the router, and the handle to close it at shutdown.
pub(crate) fn layer(state: AppState) -> (SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::new_layer();
    io.ns("/", move |socket: SocketRef| {
        let state = state.clone();
        async move { on_connect(socket, state) }
    });
    (layer, io)
}

/// Indexes a new socket under its base's bucket and registers its event handlers.
fn on_connect(socket: SocketRef, state: AppState) {
    let base = query(&socket.req_parts().uri)
        .ok()
        .and_then(|mut q| q.remove("dtable_uuid"))
        .and_then(|raw| parse_base(&raw).ok());
    tracing::debug!(sid = %socket.id, base = ?base, "socket.io connected");
    let uuid = base.as_ref().map(|(uuid, _)| uuid.clone());
    if let Some((uuid, bucket)) = base {
        state.sockets.insert(bucket, socket.clone(), uuid);
        let sockets = state.sockets.clone();
        socket.on_disconnect(move |socket: SocketRef, reason: DisconnectReason| {
            tracing::debug!(sid = %socket.id, ?reason, "socket.io disconnected");
            sockets.remove(bucket, socket.id);
            std::future::ready(())
        });
    }
    let node_id = state.ownership.node_id().to_owned();
    socket.on(
        JOIN_EVENT,
        move |socket: SocketRef, TryData::<Value>(payload), ack: AckSender| {
            let joined = json!({ "node_id": node_id, "dtable_uuid": uuid });
            tracing::debug!(sid = %socket.id, payload = ?payload.ok(), "join-room");
            let _ = ack.send(&joined);
            let _ = socket.emit(JOINED_EVENT, &joined);
            std::future::ready(())
        },
    );
}

/// Middleware in front of socket.io. A handshake (a request without `sid`) for a base the sim
/// does not own gets the same 409 as any base request, and a malformed `dtable_uuid` 400;
/// requests of an established session pass, so a released socket still receives its
/// [`MISMATCH_EVENT`]. A long-poll still waiting when the sim shuts down is answered at once
/// with an Engine.IO close packet: a session disconnected from its namespace keeps its
/// transport open, and its poll must not hold up the shutdown.
pub(crate) async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !request.uri().path().starts_with(SOCKETIO_PATH) {
        return next.run(request).await;
    }
    let params = match query(request.uri()) {
        Ok(params) => params,
        Err(e) => return e.into_response(),
    };
    if !params.contains_key("sid") {
        if let Some(Err(e)) = params.get("dtable_uuid").map(|raw| check_base(&state, raw)) {
            return e.into_response();
        }
        return next.run(request).await;
    }
    let long_poll = request.method() == Method::GET
        && params.get("transport").map(String::as_str) == Some("polling");
    if !long_poll {
        return next.run(request).await;
    }
    tokio::select! {
        response = next.run(request) => response,
        _ = state.shutdown.cancelled() => {
            ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], ENGINEIO_CLOSE).into_response()
        }
    }
}
