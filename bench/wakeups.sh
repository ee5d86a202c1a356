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
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
RATE="${1:-20000}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-5}"
BASE_PORT="${BASE_PORT:-29080}"
NGINX_PORT="${NGINX_PORT:-28080}"
[ -x "$COREKV_BIN" ] || (cd "$ROOT_DIR" && cargo build --release --bin corekv)
for tool in oha perf; do
    command -v "$tool" >/dev/null || die "wakeups.sh: $tool not found"
done
W="$(mktemp -d)"
cleanup() {
    corekv_stop
    [ -n "$NGINX_PID" ] && nginx_stop
    rm -rf "$W"
}
trap cleanup EXIT
write_sharding_toml "$W/sharding.toml" 3 "$BASE_PORT"

irqs() { awk '/RES:/ {r = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) r += $i}
              /CAL:/ {c = 0; for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) c += $i}
              END {print r, c}' /proc/interrupts; }

# rate_row NAME URL PID: one oha run at RATE, one result line (PID and its
# children: the server).
rate_row() {
    local name="$1" url="$2" pid="$3"
    local t0 t1 i0 i1 out pp kids pids
    kids="$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
    pids="$(echo "$pid $kids" | xargs | tr ' ' ,)"
    t0="$(cpu_ticks "$pid")"; i0="$(irqs)"
    perf stat -x, -o "$W/perf.txt" -e raw_syscalls:sys_enter -e syscalls:sys_enter_recvfrom \
        -e syscalls:sys_enter_io_uring_enter -e syscalls:sys_enter_epoll_wait \
        -e syscalls:sys_enter_membarrier -p "$pids" -- sleep "$DURATION" &
    pp=$!
    out="$(oha --no-tui -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction --output-format json "$url")"
    wait "$pp" || true
    t1="$(cpu_ticks "$pid")"; i1="$(irqs)"
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
    rate_row nginx "http://127.0.0.1:$NGINX_PORT/" "$NGINX_PID"
    nginx_stop
fi
corekv_start "$W/sharding.toml" "$W/data" "$W/log" $((BASE_PORT + 5))
curl -fsS -o /dev/null "http://127.0.0.1:$BASE_PORT/set?key=a&value=v"
rate_row "corekv owner" "http://127.0.0.1:$BASE_PORT/get?key=a" "$COREKV_PID"
