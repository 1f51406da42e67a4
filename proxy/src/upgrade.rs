//! WebSocket (and any HTTP/1.1 upgrade): the upgrade is forwarded to the bucket's owner and the
//! two connections are spliced. Each splice is registered under its bucket, and closed when
//! the bucket's owner changes, so socket.io clients reconnect and land on the new owner.

use std::sync::{Arc, Mutex};

use dtable_core::{BUCKET_COUNT, Bucket};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::body::full;
use crate::forward::{
    ClientBody, EPOCH_HEADER, ForwardError, Forwarder, Peer, add_forwarding, upstream_uri,
};
use crate::table::{Route, RoutingTable, Upstream};

/// Whether a request asks to switch protocols.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Spliced connections by bucket: one token per (bucket, owner), cancelled when the owner
/// changes. Touched only when a splice starts and when the routing table changes.
#[derive(Default)]
pub struct SocketRegistry {
    slots: Mutex<Vec<Option<(String, CancellationToken)>>>,
}

impl SocketRegistry {
    /// An empty registry.
    pub fn new() -> SocketRegistry {
        SocketRegistry {
            slots: Mutex::new(vec![None; BUCKET_COUNT]),
        }
    }

    /// A token cancelled when `bucket` stops being served by `node_id`.
    fn token(&self, bucket: Bucket, node_id: &str) -> CancellationToken {
        let mut slots = self.slots.lock().expect("socket registry");
        let slot = &mut slots[bucket.index()];
        match slot {
            Some((owner, token)) if owner == node_id => token.child_token(),
            _ => {
                if let Some((_, old)) = slot.take() {
                    old.cancel();
                }
                let token = CancellationToken::new();
                *slot = Some((node_id.to_owned(), token.clone()));
                token.child_token()
            }
        }
    }

    /// Closes the splices of every bucket whose owner is no longer the one they were opened
    /// to. Returns how many buckets were affected.
    pub fn retain(&self, table: &RoutingTable) -> usize {
        let mut slots = self.slots.lock().expect("socket registry");
        let mut closed = 0;
        for b in Bucket::all() {
            let slot = &mut slots[b.index()];
            let keep = match (&*slot, table.route(b)) {
                (None, _) => true,
                (Some((owner, _)), Route::Owned { upstream, .. }) => &upstream.node_id == owner,
                // Moving or unowned: the old owner still has it until the move commits.
                (Some(_), Route::Moving) => true,
                (Some(_), Route::Unowned) => false,
            };
            if !keep && let Some((_, token)) = slot.take() {
                token.cancel();
                closed += 1;
            }
        }
        closed
    }
}

/// Forwards an upgrade request to `upstream` and, on 101, splices the two connections.
pub async fn forward(
    fwd: &Forwarder,
    mut req: Request<Incoming>,
    bucket: Option<Bucket>,
    upstream: Arc<Upstream>,
    epoch: Option<i64>,
    peer: &Peer,
) -> Result<Response<ClientBody>, ForwardError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    let mut up_req = Request::new(full(bytes::Bytes::new()));
    *up_req.method_mut() = parts.method.clone();
    *up_req.uri_mut() = upstream_uri(&upstream, &parts.uri);
    let headers = up_req.headers_mut();
    headers.clone_from(&parts.headers);
    add_forwarding(headers, &parts.uri, peer);
    if let Some(e) = epoch {
        headers.insert(EPOCH_HEADER, HeaderValue::from(e));
    }
    let mut resp = fwd
        .upgrade_client()
        .request(up_req)
        .await
        .map_err(|e| ForwardError::unreachable(&upstream, e))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(resp.map(ClientBody::Upstream));
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let token = bucket.map(|b| fwd.sockets.token(b, &upstream.node_id));
    let open = fwd.metrics.websockets_open.clone();
    let closed_on_move = fwd.metrics.websockets_closed_on_move.clone();
    tokio::spawn(async move {
        let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) else {
            return;
        };
        open.increment(1.0);
        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
        let cancelled = async {
            match &token {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut c, &mut u) => {}
            _ = cancelled => {
                closed_on_move.increment(1);
                tracing::info!(node_id = %upstream.node_id, "bucket moved: closing its WebSocket");
            }
        }
        open.decrement(1.0);
    });
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(header::TRANSFER_ENCODING);
    Ok(Response::from_parts(parts, ClientBody::empty()))
}
