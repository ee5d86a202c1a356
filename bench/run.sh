#!/usr/bin/env bash
# corekv benchmark suite: one command, bounded (< 10 min once tools are
# installed and the release build is cached).
#
#   bash bench/run.sh
#
# Knobs (environment): DURATION=10 (s per run), CONNS=64, THREADS=2 (wrk),
# DEPTH=16 (pipelining), KEYS=10000 (preloaded keys), VALUE_SIZE=16,
# BASE_PORT=19080, NGINX_PORT=18080, SKIP_INSTALL=1, SKIP_BUILD=1,
# SKIP_OHA=1, KEEP_TMP=1, COREKV_BIN=path,
# ONLY="get-owner set" (run only these corekv scenarios: get-owner get-fwd
# get-replica get-pipe set mixed set-baseline; the nginx references always
# run), BASELINE_BATCH=1 (--commit-batch of the set-baseline server),
# BASELINE_PORT=BASE_PORT+10 (first port of the set-baseline server),
# QUIET_PCT=20 / QUIET_MAX_WAIT=30 / QUIET_BUDGET=120 (before each run, wait
# for other processes to use < QUIET_PCT % of a core; QUIET_BUDGET=0: never).
#
# Output: a markdown table on stdout and in bench/results/latest.md; every
# raw wrk/oha output in bench/results/latest.log.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DURATION="${DURATION:-10}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
DEPTH="${DEPTH:-16}"
KEYS="${KEYS:-10000}"
VALUE_SIZE="${VALUE_SIZE:-16}"
BASE_PORT="${BASE_PORT:-19080}"
NGINX_PORT="${NGINX_PORT:-18080}"
NSHARDS=3
export DURATION THREADS

RESULTS_DIR="${RESULTS_DIR:-$BENCH_DIR/results}"
mkdir -p "$RESULTS_DIR"
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/corekv-bench.XXXXXX")"
RAW_DIR="$WORK/raw"; mkdir -p "$RAW_DIR"
INDEX="$WORK/index.tsv"; : >"$INDEX"
RUN_LOG="$WORK/run.log"; : >"$RUN_LOG"
FINDINGS="$WORK/findings.md"; : >"$FINDINGS"
START_TS=$SECONDS

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    nginx_stop || true
    corekv_stop || true
    if [ -s "$RUN_LOG" ]; then cp "$RUN_LOG" "$RESULTS_DIR/latest.log" 2>/dev/null || true; fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    log "done in $((SECONDS - START_TS)) s (exit $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

finding() { log "FINDING: $*"; echo "- $*" >>"$FINDINGS"; }
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# ---------------------------------------------------------------- 1. tools
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash "$BENCH_DIR/install.sh"
fi
for t in wrk oha python3 curl; do
    command -v "$t" >/dev/null || die "$t not found (run bench/install.sh)"
done
nginx_bin >/dev/null || die "nginx not found (run bench/install.sh)"
python3 "$BENCH_DIR/keys.py" selftest

# ---------------------------------------------------------------- 2. build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    (cd "$ROOT_DIR" && timeout 1500 cargo build --release --quiet) || die "cargo build --release failed"
fi
[ -x "$COREKV_BIN" ] || die "no binary at $COREKV_BIN"
# Run a private copy, so a rebuild during the suite cannot swap it.
cp "$COREKV_BIN" "$WORK/corekv"
log "server binary: $COREKV_BIN ($(stat -c '%y' "$COREKV_BIN" | cut -d. -f1), sha256 $(sha256sum "$COREKV_BIN" | cut -c1-12))"
COREKV_BIN="$WORK/corekv"

# ---------------------------------------------------------------- 3. keys
P0=$BASE_PORT                      # primary of shard 0
P1=$((BASE_PORT + 1))              # primary of shard 1 (forwards shard-0 keys)
R0=$((BASE_PORT + NSHARDS))        # replica of shard 0
python3 "$BENCH_DIR/keys.py" keys --shards $NSHARDS --idx 0 --universe "$KEYS" --count "$KEYS" >"$WORK/keys0.txt"
NK0=$(wc -l <"$WORK/keys0.txt")
log "$NK0 of $KEYS keys belong to shard 0"
VALUE="$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' v)"
mk_urls() { # PORT OP OUT
    python3 "$BENCH_DIR/keys.py" urls --base "http://127.0.0.1:$1" --keyfile "$WORK/keys0.txt" \
        --op "$2" --value "$VALUE" >"$3"
}
mk_urls $P0 get "$WORK/urls-get-owner.txt"
mk_urls $P1 get "$WORK/urls-get-fwd.txt"
mk_urls $R0 get "$WORK/urls-get-replica.txt"
mk_urls $P0 set "$WORK/urls-set.txt"
BASELINE_PORT="${BASELINE_PORT:-$((BASE_PORT + 10))}"
mk_urls "$BASELINE_PORT" set "$WORK/urls-set-baseline.txt"
# 90/10 mix for oha (it picks lines at random): 9 GET lines per SET line.
python3 - "$WORK/urls-get-owner.txt" "$WORK/urls-set.txt" >"$WORK/urls-mixed.txt" <<'EOF'
import sys
gets = open(sys.argv[1]).read().split()
sets = open(sys.argv[2]).read().split()
out = []
for i, g in enumerate(gets):
    out.append(g)
    if i % 9 == 8:
        out.append(sets[i])
print("\n".join(out))
EOF

# Is the machine quiet? Anything else running skews every number below.
b0=$(machine_busy); sleep 2; b1=$(machine_busy)
BUSY_BEFORE=$(( (b1 - b0) * 100 / CLK_TCK / 2 ))
log "machine busy before the suite: ${BUSY_BEFORE}% of one core"
[ "$BUSY_BEFORE" -lt 20 ] || finding "the machine was busy (${BUSY_BEFORE}% of a core) before the suite started: other processes compete with the benchmark"

# ---------------------------------------------------------------- 4. nginx
log "== reference: nginx, 1 worker, 127.0.0.1:$NGINX_PORT"
nginx_start "$NGINX_PORT" "$WORK/nginx" || die "could not start nginx"
NG="http://127.0.0.1:$NGINX_PORT"
measure nginx-wrk "nginx GET / (reference)" wrk ":$NGINX_PORT" "$CONNS" 1 nginx-wrk "$NGINX_PID" "$NG/" \
    -- wrk_run "$NG" "$CONNS" mode=static || true
if [ "${SKIP_OHA:-0}" != 1 ]; then
    measure nginx-oha "nginx GET / (reference)" oha ":$NGINX_PORT" "$CONNS" 1 nginx-oha "$NGINX_PID" "$NG/" \
        -- oha_run "$CONNS" "$NG/" || true
fi
measure nginx-pipe "nginx GET / pipelined (reference)" wrk ":$NGINX_PORT" "$CONNS" "$DEPTH" nginx-pipe "$NGINX_PID" "$NG/" \
    -- wrk_run "$NG" "$CONNS" mode=static depth="$DEPTH" || true
nginx_stop

# ---------------------------------------------------------------- 5. corekv
log "== corekv: $NSHARDS shards, primaries $P0-$((P0 + NSHARDS - 1)), replicas $R0-$((R0 + NSHARDS - 1))"
write_sharding_toml "$WORK/sharding.toml" $NSHARDS "$BASE_PORT"
ALL_PORTS=$(seq "$BASE_PORT" $((BASE_PORT + 2 * NSHARDS - 1)))
# shellcheck disable=SC2086
# COREKV_OPTS: extra server options for the main server, e.g. "--no-yield".
read -r -a COREKV_ARGS <<< "${COREKV_OPTS:-}"
corekv_start "$WORK/sharding.toml" "$WORK/data" "$WORK/corekv.log" $ALL_PORTS || die "corekv did not start"
COREKV_ARGS=()

# Idle CPU: a thread-per-core server that spins while idle would show here.
t0=$(cpu_ticks "$COREKV_PID"); sleep 2; t1=$(cpu_ticks "$COREKV_PID")
IDLE_PCT=$(( (t1 - t0) * 100 / CLK_TCK / 2 ))
log "corekv idle CPU: ${IDLE_PCT}% of one core"
[ "$IDLE_PCT" -lt 5 ] || finding "corekv burns ${IDLE_PCT}% of a core while idle (busy polling?)"

log "preloading $KEYS keys (key-0..key-$((KEYS - 1)), ${VALUE_SIZE} B values) to their owner primaries"
ADDRS=()
for ((i = 0; i < NSHARDS; i++)); do ADDRS+=(--addr "$i=127.0.0.1:$((BASE_PORT + i))"); done
if ! python3 "$BENCH_DIR/keys.py" load --shards $NSHARDS "${ADDRS[@]}" --prefix key- \
        --count "$KEYS" --value-size "$VALUE_SIZE" --timeout 120; then
    finding "preload: not every SET returned 200 (see log above)"
    die "preload failed"
fi
# shellcheck disable=SC2046
python3 "$BENCH_DIR/keys.py" check --addr "127.0.0.1:$P0" --expect-size "$VALUE_SIZE" \
    --keys $(cat "$WORK/keys0.txt") || die "owner primary does not return every preloaded shard-0 key"
log "all $NK0 shard-0 keys readable on the owner"
deadline=$((SECONDS + 30)); caught_up=0
while [ $SECONDS -lt $deadline ]; do
    # shellcheck disable=SC2046
    if python3 "$BENCH_DIR/keys.py" check --quiet --addr "127.0.0.1:$R0" --expect-size "$VALUE_SIZE" \
            --keys $(cat "$WORK/keys0.txt"); then caught_up=1; break; fi
    sleep 0.5
done
if [ "$caught_up" = 1 ]; then
    log "replica :$R0 has all shard-0 keys"
else
    finding "replica :$R0 did not serve every preloaded shard-0 key within 30 s of the preload"
fi
RSS_LOADED=$(rss_kib "$COREKV_PID")
DISK_AFTER_LOAD=$(du -sh "$WORK/data" | cut -f1)

K="http://127.0.0.1"
HK="$K:$P0/health"
run_pair() { # ID SCENARIO PORT URLFILE LUA_ARGS...
    # BASE=ID: compare with the rows BASE-wrk / BASE-oha (column "vs 1 fsync/write").
    local id="$1" scen="$2" port="$3" urls="$4"; shift 4
    want "$id" || return 0
    MEASURE_BASE="${BASE:+$BASE-wrk}" measure "$id-wrk" "$scen" wrk ":$port" "$CONNS" 1 nginx-wrk "$COREKV_PID" "$HK" \
        -- wrk_run "$K:$port" "$CONNS" "$@" || return 1
    if [ "${SKIP_OHA:-0}" != 1 ]; then
        MEASURE_BASE="${BASE:+$BASE-oha}" measure "$id-oha" "$scen" oha ":$port" "$CONNS" 1 nginx-oha "$COREKV_PID" "$HK" \
            -- oha_run "$CONNS" --urls-from-file "$urls" || return 1
    fi
}

alive=1
run_pair get-owner "GET, key on this primary" $P0 "$WORK/urls-get-owner.txt" \
    mode=get keys="$WORK/keys0.txt" || alive=0
[ $alive = 1 ] && { run_pair get-fwd "GET, forwarded in-process" $P1 "$WORK/urls-get-fwd.txt" \
    mode=get keys="$WORK/keys0.txt" || alive=0; }
[ $alive = 1 ] && { run_pair get-replica "GET from the replica" $R0 "$WORK/urls-get-replica.txt" \
    mode=get keys="$WORK/keys0.txt" || alive=0; }
[ $alive = 1 ] && want get-pipe && { measure get-pipe "GET pipelined, key on this primary" wrk ":$P0" "$CONNS" "$DEPTH" nginx-pipe \
    "$COREKV_PID" "$HK" -- wrk_run "$K:$P0" "$CONNS" mode=get keys="$WORK/keys0.txt" depth="$DEPTH" || alive=0; }
[ $alive = 1 ] && { BASE=set-baseline run_pair set "durable SET, one shard" $P0 "$WORK/urls-set.txt" \
    mode=set keys="$WORK/keys0.txt" value="$VALUE" || alive=0; }
[ $alive = 1 ] && { run_pair mixed "mixed 90% GET / 10% SET" $P0 "$WORK/urls-mixed.txt" \
    mode=mixed setpct=10 keys="$WORK/keys0.txt" value="$VALUE" || alive=0; }

if [ $alive = 0 ]; then
    finding "corekv died or stopped answering /health during the suite; later scenarios skipped"
fi
RSS_END=$(rss_kib "$COREKV_PID" || true)
DISK_END=$(du -sh "$WORK/data" 2>/dev/null | cut -f1 || true)
if [ -f "$WORK/corekv.log" ]; then
    npanic=$(grep -ci 'panic' "$WORK/corekv.log" || true)
    [ "${npanic:-0}" = 0 ] || finding "server log mentions 'panic' $npanic times"
    { echo "===== corekv log (last 100 lines)"; tail -n 100 "$WORK/corekv.log"; } >>"$RUN_LOG"
fi
corekv_stop

# ------------------------------------------------- 5b. one fsync per write
# The durable-write baseline: the same cluster layout and SET load (CONNS
# connections, shard-0 keys on their owner, overwriting preloaded keys), but
# a fresh server with its own data dir and ports (BASELINE_PORT..+5, so a
# slow release of the old ports cannot matter; builds before 7e4f8c3 could
# not rebind while connections they had closed were in TIME_WAIT), started
# with --commit-batch 1, so every write is its own redb transaction and fsync. The durable SET rows above
# show their ratio to these rows ("vs 1 fsync/write"; the target is >= 10x).
BASELINE_BATCH="${BASELINE_BATCH:-1}"
BASE_ALIVE=1
if [ $alive = 1 ] && want set-baseline; then
    BP0=$BASELINE_PORT
    log "== baseline: corekv --commit-batch $BASELINE_BATCH (one fsync per write), fresh data dir, ports $BP0-$((BP0 + 2 * NSHARDS - 1))"
    write_sharding_toml "$WORK/sharding-baseline.toml" $NSHARDS "$BP0"
    COREKV_ARGS=(--commit-batch "$BASELINE_BATCH")
    # shellcheck disable=SC2046
    corekv_start "$WORK/sharding-baseline.toml" "$WORK/data-baseline" "$WORK/corekv-baseline.log" \
        $(seq "$BP0" $((BP0 + 2 * NSHARDS - 1))) || BASE_ALIVE=0
    COREKV_ARGS=()
    # Only shard 0 is written in this scenario: preload its keys, so that the
    # SETs overwrite existing keys as they do on the main server.
    if [ $BASE_ALIVE = 1 ] && ! python3 "$BENCH_DIR/keys.py" load --shards $NSHARDS --addr "0=127.0.0.1:$BP0" \
            --keyfile "$WORK/keys0.txt" --value-size "$VALUE_SIZE" --timeout 120; then
        finding "baseline preload: not every SET returned 200"
        BASE_ALIVE=0
    fi
    if [ $BASE_ALIVE = 1 ]; then
        BASE="" HK="$K:$BP0/health" run_pair set-baseline "durable SET, one shard, 1 fsync/write (baseline)" \
            "$BP0" "$WORK/urls-set-baseline.txt" mode=set keys="$WORK/keys0.txt" value="$VALUE" || BASE_ALIVE=0
    fi
    [ $BASE_ALIVE = 1 ] || finding "the --commit-batch $BASELINE_BATCH baseline server died, stopped answering or failed its preload"
    if [ -f "$WORK/corekv-baseline.log" ]; then
        npanic=$(grep -ci 'panic' "$WORK/corekv-baseline.log" || true)
        [ "${npanic:-0}" = 0 ] || finding "baseline server log mentions 'panic' $npanic times"
        { echo "===== corekv --commit-batch $BASELINE_BATCH log (last 30 lines)"; tail -n 30 "$WORK/corekv-baseline.log"; } >>"$RUN_LOG"
    fi
    corekv_stop
fi

# ---------------------------------------------------------------- 6. report
{
    echo "# corekv benchmark results"
    echo
    env_header "$WORK"
    echo "- dataset: $KEYS keys key-0..key-$((KEYS - 1)), ${VALUE_SIZE} B values, $NSHARDS shards; GET/SET scenarios use the $NK0 keys owned by shard 0"
    echo "- machine busy before the suite: ${BUSY_BEFORE}% of one core (\"other CPU\" below: CPU used during a run by neither the server nor the load generator)"
    echo "- corekv idle CPU ${IDLE_PCT}% of one core; RSS ${RSS_LOADED:-?} KiB after preload, ${RSS_END:-?} KiB at the end; data dir ${DISK_AFTER_LOAD:-?} after preload, ${DISK_END:-?} at the end"
    if want set-baseline; then
        echo "- \"1 fsync/write (baseline)\": a second, fresh corekv started with \`--commit-batch $BASELINE_BATCH\` (same layout, own data dir, ports $BASELINE_PORT-$((BASELINE_PORT + 2 * NSHARDS - 1))) once the main server had stopped (shard-0 keys preloaded, then the same durable SET load); \"req/s vs 1 fsync/write\" divides a durable SET row by the baseline row of the same tool"
    fi
    echo "- server CPU = utime+stime of the server process (nginx: master + worker) over the run ÷ responses; ratios compare with nginx measured by the same tool in this run (pipelined with pipelined nginx)"
} >"$WORK/header.md"
python3 "$BENCH_DIR/report.py" table "$INDEX" --header "$WORK/header.md" >"$WORK/latest.md"
if [ -s "$FINDINGS" ]; then
    { echo; echo "Findings:"; echo; cat "$FINDINGS"; } >>"$WORK/latest.md"
fi
cp "$WORK/latest.md" "$RESULTS_DIR/latest.md"
echo
cat "$WORK/latest.md"
echo
log "wrote $RESULTS_DIR/latest.md and $RESULTS_DIR/latest.log"
[ $alive = 1 ] && [ $BASE_ALIVE = 1 ]
