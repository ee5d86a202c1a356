#!/usr/bin/env bash
# corekv scaling benchmark: throughput vs number of keys and value size, and
# memory (RSS) per million keys. Longer than bench/run.sh (about 5-10 min).
#
#   bash bench/scaling.sh
#
# Each case gets a fresh server and data dir: preload N keys of S bytes
# (key-0..key-N-1, each to its owner primary), then GET and durable SET for
# DURATION s with wrk on the shard-0 primary (keys owned by shard 0).
#
# Knobs: CASES="10000:16 10000:1024 10000:65536 1000000:16 1000000:1024"
# (KEYS:VALUE_BYTES), MAX_BYTES (skip cases with more data; default 1.1e9),
# DURATION=10, CONNS=64, THREADS=2, LOAD_TIMEOUT=600, SKIP_INSTALL=1,
# SKIP_BUILD=1, KEEP_TMP=1.
# Output: markdown on stdout and in bench/results/scaling.md; raw output in
# bench/results/scaling.log.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

CASES="${CASES:-10000:16 10000:1024 10000:65536 1000000:16 1000000:1024}"
MAX_BYTES="${MAX_BYTES:-1100000000}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
LOAD_TIMEOUT="${LOAD_TIMEOUT:-600}"
BASE_PORT="${BASE_PORT:-19080}"
NSHARDS=3
export DURATION THREADS

bench_workdir scaling
CASES_TSV="$WORK/cases.tsv"; : >"$CASES_TSV"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    corekv_stop || true
    bench_finish "$rc" scaling.log
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

if [ "${SKIP_INSTALL:-0}" != 1 ]; then bash "$BENCH_DIR/install.sh"; fi
command -v wrk >/dev/null || die "wrk not found (run bench/install.sh)"
server_binary
python3 "$BENCH_DIR/keys.py" selftest

write_sharding_toml "$WORK/sharding.toml" $NSHARDS "$BASE_PORT"
ALL_PORTS=$(seq "$BASE_PORT" $((BASE_PORT + 2 * NSHARDS - 1)))
P0=$BASE_PORT
R0=$((BASE_PORT + NSHARDS))
ADDRS=()
for ((i = 0; i < NSHARDS; i++)); do ADDRS+=(--addr "$i=127.0.0.1:$((BASE_PORT + i))"); done

n=0
for c in $CASES; do
    n=$((n + 1))
    nkeys="${c%%:*}"; vsize="${c##*:}"
    id="c$n"
    if [ $((nkeys * vsize)) -gt "$MAX_BYTES" ]; then
        log "skip $nkeys keys x $vsize B: more than MAX_BYTES=$MAX_BYTES"
        continue
    fi
    log "== case $id: $nkeys keys x $vsize B"
    data="$WORK/data-$id"
    # shellcheck disable=SC2086
    corekv_start "$WORK/sharding.toml" "$data" "$WORK/corekv-$id.log" $ALL_PORTS || die "corekv did not start"
    sleep 1
    rss0=$(rss_kib "$COREKV_PID")
    python3 "$BENCH_DIR/keys.py" keys --shards $NSHARDS --idx 0 --universe "$nkeys" --count "$nkeys" >"$WORK/keys-$id.txt"
    last0="$(tail -n 1 "$WORK/keys-$id.txt")"
    t0=$SECONDS; load_ok=1
    python3 "$BENCH_DIR/keys.py" load --shards $NSHARDS "${ADDRS[@]}" --prefix key- --count "$nkeys" \
        --value-size "$vsize" --connections 96 --depth 16 --timeout "$LOAD_TIMEOUT" 2>>"$RUN_LOG" || load_ok=0
    load_s=$((SECONDS - t0))
    tail -n 1 "$RUN_LOG" >&2
    [ "$load_ok" = 1 ] || log "preload of case $id failed (see $RESULTS_DIR/scaling.log)"
    # Let replication finish so it does not run during the measurement.
    deadline=$((SECONDS + 120)); repl_ok=0
    while [ $SECONDS -lt $deadline ]; do
        if python3 "$BENCH_DIR/keys.py" check --quiet --addr "127.0.0.1:$R0" --expect-size "$vsize" --keys "$last0"; then
            repl_ok=1; break
        fi
        sleep 1
    done
    [ "$repl_ok" = 1 ] || log "replica :$R0 had not caught up 120 s after the preload"
    rss1=$(rss_kib "$COREKV_PID")
    setargs=(mode=set keys="$WORK/keys-$id.txt" valuesize="$vsize")
    [ "$vsize" -le 1024 ] || setargs+=(method=post)
    measure "$id-get" "GET $nkeys keys x $vsize B" wrk ":$P0" "$CONNS" 1 - "$COREKV_PID" "http://127.0.0.1:$P0/health" \
        -- wrk_run "http://127.0.0.1:$P0" "$CONNS" mode=get keys="$WORK/keys-$id.txt" || true
    measure "$id-set" "SET $nkeys keys x $vsize B" wrk ":$P0" "$CONNS" 1 - "$COREKV_PID" "http://127.0.0.1:$P0/health" \
        -- wrk_run "http://127.0.0.1:$P0" "$CONNS" "${setargs[@]}" || true
    rss2=$(rss_kib "$COREKV_PID" || echo 0)
    disk=$(du -sb "$data" | cut -f1)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$nkeys" "$vsize" "$load_s" "$load_ok" \
        "$rss0" "$rss1" "${rss2:-0}" "$disk" "$repl_ok" >>"$CASES_TSV"
    corekv_stop
    rm -rf "$data"
done

{
    echo "# corekv scaling results"
    echo
    env_header "$WORK"
} >"$WORK/header.md"
python3 "$BENCH_DIR/report.py" scaling "$CASES_TSV" "$INDEX" --header "$WORK/header.md" >"$WORK/scaling.md"
cp "$WORK/scaling.md" "$RESULTS_DIR/scaling.md"
echo
cat "$WORK/scaling.md"
