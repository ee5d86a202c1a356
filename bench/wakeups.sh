#!/usr/bin/env bash
# Where the CPU per request goes at a fixed request rate: nginx and corekv's
# owner node under the same oha load (`-q RATE -c CONNS`, latency-corrected,
# one fixed key), with per request: server CPU, reschedule and function-call
# interrupts (machine-wide, from /proc/interrupts) and the server's system
# calls (perf stat on its PID).
#
#   bash bench/wakeups.sh [RATE]        # default 20000 req/s
#
# Knobs: CONNS=64, DURATION=5, COREKV_BIN (default target/release/corekv,
# built if missing), NO_NGINX=1, BASE_PORT=29080, NGINX_PORT=28080.
# Needs oha, nginx (bench/install.sh) and perf (apt-get install linux-perf).
# Starts its own nginx and corekv in a temp dir and stops exactly those PIDs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/nginx.sh
. "$here/nginx.sh"
RATE="${1:-20000}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-5}"
BASE_PORT="${BASE_PORT:-29080}"
NGINX_PORT="${NGINX_PORT:-28080}"
BIN="${COREKV_BIN:-$here/../target/release/corekv}"
[ -x "$BIN" ] || (cd "$here/.." && cargo build --release)
for tool in oha perf; do
    command -v "$tool" >/dev/null || { echo "wakeups.sh: $tool not found" >&2; exit 1; }
done
W="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    [ -n "$NGINX_PID" ] && nginx_stop
    rm -rf "$W"
}
trap cleanup EXIT
{
    for i in 0 1 2; do
        printf '[[shards]]\nname = "s%d"\nidx = %d\naddress = "127.0.0.1:%d"\nreplica = "127.0.0.1:%d"\n' \
            "$i" "$i" $((BASE_PORT + i)) $((BASE_PORT + 3 + i))
    done
} >"$W/sharding.toml"

irqs() { awk '/RES:/ {r = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) r += $i}
              /CAL:/ {c = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) c += $i}
              END {print r, c}' /proc/interrupts; }
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

# measure NAME URL PID...: one oha run at RATE, one result line.
measure() {
    local name="$1" url="$2"; shift 2
    local t0 t1 i0 i1 out pp
    t0="$(ticks "$@")"; i0="$(irqs)"
    perf stat -x, -o "$W/perf.txt" -e raw_syscalls:sys_enter -e syscalls:sys_enter_recvfrom \
        -e syscalls:sys_enter_io_uring_enter -e syscalls:sys_enter_epoll_wait \
        -e syscalls:sys_enter_membarrier -p "$(echo "$@" | tr ' ' ,)" -- sleep "$DURATION" &
    pp=$!
    out="$(oha --no-tui -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction --output-format json "$url")"
    wait "$pp" || true
    t1="$(ticks "$@")"; i1="$(irqs)"
    echo "$out" | python3 -c '
import json, sys
name, t0, t1, i0, i1, perf, hz = sys.argv[1:8]
hz = float(hz)
d = json.load(sys.stdin); s = d["summary"]; p = d["latencyPercentiles"]
n = max(sum(d.get("statusCodeDistribution", {}).values()), 1)
i0, i1 = [int(x) for x in i0.split()], [int(x) for x in i1.split()]
calls = {}
for line in open(perf):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        calls[f[2].split(":")[-1].replace("sys_enter_", "").replace("sys_enter", "all")] = int(f[0]) / n
print("| %s | %.0f | %.3f | %.3f | %.3f | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (
    name, s["requestsPerSec"], p["p50"] * 1e3, p["p99"] * 1e3, p["p99.9"] * 1e3,
    (int(t1) - int(t0)) / hz * 1e6 / n, (i1[0] - i0[0]) / n, (i1[1] - i0[1]) / n,
    calls.get("all", 0), calls.get("recvfrom", 0), calls.get("io_uring_enter", 0),
    calls.get("epoll_wait", 0), calls.get("membarrier", 0)))
' "$name" "$t0" "$t1" "$i0" "$i1" "$W/perf.txt" "$(getconf CLK_TCK)"
}

echo "oha -q $RATE -c $CONNS, ${DURATION} s, fixed key; per request:"
echo
echo "| server | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs | RES irq | CAL irq | syscalls | recvfrom | io_uring_enter | epoll_wait | membarrier |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
if [ -z "${NO_NGINX:-}" ]; then
    nginx_start "$NGINX_PORT" "$W/nginx" >/dev/null
    measure nginx "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID" $(pgrep -P "$NGINX_PID")
    nginx_stop
fi
"$BIN" --config "$W/sharding.toml" --data-dir "$W/data" --log-level warn >"$W/log" 2>&1 &
SERVER_PID=$!
end=$((SECONDS + 30))
until curl -fsS -o /dev/null "http://127.0.0.1:$((BASE_PORT + 5))/health" 2>/dev/null; do
    [ "$SECONDS" -lt "$end" ] || { echo "corekv did not come up" >&2; cat "$W/log" >&2; exit 1; }
    sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$BASE_PORT/set?key=a&value=v"
measure "corekv owner" "http://127.0.0.1:$BASE_PORT/get?key=a" "$SERVER_PID"
