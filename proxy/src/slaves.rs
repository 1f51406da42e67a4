//! The slave listener (`--slave-listen`, 4000 in the deploy files): spreads reads over the
//! pool of dtable-server-slaves registered under `dtable-cluster/slaves/<node_id>`, so that a
//! dtable-server's `dtable_server_slave_url` can point at the proxy instead of at one slave.
//!
//! - A request that names a base sticks to one slave, chosen by rendezvous (highest random
//!   weight) hashing of the base's normalized 32-hex UUID over the healthy slaves, so that
//!   slave's cached copy of the base is reused. When that slave leaves, the next slave by the
//!   same hash takes its bases over, and no other base moves; when a slave joins, it takes
//!   only the bases it now ranks first for. The hash is a fixed function ([`score`]), so
//!   every proxy, whatever its version or host, picks the same slave for a base.
//! - A request that names no base goes to the least busy slave: the fewest requests in flight
//!   through this proxy, ties taken in turn.
//! - With no healthy slave the answer is 503 `no_slave` with `Retry-After`, or, with
//!   `--slave-fallback-to-owner`, the request is served as the routing listener would: by
//!   the owner of its base's bucket (any active server for a request without a base).
//! - A slave that cannot be connected to is replaced once by the next slave by the hash (or
//!   the next least busy), for a request that can be sent again safely: a GET or HEAD, or any
//!   request without a body (nothing reached the slave). A GET or HEAD whose connection fails
//!   after it was sent (a slave killed with the request on a kept-alive connection) is a read
//!   and is sent to the next slave too. Otherwise the answer is 502 `upstream_unreachable`.
//!
//! "Healthy" is "registered": a slave's agent keeps its key only while the slave passes its
//! health probe. Registered slaves in state `draining` take no requests.
//! Upgrades (WebSockets) are refused with 501: slaves serve plain reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dtable_core::etcd::ViewRx;
use dtable_core::view::SlaveEntry;
use dtable_core::{BucketError, ClusterView, NodeId, NodeState};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode, Version};
use metrics::Counter;
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::body::{BodyError, ClientBody, Payload, UpstreamBody};
use crate::forward::{
    Forwarder, Peer, add_forwarding, finish, json_response, strip_hop_by_hop, upstream_path,
};
use crate::locate::base_of;
use crate::metrics::SlaveMetrics;
use crate::pool::PoolSettings;
use crate::server::Handler;
use crate::table::Upstream;

// ---- the hash -----------------------------------------------------------------------------

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: every input bit reaches every output bit, which FNV alone
/// does not do for the last bytes hashed.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The part of a slave's hash that depends on the slave alone: FNV-1a of its node id and a
/// NUL (which no node id contains), computed once per slave.
pub fn seed(node_id: &str) -> u64 {
    fnv1a(fnv1a(FNV_OFFSET, node_id.as_bytes()), &[0])
}

/// The rendezvous score of the slave with [`seed`] `seed` and weight `weight` for the base
/// `uuid` (normalized, 32 lowercase hex characters): the base goes to the slave with the
/// highest score. This is weighted rendezvous hashing: a uniform draw `u` in (0, 1) from
/// `fmix64(FNV-1a(node_id, NUL, uuid))`, scored `weight / -ln(u)`, so a slave's share of the
/// bases is proportional to its weight, and removing a slave changes no other slave's scores.
/// Fixed forever: every proxy must pick the same slave for a base.
pub fn score(seed: u64, weight: u32, uuid: &str) -> f64 {
    let h = fmix64(fnv1a(seed, uuid.as_bytes()));
    // The top 53 bits, centred in their interval: never 0, never 1.
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

// ---- the pool -----------------------------------------------------------------------------

/// One slave the proxy sends to: its upstream (with its keep-alive connections) and how many
/// requests it has in flight through this proxy. Kept across pool rebuilds while its URL
/// stays the same, so neither is lost when another slave comes or goes.
#[derive(Debug)]
pub struct Slave {
    /// Where its requests go: its `local_node_url`.
    pub upstream: Upstream,
    /// [`seed`] of its node id.
    seed: u64,
    /// Requests sent to it whose response has not been fully sent on to the client yet.
    in_flight: AtomicUsize,
    /// `dtable_proxy_slave_requests_total{slave}`.
    requests: Counter,
}

impl Slave {
    fn new(upstream: Upstream) -> Slave {
        let requests = metrics::counter!(
            "dtable_proxy_slave_requests_total",
            "slave" => upstream.node_id.clone()
        );
        Slave {
            seed: seed(&upstream.node_id),
            upstream,
            in_flight: AtomicUsize::new(0),
            requests,
        }
    }

    /// Its node id.
    pub fn node_id(&self) -> &str {
        &self.upstream.node_id
    }

    /// Requests it has in flight through this proxy.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one request in flight to a slave until dropped: with the response body, once it has
/// been sent on (or the client went away).
#[derive(Debug)]
pub struct InFlight(Arc<Slave>);

impl InFlight {
    fn start(slave: &Arc<Slave>) -> InFlight {
        slave.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(slave))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A slave of the pool with the weight it registered.
#[derive(Clone, Debug)]
pub struct Member {
    /// The slave.
    pub slave: Arc<Slave>,
    /// Its relative share of the bases.
    pub weight: u32,
}

/// One immutable snapshot of the healthy slaves, in node-id order, rebuilt whenever the slave
/// registrations change.
#[derive(Debug, Default)]
pub struct SlavePool {
    /// etcd revision it was built at; 0 before the first load.
    pub revision: i64,
    /// The slaves that take requests.
    pub members: Vec<Member>,
}

impl SlavePool {
    /// Builds the pool from the registered slaves of `view`, reusing the slaves of `previous`
    /// whose URL is unchanged. Slaves in state `draining` or without a usable `http://`
    /// local_node_url take no requests.
    pub fn from_view(
        view: &ClusterView,
        previous: &SlavePool,
        settings: PoolSettings,
    ) -> SlavePool {
        let known: HashMap<&str, &Arc<Slave>> = previous
            .members
            .iter()
            .map(|m| (m.slave.node_id(), &m.slave))
            .collect();
        let mut members = Vec::with_capacity(view.slaves.len());
        for (id, entry) in &view.slaves {
            let record = &entry.record;
            if record.state != NodeState::Active {
                continue;
            }
            let url = &record.local_node_url;
            let Some(fresh) = Upstream::parse(id.as_str(), url, settings) else {
                tracing::warn!(slave = %id, local_node_url = %url, "slave has no usable http local_node_url; sending it nothing");
                continue;
            };
            let slave = match known.get(id.as_str()) {
                Some(old) if old.upstream.same_target(&fresh) => Arc::clone(old),
                _ => Arc::new(Slave::new(fresh)),
            };
            members.push(Member {
                slave,
                weight: record.weight,
            });
        }
        SlavePool {
            revision: view.revision,
            members,
        }
    }

    /// How many slaves take requests.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether no slave takes requests.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The slave for base `uuid` (normalized): the highest [`score`], ties to the smaller node
    /// id. `skip` leaves one slave out, which gives the next slave by the same hash.
    pub fn by_hash(&self, uuid: &str, skip: Option<&str>) -> Option<&Arc<Slave>> {
        self.members
            .iter()
            .filter(|m| skip != Some(m.slave.node_id()))
            .map(|m| (score(m.slave.seed, m.weight, uuid), &m.slave))
            .max_by(|(a, sa), (b, sb)| a.total_cmp(b).then_with(|| sb.node_id().cmp(sa.node_id())))
            .map(|(_, s)| s)
    }

    /// The slave with the fewest requests in flight; among equals the `turn`-th, so that ties
    /// are taken in turn. `skip` leaves one slave out.
    pub fn least_busy(&self, turn: usize, skip: Option<&str>) -> Option<&Arc<Slave>> {
        let candidates = || {
            self.members
                .iter()
                .map(|m| &m.slave)
                .filter(move |s| skip != Some(s.node_id()))
        };
        let fewest = candidates().map(|s| s.in_flight()).min()?;
        let idle = candidates().filter(|s| s.in_flight() == fewest).count();
        candidates()
            .filter(|s| s.in_flight() == fewest)
            .nth(turn % idle)
    }

    /// The ids of the slaves that take requests.
    fn ids(&self) -> BTreeSet<&str> {
        self.members.iter().map(|m| m.slave.node_id()).collect()
    }
}

/// Keeps the pool in step with the slave registrations of the cluster view, and the
/// `dtable_proxy_slaves_healthy` gauge with it, until `stop`.
pub async fn follow(
    mut view_rx: ViewRx,
    pool_tx: watch::Sender<Arc<SlavePool>>,
    settings: PoolSettings,
    stop: CancellationToken,
) {
    let healthy = metrics::gauge!("dtable_proxy_slaves_healthy");
    let mut seen: Option<BTreeMap<NodeId, SlaveEntry>> = None;
    loop {
        let view = view_rx.borrow_and_update().clone();
        if view.revision > 0 && seen.as_ref() != Some(&view.slaves) {
            let old = Arc::clone(&pool_tx.borrow());
            let pool = SlavePool::from_view(&view, &old, settings);
            let (was, is) = (old.ids(), pool.ids());
            for joined in is.difference(&was) {
                tracing::info!(slave = %joined, healthy = pool.len(), "slave joined the pool");
            }
            for left in was.difference(&is) {
                tracing::warn!(slave = %left, healthy = pool.len(), "slave left the pool; the next slaves by hash take its bases");
            }
            if pool.is_empty() && !old.is_empty() {
                tracing::warn!("no healthy slave is left");
            }
            healthy.set(pool.len() as f64);
            pool_tx.send_replace(Arc::new(pool));
            seen = Some(view.slaves.clone());
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = view_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Closes idle connections to slaves that sat past the idle timeout, until `stop`.
pub async fn sweep_idle(
    pool_rx: watch::Receiver<Arc<SlavePool>>,
    settings: PoolSettings,
    stop: CancellationToken,
) {
    let every = (settings.idle_timeout / 2).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let pool = Arc::clone(&pool_rx.borrow());
        let idle: usize = pool
            .members
            .iter()
            .map(|m| m.slave.upstream.pool.sweep())
            .sum();
        metrics::gauge!("dtable_proxy_slave_idle_connections").set(idle as f64);
    }
}

// ---- the request path ---------------------------------------------------------------------

/// Why the slave listener answered a request itself, each with the status the client gets.
#[derive(Debug, thiserror::Error)]
pub enum SlaveError {
    /// The request names a base, but not a well-formed one.
    #[error(transparent)]
    BadUuid(#[from] BucketError),
    /// No slave is registered and healthy (and there is no fallback to the owner).
    #[error("no healthy dtable-server-slave is registered; retry shortly")]
    NoSlave,
    /// The slave (and the next one, when the request could be sent again) could not be
    /// reached.
    #[error("dtable-server-slave {node} at {addr} is unreachable: {reason}")]
    Unreachable {
        /// The slave.
        node: String,
        /// Its address.
        addr: String,
        /// The connection error.
        reason: String,
    },
    /// The client's body could not be taken.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The request asks to switch protocols, which the slave port does not do.
    #[error("the slave port serves plain HTTP requests only; use the routing port for WebSockets")]
    Upgrade,
}

impl SlaveError {
    /// The status, the stable error code and whether to add `Retry-After`.
    pub fn parts(&self) -> (StatusCode, &'static str, bool) {
        match self {
            SlaveError::BadUuid(_) => (StatusCode::BAD_REQUEST, "bad_dtable_uuid", false),
            SlaveError::NoSlave => (StatusCode::SERVICE_UNAVAILABLE, "no_slave", true),
            SlaveError::Unreachable { .. } => {
                (StatusCode::BAD_GATEWAY, "upstream_unreachable", false)
            }
            SlaveError::Body(_) => (StatusCode::BAD_REQUEST, "bad_body", false),
            SlaveError::Upgrade => (StatusCode::NOT_IMPLEMENTED, "upgrade_unsupported", false),
        }
    }

    /// The JSON error response `{"code","error"}`.
    pub fn into_response(self) -> Response<ClientBody> {
        let (status, code, retry) = self.parts();
        json_response(status, code, &self.to_string(), retry)
    }
}

/// Knobs of the slave listener.
#[derive(Clone, Debug)]
pub struct SlaveSettings {
    /// How long a request waits for the first load of the slave registrations at start-up.
    pub load_timeout: Duration,
    /// Largest request body kept to resend to the next slave after a connection failure.
    pub retry_body_limit: usize,
}

/// The slave listener's handler; shared by every connection of that listener.
pub struct SlaveRouter {
    /// The healthy slaves, kept current by [`follow`].
    pool_rx: watch::Receiver<Arc<SlavePool>>,
    /// The routing listener's forwarder, with `--slave-fallback-to-owner`.
    fallback: Option<Arc<Forwarder>>,
    /// Load timeout and retry body limit.
    settings: SlaveSettings,
    /// Counts picks of the least busy slave, so that ties are taken in turn.
    turn: AtomicUsize,
    /// Refusals, fallbacks, retries and durations.
    metrics: SlaveMetrics,
}

impl SlaveRouter {
    /// A router over the pool in `pool_rx`; requests that find no slave go to `fallback` when
    /// set.
    pub fn new(
        pool_rx: watch::Receiver<Arc<SlavePool>>,
        fallback: Option<Arc<Forwarder>>,
        settings: SlaveSettings,
    ) -> SlaveRouter {
        SlaveRouter {
            pool_rx,
            fallback,
            settings,
            turn: AtomicUsize::new(0),
            metrics: SlaveMetrics::new(),
        }
    }

    /// Handles one client request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Response<ClientBody> {
        let started = Instant::now();
        let resp = match self.route(req, peer).await {
            Ok(resp) => resp,
            Err(e) => {
                if !matches!(e, SlaveError::BadUuid(_) | SlaveError::Upgrade) {
                    tracing::warn!(error = %e, "request not sent to a slave");
                }
                let (_, code, _) = e.parts();
                self.metrics.refused(code);
                e.into_response()
            }
        };
        self.metrics.observe(started.elapsed());
        resp
    }

    /// The pool, once the slave registrations have been loaded (or the load timeout passed).
    async fn loaded_pool(&self) -> Arc<SlavePool> {
        let pool = Arc::clone(&self.pool_rx.borrow());
        if pool.revision > 0 {
            return pool;
        }
        let mut rx = self.pool_rx.clone();
        let deadline = Instant::now() + self.settings.load_timeout;
        let _ = timeout_at(deadline, rx.wait_for(|p| p.revision > 0)).await;
        Arc::clone(&rx.borrow())
    }

    /// The slave for a request: by hash for a base, else the least busy; `skip` leaves out a
    /// slave that just failed.
    fn pick(&self, pool: &SlavePool, base: Option<&str>, skip: Option<&str>) -> Option<Arc<Slave>> {
        match base {
            Some(uuid) => pool.by_hash(uuid, skip),
            None => pool.least_busy(self.turn.fetch_add(1, Ordering::Relaxed), skip),
        }
        .cloned()
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> Result<Response<ClientBody>, SlaveError> {
        let base = base_of(&req)?;
        if crate::upgrade::is_upgrade(&req) {
            return Err(SlaveError::Upgrade);
        }
        let pool = self.loaded_pool().await;
        let Some(mut slave) = self.pick(&pool, base.as_deref(), None) else {
            return match &self.fallback {
                Some(owner) => {
                    self.metrics.fallbacks.increment(1);
                    Ok(Arc::clone(owner).handle(req, peer).await)
                }
                None => Err(SlaveError::NoSlave),
            };
        };
        drop(pool);

        let (mut parts, body) = req.into_parts();
        let limit = self.settings.retry_body_limit;
        let mut payload = Payload::prepare(&parts.headers, body, limit).await?;
        // Nothing reached a slave that refused the connection, so a request without a body
        // may go to the next one; a read may go there whatever happened to the first.
        let read = matches!(parts.method, Method::GET | Method::HEAD);
        let resendable = read || payload.is_empty();
        let mut headers = std::mem::take(&mut parts.headers);
        strip_hop_by_hop(&mut headers, false);
        add_forwarding(&mut headers, &parts.uri, peer);

        let mut retried = false;
        loop {
            let unreachable = |slave: &Slave, reason: String| SlaveError::Unreachable {
                node: slave.node_id().to_owned(),
                addr: slave.upstream.authority.to_string(),
                reason,
            };
            let Some(body) = payload.next_attempt(limit) else {
                return Err(unreachable(
                    &slave,
                    "connection refused, and the request body cannot be sent again".into(),
                ));
            };
            let upstream_req = slave_request(&parts, headers.clone(), &slave.upstream, body);
            let in_flight = InFlight::start(&slave);
            match slave.upstream.pool.send(upstream_req).await {
                Ok(resp) => {
                    slave.requests.increment(1);
                    return Ok(finish(resp.map(|b| ClientBody::Slave(b, in_flight))));
                }
                Err(e) if !retried && resendable && (read || e.is_connect()) => {
                    drop(in_flight);
                    let pool = Arc::clone(&self.pool_rx.borrow());
                    let Some(next) = self.pick(&pool, base.as_deref(), Some(slave.node_id()))
                    else {
                        return Err(unreachable(&slave, e.to_string()));
                    };
                    tracing::warn!(
                        slave = slave.node_id(),
                        next = next.node_id(),
                        error = %e,
                        "slave failed; sending the request to the next slave"
                    );
                    self.metrics.retries.increment(1);
                    retried = true;
                    slave = next;
                }
                Err(e) => return Err(unreachable(&slave, e.to_string())),
            }
        }
    }
}

/// The slave listener's handler: to the pool.
impl Handler for SlaveRouter {
    fn call(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
    ) -> impl Future<Output = Response<ClientBody>> + Send {
        self.handle(req, peer)
    }
}

/// Builds the request to a slave: HTTP/1.1 over its pool, origin-form with its path prefix,
/// its `Host`, and the forwarded `headers`.
fn slave_request(
    parts: &hyper::http::request::Parts,
    mut headers: HeaderMap,
    up: &Upstream,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = upstream_path(up, &parts.uri);
    *req.version_mut() = Version::HTTP_11;
    headers.insert(header::HOST, up.host.clone());
    *req.headers_mut() = headers;
    req
}

#[cfg(test)]
mod tests {
    use dtable_core::{KeyLayout, KvMeta};

    use super::*;

    const SETTINGS: PoolSettings = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(60),
    };

    fn record(id: &str, port: u16, weight: u32, state: &str) -> Vec<u8> {
        format!(
            r#"{{"node_id":"{id}","node_url":"http://{id}/","local_node_url":"http://127.0.0.1:{port}/","role":"slave","state":"{state}","weight":{weight}}}"#
        )
        .into_bytes()
    }

    /// A view with the slaves `(name, weight)`, named `dtable-server-<name>`.
    fn view(slaves: &[(&str, u32)]) -> ClusterView {
        let k = KeyLayout::default();
        let mut v = ClusterView {
            revision: 7,
            ..ClusterView::default()
        };
        for (i, (name, weight)) in slaves.iter().enumerate() {
            let id = format!("dtable-server-{name}");
            let meta = KvMeta {
                create_revision: i as i64 + 1,
                mod_revision: i as i64 + 1,
                lease: 1,
            };
            let key = format!("dtable-cluster/slaves/{id}");
            v.put(
                &k,
                &key,
                &record(&id, 4000 + i as u16, *weight, "active"),
                meta,
            )
            .unwrap();
        }
        v
    }

    fn pool(slaves: &[(&str, u32)]) -> SlavePool {
        SlavePool::from_view(&view(slaves), &SlavePool::default(), SETTINGS)
    }

    /// `n` pseudo-random normalized base UUIDs.
    fn uuids(n: usize) -> Vec<String> {
        let mut state = 0x5eed_1234_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..n)
            .map(|_| format!("{:016x}{:016x}", next(), next()))
            .collect()
    }

    fn choice(p: &SlavePool, uuid: &str) -> String {
        p.by_hash(uuid, None).unwrap().node_id().to_owned()
    }

    fn shares(p: &SlavePool, uuids: &[String]) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for u in uuids {
            *out.entry(choice(p, u)).or_default() += 1;
        }
        out
    }

    #[test]
    fn the_choice_is_a_stable_function_of_the_base_and_the_members() {
        let a = pool(&[("a", 1), ("b", 1), ("c", 1)]);
        let rebuilt = SlavePool::from_view(&view(&[("c", 1), ("a", 1), ("b", 1)]), &a, SETTINGS);
        let fresh = pool(&[("b", 1), ("c", 1), ("a", 1)]);
        for u in uuids(2000) {
            let first = choice(&a, &u);
            assert_eq!(first, choice(&a, &u), "the same pool answers the same");
            assert_eq!(
                first,
                choice(&rebuilt, &u),
                "a rebuilt pool answers the same"
            );
            assert_eq!(
                first,
                choice(&fresh, &u),
                "the order of registration is irrelevant"
            );
        }
        // The score depends on nothing but its inputs.
        assert_eq!(seed("dtable-server-a"), seed("dtable-server-a"));
        assert_ne!(seed("dtable-server-a"), seed("dtable-server-b"));
        let u = "c3a1e2f0a1b2c3d4e5f60718293a4b5c";
        let s = score(seed("dtable-server-a"), 1, u);
        assert!(s.is_finite() && s > 0.0, "{s}");
        assert_eq!(s.to_bits(), score(seed("dtable-server-a"), 1, u).to_bits());
        assert!(
            score(seed("dtable-server-a"), 2, u) > s,
            "weight scales the score"
        );
    }

    #[test]
    fn bases_spread_evenly() {
        let all = uuids(4000);
        let two = shares(&pool(&[("a", 1), ("b", 1)]), &all[..1000]);
        assert_eq!(two.len(), 2);
        for (slave, n) in &two {
            assert!((400..=600).contains(n), "{slave} got {n} of 1000: {two:?}");
        }
        let four = shares(&pool(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]), &all);
        assert_eq!(four.len(), 4);
        for (slave, n) in &four {
            assert!(
                (800..=1200).contains(n),
                "{slave} got {n} of 4000: {four:?}"
            );
        }
    }

    #[test]
    fn weights_set_the_share() {
        let all = uuids(4000);
        let s = shares(&pool(&[("a", 3), ("b", 1)]), &all);
        let a = s["dtable-server-a"];
        assert!(
            (2800..=3200).contains(&a),
            "a (weight 3) got {a} of 4000: {s:?}"
        );
    }

    #[test]
    fn a_leaving_slave_moves_only_its_own_bases() {
        let all = uuids(3000);
        let before = pool(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let after = SlavePool::from_view(&view(&[("a", 1), ("b", 1), ("d", 1)]), &before, SETTINGS);
        let mut taken_over = BTreeMap::<String, usize>::new();
        for u in &all {
            let (was, is) = (choice(&before, u), choice(&after, u));
            if was == "dtable-server-c" {
                // The next slave by the same hash, which the retry path also asks for.
                let next = before.by_hash(u, Some("dtable-server-c")).unwrap();
                assert_eq!(is, next.node_id(), "{u}");
                *taken_over.entry(is).or_default() += 1;
            } else {
                assert_eq!(was, is, "{u} moved although its slave stayed");
            }
        }
        assert_eq!(
            taken_over.len(),
            3,
            "c's bases spread over the rest: {taken_over:?}"
        );
        // A join takes only the bases the joiner now ranks first for.
        let joined = SlavePool::from_view(
            &view(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]),
            &before,
            SETTINGS,
        );
        let mut moved = 0;
        for u in &all {
            let (was, is) = (choice(&before, u), choice(&joined, u));
            if was != is {
                assert_eq!(is, "dtable-server-e", "{u} moved between old slaves");
                moved += 1;
            }
        }
        assert!(
            (400..=800).contains(&moved),
            "about a fifth moved to the joiner: {moved}"
        );
    }

    #[test]
    fn the_least_busy_slave_takes_requests_without_a_base() {
        let p = pool(&[("a", 1), ("b", 1), ("c", 1)]);
        let pick = |turn| p.least_busy(turn, None).unwrap().node_id().to_owned();
        // All idle: in turn.
        let turns: Vec<String> = (0..6).map(pick).collect();
        assert_eq!(
            turns,
            ["a", "b", "c", "a", "b", "c"].map(|n| format!("dtable-server-{n}"))
        );
        // a and b busy: c, whatever the turn.
        let a = InFlight::start(&p.members[0].slave);
        let b = InFlight::start(&p.members[1].slave);
        assert!((0..5).all(|t| pick(t) == "dtable-server-c"));
        // c busier than a and b: a and b in turn.
        let c1 = InFlight::start(&p.members[2].slave);
        let c2 = InFlight::start(&p.members[2].slave);
        assert_eq!(
            (0..4).map(pick).collect::<Vec<_>>(),
            ["a", "b", "a", "b"].map(|n| format!("dtable-server-{n}"))
        );
        assert_eq!(p.members[2].slave.in_flight(), 2);
        drop((a, b, c1, c2));
        assert!(p.members.iter().all(|m| m.slave.in_flight() == 0));
        // Skipping one that failed.
        assert!((0..4).all(
            |t| p.least_busy(t, Some("dtable-server-a")).unwrap().node_id() != "dtable-server-a"
        ));
        assert!(pool(&[]).least_busy(0, None).is_none());
    }

    #[test]
    fn the_pool_keeps_slaves_across_rebuilds_and_leaves_out_those_that_take_nothing() {
        let first = pool(&[("a", 1), ("b", 1)]);
        let mut v = view(&[("a", 1), ("b", 1)]);
        let k = KeyLayout::default();
        let meta = KvMeta {
            create_revision: 20,
            mod_revision: 20,
            lease: 1,
        };
        v.put(
            &k,
            "dtable-cluster/slaves/dtable-server-d",
            &record("dtable-server-d", 4100, 1, "draining"),
            meta,
        )
        .unwrap();
        let bad = br#"{"node_id":"dtable-server-f","node_url":"x","local_node_url":"ftp://f/","role":"slave"}"#;
        v.put(&k, "dtable-cluster/slaves/dtable-server-f", bad, meta)
            .unwrap();
        let second = SlavePool::from_view(&v, &first, SETTINGS);
        assert_eq!(
            second.ids(),
            BTreeSet::from(["dtable-server-a", "dtable-server-b"]),
            "draining slaves and unusable URLs take nothing"
        );
        assert!(Arc::ptr_eq(
            &first.members[0].slave,
            &second.members[0].slave
        ));
        assert!(
            pool(&[])
                .by_hash("c3a1e2f0a1b2c3d4e5f60718293a4b5c", None)
                .is_none()
        );
    }
}
