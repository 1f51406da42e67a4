// dtable-cluster status page: renders GET /api/v1/status and keeps it live from the event
// stream GET /api/v1/events (Server-Sent Events; the first message is a full snapshot). Each
// event is applied at once, and a debounced re-read of /api/v1/status reconciles whatever an
// event alone cannot tell (lease TTLs, health). The stream reconnects by itself with backoff;
// a "disconnected" badge shows while it is down. No page reload, no external resources.
"use strict";

(() => {
  const STATUS_URL = "/api/v1/status";
  const EVENTS_URL = "/api/v1/events";
  /** Most events kept, like the server's recent_events. */
  const MAX_EVENTS = 50;
  /** Wait after an event before re-reading the status, so a burst costs one request. */
  const RECONCILE_DEBOUNCE_MS = 400;
  /** Re-read the status this often while live, to keep lease TTLs fresh (no event says
   * that a keep-alive renewed a lease). */
  const REFRESH_MS = 3000;
  const RETRY_MIN_MS = 1000;
  const RETRY_MAX_MS = 10000;
  const HEX = "0123456789abcdef";

  /** What the page shows; replaced by a snapshot, patched by events. */
  const state = {
    revision: 0,
    leader: "",
    instance: "",
    thisInstanceLeads: false,
    /** 256 entries {node, epoch}, indexed by bucket number; node "" = unassigned. */
    buckets: Array.from({ length: 256 }, () => ({ node: "", epoch: 0 })),
    /** node_id → NODE. */
    nodes: new Map(),
    /** node_id → the longest lease TTL it was seen with: about the TTL it was granted. */
    maxTtl: new Map(),
    /** bucket ("3f") → MOVE. */
    moves: new Map(),
    /** Buckets the server flagged as moving (the snapshot's `moving`), kept with `moves`. */
    movingBuckets: new Set(),
    /** Newest last. */
    events: [],
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // ---- colours -------------------------------------------------------------------------

  /** A 32-bit hash of a string with good avalanche (FNV-1a, then murmur3's finaliser), so
   * node ids that differ in one letter still get far-apart colours. */
  function hash(s) {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193);
    }
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return h >>> 0;
  }

  const colourCache = new Map();
  /** The stable colour of a node id: hue from its hash, light enough for dark text. */
  function colour(node) {
    let c = colourCache.get(node);
    if (!c) {
      const h = hash(node);
      const hue = h % 360;
      const sat = 55 + ((h >>> 9) % 3) * 10;
      const light = 60 + ((h >>> 12) % 3) * 7;
      c = `hsl(${hue} ${sat}% ${light}%)`;
      colourCache.set(node, c);
    }
    return c;
  }

  function paint(e, node) {
    if (node) e.style.setProperty("--owner", colour(node));
    else e.style.removeProperty("--owner");
  }

  // ---- the grid ------------------------------------------------------------------------

  const cells = [];

  function buildGrid() {
    const grid = $("grid");
    grid.appendChild(el("div", "axis"));
    for (let c = 0; c < 16; c++) grid.appendChild(el("div", "axis", HEX[c]));
    for (let r = 0; r < 16; r++) {
      grid.appendChild(el("div", "axis", HEX[r]));
      for (let c = 0; c < 16; c++) {
        const bucket = HEX[r] + HEX[c];
        const cell = el("div", "cell", bucket);
        cell.setAttribute("role", "img");
        cell.dataset.bucket = bucket;
        cell.dataset.node = "";
        cell.dataset.epoch = "0";
        cell.dataset.moving = "false";
        cells.push(cell);
        grid.appendChild(cell);
      }
    }
    grid.addEventListener("mouseover", (e) => {
      const cell = e.target.closest(".cell");
      if (cell) showTip(cell);
    });
    grid.addEventListener("mouseleave", hideTip);
  }

  function isMoving(bucket) {
    return state.moves.has(bucket) || state.movingBuckets.has(bucket);
  }

  function renderGrid() {
    let assigned = 0;
    let moving = 0;
    for (let i = 0; i < 256; i++) {
      const cell = cells[i];
      const b = state.buckets[i];
      const bucket = cell.dataset.bucket;
      const mv = isMoving(bucket);
      if (b.node) assigned++;
      if (mv) moving++;
      if (cell.dataset.node !== b.node) {
        cell.dataset.node = b.node;
        paint(cell, b.node);
      }
      const epoch = String(b.epoch);
      if (cell.dataset.epoch !== epoch) cell.dataset.epoch = epoch;
      if (cell.dataset.moving !== String(mv)) {
        cell.dataset.moving = String(mv);
        cell.classList.toggle("moving", mv);
      }
      const label = `bucket ${bucket}: ${b.node || "unassigned"}, epoch ${b.epoch}` +
        (mv ? ", moving" : "");
      if (cell.getAttribute("aria-label") !== label) cell.setAttribute("aria-label", label);
    }
    $("grid").dataset.revision = String(state.revision);
    $("bucket-summary").textContent =
      `${assigned} assigned · ${256 - assigned} unassigned · ${moving} moving`;
  }

  function showTip(cell) {
    const tip = $("tip");
    const i = parseInt(cell.dataset.bucket, 16);
    const b = state.buckets[i];
    const move = state.moves.get(cell.dataset.bucket);
    tip.replaceChildren();
    const line = (label, value) => {
      const d = el("div", "", label + " ");
      d.appendChild(el("b", "", value));
      tip.appendChild(d);
    };
    line("bucket", cell.dataset.bucket);
    line("node", b.node || "unassigned");
    line("epoch", String(b.epoch));
    if (move) line("moving", `${move.from} → ${move.to}${move.acked ? " (released)" : ""}`);
    else if (isMoving(cell.dataset.bucket)) line("moving", "yes");
    tip.hidden = false;
    const r = cell.getBoundingClientRect();
    const w = tip.offsetWidth;
    const left = Math.min(r.right + 8, window.innerWidth - w - 8);
    tip.style.left = `${Math.max(8, left)}px`;
    tip.style.top = `${r.top}px`;
  }

  function hideTip() {
    $("tip").hidden = true;
  }

  // ---- legend, nodes, moves, events ----------------------------------------------------

  /** Bucket count per node, from the grid itself, so it follows every bucket event. */
  function bucketCounts() {
    const counts = new Map();
    for (const b of state.buckets) {
      if (b.node) counts.set(b.node, (counts.get(b.node) || 0) + 1);
    }
    return counts;
  }

  /** Whether a listed node is a read replica (a slave): it owns no bucket, so the grid and
   * its legend never show it; the node table does. */
  function isSlave(node) {
    return !!node && node.role === "slave";
  }

  function renderLegend(counts) {
    const servers = [...state.nodes.keys()].filter((id) => !isSlave(state.nodes.get(id)));
    const ids = new Set([...servers, ...counts.keys()]);
    const items = [];
    for (const id of [...ids].sort()) {
      const li = el("li");
      const sw = el("span", "swatch");
      paint(sw, id);
      li.appendChild(sw);
      li.dataset.node = id;
      const n = counts.get(id) || 0;
      li.appendChild(el("span", "", `${id} (${n})`));
      if (!state.nodes.has(id)) li.appendChild(el("span", "gone", "not registered"));
      items.push(li);
    }
    const un = el("li");
    un.appendChild(el("span", "swatch"));
    un.appendChild(el("span", "", `unassigned (${256 - [...counts.values()].reduce((a, b) => a + b, 0)})`));
    items.push(un);
    const mv = el("li");
    mv.appendChild(el("span", "swatch moving"));
    mv.appendChild(el("span", "", "moving"));
    items.push(mv);
    $("legend").replaceChildren(...items);
  }

  /** Seconds left on the node's lease as last reported, with whether that is low: a live
   * agent renews four times per TTL, so a quarter of the TTL left means renewals fail. */
  function renderTtl(td, node) {
    const t = node.lease_ttl_seconds;
    if (typeof t !== "number" || t < 0) {
      td.textContent = "—";
      return;
    }
    td.textContent = `${t} s`;
    const granted = state.maxTtl.get(node.node_id) || t;
    td.classList.toggle("ttl-low", t <= Math.max(1, granted / 4) && granted > 1);
  }

  function renderNodes(counts) {
    const rows = [];
    // Servers first, then slaves, each in node-id order (as the API lists them).
    const ids = [...state.nodes.keys()].sort((a, b) => {
      const sa = isSlave(state.nodes.get(a));
      const sb = isSlave(state.nodes.get(b));
      if (sa !== sb) return sa ? 1 : -1;
      return a < b ? -1 : a > b ? 1 : 0;
    });
    let slaves = 0;
    for (const id of ids) {
      const n = state.nodes.get(id);
      const slave = isSlave(n);
      if (slave) slaves++;
      const tr = el("tr", slave ? "slave" : "");
      tr.dataset.node = id;
      tr.dataset.role = slave ? "slave" : "server";
      const idTd = el("td", "node");
      const name = el("span", "mono");
      if (slave) {
        name.append(id);
      } else {
        // The colour of its buckets on the grid; a slave has none.
        const sw = el("span", "swatch");
        paint(sw, id);
        name.append(sw, " ", id);
      }
      idTd.appendChild(name);
      for (const [label, url] of [["node_url", n.node_url], ["local", n.local_node_url]]) {
        const s = el("span", "url", `${label} `);
        s.appendChild(el("b", "", url || "—"));
        s.title = url || "";
        idTd.appendChild(s);
      }
      tr.appendChild(idTd);
      const role = el("td", "role");
      role.appendChild(el("span", `role-badge role-${slave ? "slave" : "server"}`, slave ? "slave" : "server"));
      tr.appendChild(role);
      const health = el("td", "health");
      const healthy = n.healthy !== false;
      health.appendChild(el("span", healthy ? "health-ok" : "health-bad", healthy ? "healthy" : "unhealthy"));
      tr.appendChild(health);
      const st = el("td");
      st.appendChild(el("span", n.state === "draining" ? "state-draining" : "", n.state || "—"));
      if (n.cordoned) st.appendChild(el("span", "flag cordoned", "cordoned"));
      if (n.draining) st.appendChild(el("span", "flag draining", "draining"));
      tr.appendChild(st);
      tr.appendChild(el("td", "num", String(n.weight ?? "—")));
      // A slave owns no bucket: a dash, not a zero that reads like an empty server.
      tr.appendChild(el("td", "num", slave ? "—" : String(counts.get(id) || 0)));
      const ttl = el("td", "num ttl");
      renderTtl(ttl, n);
      tr.appendChild(ttl);
      tr.appendChild(el("td", "mono", n.version || "—"));
      rows.push(tr);
    }
    if (!rows.length) {
      const tr = el("tr", "empty");
      const td = el("td", "", "no node is registered");
      td.colSpan = 8;
      tr.appendChild(td);
      rows.push(tr);
    }
    $("nodes").replaceChildren(...rows);
    const servers = ids.length - slaves;
    $("node-summary").textContent = slaves
      ? `${servers} ${servers === 1 ? "server" : "servers"} · ${slaves} ${slaves === 1 ? "slave" : "slaves"}`
      : `${ids.length} registered`;
  }

  function shortTime(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso || "—";
    return d.toLocaleTimeString([], { hour12: false });
  }

  function renderMoves() {
    const rows = [];
    const moves = [...state.moves.values()].sort((a, b) => (a.bucket < b.bucket ? -1 : 1));
    for (const m of moves) {
      const tr = el("tr");
      tr.dataset.bucket = m.bucket;
      tr.appendChild(el("td", "mono", m.bucket));
      for (const node of [m.from, m.to]) {
        const td = el("td", "mono");
        const sw = el("span", "swatch");
        paint(sw, node);
        td.append(sw, " ", node || "—");
        tr.appendChild(td);
      }
      tr.appendChild(el("td", "", shortTime(m.started_at)));
      tr.appendChild(el("td", "num", String(m.move_id ?? "—")));
      tr.appendChild(el("td", "", m.acked ? "yes" : "waiting"));
      rows.push(tr);
    }
    if (!rows.length) {
      const tr = el("tr", "empty");
      const td = el("td", "", "none");
      td.colSpan = 6;
      tr.appendChild(td);
      rows.push(tr);
    }
    $("moves").replaceChildren(...rows);
    $("move-summary").textContent = moves.length ? `${moves.length}` : "";
  }

  function renderEvents() {
    const items = [];
    for (let i = state.events.length - 1; i >= 0; i--) {
      const ev = state.events[i];
      const li = el("li");
      li.dataset.kind = ev.kind || "";
      li.appendChild(el("span", "at", shortTime(ev.at)));
      li.appendChild(el("span", "rev", `r${ev.revision ?? "?"}`));
      const k = el("span", `kind kind-${ev.kind}`, ev.kind || "?");
      li.appendChild(k);
      const text = el("span", "text", ev.text || JSON.stringify(ev));
      text.title = ev.text || "";
      li.appendChild(text);
      items.push(li);
    }
    if (!items.length) items.push(el("li", "empty", "no events yet"));
    $("events").replaceChildren(...items);
  }

  function renderHeader() {
    $("instance").textContent = state.instance || "—";
    const leader = $("leader");
    leader.replaceChildren(state.leader || "none");
    if (state.thisInstanceLeads) leader.appendChild(el("span", "leads", " (this instance)"));
    $("revision").textContent = String(state.revision);
    document.title = `dtable-cluster status · ${state.instance || "…"}`;
    document.body.dataset.leader = state.leader;
    document.body.dataset.instance = state.instance;
  }

  let renderPending = false;
  /** Renders once per frame however many events arrived: a failover is a burst of ~100. */
  function scheduleRender() {
    if (renderPending) return;
    renderPending = true;
    requestAnimationFrame(() => {
      renderPending = false;
      render();
    });
  }

  function render() {
    const counts = bucketCounts();
    renderHeader();
    renderGrid();
    renderLegend(counts);
    renderNodes(counts);
    renderMoves();
    renderEvents();
  }

  // ---- applying the API ----------------------------------------------------------------

  function noteTtl(node) {
    const t = node.lease_ttl_seconds;
    if (typeof t === "number" && t > (state.maxTtl.get(node.node_id) || 0)) {
      state.maxTtl.set(node.node_id, t);
    }
  }

  /** Replaces the whole state with a status document (GET /api/v1/status or a snapshot). */
  function applyStatus(s) {
    state.revision = Number(s.revision) || 0;
    state.leader = s.leader || "";
    state.instance = s.instance || "";
    state.thisInstanceLeads = !!s.this_instance_leads;
    const buckets = Array.from({ length: 256 }, () => ({ node: "", epoch: 0 }));
    state.movingBuckets = new Set();
    for (const b of s.buckets || []) {
      const i = parseInt(b.bucket, 16);
      if (!(i >= 0 && i < 256)) continue;
      buckets[i] = { node: b.node_id || "", epoch: Number(b.epoch) || 0 };
      if (b.moving) state.movingBuckets.add(b.bucket);
    }
    state.buckets = buckets;
    state.nodes = new Map((s.nodes || []).map((n) => [n.node_id, n]));
    for (const id of [...state.maxTtl.keys()]) {
      if (!state.nodes.has(id)) state.maxTtl.delete(id);
    }
    for (const n of state.nodes.values()) noteTtl(n);
    state.moves = new Map((s.moves || []).map((m) => [m.bucket, m]));
    state.events = (s.recent_events || []).slice(-MAX_EVENTS);
  }

  /** Patches the state with one event of the stream. */
  function applyEvent(ev) {
    switch (ev.kind) {
      case "bucket": {
        const i = parseInt(ev.bucket, 16);
        if (i >= 0 && i < 256) {
          state.buckets[i] = { node: ev.to || "", epoch: Number(ev.epoch) || 0 };
        }
        break;
      }
      case "move": {
        const m = ev.move || {};
        const bucket = m.bucket || ev.bucket;
        if (!bucket) break;
        if (ev.phase === "ended") {
          state.moves.delete(bucket);
          state.movingBuckets.delete(bucket);
        } else {
          state.moves.set(bucket, { ...m, bucket, acked: ev.phase === "acked" || !!m.acked });
        }
        break;
      }
      case "node": {
        if (!ev.node_id) break;
        if (ev.change === "left" || !ev.node) {
          state.nodes.delete(ev.node_id);
          state.maxTtl.delete(ev.node_id);
        } else {
          state.nodes.set(ev.node_id, ev.node);
          noteTtl(ev.node);
        }
        break;
      }
      case "leader": {
        state.leader = ev.leader || "";
        state.thisInstanceLeads =
          typeof ev.this_instance_leads === "boolean"
            ? ev.this_instance_leads
            : !!state.leader && state.leader === state.instance;
        break;
      }
      default:
        break;
    }
    if (typeof ev.revision === "number" && ev.revision > state.revision) {
      state.revision = ev.revision;
    }
    state.events.push(ev);
    if (state.events.length > MAX_EVENTS) state.events.splice(0, state.events.length - MAX_EVENTS);
  }

  // ---- the stream and the reconciling re-read ------------------------------------------

  /** A snapshot arrived on the current stream: events may be applied. */
  let live = false;
  let retryMs = RETRY_MIN_MS;
  let retryTimer = null;
  let reconcileTimer = null;
  let fetching = false;
  let streamEvents = 0;

  function setConnection(mode) {
    document.body.dataset.connection = mode;
    const badge = $("conn");
    badge.className = `badge ${mode}`;
    badge.textContent = { live: "live", connecting: "connecting…", disconnected: "disconnected" }[mode];
  }

  async function reconcile() {
    reconcileTimer = null;
    if (fetching) {
      scheduleReconcile();
      return;
    }
    fetching = true;
    try {
      const resp = await fetch(STATUS_URL, { cache: "no-store" });
      if (!resp.ok) return;
      const s = await resp.json();
      // Events that arrived while the request was out may be newer than this answer.
      if (live && (Number(s.revision) || 0) >= state.revision) {
        applyStatus(s);
        render();
      }
    } catch (_) {
      // The stream's error handler reports the outage.
    } finally {
      fetching = false;
    }
  }

  function scheduleReconcile() {
    if (reconcileTimer === null) reconcileTimer = setTimeout(reconcile, RECONCILE_DEBOUNCE_MS);
  }

  function connect() {
    retryTimer = null;
    const es = new EventSource(EVENTS_URL);
    es.onmessage = (msg) => {
      let ev;
      try {
        ev = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      if (ev.kind === "snapshot") {
        applyStatus(ev);
        live = true;
        retryMs = RETRY_MIN_MS;
        setConnection("live");
        render();
        return;
      }
      if (!live) return;
      applyEvent(ev);
      streamEvents++;
      document.body.dataset.streamEvents = String(streamEvents);
      scheduleRender();
      scheduleReconcile();
    };
    es.onerror = () => {
      // Reconnect ourselves: the browser gives up for good on some failures (an HTTP error
      // status, a wrong content type), and a fresh stream starts with a fresh snapshot.
      es.close();
      live = false;
      setConnection("disconnected");
      if (retryTimer === null) {
        retryTimer = setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      }
    };
  }

  function start() {
    buildGrid();
    render();
    connect();
    setInterval(() => {
      if (live) scheduleReconcile();
    }, REFRESH_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
