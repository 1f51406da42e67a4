#!/usr/bin/env bash
# User-space instructions per proxied request of one or more dtable-proxy builds, counted by
# valgrind's callgrind: a figure that does not move with the load on a shared machine, for
# comparing two builds (bench/proxy.sh's timings vary by several per cent between runs).
# It counts instructions only: no system calls, no cache misses, no waiting.
#
# Usage: bench/proxy-instructions.sh [BIN...]    (default: target/release/dtable-proxy)
#
# Setup, on loopback only: a private etcd, three `dtable-bench responder`s registered as
# nodes with the 256 buckets round robin (as bench/proxy.sh does), and each build in turn
# under callgrind with `--workers 1`. A warm-up of 4 s runs uncounted; then counting is
# switched on for `wrk -t1 -c8 -d10s` over a 1,000-path mix of the same shape as
# bench/proxy.sh's (half dashed UUIDs, half under /api/v1/.../rows/), and off again.
# Prints, per build: requests, instructions, instructions per request, and the callgrind
# file (`callgrind_annotate --inclusive=yes FILE` shows where they go).
#
# Every wait is bounded (30 s for start-ups, wrk by its duration plus 30 s).
# Knobs: OUT=DIR (default: a new /tmp/dtable-proxy-instr.XXXXXX, kept), SECONDS_COUNTED=10,
# NGINX=1 to count nginx too (bench/proxy.sh's routing map, one process, no master), as a
# baseline measured in the same run.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_BIN=$REPO/target/release/dtable-bench
COUNTED=${SECONDS_COUNTED:-10}
(($# > 0)) || set -- "$REPO/target/release/dtable-proxy"

log() { printf '[proxy-instructions.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

need=()
for tool in valgrind:valgrind callgrind_control:valgrind wrk:wrk etcd:etcd-server etcdctl:etcd-client curl:curl python3:python3; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -x $BENCH_BIN ]] || (cd "$REPO" && cargo build --release -q -p dtable-bench)
for bin in "$@"; do [[ -x $bin ]] || die "$bin is not an executable (cargo build --release -p dtable-proxy)"; done

OUT=${OUT:-$(mktemp -d /tmp/dtable-proxy-instr.XXXXXX)}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/dtable-proxy-instr-work.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {
    local what=$1
    shift
    for _ in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "timed out waiting for $what"
}

ETCD_PORT=$(free_port)
PEER_PORT=$(free_port)
ETCD_URL=http://127.0.0.1:$ETCD_PORT
etcd --name default --data-dir "$WORK/etcd" --listen-client-urls "$ETCD_URL" \
    --advertise-client-urls "$ETCD_URL" --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "default=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
export ETCDCTL_API=3
etcdctl_() { etcdctl --endpoints="$ETCD_URL" --command-timeout=5s "$@"; }
wait_for etcd etcdctl_ endpoint health

for i in 0 1 2; do
    id=dtable-server-bench-$i
    "$BENCH_BIN" responder --listen 127.0.0.1:0 --node-id "$id" >"$WORK/responder-$i.out" 2>/dev/null &
    PIDS+=($!)
    wait_for "responder $i" test -s "$WORK/responder-$i.out"
    addr=$(head -n1 "$WORK/responder-$i.out")
    etcdctl_ put "$id" "{\"node_id\":\"$id\",\"node_url\":\"http://$addr/\",\"local_node_url\":\"http://$addr/\",\"role\":\"server\",\"state\":\"active\",\"weight\":1}" >/dev/null
done
for half in 0 1; do
    {
        echo
        for ((b = half * 128; b < half * 128 + 128; b++)); do
            printf 'put assign-%02x "dtable-server-bench-%d"\n' "$b" $((b % 3))
        done
        echo
        echo
    } | etcdctl_ txn >/dev/null
done

# A mix shaped as bench/proxy.sh's: 1,000 base UUIDs from a fixed seed, half dashed, half
# under /api/v1/.../rows/.
python3 - >"$WORK/mix.lua" <<'EOF'
import random, uuid
rng = random.Random(20261125)
paths = []
for i in range(1000):
    u = uuid.UUID(int=rng.getrandbits(128))
    s = str(u) if i % 2 else u.hex
    paths.append(f"/api/v1/dtables/{s}/rows/" if (i // 2) % 2 else f"/dtables/{s}")
print("local paths = {")
for p in paths:
    print(f'  "{p}",')
print("}")
print("""local i = 0
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT requests=%d errors=%d non2xx=%d\\n", summary.requests,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end""")
EOF

ADDRS=()
for i in 0 1 2; do ADDRS+=("$(head -n1 "$WORK/responder-$i.out")"); done

# Counts the process `pid` (under callgrind, instrumentation off) serving on `port`: a warm-up
# uncounted, then `COUNTED` seconds of wrk counted; prints one line of the table.
count() {
    local name=$1 pid=$2 port=$3 file=$4 n=$5
    timeout 30 wrk -t1 -c8 -d4s -s "$WORK/mix.lua" "http://127.0.0.1:$port" >/dev/null
    callgrind_control -i on "$pid" >/dev/null
    timeout $((COUNTED + 30)) wrk -t1 -c8 -d"${COUNTED}s" -s "$WORK/mix.lua" "http://127.0.0.1:$port" >"$OUT/wrk.$n.txt"
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local result requests dump instr
    result=$(grep '^RESULT' "$OUT/wrk.$n.txt")
    requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$result")
    [[ $result == *"errors=0 non2xx=0"* ]] || die "errors through $name: $result"
    # The dump taken while counting is the largest file of this run.
    dump=$(ls -S "$file"* | head -n1)
    instr=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ { gsub(",", "", $1); print $1 }')
    printf '%-60s %10d %15d %10d  %s\n' "$name" "$requests" "$instr" $((instr / requests)) "$dump"
}

printf '%-60s %10s %15s %10s  %s\n' build requests instructions "instr/req" "callgrind file"
n=0
for bin in "$@"; do
    n=$((n + 1))
    port=$(free_port)
    admin=$(free_port)
    file=$OUT/callgrind.$n.out
    RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
        "$bin" --etcd "127.0.0.1:$ETCD_PORT" --listen "127.0.0.1:$port" \
        --admin-listen "127.0.0.1:$admin" --workers 1 >"$OUT/proxy.$n.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    wait_for "$bin /readyz" curl -sf "http://127.0.0.1:$admin/readyz"
    count "$bin" "$vg" "$port" "$file" "$n"
done

# nginx with bench/proxy.sh's routing (bench/nginx-conf.sh), as one process (no master), so
# that callgrind sees every instruction that serves a request.
if [[ ${NGINX:-0} == 1 ]]; then
    command -v nginx >/dev/null || die "NGINX=1 needs nginx (apt-get install nginx-light)"
    n=$((n + 1))
    port=$(free_port)
    file=$OUT/callgrind.$n.out
    mkdir -p "$WORK/nginx"
    "$REPO/bench/nginx-conf.sh" "$WORK/nginx" "$port" 1 off "${ADDRS[@]}" >"$WORK/nginx/nginx.conf"
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$file" \
        nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" \
        >"$OUT/nginx.log" 2>&1 &
    vg=$!
    PIDS+=("$vg")
    wait_for nginx curl -s -o /dev/null "http://127.0.0.1:$port/"
    count "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')" "$vg" "$port" "$file" "$n"
fi
