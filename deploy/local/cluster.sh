#!/usr/bin/env bash
# A local dtable-cluster on 127.0.0.1, without containers: a 3-member etcd cluster, two control
# planes, three stand-in dtable-servers, each following its agent (the agent's local push API,
# a serving lease the server enforces) and sharing one base storage directory, and dtable-proxy
# in front of them (routing 5550, admin 5555). Everything runs in the background with its pid
# file and log under deploy/local/run/; the servers' base files are in run/storage/ and their
# event logs in run/events/.
#
#   cluster.sh up       install etcd/protoc if missing, build, start, wait until all 256 buckets
#                       are placed, print where to look (the status page, `dtablectl status`)
#   cluster.sh status   which processes run, and the bucket counts per node
#   cluster.sh logs     the tail of every log (or: cluster.sh logs NAME [LINES])
#   cluster.sh down     stop everything (agents first: they drain, fence their servers and
#                       revoke their leases; etcd last), remove run/
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
RUN="$HERE/run"
BIN="$ROOT/target/debug"
SELF="$0"
# How long `up` waits for the cluster to come up, and `down` for each group to stop.
UP_TIMEOUT=60
STOP_TIMEOUT=10
# The agents' registration lease: short, so a server whose agent dies loses its buckets within
# seconds.
LEASE_TTL=10
# On SIGTERM an agent drains: its node turns `draining`, the leader hands its buckets to the
# other servers, then the agent fences its server, revokes its lease and exits. When `down`
# stops all agents at once nobody is left to take the buckets, so each one waits out this
# timeout; `down` allows the agents AGENT_STOP_TIMEOUT.
DRAIN_TIMEOUT=10s
AGENT_STOP_TIMEOUT=20
# The proxy's ports: routing and admin.
PROXY_PORT=5550
ADMIN_PORT=5555

# dtablectl against both control planes: the first that answers serves.
CONTROLPLANES="http://127.0.0.1:5580,http://127.0.0.1:15580"

# A base UUID for the examples `up` prints.
EXAMPLE_BASE=4a7f2e3c-1b2d-4c5e-8f90-123456789abc

ETCD_ENDPOINTS="127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
ETCD_PEERS="etcd1=http://127.0.0.1:2380,etcd2=http://127.0.0.1:22380,etcd3=http://127.0.0.1:32380"
export ETCDCTL_API=3

# Every process, in start order. `down` stops them in groups: agents, then the proxy, servers
# and control planes, then the etcd members.
ETCDS=(etcd1 etcd2 etcd3)
CPS=(cp1 cp2)
AGENTS=(agent1 agent2 agent3)
SIMS=(sim1 sim2 sim3)
PROXIES=(proxy)
ALL=("${ETCDS[@]}" "${CPS[@]}" "${AGENTS[@]}" "${SIMS[@]}" "${PROXIES[@]}")

# The ports each process listens on. Agent N's local push API: gRPC (which sim N follows) and
# its HTTP twin (with /metrics and /healthz).
declare -A PORTS=(
  [etcd1]="2379 2380" [etcd2]="22379 22380" [etcd3]="32379 32380"
  [cp1]="5580 5581" [cp2]="15580 15581"
  [agent1]="5570 5571" [agent2]="15570 15571" [agent3]="25570 25571"
  [sim1]="5001" [sim2]="5002" [sim3]="5003"
  [proxy]="$PROXY_PORT $ADMIN_PORT"
)

# Agent N's gRPC port (5570, 15570, 25570); its HTTP twin listens on the next port.
agent_grpc_port() { echo $((($1 - 1) * 10000 + 5570)); }

die() { echo "cluster.sh: $*" >&2; exit 1; }

# The executable a process name runs, so a pid file is trusted only while its pid still runs it.
exe_of() {
  case "$1" in
    etcd*) echo etcd ;;
    cp*) echo dtable-controlplane ;;
    sim*) echo dtable-server-sim ;;
    proxy) echo dtable-proxy ;;
    agent*) echo dtable-agent ;;
  esac
}

# Sets CMD to the command line of process NAME.
command_of() {
  local name="$1" n="${1//[!0-9]/}"
  case "$name" in
    etcd*)
      local client=$((n == 1 ? 2379 : n * 10000 + 2379)) peer=$((n == 1 ? 2380 : n * 10000 + 2380))
      CMD=(etcd --name "$name" --data-dir "$RUN/$name.data"
        --listen-client-urls "http://127.0.0.1:$client"
        --advertise-client-urls "http://127.0.0.1:$client"
        --listen-peer-urls "http://127.0.0.1:$peer"
        --initial-advertise-peer-urls "http://127.0.0.1:$peer"
        --initial-cluster "$ETCD_PEERS" --initial-cluster-token dtable-local
        --initial-cluster-state new
        --auto-compaction-mode=periodic --auto-compaction-retention=1h
        --logger=zap --log-outputs=stderr)
      ;;
    cp*)
      local base=$((n == 1 ? 0 : 10000))
      CMD=("$BIN/dtable-controlplane" --etcd "$ETCD_ENDPOINTS" --name "$name"
        --grpc-listen "127.0.0.1:$((base + 5580))" --http-listen "127.0.0.1:$((base + 5581))")
      ;;
    sim*)
      # --agent: the sim serves only the buckets its agent's stream gives it, while the serving
      # lease on that stream lasts, and answers 409 with X-Dtable-Not-Owner: 1 for the others.
      # Bases live in the shared storage directory, every save stamped with the bucket epoch.
      CMD=("$BIN/dtable-server-sim" --listen "127.0.0.1:500$n" --node-id "dtable-server-$n"
        --agent "http://127.0.0.1:$(agent_grpc_port "$n")"
        --storage-dir "$RUN/storage" --event-log "$RUN/events/dtable-server-$n.jsonl")
      ;;
    proxy)
      # A short shutdown grace, so `down` (which waits STOP_TIMEOUT per group) sees it exit.
      CMD=("$BIN/dtable-proxy" --etcd "$ETCD_ENDPOINTS"
        --listen "127.0.0.1:$PROXY_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT"
        --shutdown-grace 5s)
      ;;
    agent*)
      # The agent probes http://127.0.0.1:500N/ping/ and registers the server only while it
      # answers.
      local grpc
      grpc="$(agent_grpc_port "$n")"
      CMD=("$BIN/dtable-agent" --etcd "$ETCD_ENDPOINTS" --node-id "dtable-server-$n"
        --node-url "http://127.0.0.1:500$n/" --local-node-url "http://127.0.0.1:500$n/"
        --lease-ttl "$LEASE_TTL" --drain-timeout "$DRAIN_TIMEOUT"
        --grpc-listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$((grpc + 1))")
      ;;
  esac
}

# Prints the pid of NAME if it is running what this script started, else fails.
pid_of() {
  local file="$RUN/$1.pid" pid exe
  [[ -f $file ]] || return 1
  pid="$(<"$file")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
  # A rebuild replaces the binary under a running process: the link then ends in " (deleted)".
  [[ ${exe% (deleted)} == */"$(exe_of "$1")" ]] || return 1
  echo "$pid"
}

is_up() { pid_of "$1" >/dev/null; }

# Whether PID runs (an exited process that is not yet reaped does not).
running() { readlink "/proc/$1/exe" >/dev/null 2>&1; }

# Every process carrying this run directory's marker in its environment: what `up` started,
# even if its pid file is gone.
marked_pids() {
  local env pid
  for env in /proc/[0-9]*/environ; do
    pid="${env#/proc/}"; pid="${pid%/environ}"
    if [[ $pid != "$$" ]] && grep -qzxF "DTABLE_LOCAL_RUN=$RUN" "$env" 2>/dev/null; then
      echo "$pid"
    fi
  done
}

start() {
  local name="$1"
  command_of "$name"
  # setsid: the process outlives this shell and gets no signal from its terminal. The marker
  # in its environment lets `down` find it even without its pid file.
  DTABLE_LOCAL_RUN="$RUN" setsid "${CMD[@]}" </dev/null >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

etcdctl_() { etcdctl --endpoints "$ETCD_ENDPOINTS" --dial-timeout=2s --command-timeout=3s "$@"; }

# "count node_id" lines, one per owner, from the assign-* keys.
bucket_counts() {
  etcdctl_ get --prefix assign- --print-value-only 2>/dev/null | grep -v '^$' | sort | uniq -c || true
}

registered_nodes() {
  etcdctl_ get --prefix dtable-server- --keys-only 2>/dev/null | grep -v '^$' || true
}

print_buckets() {
  local counts nodes total=0 count node mark
  counts="$(bucket_counts)"
  nodes="$(registered_nodes)"
  if [[ -z $counts ]]; then
    echo "  (no bucket assigned)"
    return
  fi
  while read -r count node; do
    total=$((total + count))
    if grep -qxF "$node" <<<"$nodes"; then mark=""; else mark="  (not registered)"; fi
    printf '  %4d  %s%s\n' "$count" "$node" "$mark"
  done <<<"$counts"
  ((total == 256)) || printf '  %4d  unassigned\n' $((256 - total))
}

# The name of the leading control plane, from cp1's or cp2's API.
leader() {
  local port body
  for port in 5581 15581; do
    body="$(curl -fsS --max-time 2 "http://127.0.0.1:$port/api/v1/leader" 2>/dev/null)" || continue
    sed -n 's/.*"leader":"\([^"]*\)".*/\1/p' <<<"$body"
    return
  done
}

# Which process holds a port, if ss can tell.
holder_of() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:(("[^"]*",pid=[0-9]*' | head -1 |
    sed 's/users:(("\([^"]*\)",pid=\([0-9]*\)/ by \1 (pid \2)/'
}

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

tail_log() {
  echo "--- $RUN/$1.log (last ${2:-20} lines) ---"
  tail -n "${2:-20}" "$RUN/$1.log" 2>/dev/null || echo "(no log)"
}

# Fails `up`: shows the logs that explain it, stops what was started, keeps the logs.
fail_up() {
  local why="$1" name
  shift
  echo "cluster.sh: $why" >&2
  for name in "$@"; do tail_log "$name" 20 >&2; done
  if etcd_healthy; then
    echo "buckets per node so far:" >&2
    print_buckets >&2
  fi
  echo "stopping what was started; the logs stay in $RUN/ until 'up' or 'down'" >&2
  stop_all >/dev/null
  exit 1
}

# Waits until CHECK succeeds, while every process in WATCHED keeps running. A process that
# exits fails `up` with its log; a timeout fails it with the logs of SHOWN (a space-separated
# list; default: WATCHED).
#   wait_for "what" CHECK "SHOWN" WATCHED...
wait_for() {
  local what="$1" check="$2" shown="$3" name
  shift 3
  while ! $check; do
    for name in "$@"; do
      is_up "$name" || fail_up "$name exited while waiting for $what" "$name"
    done
    # shellcheck disable=SC2086
    ((SECONDS < deadline)) || fail_up "timed out after ${UP_TIMEOUT}s waiting for $what" ${shown:-"$@"}
    sleep 0.5
  done
}

etcd_healthy() { etcdctl_ endpoint health >/dev/null 2>&1; }

http_ok() { curl -fsS --max-time 2 "$1" 2>/dev/null | grep -q "$2"; }

sims_answer() {
  local n
  for n in 1 2 3; do http_ok "http://127.0.0.1:500$n/ping/" pong || return 1; done
}

cps_healthy() {
  http_ok http://127.0.0.1:5581/healthz ok && http_ok http://127.0.0.1:15581/healthz ok
}

agents_listening() {
  local n
  for n in 1 2 3; do
    http_ok "http://127.0.0.1:$(($(agent_grpc_port "$n") + 1))/healthz" ok || return 1
  done
}

proxy_ready() { http_ok "http://127.0.0.1:$ADMIN_PORT/readyz" ready; }

# Ready: the 256 buckets are all placed, over exactly the three registered servers, balanced.
placed() {
  local counts
  counts="$(bucket_counts)"
  [[ "$(registered_nodes | wc -l)" -eq 3 ]] || return 1
  [[ "$(wc -l <<<"$counts")" -eq 3 ]] || return 1
  awk '{ t += $1; if (min == "" || $1 < min) min = $1; if ($1 > max) max = $1 }
       END { exit !(t == 256 && max - min <= 1) }' <<<"$counts"
}

cmd_up() {
  local up=() name port
  for name in "${ALL[@]}"; do is_up "$name" && up+=("$name"); done
  if ((${#up[@]} == ${#ALL[@]})); then
    echo "the local cluster is already up ($RUN)"
    echo
    cmd_status
    return
  fi
  if ((${#up[@]} > 0)); then
    die "the local cluster is partly up (running: ${up[*]}); run '$SELF down', then '$SELF up'"
  fi
  [[ -z "$(marked_pids)" ]] || die "processes of an earlier run are still alive; run '$SELF down' first"

  for name in "${ALL[@]}"; do
    for port in ${PORTS[$name]:-}; do
      if port_taken "$port"; then
        die "port $port (for $name) is already in use$(holder_of "$port"); if it is an earlier local cluster, run '$SELF down', else stop what holds it"
      fi
    done
  done

  "$ROOT/scripts/install-deps.sh"
  if [[ ${DTABLE_LOCAL_SKIP_BUILD:-0} == 1 ]]; then
    # For the end-to-end test: the binaries are already built, and rebuilding them would
    # replace files other tests are running.
    for name in dtable-agent dtable-controlplane dtable-proxy dtable-server-sim dtablectl; do
      [[ -x $BIN/$name ]] || die "$BIN/$name is missing: run 'cargo build --workspace --bins' first"
    done
  else
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup.rs)"
    echo "building (cargo build --workspace --bins)"
    (cd "$ROOT" && cargo build --workspace --bins) || die "the build failed (cargo's output above); nothing was started"
  fi

  rm -rf "$RUN"
  mkdir -p "$RUN/storage" "$RUN/events"
  trap 'echo >&2; fail_up "interrupted"' INT TERM
  deadline=$((SECONDS + UP_TIMEOUT))
  echo "starting etcd (3 members)"
  for name in "${ETCDS[@]}"; do start "$name"; done
  wait_for "etcd to be healthy" etcd_healthy "" "${ETCDS[@]}"
  # The agents first: each keeps its server fenced (and unregistered) until the server has
  # answered two health probes in a row.
  echo "starting 2 control planes and 3 agents (lease TTL ${LEASE_TTL}s, drain timeout $DRAIN_TIMEOUT)"
  for name in "${CPS[@]}" "${AGENTS[@]}"; do start "$name"; done
  wait_for "the control planes' /healthz" cps_healthy "" "${CPS[@]}"
  wait_for "the agents' local APIs" agents_listening "" "${AGENTS[@]}"
  echo "starting 3 servers (each following its agent; storage $RUN/storage)"
  for name in "${SIMS[@]}"; do start "$name"; done
  wait_for "the servers to answer /ping/" sims_answer "" "${SIMS[@]}"
  echo "starting the proxy (routing :$PROXY_PORT, admin :$ADMIN_PORT)"
  start proxy
  wait_for "the proxy's /readyz" proxy_ready "" proxy
  wait_for "all 256 buckets to be placed over the 3 servers" placed "${CPS[*]} ${AGENTS[*]}" \
    "${ETCDS[@]}" "${CPS[@]}" "${SIMS[@]}" proxy "${AGENTS[@]}"
  trap - INT TERM

  cat <<EOF

dtable-cluster is up on 127.0.0.1 (leader: $(leader)).

  status page     http://127.0.0.1:5581/   (cp2: http://127.0.0.1:15581/)
  dtablectl       $BIN/dtablectl --controlplane $CONTROLPLANES status
                  (also: nodes, lookup <uuid>, moves, watch, rebalance [--dry-run],
                   cordon|drain|uncordon <node>; --json on each)
  proxy           routing http://127.0.0.1:$PROXY_PORT   admin http://127.0.0.1:$ADMIN_PORT
                  curl -si http://127.0.0.1:$PROXY_PORT/dtables/$EXAMPLE_BASE | grep -i x-dtable-node
                  curl -s -X POST http://127.0.0.1:$PROXY_PORT/api/v1/dtables/$EXAMPLE_BASE/rows/ -d '{"row":{"name":"x"}}'
                  curl -s http://127.0.0.1:$PROXY_PORT/api/v1/dtables/$EXAMPLE_BASE/rows/
                  curl -X POST http://127.0.0.1:$ADMIN_PORT/rebalance/
                  curl http://127.0.0.1:$ADMIN_PORT/api/v1/lookup/$EXAMPLE_BASE
                  curl http://127.0.0.1:$ADMIN_PORT/metrics      (and /healthz, /readyz)
  control planes  cp1  HTTP http://127.0.0.1:5581   gRPC 127.0.0.1:5580
                  cp2  HTTP http://127.0.0.1:15581  gRPC 127.0.0.1:15580
  HTTP API        curl http://127.0.0.1:5581/api/v1/nodes
                  curl http://127.0.0.1:5581/api/v1/assignment
                  curl http://127.0.0.1:5581/api/v1/lookup/<base uuid>
                  curl http://127.0.0.1:5581/api/v1/leader
                  curl http://127.0.0.1:5581/metrics      (and /healthz)
  servers         dtable-server-1..3 on http://127.0.0.1:5001/ .. :5003/ (GET /ping/, /_sim/state)
                  bases in $RUN/storage/, events in $RUN/events/
  agents          agent1 gRPC 127.0.0.1:5570   HTTP http://127.0.0.1:5571  (agent2: 1557x, agent3: 2557x)
                  curl http://127.0.0.1:5571/v1/assignment
                  curl http://127.0.0.1:5571/metrics      (and /healthz)
  etcd            $ETCD_ENDPOINTS
                  ETCDCTL_API=3 etcdctl --endpoints $ETCD_ENDPOINTS get --prefix assign-
  logs            $RUN/*.log   ($SELF logs)

$ dtablectl status
EOF
  "$BIN/dtablectl" --controlplane "$CONTROLPLANES" status || echo "(dtablectl status failed; see above)"
  echo
  echo "stop it with: $SELF down"
}

# SIGTERM to PIDS, all at once, then waits up to TIMEOUT seconds for them to exit.
#   stop_pids TIMEOUT PIDS...
stop_pids() {
  local timeout="$1" pid pids=() t alive
  shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null && pids+=("$pid"); done
  t=$((SECONDS + timeout))
  while ((${#pids[@]} > 0 && SECONDS < t)); do
    alive=()
    for pid in "${pids[@]}"; do running "$pid" && alive+=("$pid"); done
    pids=("${alive[@]}")
    ((${#pids[@]} == 0)) || sleep 0.2
  done
}

# The pids of the processes named, from their pid files.
pids_of() {
  local name pid
  for name in "$@"; do pid_of "$name" || true; done
}

# The marked processes running executable EXE, for when a pid file is gone.
marked_running() {
  local pid
  for pid in $(marked_pids); do
    [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */"$1"* ]] && echo "$pid"
  done
  return 0
}

# Stops every process this run directory started, agents first so they fence their servers
# and revoke their leases, etcd last; SIGKILL for what is still running after that. True when
# none is left.
stop_all() {
  local pid
  # shellcheck disable=SC2046
  {
    # All agents at once: each drains, but with every node draining there is nowhere to hand
    # buckets to, so each waits out --drain-timeout, fences its server and revokes.
    stop_pids "$AGENT_STOP_TIMEOUT" $(pids_of "${AGENTS[@]}"; marked_running dtable-agent)
    stop_pids "$STOP_TIMEOUT" $(pids_of "${PROXIES[@]}" "${SIMS[@]}" "${CPS[@]}"
      marked_running dtable-proxy; marked_running dtable-server-sim
      marked_running dtable-controlplane)
    # One member at a time: members stopped together each wait out a leadership transfer.
    stop_pids "$STOP_TIMEOUT" $(pids_of etcd3)
    stop_pids "$STOP_TIMEOUT" $(pids_of etcd2)
    stop_pids "$STOP_TIMEOUT" $(pids_of etcd1; marked_running etcd)
  }
  for pid in $(marked_pids); do
    echo "killing pid $pid ($(readlink "/proc/$pid/exe" 2>/dev/null || echo gone)), still running after SIGTERM" >&2
    kill -KILL "$pid" 2>/dev/null || true
  done
  sleep 0.2
  [[ -z "$(marked_pids)" ]]
}

cmd_down() {
  if [[ ! -d $RUN && -z "$(marked_pids)" ]]; then
    echo "the local cluster is not running"
    return
  fi
  echo "stopping the agents (each drains for up to $DRAIN_TIMEOUT, fences its server and revokes its lease), then the proxy, servers and control planes, then etcd"
  stop_all || die "some processes did not stop: $(marked_pids | tr '\n' ' ')"
  rm -rf "$RUN"
  echo "stopped; removed $RUN"
}

cmd_status() {
  local name pid running=0 leader_name line
  if [[ ! -d $RUN ]]; then
    echo "the local cluster is not running (start it with: $SELF up)"
    return 3
  fi
  leader_name="$(leader || true)"
  echo "processes:"
  for name in "${ALL[@]}"; do
    if pid="$(pid_of "$name")"; then
      running=$((running + 1))
      line="$(printf '  %-7s up    pid %-8s %s' "$name" "$pid" "${PORTS[$name]:+ports ${PORTS[$name]}}")"
      [[ $name == "$leader_name" ]] && line+="  (leader)"
      echo "${line%"${line##*[! ]}"}"
    else
      printf '  %-7s DOWN\n' "$name"
    fi
  done
  echo "buckets per node:"
  if is_up etcd1 || is_up etcd2 || is_up etcd3; then print_buckets; else echo "  (etcd is down)"; fi
  if ((running == ${#ALL[@]})); then return 0; fi
  ((running > 0)) && return 1
  return 3
}

cmd_logs() {
  local name
  if (($# > 0)); then
    [[ -f $RUN/$1.log ]] || die "no log named $1 in $RUN (names: ${ALL[*]})"
    tail_log "$1" "${2:-100}"
    return
  fi
  [[ -d $RUN ]] || die "no logs: the local cluster is not running"
  for name in "${ALL[@]}"; do tail_log "$name" 20; echo; done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  logs) shift; cmd_logs "$@" ;;
  *)
    echo "usage: $SELF up | down | status | logs [NAME [LINES]]" >&2
    exit 64
    ;;
esac
