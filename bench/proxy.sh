#!/usr/bin/env bash
# Proxy throughput benchmark (issue 3): dtable-proxy against nginx (and HAProxy, when it is
# installed) in front of the same three trivial backends, with the same 256-bucket routing,
# the same request mix and the same wrk settings. Everything runs on loopback and is bounded
# in time; everything started here is stopped on exit. See bench/README.md, "Proxy throughput".
#
# Knobs (environment):
#   ROUNDS=3          measured rounds; each round runs every target once, in rotated order
#   DURATION=10       seconds per measured run;  WARMUP=5  seconds per target before round 1
#   THREADS=2 CONNS=64  wrk -t / -c
#   PIN=1             pin with taskset: wrk on WRK_CPUS, every server process on SERVER_CPUS
#   WRK_CPUS=1 SERVER_CPUS=0
#   TARGETS="direct dtable-proxy nginx haproxy"   (haproxy is dropped when not installed)
#   SKIP_BUILD=1      use the binaries in target/release as they are
#   SKIP_INSTALL=1    never call apt-get;  INSTALL_HAPROXY=0  do not try to install haproxy
#   KEEP=DIR          copy configs, logs and raw wrk outputs to DIR at the end
#   BASE_BIN=PATH     another dtable-proxy build, run as target "base" beside the others (for
#                     comparing two builds in one session; add "base" to TARGETS)
#   PROFILE=1         after the rounds, one more (uncounted) run per proxy under `perf record`;
#                     prints each one's hottest symbols (needs perf; keep perf.data with KEEP)
#   MAX_SECONDS=900   the whole script gives up after this long
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-5}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
PIN=${PIN:-1}
WRK_CPUS=${WRK_CPUS:-1}
SERVER_CPUS=${SERVER_CPUS:-0}
TARGETS=${TARGETS:-direct dtable-proxy nginx haproxy}
MAX_SECONDS=${MAX_SECONDS:-900}
NODES=3
UUIDS=1000

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_BIN=$REPO/target/release/dtable-proxy
BENCH_BIN=$REPO/target/release/dtable-bench

log() { printf '[proxy.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- tools
install_tools() {
    local need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
    command -v etcd >/dev/null || [[ -x /usr/bin/etcd ]] || need+=(etcd-server)
    command -v etcdctl >/dev/null || need+=(etcd-client)
    command -v curl >/dev/null || need+=(curl)
    command -v taskset >/dev/null || need+=(util-linux)
    if ((${#need[@]})); then
        [[ ${SKIP_INSTALL:-0} == 1 ]] && die "missing: ${need[*]} (apt-get install -y ${need[*]})"
        log "installing ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    if ! command -v haproxy >/dev/null && [[ ! -x /usr/sbin/haproxy ]] &&
        [[ ${SKIP_INSTALL:-0} != 1 && ${INSTALL_HAPROXY:-1} == 1 ]]; then
        log "installing haproxy (optional)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null ||
            log "haproxy could not be installed; it is left out"
    fi
}
install_tools
PATH=$PATH:/usr/sbin
HAVE_HAPROXY=0
command -v haproxy >/dev/null && HAVE_HAPROXY=1

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    (cd "$REPO" && cargo build --release -q -p dtable-proxy -p dtable-bench)
fi
[[ -x $PROXY_BIN && -x $BENCH_BIN ]] || die "release binaries missing; run without SKIP_BUILD"

# ---------------------------------------------------------------- processes and cleanup
WORK=$(mktemp -d /tmp/dtable-proxy-bench.XXXXXX)
PIDS=()
cleanup() {
    local status=$? pid i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ -n ${KEEP:-} ]]; then
        mkdir -p "$KEEP" && cp -r "$WORK"/. "$KEEP"/ && rm -rf "$KEEP/etcd" && log "kept outputs in $KEEP"
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The whole run is bounded: a watchdog ends it after MAX_SECONDS.
(
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    sleep "$MAX_SECONDS" &
    nap=$!
    wait "$nap"
    log "giving up after ${MAX_SECONDS}s"
    kill -TERM $$
) &
PIDS+=($!)

# Command prefixes that pin a process (taskset execs it, so $! is the process itself).
ON_SERVER_CPUS=()
ON_WRK_CPUS=()
if [[ $PIN == 1 ]]; then
    ON_SERVER_CPUS=(taskset -c "$SERVER_CPUS")
    ON_WRK_CPUS=(taskset -c "$WRK_CPUS")
fi

# Number of CPUs in a taskset list like "0" or "0-1,3".
count_cpus() {
    local n=0 part
    IFS=, read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then n=$((n + ${part#*-} - ${part%-*} + 1)); else n=$((n + 1)); fi
    done
    echo "$n"
}
if [[ $PIN == 1 ]]; then SERVER_NCPU=$(count_cpus "$SERVER_CPUS"); else SERVER_NCPU=$(nproc); fi

# free_port VAR: a loopback TCP port nobody listens on, not handed out before.
USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        [[ -z $(ss -Htln "sport = :$p") ]] || continue
        USED_PORTS+="$p "
        printf -v "$1" %s "$p"
        return
    done
}

# wait_until PID SECONDS WHAT CMD...: polls CMD every 0.1 s while process PID lives.
wait_until() {
    local pid=$1 limit=$2 what=$3
    shift 3
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || die "$what exited; its log is in the temp dir (run with KEEP=DIR)"
        ((SECONDS < deadline)) || die "timed out after ${limit}s waiting for $what"
        sleep 0.1
    done
}

# ---------------------------------------------------------------- etcd
free_port ETCD_PORT
free_port PEER_PORT
ETCD_URL=http://127.0.0.1:$ETCD_PORT
"${ON_SERVER_CPUS[@]}" etcd --name default --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$PEER_PORT" \
    --auto-compaction-mode=periodic --auto-compaction-retention=1h \
    >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
PIDS+=("$ETCD_PID")
export ETCDCTL_API=3
etcdctl_() { etcdctl --endpoints="$ETCD_URL" --command-timeout=5s "$@"; }
wait_until "$ETCD_PID" 20 "etcd on $ETCD_URL" etcdctl_ endpoint health

# ---------------------------------------------------------------- backends
RESP_PIDS=()
RESP_ADDRS=()
for ((i = 0; i < NODES; i++)); do
    "${ON_SERVER_CPUS[@]}" "$BENCH_BIN" responder --listen 127.0.0.1:0 --node-id "dtable-server-bench-$i" \
        >"$WORK/responder-$i.out" 2>"$WORK/responder-$i.log" &
    PIDS+=($!)
    RESP_PIDS+=($!)
    wait_until "$!" 10 "responder $i" test -s "$WORK/responder-$i.out"
    RESP_ADDRS+=("$(head -n1 "$WORK/responder-$i.out")")
done
log "responders: ${RESP_ADDRS[*]}"

# Node records, then the 256 assignments, round robin, in two transactions of 128 puts
# (etcd's default --max-txn-ops).
for ((i = 0; i < NODES; i++)); do
    id=dtable-server-bench-$i
    etcdctl_ put "$id" "{\"node_id\":\"$id\",\"node_url\":\"http://${RESP_ADDRS[i]}/\",\"local_node_url\":\"http://${RESP_ADDRS[i]}/\",\"role\":\"server\",\"state\":\"active\",\"weight\":1}" >/dev/null
done
for half in 0 1; do
    {
        echo
        for ((b = half * 128; b < half * 128 + 128; b++)); do
            printf 'put assign-%02x "dtable-server-bench-%d"\n' "$b" $((b % NODES))
        done
        echo
        echo
    } | etcdctl_ txn >/dev/null
done
n=$(etcdctl_ get --prefix assign- --keys-only | grep -c .)
[[ $n == 256 ]] || die "expected 256 assign- keys in etcd, found $n"

# ---------------------------------------------------------------- the proxies
# start_dtable_proxy NAME BIN PORT ADMIN_PORT: starts BIN with flag defaults on those ports,
# logging to NAME.log, waits for /readyz, and sets STARTED_PID.
start_dtable_proxy() {
    local name=$1 bin=$2 port=$3 admin=$4
    RUST_LOG=${RUST_LOG:-warn} "${ON_SERVER_CPUS[@]}" "$bin" --etcd "127.0.0.1:$ETCD_PORT" \
        --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
    wait_until "$STARTED_PID" 20 "$name /readyz" curl -sf "http://127.0.0.1:$admin/readyz"
}
free_port PROXY_PORT
free_port ADMIN_PORT
start_dtable_proxy dtable-proxy "$PROXY_BIN" "$PROXY_PORT" "$ADMIN_PORT"
PROXY_PID=$STARTED_PID

BASE_PID=
if [[ -n ${BASE_BIN:-} ]]; then
    [[ -x $BASE_BIN ]] || die "BASE_BIN=$BASE_BIN is not an executable"
    free_port BASE_PORT
    free_port BASE_ADMIN_PORT
    start_dtable_proxy base "$BASE_BIN" "$BASE_PORT" "$BASE_ADMIN_PORT"
    BASE_PID=$STARTED_PID
fi

free_port NGINX_PORT
mkdir -p "$WORK/nginx"
"$REPO/bench/nginx-conf.sh" "$WORK/nginx" "$NGINX_PORT" "$SERVER_NCPU" on "${RESP_ADDRS[@]}" >"$WORK/nginx/nginx.conf"
nginx -t -q -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf"
"${ON_SERVER_CPUS[@]}" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_until "$NGINX_PID" 10 "nginx" curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/"

HAPROXY_PID=
if [[ $HAVE_HAPROXY == 1 && " $TARGETS " == *" haproxy "* ]]; then
    free_port HAPROXY_PORT
    mkdir -p "$WORK/haproxy"
    for ((b = 0; b < 256; b++)); do printf '%02x s%d\n' "$b" $((b % NODES)); done >"$WORK/haproxy/buckets.map"
    {
        cat <<EOF
# Generated by bench/proxy.sh: the same 256-bucket routing as dtable-proxy.
global
    nbthread $SERVER_NCPU
    maxconn 4096
defaults
    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
frontend routing
    bind 127.0.0.1:$HAPROXY_PORT
    http-request set-var(txn.bucket) path,bytes(9,2),lower if { path_beg /dtables/ }
    http-request set-var(txn.bucket) path,bytes(16,2),lower if { path_beg /api/v1/dtables/ }
    http-request set-header X-Forwarded-Proto http
    use_backend %[var(txn.bucket),map($WORK/haproxy/buckets.map,s0)]
    default_backend s0
EOF
        for ((i = 0; i < NODES; i++)); do
            printf 'backend s%d\n    server r%d %s\n' "$i" "$i" "${RESP_ADDRS[i]}"
        done
    } >"$WORK/haproxy/haproxy.cfg"
    haproxy -q -c -f "$WORK/haproxy/haproxy.cfg"
    "${ON_SERVER_CPUS[@]}" haproxy -db -f "$WORK/haproxy/haproxy.cfg" >"$WORK/haproxy/haproxy.log" 2>&1 &
    HAPROXY_PID=$!
    PIDS+=("$HAPROXY_PID")
    wait_until "$HAPROXY_PID" 10 "haproxy" curl -s -o /dev/null "http://127.0.0.1:$HAPROXY_PORT/"
fi

# Targets in the order asked for, each with its URL.
declare -A URL=(
    [direct]=http://${RESP_ADDRS[0]}
    [dtable-proxy]=http://127.0.0.1:$PROXY_PORT
    [nginx]=http://127.0.0.1:$NGINX_PORT
)
[[ -n $HAPROXY_PID ]] && URL[haproxy]=http://127.0.0.1:$HAPROXY_PORT
[[ -n $BASE_PID ]] && URL[base]=http://127.0.0.1:$BASE_PORT
RUN_TARGETS=()
for t in $TARGETS; do
    if [[ -n ${URL[$t]:-} ]]; then RUN_TARGETS+=("$t"); else log "target $t not available; left out"; fi
done
((${#RUN_TARGETS[@]})) || die "no target to run"

# ---------------------------------------------------------------- the request mix
# 1,000 pseudo-random base UUIDs from a fixed seed, so every run and every target sees the
# same requests: half as 32 hex chars, half dashed; half /dtables/<uuid>, half
# /api/v1/dtables/<uuid>/rows/.
awk -v n="$UUIDS" -v nodes="$NODES" 'BEGIN {
    srand(20261125); hex = "0123456789abcdef"
    for (i = 0; i < n; i++) {
        u = ""; for (k = 0; k < 32; k++) u = u substr(hex, int(rand() * 16) + 1, 1)
        bucket = (index(hex, substr(u, 1, 1)) - 1) * 16 + index(hex, substr(u, 2, 1)) - 1
        if (i % 2) u = substr(u,1,8) "-" substr(u,9,4) "-" substr(u,13,4) "-" substr(u,17,4) "-" substr(u,21,12)
        path = (int(i / 2) % 2) ? "/api/v1/dtables/" u "/rows/" : "/dtables/" u
        printf "%s dtable-server-bench-%d\n", path, bucket % nodes
    }
}' >"$WORK/paths.txt"
{
    echo "-- Generated by bench/proxy.sh: every target gets the same $UUIDS paths, in the same order."
    echo "local paths = {"
    awk '{ printf "  \"%s\",\n", $1 }' "$WORK/paths.txt"
    cat <<'EOF'
}
local reqs = {}
local i = 0
local threads = 0
function setup(thread)
  thread:set("offset", threads * 500)
  threads = threads + 1
end
function init(args)
  for k, p in ipairs(paths) do reqs[k] = wrk.format("GET", p) end
  i = offset or 0
end
function request()
  i = i % #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d non2xx=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
EOF
} >"$WORK/mix.lua"

# Routing check: every one of the 1,000 paths, through every target but "direct", must reach
# the node its bucket is assigned to.
check_routing() {
    local t=$1 got
    got=$(awk -v base="${URL[$t]}" '{ printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", base, $1 }' "$WORK/paths.txt" |
        curl -s --config - -w '%header{x-dtable-node}\n')
    if ! diff -q <(awk '{ print $2 }' "$WORK/paths.txt") <(printf '%s\n' "$got") >/dev/null; then
        die "$t routes some requests to the wrong node (see the check in bench/proxy.sh)"
    fi
}
for t in "${RUN_TARGETS[@]}"; do
    [[ $t == direct ]] || check_routing "$t"
done
log "routing checked: all $UUIDS paths reach their bucket's node through ${RUN_TARGETS[*]}"

# ---------------------------------------------------------------- measuring
CLK_TCK=$(getconf CLK_TCK)

# The processes of a target's proxy, one a line (nginx: master and workers); none for "direct".
proxy_pids() {
    case $1 in
    dtable-proxy) echo "$PROXY_PID" ;;
    base) echo "$BASE_PID" ;;
    nginx)
        echo "$NGINX_PID"
        pgrep -P "$NGINX_PID" || true
        ;;
    haproxy) echo "$HAPROXY_PID" ;;
    esac
}
# utime + stime in clock ticks, summed over the pids given (USER_ONLY=1: utime only).
cpu_ticks() {
    local pid total=0 fields
    for pid in "$@"; do
        fields=$(sed 's/.*) //' "/proc/$pid/stat")
        # After the comm field: state is field 1, utime field 12, stime field 13.
        total=$((total + $(awk -v u="${USER_ONLY:-0}" '{ print $12 + (u ? 0 : $13) }' <<<"$fields")))
    done
    echo "$total"
}
# Peak RSS (VmHWM) in KiB, summed over the pids given.
peak_rss_kib() {
    local pid total=0
    for pid in "$@"; do
        total=$((total + $(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")))
    done
    echo "$total"
}

# run_wrk TARGET SECONDS OUT: one bounded wrk run.
run_wrk() {
    "${ON_WRK_CPUS[@]}" timeout $(($2 + 30)) wrk -t"$THREADS" -c"$CONNS" -d"$2s" --latency \
        -s "$WORK/mix.lua" "${URL[$1]}" >"$3" 2>&1 || die "wrk against $1 failed: $(tail -n3 "$3")"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
declare -A PEAK_RSS
measure() {
    local t=$1 round=$2 out pids=() before=0 after=0 ub=0 ua=0 rb ra line requests rps p50 p99 errs non2xx
    out=$WORK/wrk-$t-$round.txt
    mapfile -t pids < <(proxy_pids "$t")
    ((${#pids[@]})) && before=$(cpu_ticks "${pids[@]}") && ub=$(USER_ONLY=1 cpu_ticks "${pids[@]}")
    rb=$(cpu_ticks "${RESP_PIDS[@]}")
    run_wrk "$t" "$DURATION" "$out"
    ((${#pids[@]})) && after=$(cpu_ticks "${pids[@]}") && ua=$(USER_ONLY=1 cpu_ticks "${pids[@]}")
    ra=$(cpu_ticks "${RESP_PIDS[@]}")
    line=$(grep '^RESULT' "$out") || die "no result from wrk against $t"
    read -r requests rps p50 p99 errs non2xx < <(awk '{
        for (f = 2; f <= NF; f++) { split($f, kv, "="); v[kv[1]] = kv[2] }
        printf "%d %.1f %.3f %.3f %d %d\n", v["requests"], v["requests"] / (v["duration_us"] / 1e6),
            v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"], v["non2xx"]
    }' <<<"$line")
    local cpu=- cpu_us=- user_us=- backend_cpu
    if ((${#pids[@]})); then
        cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
        cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
        user_us=$(awk -v t=$((ua - ub)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.1f", t / hz / n * 1e6 }')
        PEAK_RSS[$t]=$(peak_rss_kib "${pids[@]}")
    fi
    backend_cpu=$(awk -v t=$((ra - rb)) -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", t / hz }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$round" "$rps" "$p50" "$p99" \
        "$cpu" "$cpu_us" "$backend_cpu" "$errs" "$non2xx" "$user_us" >>"$RESULTS"
    log "$(printf 'round %s %-12s %9s req/s  p50 %7s ms  p99 %7s ms  proxy CPU %5s s  backends CPU %5s s  errors %s non-2xx %s' \
        "$round" "$t" "$rps" "$p50" "$p99" "$cpu" "$backend_cpu" "$errs" "$non2xx")"
}

if [[ $PIN == 1 ]]; then
    LAYOUT="pinned: wrk on CPU $WRK_CPUS; responders, etcd and the proxy under test on CPU $SERVER_CPUS"
else
    LAYOUT="not pinned"
fi
log "layout: $LAYOUT"
log "dtable-proxy threads: $(find "/proc/$PROXY_PID/task" -mindepth 1 -maxdepth 1 | wc -l); nginx workers: $SERVER_NCPU"
log "warm-up: ${WARMUP}s per target"
for t in "${RUN_TARGETS[@]}"; do run_wrk "$t" "$WARMUP" "$WORK/wrk-$t-warmup.txt"; done

# Rounds alternate the targets; each round starts one target later, so no target always
# runs right after the same other one.
n=${#RUN_TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        measure "${RUN_TARGETS[(k + r - 1) % n]}" "$r"
    done
done

# ---------------------------------------------------------------- report
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
column_of() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t && $c != "-" { print $c }' "$RESULTS" | median; }
sum_of() { awk -F'\t' -v t="$1" -v c="$2" '$1 == t { s += $c } END { print s + 0 }' "$RESULTS"; }

declare -A MED_RPS MED_P99
echo
echo "dtable-proxy benchmark (issue 3) — $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $LAYOUT"
echo "wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, $UUIDS base UUIDs, $ROUNDS rounds; medians over rounds"
echo
# (µ is two bytes, so its column's width is one more.)
printf '| %-12s | %10s | %7s | %7s | %11s | %13s | %12s | %14s | %13s | %14s |\n' target "req/s" "p50 ms" \
    "p99 ms" "proxy CPU s" "proxy µs/req" "of it user" "backends CPU s" "proxy RSS MiB" "errors/non-2xx"
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' -------------- ------------ --------- --------- ------------- \
    -------------- -------------- ---------------- --------------- ----------------
for t in "${RUN_TARGETS[@]}"; do
    MED_RPS[$t]=$(column_of "$t" 3)
    MED_P99[$t]=$(column_of "$t" 5)
    rss=-
    [[ -n ${PEAK_RSS[$t]:-} ]] && rss=$(awk -v k="${PEAK_RSS[$t]}" 'BEGIN { printf "%.1f", k / 1024 }')
    printf '| %-12s | %10.0f | %7.3f | %7.3f | %11s | %12s | %12s | %14s | %13s | %14s |\n' "$t" \
        "${MED_RPS[$t]}" "$(column_of "$t" 4)" "${MED_P99[$t]}" "$(column_of "$t" 6)" "$(column_of "$t" 7)" \
        "$(column_of "$t" 11)" "$(column_of "$t" 8)" "$rss" "$(sum_of "$t" 9)/$(sum_of "$t" 10)"
done
echo
echo "per round (req/s, p99 ms):"
for t in "${RUN_TARGETS[@]}"; do
    printf '  %-12s %s\n' "$t" "$(awk -F'\t' -v t="$t" '$1 == t { printf "%s%.0f / %.3f", sep, $3, $5; sep = ",  " }' "$RESULTS")"
done
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
for other in nginx haproxy base direct; do
    [[ -n ${MED_RPS[dtable-proxy]:-} && -n ${MED_RPS[$other]:-} ]] || continue
    rr=$(ratio "${MED_RPS[dtable-proxy]}" "${MED_RPS[$other]}")
    pr=$(ratio "${MED_P99[dtable-proxy]}" "${MED_P99[$other]}")
    if [[ $other == nginx ]]; then
        tm=$(awk -v r="$rr" 'BEGIN { print (r >= 1) ? "met" : "NOT met" }')
        pm=$(awk -v r="$pr" 'BEGIN { print (r <= 1) ? "met" : "NOT met" }')
        echo "dtable-proxy / nginx:   throughput $rr (goal >= 1: $tm), p99 $pr (goal <= 1: $pm)"
    else
        echo "dtable-proxy / $other: throughput $rr, p99 $pr"
    fi
done

# ---------------------------------------------------------------- optional profile
if [[ ${PROFILE:-0} == 1 ]]; then
    command -v perf >/dev/null || die "PROFILE=1 needs perf (apt-get install -y linux-perf)"
    for t in "${RUN_TARGETS[@]}"; do
        [[ $t == direct ]] && continue
        mapfile -t pids < <(proxy_pids "$t")
        data=$WORK/perf-$t.data
        # cpu-clock works where hardware counters are not exposed (VMs); DWARF call graphs
        # because release builds keep no frame pointers.
        perf record -q -e cpu-clock -F 499 --call-graph dwarf,8192 -o "$data" \
            -p "$(IFS=,; echo "${pids[*]}")" -- sleep $((DURATION > 2 ? DURATION - 1 : 1)) \
            >"$WORK/perf-$t.log" 2>&1 &
        perf_pid=$!
        sleep 0.5
        run_wrk "$t" "$DURATION" "$WORK/wrk-$t-profile.txt"
        wait "$perf_pid" || die "perf record failed: $(tail -n3 "$WORK/perf-$t.log")"
        perf report -i "$data" --no-children --sort dso,symbol --stdio -g none --percent-limit 0.7 \
            >"$WORK/perf-$t.txt" 2>/dev/null
        echo
        echo "profile of $t (self time, cpu-clock, top symbols; full report in perf-$t.txt with KEEP):"
        grep -v '^#' "$WORK/perf-$t.txt" | grep -v '^$' | head -n 30
    done
fi
