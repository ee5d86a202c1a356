#!/usr/bin/env bash
# corekv soak test: a checked 90% GET / 10% SET load on a local 3-shard
# cluster for SOAK_SECONDS (default 300 s = 5 min), with every response
# verified, plus server memory, data dir and latency over time.
#
#   bash bench/soak.sh                 # 5 minutes
#   SOAK_SECONDS=30 bash bench/soak.sh # quick check
#
# The load generator and checker is bench/soak/soakclient.rs (a Cargo example
# of corekv, built here with `cargo build --release --example soakclient`): SOAK_CONNS (256) keep-alive
# connections spread over all 6 ports (3 primaries, 3 replicas), one thread
# each. Connections on a primary each own a slice of the SOAK_KEYS written
# keys and write them with increasing versions; every GET and SET answer is
# checked against the values the client acknowledged (see the top of
# soakclient.rs and bench/README.md for the rules).
#
# Knobs: SOAK_SECONDS=300, SOAK_CONNS=256, SOAK_KEYS=30000 (written keys),
# SOAK_NEVER=3000 (keys never written: must be 404), SET_PCT=10,
# INTERVAL=10 (s per progress line), WARMUP_SECONDS (min(60, SOAK_SECONDS/5)),
# RSS_GROWTH_MAX_PCT=10 / RSS_GROWTH_MIN_MIB=16 (memory counts as flat when
# RSS at the end exceeds RSS after warm-up by less than max(pct, MiB)),
# BASE_PORT=19180 (primaries 19180-19182, replicas 19183-19185),
# SKIP_BUILD=1, KEEP_TMP=1, COREKV_BIN=path, RESULTS_DIR [bench/results].
#
# Output: a markdown summary on stdout and in bench/results/soak.md; the
# client's raw output and the server log tail in bench/results/soak.log.
# Exit status 0 only if there was no error, no mismatch and memory was flat.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

SOAK_SECONDS="${SOAK_SECONDS:-300}"
SOAK_CONNS="${SOAK_CONNS:-256}"
SOAK_KEYS="${SOAK_KEYS:-30000}"
SOAK_NEVER="${SOAK_NEVER:-3000}"
SET_PCT="${SET_PCT:-10}"
INTERVAL="${INTERVAL:-10}"
if [ -z "${WARMUP_SECONDS:-}" ]; then
    WARMUP_SECONDS=$((SOAK_SECONDS / 5)); [ "$WARMUP_SECONDS" -le 60 ] || WARMUP_SECONDS=60
fi
RSS_GROWTH_MAX_PCT="${RSS_GROWTH_MAX_PCT:-10}"
RSS_GROWTH_MIN_MIB="${RSS_GROWTH_MIN_MIB:-16}"
BASE_PORT="${BASE_PORT:-19180}"
NSHARDS=3

bench_workdir soak
CLIENT_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$CLIENT_PID" ] && kill -0 "$CLIENT_PID" 2>/dev/null; then
        # CLIENT_PID is the `timeout` wrapper we started; it passes the
        # signal on to the client.
        kill -TERM "$CLIENT_PID" 2>/dev/null || true
        wait "$CLIENT_PID" 2>/dev/null || true
    fi
    corekv_stop || true
    bench_finish "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
command -v cargo >/dev/null || die "cargo not found (the Rust toolchain builds corekv and the soak client)"

# ---------------------------------------------------------------- build
server_binary

# ---------------------------------------------------------------- server
write_sharding_toml "$WORK/sharding.toml" $NSHARDS "$BASE_PORT"
ALL_PORTS=$(seq "$BASE_PORT" $((BASE_PORT + 2 * NSHARDS - 1)))
PRIMS=""; REPS=""
for ((i = 0; i < NSHARDS; i++)); do
    PRIMS="$PRIMS${PRIMS:+,}127.0.0.1:$((BASE_PORT + i))"
    REPS="$REPS${REPS:+,}127.0.0.1:$((BASE_PORT + NSHARDS + i))"
done
# shellcheck disable=SC2086
corekv_start "$WORK/sharding.toml" "$WORK/data" "$WORK/corekv.log" $ALL_PORTS || die "corekv did not start"
sleep 1

# ---------------------------------------------------------------- load
log "soak: ${SOAK_SECONDS}s, $SOAK_CONNS connections over ports $BASE_PORT-$((BASE_PORT + 2 * NSHARDS - 1)), ${SET_PCT}% SET, $SOAK_KEYS keys (+$SOAK_NEVER never written), warm-up ${WARMUP_SECONDS}s"
CLIENT_OUT="$WORK/client.out"
# The block device of the data dir (for I/O busy time and flushes per interval).
DISK_DEV="$(basename "$(df --output=source "$WORK" 2>/dev/null | tail -n 1)" 2>/dev/null || true)"
grep -qw "$DISK_DEV" /proc/diskstats 2>/dev/null || DISK_DEV=""
# Bounded: the load, plus preload, the final check and slack.
timeout -k 10 $((SOAK_SECONDS + 600)) "$WORK/soakclient" \
    --primaries "$PRIMS" --replicas "$REPS" --conns "$SOAK_CONNS" --seconds "$SOAK_SECONDS" \
    --keys "$SOAK_KEYS" --never "$SOAK_NEVER" --set-pct "$SET_PCT" --interval "$INTERVAL" \
    --warmup "$WARMUP_SECONDS" --pid "$COREKV_PID" --data-dir "$WORK/data" --disk-dev "$DISK_DEV" \
    >"$CLIENT_OUT" 2>"$WORK/client.err" &
CLIENT_PID=$!
shown=0
client_rc=0
while :; do
    if ! kill -0 "$CLIENT_PID" 2>/dev/null; then
        wait "$CLIENT_PID" || client_rc=$?
        CLIENT_PID=""
        break
    fi
    sleep 1
    n=$(wc -l <"$CLIENT_OUT")
    if [ "$n" -gt "$shown" ]; then
        sed -n "$((shown + 1)),${n}p" "$CLIENT_OUT" | grep -E '^(BOOT|START|INTERVAL|STALL)' | while read -r line; do log "$line"; done || true
        shown=$n
    fi
    if ! kill -0 "$COREKV_PID" 2>/dev/null; then
        log "corekv PID $COREKV_PID exited during the soak"
    fi
done
log "client exit status $client_rc"
[ ! -s "$WORK/client.err" ] || { log "client stderr:"; head -n 20 "$WORK/client.err" >&2; }

# ---------------------------------------------------------------- after
SERVER_ALIVE=1
curl -sf -o /dev/null --max-time 3 "http://127.0.0.1:$BASE_PORT/health" || SERVER_ALIVE=0
curl -s --max-time 3 "http://127.0.0.1:$BASE_PORT/status" >"$WORK/status.json" 2>/dev/null || true
curl -s --max-time 3 "http://127.0.0.1:$BASE_PORT/metrics" >"$WORK/metrics.txt" 2>/dev/null || true
corekv_stop
{
    echo "===== soakclient output"
    cat "$CLIENT_OUT"
    echo "===== soakclient stderr"
    cat "$WORK/client.err"
    echo "===== /status at the end"
    cat "$WORK/status.json"
    echo "===== /metrics at the end (requests by status)"
    grep -E 'requests|forward|refused|commit' "$WORK/metrics.txt" | grep -v '^#' | head -n 200 || true
    echo "===== corekv log: warnings and errors (first 50)"
    grep -E 'level=(warn|error)' "$WORK/corekv.log" | head -n 50 || true
    echo "===== corekv log (last 50 lines)"
    tail -n 50 "$WORK/corekv.log"
} >"$WORK/soak.log"
cp "$WORK/soak.log" "$RESULTS_DIR/soak.log"

# ---------------------------------------------------------------- report
NWARN=$(grep -c 'level=warn' "$WORK/corekv.log" || true)
NERR=$(grep -c 'level=error' "$WORK/corekv.log" || true)
NPANIC=$(grep -ci 'panic' "$WORK/corekv.log" || true)
{
    echo "# corekv soak test"
    echo
    env_header "$WORK" | grep -v '^- clients\|^- load'
    echo "- load: bench/soak/soakclient.rs, $SOAK_CONNS keep-alive connections (one thread each) spread round-robin over 3 primaries and 3 replicas (127.0.0.1:$BASE_PORT-$((BASE_PORT + 2 * NSHARDS - 1))), ${SET_PCT}% SET / $((100 - SET_PCT))% GET, ${SOAK_SECONDS} s after a preload of $SOAK_KEYS keys; $SOAK_NEVER more keys are never written; warm-up ${WARMUP_SECONDS} s; the client shares the $(nproc) cores with the server"
    echo "- server log: $NWARN warn, $NERR error, $NPANIC panic lines; server $( [ "$SERVER_ALIVE" = 1 ] && echo "healthy" || echo "NOT answering /health") at the end"
} >"$WORK/header.md"
report_rc=0
python3 "$BENCH_DIR/report.py" soak "$CLIENT_OUT" --header "$WORK/header.md" \
    --client-rc "$client_rc" --server-alive "$SERVER_ALIVE" \
    --rss-max-pct "$RSS_GROWTH_MAX_PCT" --rss-min-mib "$RSS_GROWTH_MIN_MIB" >"$WORK/soak.md" || report_rc=$?
if [ "$NPANIC" != 0 ] || [ "$NERR" != 0 ]; then
    { echo; echo "Server log lines at level error / mentioning panic (first 10):"; echo
      grep -iE 'level=error|panic' "$WORK/corekv.log" | head -n 10 | sed 's/^/    /'; } >>"$WORK/soak.md"
fi
cp "$WORK/soak.md" "$RESULTS_DIR/soak.md"
echo
cat "$WORK/soak.md"
echo
log "wrote $RESULTS_DIR/soak.md and $RESULTS_DIR/soak.log"
[ "$report_rc" = 0 ] && [ "$client_rc" = 0 ] && [ "$SERVER_ALIVE" = 1 ]
