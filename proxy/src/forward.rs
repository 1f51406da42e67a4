//! The request path: find the request's bucket, hold it while the bucket has no owner or is
//! moving, forward it to the owner with the body streamed both ways, and send it again when
//! the server answers "not the owner" (which by contract means nothing was done).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dtable_core::Bucket;
use hyper::body::Incoming;
use hyper::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

pub use crate::body::ClientBody;
use crate::body::{BodyError, Payload, UpstreamBody};
use crate::locate::bucket_of;
use crate::metrics::ProxyMetrics;
use crate::pool::SendError;
use crate::table::{Route, RoutingTable, Upstream};
use crate::upgrade::SocketRegistry;

/// Header by which a server says it does not own the base (with status 409).
pub const NOT_OWNER_HEADER: &str = "x-dtable-not-owner";
/// Header carrying the bucket's epoch to the server.
pub const EPOCH_HEADER: HeaderName = HeaderName::from_static("x-dtable-epoch");

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client of a connection, with its address already rendered for X-Forwarded-For.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Its IP as a header value, made once per connection.
    pub ip: HeaderValue,
    /// `http` or `https`, for X-Forwarded-Proto.
    pub proto: HeaderValue,
}

impl Peer {
    /// The peer of a new connection; `tls` when it came over TLS.
    pub fn new(addr: SocketAddr, tls: bool) -> Peer {
        let ip =
            HeaderValue::from_str(&addr.ip().to_string()).expect("an IP is a valid header value");
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        Peer { addr, ip, proto }
    }
}

/// Knobs of the request path.
#[derive(Clone, Debug)]
pub struct ForwardSettings {
    /// How long a request may wait for its bucket to get an owner.
    pub hold_timeout: Duration,
    /// Largest request body kept for a retry after a not-owner answer.
    pub retry_body_limit: usize,
    /// Plain HTTP/1.1 requests on the routing listener take the byte path ([`crate::h1`]).
    pub h1_fast_path: bool,
}

/// Forwards requests; shared by every connection. Plain HTTP/1.1 requests go over each
/// upstream's own connection pool (in the routing table); HTTP/2 and upgrade requests over
/// hyper-util's client.
pub struct Forwarder {
    pub(crate) table_rx: watch::Receiver<Arc<RoutingTable>>,
    upgrades: Client<HttpConnector, UpstreamBody>,
    h2: Client<HttpConnector, UpstreamBody>,
    pub(crate) settings: ForwardSettings,
    round_robin: AtomicUsize,
    pub(crate) sockets: Arc<SocketRegistry>,
    pub(crate) metrics: ProxyMetrics,
}

/// Where one attempt went.
pub(crate) struct Target {
    pub(crate) upstream: Arc<Upstream>,
    /// The bucket's epoch when sent; `None` for requests without a base.
    pub(crate) epoch: Option<i64>,
    /// The epoch as a header value, made when the table was built.
    pub(crate) epoch_header: Option<HeaderValue>,
}

/// Why a request could not be forwarded, each with the status the client gets.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The request names a base, but not a well-formed one.
    #[error(transparent)]
    BadUuid(#[from] dtable_core::BucketError),
    /// The bucket found no owner within the hold timeout.
    #[error("bucket {0} has no owner yet (moving or being re-placed); retry shortly")]
    NoOwner(Bucket),
    /// No server is registered to take a request without a base.
    #[error("no dtable-server is available")]
    NoServer,
    /// The owner refused, and the body cannot be sent again.
    #[error("bucket {0} moved while the request was sent, and its body is too large to resend")]
    NotReplayable(Bucket),
    /// The owner could not be reached.
    #[error("dtable-server {node} at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The node.
        node: String,
        /// Its address.
        addr: String,
        /// The connection error.
        reason: String,
    },
    /// The client's body could not be taken.
    #[error(transparent)]
    Body(#[from] BodyError),
}

impl ForwardError {
    /// `up` could not be reached, or failed before answering, because of `reason`.
    pub fn unreachable(up: &Upstream, reason: impl std::fmt::Display) -> ForwardError {
        ForwardError::Unreachable {
            node: up.node_id.clone(),
            addr: up.authority.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The status, stable error code and whether to add `Retry-After`.
    pub(crate) fn parts(&self) -> (StatusCode, &'static str, bool) {
        match self {
            ForwardError::BadUuid(_) => (StatusCode::BAD_REQUEST, "bad_dtable_uuid", false),
            ForwardError::NoOwner(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "bucket_unavailable", true)
            }
            ForwardError::NoServer => (StatusCode::SERVICE_UNAVAILABLE, "no_server", true),
            ForwardError::NotReplayable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "moved_retry", true)
            }
            ForwardError::Unreachable { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream_unreachable", false)
            }
            ForwardError::Body(_) => (StatusCode::BAD_REQUEST, "bad_body", false),
        }
    }

    /// The JSON error response.
    pub fn into_response(self) -> Response<ClientBody> {
        let (status, code, retry) = self.parts();
        json_response(status, code, &self.to_string(), retry)
    }
}

/// A JSON error body `{"code","error"}`.
pub fn json_response(
    status: StatusCode,
    code: &str,
    msg: &str,
    retry: bool,
) -> Response<ClientBody> {
    let body = serde_json::json!({ "code": code, "error": msg }).to_string();
    let mut resp = Response::new(ClientBody::own(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if retry {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

impl Forwarder {
    /// A forwarder reading routes from `table_rx`.
    pub fn new(
        table_rx: watch::Receiver<Arc<RoutingTable>>,
        settings: ForwardSettings,
        connect_timeout: Duration,
        idle_timeout: Duration,
        sockets: Arc<SocketRegistry>,
    ) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let exec = hyper_util::rt::TokioExecutor::new();
        let upgrades = Client::builder(exec.clone())
            .pool_idle_timeout(idle_timeout)
            .build(connector.clone());
        let h2 = Client::builder(exec)
            .pool_idle_timeout(idle_timeout)
            .http2_only(true)
            .build(connector);
        Forwarder {
            table_rx,
            upgrades,
            h2,
            settings,
            round_robin: AtomicUsize::new(0),
            sockets,
            metrics: ProxyMetrics::new(),
        }
    }

    /// Handles one client request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ClientBody> {
        let started = Instant::now();
        // Boxed once here: the request's future is a few KiB, and hyper moves the future it
        // gets from the service; moving a pointer is cheaper than copying the state each time.
        let resp = match Box::pin(self.route_and_forward(req, peer, started)).await {
            Ok(resp) => resp,
            Err(e) => {
                if !matches!(e, ForwardError::BadUuid(_)) {
                    tracing::warn!(error = %e, "request not forwarded");
                }
                e.into_response()
            }
        };
        self.metrics.observe(resp.status(), started.elapsed());
        resp
    }

    async fn route_and_forward(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        started: Instant,
    ) -> Result<Response<ClientBody>, ForwardError> {
        let bucket = bucket_of(&req)?;
        let deadline = started + self.settings.hold_timeout;
        if crate::upgrade::is_upgrade(&req) {
            // Boxed, as every rare path here: the future of a plain request is moved a few
            // times on its way into hyper, and its size is what those moves copy.
            return Box::pin(async move {
                let target = self.resolve(bucket, deadline, None).await?;
                crate::upgrade::forward(self, req, bucket, target.upstream, target.epoch, peer)
                    .await
            })
            .await;
        }
        let (mut parts, body) = req.into_parts();
        let limit = self.settings.retry_body_limit;
        let mut payload = Payload::prepare(&parts.headers, body, limit).await?;

        // The headers every attempt sends, made once.
        let h2 = parts.version == Version::HTTP_2;
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers, h2);
        add_forwarding(&mut headers, &parts.uri, peer);

        let mut target = self.resolve(bucket, deadline, None).await?;
        let mut retried_connect = false;
        // Set once a kept-alive connection closed under this request: the next attempt takes
        // a new connection.
        let mut stale = false;
        let mut backoff = Duration::from_millis(25);
        loop {
            let Some(body) = payload.next_attempt(limit) else {
                return Err(ForwardError::NotReplayable(
                    bucket.expect("only bucketed requests retry"),
                ));
            };
            let upstream_req = upstream_request(&parts, &mut headers, &target, h2, body);
            let sent = Instant::now();
            let result = if h2 {
                self.h2
                    .request(upstream_req)
                    .await
                    .map(|r| r.map(ClientBody::Upstream))
                    .map_err(SendError::from)
            } else {
                let pool = &target.upstream.pool;
                let answer = if stale {
                    pool.send_new(upstream_req).await
                } else {
                    pool.send(upstream_req).await
                };
                answer.map(|r| r.map(ClientBody::Pooled))
            };
            match result {
                Ok(resp) if is_not_owner(&resp) => {
                    let Some(b) = bucket else {
                        return Ok(finish(resp));
                    };
                    self.metrics.not_owner_retries.increment(1);
                    // Wait for the assignment to move past the epoch we sent, or a short
                    // back-off (the server's view may lag ours), then try the owner again.
                    let sent_epoch = target.epoch;
                    let wait_until = deadline.min(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    target = match self.resolve(Some(b), wait_until, sent_epoch).await {
                        Ok(t) => t,
                        Err(_) if Instant::now() < deadline => {
                            self.resolve(Some(b), deadline, None).await?
                        }
                        Err(e) => return Err(e),
                    };
                }
                Ok(resp) => {
                    self.metrics
                        .upstream_latency
                        .record(sent.elapsed().as_secs_f64());
                    return Ok(finish(resp));
                }
                // The upstream closed an idle connection as this request went out on it (a
                // server's keep-alive timeout can end just then). As nginx does, an
                // idempotent request goes out once more, on a new connection.
                Err(e)
                    if e.is_stale()
                        && !stale
                        && parts.method.is_idempotent()
                        && payload.can_send_again() =>
                {
                    tracing::debug!(node = %target.upstream.node_id, error = %e, "sending again on a new connection");
                    self.metrics.stale_retries.increment(1);
                    stale = true;
                }
                Err(e) if e.is_connect() => {
                    let next = (!retried_connect)
                        .then(|| self.moved_elsewhere(bucket, &target))
                        .flatten();
                    match next {
                        Some(t) => {
                            retried_connect = true;
                            target = t;
                        }
                        None => {
                            return Err(ForwardError::unreachable(&target.upstream, e));
                        }
                    }
                }
                Err(e) => {
                    return Err(ForwardError::unreachable(&target.upstream, e));
                }
            }
        }
    }

    /// After a failed connect to `tried`: the bucket's owner, if the assignment moved the
    /// bucket elsewhere while we were connecting (a request retries that once).
    pub(crate) fn moved_elsewhere(&self, bucket: Option<Bucket>, tried: &Target) -> Option<Target> {
        self.pick(&self.table_rx.borrow(), Some(bucket?), None)
            .filter(|t| !Arc::ptr_eq(&t.upstream, &tried.upstream))
    }

    /// The HTTP/1.1 client for upgrades, whose connections are handed over to the splice.
    pub(crate) fn upgrade_client(&self) -> &Client<HttpConnector, UpstreamBody> {
        &self.upgrades
    }

    /// Where to send a request: the bucket's owner (waiting until `deadline` for one with an
    /// epoch above `after_epoch`), or any active server for requests without a base.
    pub(crate) async fn resolve(
        &self,
        bucket: Option<Bucket>,
        deadline: Instant,
        after_epoch: Option<i64>,
    ) -> Result<Target, ForwardError> {
        // Fast path: the current table has a route; no receiver clone, no waiting.
        if let Some(t) = self.pick(&self.table_rx.borrow(), bucket, after_epoch) {
            return Ok(t);
        }
        Box::pin(self.hold(bucket, deadline, after_epoch)).await
    }

    /// Waits until `deadline` for a route (see [`Forwarder::resolve`]).
    async fn hold(
        &self,
        bucket: Option<Bucket>,
        deadline: Instant,
        after_epoch: Option<i64>,
    ) -> Result<Target, ForwardError> {
        let mut rx = self.table_rx.clone();
        self.metrics.held.increment(1.0);
        let result = loop {
            if let Some(t) = self.pick(&rx.borrow_and_update(), bucket, after_epoch) {
                break Ok(t);
            }
            match timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => break Err(bucket.map_or(ForwardError::NoServer, ForwardError::NoOwner)),
            }
        };
        self.metrics.held.decrement(1.0);
        result
    }

    /// The route in `table`: the bucket's owner if its epoch is above `after_epoch`, or the
    /// next active server round robin for requests without a base.
    pub(crate) fn pick(
        &self,
        table: &RoutingTable,
        bucket: Option<Bucket>,
        after_epoch: Option<i64>,
    ) -> Option<Target> {
        match bucket {
            None => {
                let n = self.round_robin.fetch_add(1, Ordering::Relaxed);
                table.any_active(n).map(|u| Target {
                    upstream: Arc::clone(u),
                    epoch: None,
                    epoch_header: None,
                })
            }
            Some(b) => match table.route(b) {
                Route::Owned {
                    upstream,
                    epoch,
                    epoch_header,
                } if after_epoch.is_none_or(|e| *epoch > e) => Some(Target {
                    upstream: Arc::clone(upstream),
                    epoch: Some(*epoch),
                    epoch_header: Some(epoch_header.clone()),
                }),
                _ => None,
            },
        }
    }
}

fn is_not_owner<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::CONFLICT
        && resp
            .headers()
            .get(NOT_OWNER_HEADER)
            .is_some_and(|v| v.as_bytes() == b"1")
}

/// Strips hop-by-hop headers from an upstream response.
pub(crate) fn finish(mut resp: Response<ClientBody>) -> Response<ClientBody> {
    strip_hop_by_hop(resp.headers_mut(), false);
    resp
}

/// Headers that describe one connection, not the message. A `static`: a `const` array would
/// be built and dropped again at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Whether `name` is one of [`HOP_BY_HOP`] or `upgrade`: a match on the name, which compares
/// lengths before bytes, where comparing against each `HeaderName` costs nine comparisons.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, and those the Connection header names. `te: trailers` is
/// kept for gRPC when `keep_te_trailers`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_te_trailers: bool) {
    // Most messages carry none: one pass over the names is cheaper than nine look-ups.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    let te_trailers = keep_te_trailers
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Builds the request of one attempt to the upstream: its URI (origin-form over a pooled
/// HTTP/1.1 connection, absolute for the HTTP/2 client), and a copy of `headers` once
/// `Host` and the bucket's epoch for `target` are set in them. Setting them before the copy
/// (rather than in it) leaves the copy at its exact size, so nothing grows it.
fn upstream_request(
    parts: &hyper::http::request::Parts,
    headers: &mut HeaderMap,
    target: &Target,
    h2: bool,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let up = &target.upstream;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    if h2 {
        *req.uri_mut() = upstream_uri(up, &parts.uri);
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.uri_mut() = upstream_path(up, &parts.uri);
        *req.version_mut() = Version::HTTP_11;
        headers.insert(header::HOST, up.host.clone());
    }
    match &target.epoch_header {
        Some(epoch) => {
            headers.insert(EPOCH_HEADER, epoch.clone());
        }
        // A request without a base may be sent again elsewhere, but never with an epoch.
        None => {
            headers.remove(EPOCH_HEADER);
        }
    }
    *req.headers_mut() = headers.clone();
    req
}

/// The request target for an HTTP/1.1 upstream: the node's path prefix, then the request's
/// path and query.
pub(crate) fn upstream_path(up: &Upstream, uri: &Uri) -> Uri {
    match (up.prefix.is_empty(), uri.path_and_query()) {
        (true, Some(pq)) => Uri::from(pq.clone()),
        (_, pq) => {
            let pq = pq.map_or("/", |pq| pq.as_str());
            format!("{}{pq}", up.prefix)
                .parse()
                .expect("a prefix and a valid path")
        }
    }
}

/// The upstream URI: the node's scheme, authority and path prefix, then the request's path
/// and query.
pub fn upstream_uri(up: &Upstream, uri: &Uri) -> Uri {
    let mut parts = hyper::http::uri::Parts::default();
    parts.scheme = Some(up.scheme.clone());
    parts.authority = Some(up.authority.clone());
    parts.path_and_query = Some(match (up.prefix.is_empty(), uri.path_and_query()) {
        (true, Some(pq)) => pq.clone(),
        (_, pq) => {
            let pq = pq.map_or("/", |pq| pq.as_str());
            format!("{}{pq}", up.prefix)
                .parse()
                .expect("a prefix and a valid path")
        }
    });
    Uri::from_parts(parts).expect("parts of valid URIs")
}

/// X-Forwarded-For (appended), -Proto and -Host; the Host header goes, so the upstream's
/// is set instead.
pub fn add_forwarding(headers: &mut HeaderMap, uri: &Uri, peer: &Peer) {
    let host = headers.remove(header::HOST).or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    // Room for the three added here and the upstream's Host and epoch, so that the map grows
    // once at most; each header below is then found or placed with one look-up.
    headers.reserve(5);
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Occupied(mut prev) => {
            // A value that is not text is replaced, as if there had been none.
            let v = match prev.get().to_str() {
                Ok(p) => HeaderValue::from_str(&format!("{p}, {}", peer.addr.ip())).ok(),
                Err(_) => Some(peer.ip.clone()),
            };
            if let Some(v) = v {
                prev.insert(v);
            }
        }
        Entry::Vacant(slot) => {
            slot.insert(peer.ip.clone());
        }
    }
    if let Entry::Vacant(slot) = headers.entry(X_FORWARDED_PROTO) {
        slot.insert(peer.proto.clone());
    }
    if let Some(host) = host
        && let Entry::Vacant(slot) = headers.entry(X_FORWARDED_HOST)
    {
        slot.insert(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolSettings;

    const POOL: PoolSettings = PoolSettings {
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
    };

    fn peer() -> Peer {
        Peer::new("127.0.0.1:40000".parse().unwrap(), false)
    }

    fn target(url: &str, epoch: Option<i64>) -> Target {
        let up = Upstream::parse("dtable-server-a", url, POOL).unwrap();
        Target {
            upstream: Arc::new(up),
            epoch,
            epoch_header: epoch.map(HeaderValue::from),
        }
    }

    fn parts(headers: &[(&str, &[u8])]) -> hyper::http::request::Parts {
        let mut req = Request::builder().uri("/dtables/abc");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_hop_by_hop_check_knows_every_name_it_strips_and_no_other() {
        for name in HOP_BY_HOP.iter().chain([&header::UPGRADE]) {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            header::HOST,
            header::CONTENT_LENGTH,
            X_FORWARDED_PROTO,
            EPOCH_HEADER,
        ] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn forwarding_headers_are_added_and_the_host_goes() {
        let p = parts(&[("host", b"cloud.example")]);
        let mut h = p.headers.clone();
        add_forwarding(&mut h, &p.uri, &peer());
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "cloud.example");
        assert!(!h.contains_key(header::HOST));
    }

    #[test]
    fn forwarding_headers_of_an_earlier_proxy_are_kept_and_the_client_appended() {
        let p = parts(&[
            ("host", b"inner"),
            ("x-forwarded-for", b"192.0.2.7"),
            ("x-forwarded-proto", b"https"),
            ("x-forwarded-host", b"cloud.example"),
        ]);
        let mut h = p.headers.clone();
        add_forwarding(&mut h, &p.uri, &peer());
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.7, 127.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "cloud.example");
    }

    #[test]
    fn a_forwarded_for_that_is_not_text_is_replaced() {
        let p = parts(&[("x-forwarded-for", b"\xff\xfe")]);
        let mut h = p.headers.clone();
        add_forwarding(&mut h, &p.uri, &peer());
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_FOR], "127.0.0.1");
    }

    #[test]
    fn each_attempt_carries_its_targets_host_and_epoch_and_no_stale_epoch() {
        let p = parts(&[("accept", b"*/*")]);
        let mut h = p.headers.clone();
        let first = upstream_request(
            &p,
            &mut h,
            &target("http://127.0.0.1:8000/", Some(41)),
            false,
            UpstreamBody::Full(None),
        );
        assert_eq!(first.headers()[header::HOST], "127.0.0.1:8000");
        assert_eq!(first.headers()[EPOCH_HEADER], "41");
        assert_eq!(first.headers()[header::ACCEPT], "*/*");
        assert_eq!(first.uri(), "/dtables/abc");

        let again = upstream_request(
            &p,
            &mut h,
            &target("http://127.0.0.1:8001/", None),
            false,
            UpstreamBody::Full(None),
        );
        assert_eq!(again.headers()[header::HOST], "127.0.0.1:8001");
        assert!(!again.headers().contains_key(EPOCH_HEADER));
        assert_eq!(again.headers().len(), 2);
    }
}
