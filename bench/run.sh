#!/usr/bin/env bash
# corekv benchmark suite: one command, bounded (about 8 min once tools are
# installed and the release build is cached; < 12 min with DURATION=10).
#
#   bash bench/run.sh
#
# Every corekv row is compared with nginx (1 worker, `return 200 "v"`)
# measured in the same run by the same tool at the same connection count:
# req/s, p50, p99, p99.9 and server CPU per request, each with its ratio.
# The end of the report lists the tail-latency targets as MET / NOT MET.
#
# Knobs (environment): DURATION=5 (s per run), CONNS=64 (connections of the
# SET, mixed, pipelined and fixed-rate rows, and of the throughput targets),
# CONNS_LIST="64 1024" (connection counts of the GET rows and their nginx
# references), THREADS=2 (wrk), DEPTH=16 (pipelining), KEYS=10000 (preloaded
# keys), VALUE_SIZE=16, FIXED_KEY (the key of the fixed-key rows; default:
# the first shard-0 key), RATE_PCTS="50 90" (fixed-rate rows, % of nginx's
# oha req/s at CONNS), RATE_ROUNDS=3 (interleaved rounds of the wrk rows at
# CONNS and of the fixed-rate rows; the report compares medians), WSET_PCT=10 (share of SETs in the reads-while-writing
# rows), WSET_CONNS=32 (their SET client's connections), WSET_RATE (their SET
# rate; default from the owner GET oha row), FSYNC_COUNT=2000 /
# FSYNC_MAX_S=10 (fsync probe), BASE_PORT=19080, NGINX_PORT=18080,
# SKIP_INSTALL=1, SKIP_BUILD=1, SKIP_OHA=1, KEEP_TMP=1, COREKV_BIN=path,
# COREKV_OPTS="..." (extra options of the main server),
# ONLY="get-owner set" (run only these corekv scenarios: get-owner get-fwd
# get-replica get-rate get-pipe get-while-set fsync set mixed set-baseline;
# the nginx references always run, its fixed-rate rows only with get-rate
# or get-while-set), BASELINE_BATCH=1 (--commit-batch of the set-baseline
# server), BASELINE_PORT=BASE_PORT+10 (first port of the set-baseline server),
# QUIET_PCT=20 / QUIET_MAX_WAIT=30 / QUIET_BUDGET=120 (before each run, wait
# for other processes to use < QUIET_PCT % of a core; QUIET_BUDGET=0: never).
#
# Output: markdown tables on stdout and in bench/results/latest.md; every
# raw wrk/oha output in bench/results/latest.log.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DURATION="${DURATION:-5}"
CONNS="${CONNS:-64}"
CONNS_LIST="${CONNS_LIST:-64 1024}"
THREADS="${THREADS:-2}"
DEPTH="${DEPTH:-16}"
KEYS="${KEYS:-10000}"
VALUE_SIZE="${VALUE_SIZE:-16}"
BASE_PORT="${BASE_PORT:-19080}"
NGINX_PORT="${NGINX_PORT:-18080}"
RATE_PCTS="${RATE_PCTS:-50 90}"
RATE_ROUNDS="${RATE_ROUNDS:-3}"
WSET_PCT="${WSET_PCT:-10}"
WSET_CONNS="${WSET_CONNS:-32}"
FSYNC_COUNT="${FSYNC_COUNT:-2000}"
FSYNC_MAX_S="${FSYNC_MAX_S:-10}"
NSHARDS=3
export DURATION THREADS

bench_workdir bench
FINDINGS="$WORK/findings.md"; : >"$FINDINGS"
BG_PID=""   # the SET client of a reads-while-writing row, while it runs

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$BG_PID" ]; then kill "$BG_PID" 2>/dev/null || true; wait "$BG_PID" 2>/dev/null || true; fi
    nginx_stop || true
    corekv_stop || true
    bench_finish "$rc" latest.log
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

finding() { log "FINDING: $*"; echo "- $*" >>"$FINDINGS"; }
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
use_oha() { [ "${SKIP_OHA:-0}" != 1 ]; }
# row_get TOOL ID KEY: one number of an already measured row (empty if none).
row_get() { python3 "$BENCH_DIR/report.py" get "$1" "$RAW_DIR/$2.txt" "$3" 2>/dev/null || true; }

# ---------------------------------------------------------------- 1. tools
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    bash "$BENCH_DIR/install.sh"
fi
for t in wrk python3 curl; do
    command -v "$t" >/dev/null || die "$t not found (run bench/install.sh)"
done
if use_oha; then command -v oha >/dev/null || die "oha not found (run bench/install.sh, or SKIP_OHA=1)"; fi
nginx_bin >/dev/null || die "nginx not found (run bench/install.sh)"

# Connection counts: every distinct one of CONNS_LIST and CONNS, in order.
# shellcheck disable=SC2086 # word splitting wanted: lists of numbers
ALL_CONNS="$(printf '%s\n' $CONNS_LIST "$CONNS" | awk 'NF && !seen[$0]++' | tr '\n' ' ')"
# shellcheck disable=SC2086
MAX_CONNS="$(printf '%s\n' $ALL_CONNS | sort -n | tail -n 1)"
# 1024 connections need more than the usual 1024 descriptors, in the load
# generators and in the servers (both started from this shell).
NOFILE_WANT=65536
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt "$NOFILE_WANT" ]; then NOFILE_WANT="$hard"; fi
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$NOFILE_WANT" ]; then
    ulimit -n "$NOFILE_WANT" || log "could not raise ulimit -n to $NOFILE_WANT"
fi
NOFILE="$(ulimit -n)"
log "open files limit: $NOFILE (largest connection count: $MAX_CONNS)"
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((MAX_CONNS + 512)) ]; then
    finding "ulimit -n is $NOFILE (hard limit $hard): too low for $MAX_CONNS connections; those rows will show socket errors"
fi

# ---------------------------------------------------------------- 2. build
server_binary
python3 "$BENCH_DIR/keys.py" selftest

# ---------------------------------------------------------------- 3. keys
P0=$BASE_PORT                      # primary of shard 0
P1=$((BASE_PORT + 1))              # primary of shard 1 (forwards shard-0 keys)
R0=$((BASE_PORT + NSHARDS))        # replica of shard 0
python3 "$BENCH_DIR/keys.py" keys --shards $NSHARDS --idx 0 --universe "$KEYS" --count "$KEYS" >"$WORK/keys0.txt"
NK0=$(wc -l <"$WORK/keys0.txt")
log "$NK0 of $KEYS keys belong to shard 0"
# The fixed-key rows: one constant request for one key of shard 0, so the
# client does no per-request work (wrk sends a prebuilt buffer).
FIXED_KEY="${FIXED_KEY:-$(head -n 1 "$WORK/keys0.txt")}"
[ "$(python3 "$BENCH_DIR/keys.py" shard --shards $NSHARDS "$FIXED_KEY" | cut -f2)" = 0 ] \
    || die "FIXED_KEY=$FIXED_KEY is not a shard-0 key"
grep -qxF -- "$FIXED_KEY" "$WORK/keys0.txt" || die "FIXED_KEY=$FIXED_KEY is not among the preloaded keys"
FIXED_PATH="/get?key=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$FIXED_KEY")"
VALUE="$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' v)"
mk_urls() { # PORT OP OUT
    python3 "$BENCH_DIR/keys.py" urls --base "http://127.0.0.1:$1" --keyfile "$WORK/keys0.txt" \
        --op "$2" --value "$VALUE" >"$3"
}
mk_urls "$NGINX_PORT" get "$WORK/urls-nginx.txt"
mk_urls "$P0" get "$WORK/urls-get-owner.txt"
mk_urls "$P1" get "$WORK/urls-get-fwd.txt"
mk_urls "$R0" get "$WORK/urls-get-replica.txt"
mk_urls "$P0" set "$WORK/urls-set.txt"
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
# The same three clients as the corekv GET rows, at every connection count:
#   wrk      one constant request (GET /get?key=FIXED_KEY), no Lua per request
#   wrk+lua  bench/lua/corekv.lua mode=get: a new /get?key=K per request
#   oha      --urls-from-file: a random /get?key=K of the shard-0 keys
# nginx answers every path with "v", so request sizes match corekv's.
log "== reference: nginx, 1 worker, 127.0.0.1:$NGINX_PORT"
nginx_start "$NGINX_PORT" "$WORK/nginx" || die "could not start nginx"
NG="http://127.0.0.1:$NGINX_PORT"
NGS="nginx, return 200 (reference)"
for c in $ALL_CONNS; do
    # wrk at CONNS: in rounds beside corekv's (run_rounds).
    [ "$c" = "$CONNS" ] || MEASURE_EXTRA="g=nginx" measure "nginx-wrk-$c" "$NGS" wrk ":$NGINX_PORT" "$c" 1 \
        "nginx-wrk-$c" "$NGINX_PID" "$NG/" -- wrk_run "$NG" "$c" mode=fixed path="$FIXED_PATH" || true
    MEASURE_EXTRA="g=nginx" measure "nginx-lua-$c" "$NGS" wrk+lua ":$NGINX_PORT" "$c" 1 "nginx-lua-$c" "$NGINX_PID" "$NG/" \
        -- wrk_run "$NG" "$c" mode=get keys="$WORK/keys0.txt" || true
    if use_oha; then
        MEASURE_EXTRA="g=nginx" measure "nginx-oha-$c" "$NGS" oha ":$NGINX_PORT" "$c" 1 "nginx-oha-$c" "$NGINX_PID" "$NG/" \
            -- oha_run "$c" --urls-from-file "$WORK/urls-nginx.txt" || true
    fi
done
MEASURE_EXTRA="g=nginx" measure nginx-pipe "$NGS, pipelined" wrk+lua ":$NGINX_PORT" "$CONNS" "$DEPTH" nginx-pipe "$NGINX_PID" "$NG/" \
    -- wrk_run "$NG" "$CONNS" mode=get keys="$WORK/keys0.txt" depth="$DEPTH" || true

# Fixed rates: RATE_PCTS % of what oha got from nginx at CONNS connections.
# nginx's fixed-rate rows run later, interleaved with corekv's (run_rounds).
declare -A RATE=()
if use_oha && { want get-rate || want get-while-set; }; then
    NG_MAX="$(row_get oha "nginx-oha-$CONNS" rps)"
    if [ -n "$NG_MAX" ] && [ "${NG_MAX%.*}" -gt 0 ]; then
        for pct in $RATE_PCTS; do
            RATE[$pct]=$(( ${NG_MAX%.*} * pct / 100 ))
        done
    else
        finding "no nginx oha rate at $CONNS connections: the fixed-rate rows are skipped"
    fi
fi
nginx_stop
# shellcheck disable=SC2086
RATE1="$(set -- $RATE_PCTS; echo "${1:-}")"   # the first (lowest) rate: reads-while-writing at a fixed rate

# ---------------------------------------------------------------- 5. corekv
log "== corekv: $NSHARDS shards, primaries $P0-$((P0 + NSHARDS - 1)), replicas $R0-$((R0 + NSHARDS - 1))"
write_sharding_toml "$WORK/sharding.toml" $NSHARDS "$BASE_PORT"
ALL_PORTS=$(seq "$BASE_PORT" $((BASE_PORT + 2 * NSHARDS - 1)))
# COREKV_OPTS: extra server options for the main server, e.g. "--preempt-us 1000".
read -r -a COREKV_ARGS <<< "${COREKV_OPTS:-}"
# shellcheck disable=SC2086
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

# run_get GROUP SCENARIO PORT URLFILE: the GET rows of one target, with the
# three clients at every connection count of CONNS_LIST.
run_get() {
    local g="$1" scen="$2" port="$3" urls="$4" c
    want "$g" || return 0
    for c in $CONNS_LIST; do
        # wrk at CONNS: in rounds beside nginx's (run_rounds).
        if [ "$c" != "$CONNS" ]; then
            MEASURE_EXTRA="g=$g" measure "$g-wrk-$c" "$scen" wrk ":$port" "$c" 1 "nginx-wrk-$c" "$COREKV_PID" "$HK" \
                -- wrk_run "$K:$port" "$c" mode=fixed path="$FIXED_PATH" || return 1
        fi
        MEASURE_EXTRA="g=$g" measure "$g-lua-$c" "$scen" wrk+lua ":$port" "$c" 1 "nginx-lua-$c" "$COREKV_PID" "$HK" \
            -- wrk_run "$K:$port" "$c" mode=get keys="$WORK/keys0.txt" || return 1
        if use_oha; then
            MEASURE_EXTRA="g=$g" measure "$g-oha-$c" "$scen" oha ":$port" "$c" 1 "nginx-oha-$c" "$COREKV_PID" "$HK" \
                -- oha_run "$c" --urls-from-file "$urls" || return 1
        fi
    done
}

# round_row ROUND ID AGGREF EXTRA -- SCENARIO TOOL TARGET CONNS DEPTH PID
# HEALTH -- CMD...: one run of one round (row ID-rROUND, compared with
# nginx's row AGGREF-rROUND of the same round; EXTRA as in MEASURE_EXTRA);
# the report replaces a row's rounds by their median (row ID) and compares
# it with nginx's median (row AGGREF).
round_row() {
    local round="$1" id="$2" aggref="$3" extra="$4"; shift 4
    [ "$1" = "--" ] && shift
    local scen="$1" tool="$2" target="$3" conns="$4" depth="$5" pid="$6" health="$7"; shift 7
    MEASURE_EXTRA="$extra;round=$round;agg=$id;aggref=$aggref" \
        measure "$id-r$round" "$scen" "$tool" "$target" "$conns" "$depth" "$aggref-r$round" "$pid" "$health" "$@"
}

# run_rounds: the rows the throughput and fixed-rate targets read, measured
# in RATE_ROUNDS interleaved rounds: wrk (fixed key, CONNS connections) on
# nginx, the owner, the replica and the forwarded GET, round after round;
# then oha at each rate of RATE_PCTS in the same order. nginx (idle while
# corekv is measured, and the other way round) runs beside corekv, so the
# runs of one round see the same machine: on a shared 2-core VM one 5 s
# run's p99 swings 2-3x and its req/s 10-20% from one minute to the next.
run_rounds() {
    nginx_start "$NGINX_PORT" "$WORK/nginx-rounds" || die "nginx did not start again for the interleaved rounds"
    local round pct g port urls rc=0
    local -A SCEN=([get-owner]="GET, key on this primary" [get-replica]="GET from the replica" [get-fwd]="GET, forwarded in-process")
    local -A PORT=([get-owner]="$P0" [get-replica]="$R0" [get-fwd]="$P1")
    for ((round = 1; round <= RATE_ROUNDS; round++)); do
        round_row "$round" "nginx-wrk-$CONNS" "nginx-wrk-$CONNS" "g=nginx" -- "$NGS" wrk ":$NGINX_PORT" "$CONNS" 1 \
            "$NGINX_PID" "$NG/" -- wrk_run "$NG" "$CONNS" mode=fixed path="$FIXED_PATH" || true
        for g in get-owner get-replica get-fwd; do
            want "$g" || continue
            port="${PORT[$g]}"
            round_row "$round" "$g-wrk-$CONNS" "nginx-wrk-$CONNS" "g=$g" -- "${SCEN[$g]}" wrk ":$port" "$CONNS" 1 \
                "$COREKV_PID" "$HK" -- wrk_run "$K:$port" "$CONNS" mode=fixed path="$FIXED_PATH" || { rc=1; break 2; }
        done
    done
    if [ "$rc" = 0 ] && use_oha && [ ${#RATE[@]} -gt 0 ] && { want get-rate || want get-while-set; }; then
        for ((round = 1; round <= RATE_ROUNDS; round++)); do
            for pct in $RATE_PCTS; do
                [ -n "${RATE[$pct]:-}" ] || continue
                round_row "$round" "nginx-rate$pct" "nginx-rate$pct" "g=nginx;sec=rate;pct=$pct;rate=${RATE[$pct]}" \
                    -- "$NGS, ${pct}% of its oha max" oha ":$NGINX_PORT" "$CONNS" 1 "$NGINX_PID" "$NG/" \
                    -- oha_rate_run "$CONNS" "${RATE[$pct]}" --urls-from-file "$WORK/urls-nginx.txt" || true
                want get-rate || continue
                for g in get-owner get-replica get-fwd; do
                    port="${PORT[$g]}"; urls="$WORK/urls-$g.txt"
                    round_row "$round" "$g-rate$pct" "nginx-rate$pct" "g=$g;sec=rate;pct=$pct;rate=${RATE[$pct]}" \
                        -- "${SCEN[$g]}, ${pct}% of nginx's max" oha ":$port" "$CONNS" 1 "$COREKV_PID" "$HK" \
                        -- oha_rate_run "$CONNS" "${RATE[$pct]}" --urls-from-file "$urls" || { rc=1; break 3; }
                done
            done
        done
    fi
    nginx_stop
    return "$rc"
}

# run_pair GROUP SCENARIO PORT URLFILE LUA_ARGS...: wrk+lua and oha at CONNS.
run_pair() {
    # BASE=GROUP: compare with the rows of that group (column "vs 1 fsync/write").
    local g="$1" scen="$2" port="$3" urls="$4"; shift 4
    want "$g" || return 0
    MEASURE_BASE="${BASE:+$BASE-lua-$CONNS}" MEASURE_EXTRA="g=$g" measure "$g-lua-$CONNS" "$scen" wrk+lua ":$port" \
        "$CONNS" 1 "nginx-lua-$CONNS" "$COREKV_PID" "$HK" -- wrk_run "$K:$port" "$CONNS" "$@" || return 1
    if use_oha; then
        MEASURE_BASE="${BASE:+$BASE-oha-$CONNS}" MEASURE_EXTRA="g=$g" measure "$g-oha-$CONNS" "$scen" oha ":$port" \
            "$CONNS" 1 "nginx-oha-$CONNS" "$COREKV_PID" "$HK" -- oha_run "$CONNS" --urls-from-file "$urls" || return 1
    fi
}

# with_set_load CMD...: runs CMD (the measured GET client) while a second
# client sends durable SETs of shard-0 keys to their owner for as long:
# oha at WSET_SET_RATE req/s over WSET_CONNS connections (latency from when
# each SET was due), or, with SKIP_OHA=1, wrk+lua with 4 connections.
# The SET client's output goes to WSET_SET_RAW.
with_set_load() {
    local rc=0 src=0
    local -a argv
    if use_oha; then
        oha_argv "$WSET_CONNS" -q "$WSET_SET_RATE" --latency-correction --urls-from-file "$WORK/urls-set.txt"
        argv=("${OHA_ARGV[@]}")
    else
        wrk_argv "$K:$P0" 4 mode=set keys="$WORK/keys0.txt" value="$VALUE"
        argv=("${WRK_ARGV[@]}")
    fi
    printf '%q ' "${argv[@]}" >"$WSET_SET_RAW.cmd"
    # A simple command: $! is timeout's own PID (the cleanup trap stops it).
    "${argv[@]}" >"$WSET_SET_RAW" 2>&1 &
    BG_PID=$!
    "$@" || rc=$?
    wait "$BG_PID" || src=$?
    BG_PID=""
    [ "$src" = 0 ] || log "the SET client exited with status $src (see $WSET_SET_RAW)"
    return "$rc"
}

# run_wset ID SCENARIO TOOL REF ALONE SET_RATE [GET_RATE] -- CMD...: one
# reads-while-writing row pair: the GET client CMD (row ID, compared with
# nginx row REF and with ALONE, the same GETs without writes) and the SET
# client (row ID-set). The server CPU of the GET row covers both clients.
run_wset() {
    local id="$1" scen="$2" tool="$3" ref="$4" alone="$5" srate="$6" grate="${7:-}" rc=0
    shift 7
    [ "$1" = "--" ] && shift
    local setraw="$RAW_DIR/$id-set.txt" stool=oha sconns="$WSET_CONNS" sextra
    use_oha || { stool=wrk+lua; sconns=4; }
    WSET_SET_RAW="$setraw" WSET_SET_RATE="$srate" \
        MEASURE_EXTRA="g=wset;sec=wset;role=get;alone=$alone;pair=$id-set${grate:+;rate=$grate}" \
        measure "$id" "GETs: $scen" "$tool" ":$P0" "$CONNS" 1 "$ref" "$COREKV_PID" "$HK" \
        -- with_set_load "$@" || rc=1
    { echo "===== $id-set: the SET client of $id (ran at the same time)"; printf '$ '; cat "$setraw.cmd" 2>/dev/null; echo
      cat "$setraw"; } >>"$RUN_LOG"
    sextra="g=wset;sec=wset;role=set;pair=$id"
    use_oha && sextra="$sextra;rate=$srate"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$id-set" "SETs next to: $scen" "$stool" ":$P0" "$sconns" 1 "$setraw" -1 "$CLK_TCK" 1 - 0 0 0 0 - "$sextra" >>"$INDEX"
    log "   -> SET client: $(python3 "$BENCH_DIR/report.py" parse "$stool" "$setraw" 2>&1 | cut -c1-160)"
    return "$rc"
}

alive=1
run_get get-owner "GET, key on this primary" "$P0" "$WORK/urls-get-owner.txt" || alive=0
[ $alive = 1 ] && { run_get get-replica "GET from the replica" "$R0" "$WORK/urls-get-replica.txt" || alive=0; }
[ $alive = 1 ] && { run_get get-fwd "GET, forwarded in-process" "$P1" "$WORK/urls-get-fwd.txt" || alive=0; }
[ $alive = 1 ] && { run_rounds || alive=0; }
[ $alive = 1 ] && want get-pipe && { MEASURE_EXTRA="g=get-pipe" measure get-pipe "GET pipelined, key on this primary" \
    wrk+lua ":$P0" "$CONNS" "$DEPTH" nginx-pipe "$COREKV_PID" "$HK" \
    -- wrk_run "$K:$P0" "$CONNS" mode=get keys="$WORK/keys0.txt" depth="$DEPTH" || alive=0; }

# Reads while durable writes run: "reads never wait behind fsyncs".
if [ $alive = 1 ] && want get-while-set; then
    # SETs at WSET_PCT % of the requests: WSET_PCT/(100-WSET_PCT) of the
    # owner's GET rate measured above without writes.
    src="owner GET oha row"; get_rps="$(row_get oha "get-owner-oha-$CONNS" rps)"
    [ -n "$get_rps" ] || { src="owner GET wrk row"; get_rps="$(row_get wrk "get-owner-wrk-$CONNS-r1" rps)"; }
    if [ -z "$get_rps" ]; then
        src="half of nginx's oha row"; get_rps="$(row_get oha "nginx-oha-$CONNS" rps)"
        [ -z "$get_rps" ] || get_rps=$(( ${get_rps%.*} / 2 ))
    fi
    [ -n "$get_rps" ] || { src="a guess"; get_rps=90000; }
    SRATE="${WSET_RATE:-$(( ${get_rps%.*} * WSET_PCT / (100 - WSET_PCT) ))}"
    [ -z "${WSET_RATE:-}" ] || src="WSET_RATE"
    log "reads while writing: SETs at $SRATE req/s next to each GET client (from $src: ${get_rps%.*} GET/s)"
    run_wset wset-wrk "wrk, fixed key, as fast as it can" wrk "nginx-wrk-$CONNS" "get-owner-wrk-$CONNS" "$SRATE" "" \
        -- wrk_run "$K:$P0" "$CONNS" mode=fixed path="$FIXED_PATH" || alive=0
    if [ $alive = 1 ] && use_oha; then
        run_wset wset-oha "oha, as fast as it can" oha "nginx-oha-$CONNS" "get-owner-oha-$CONNS" "$SRATE" "" \
            -- oha_run "$CONNS" --urls-from-file "$WORK/urls-get-owner.txt" || alive=0
    fi
    if [ $alive = 1 ] && use_oha && [ -n "$RATE1" ] && [ -n "${RATE[$RATE1]:-}" ]; then
        r="${RATE[$RATE1]}"
        run_wset wset-rate "oha at ${RATE1}% of nginx's max" oha "nginx-rate$RATE1" "get-owner-rate$RATE1" \
            "$(( r * WSET_PCT / (100 - WSET_PCT) ))" "$r" \
            -- oha_rate_run "$CONNS" "$r" --urls-from-file "$WORK/urls-get-owner.txt" || alive=0
    fi
fi

# The floor under a durable write: a bare write + fdatasync on the data
# dir's file system, right before the durable SET rows.
if [ $alive = 1 ] && { want fsync || want set; }; then
    mkdir -p "$WORK/fsync-probe"
    FS="$(df -T "$WORK/data" 2>/dev/null | awk 'NR==2 {print $2}')"
    [ "$(stat -c %d "$WORK/fsync-probe")" = "$(stat -c %d "$WORK/data")" ] \
        || finding "the fsync probe's directory is not on the data dir's file system"
    MEASURE_EXTRA="g=fsync" measure fsync-probe "bare fdatasync, no server (probe)" fsync "${FS:-?}, same fs as the data dir" \
        1 1 - "$COREKV_PID" "$HK" -- timeout -k 5 $((FSYNC_MAX_S + 30)) python3 "$BENCH_DIR/fsync_probe.py" \
        "$WORK/fsync-probe" --count "$FSYNC_COUNT" --max-seconds "$FSYNC_MAX_S" || alive=0
fi
[ $alive = 1 ] && { BASE=set-baseline run_pair set "durable SET, one shard" "$P0" "$WORK/urls-set.txt" \
    mode=set keys="$WORK/keys0.txt" value="$VALUE" || alive=0; }
[ $alive = 1 ] && { run_pair mixed "mixed 90% GET / 10% SET" "$P0" "$WORK/urls-mixed.txt" \
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
    echo "- clients: \`wrk\` = one constant request \`GET $FIXED_PATH\` (a shard-0 key), no Lua per request; \`wrk+lua\` = bench/lua/corekv.lua builds every request (keys rotate); \`oha\` = a random URL of the key list per request; GET rows at ${CONNS_LIST// /, } connections, the others at $CONNS; open files limit $NOFILE"
    echo "- every \"(x×)\" is the ratio to nginx (1 worker, \`return 200 \"v\"\`, same paths) measured in this run by the same client at the same connection count (fixed-rate rows: nginx at the same rate; pipelined rows: nginx pipelined the same way); for req/s higher is better, for latency and CPU lower"
    echo "- machine busy before the suite: ${BUSY_BEFORE}% of one core (\"other CPU\" below: CPU used during a run by neither the server nor the load generator)"
    echo "- corekv idle CPU ${IDLE_PCT}% of one core; RSS ${RSS_LOADED:-?} KiB after preload, ${RSS_END:-?} KiB at the end; data dir ${DISK_AFTER_LOAD:-?} after preload, ${DISK_END:-?} at the end"
    if want set-baseline; then
        echo "- \"1 fsync/write (baseline)\": a second, fresh corekv started with \`--commit-batch $BASELINE_BATCH\` (same layout, own data dir, ports $BASELINE_PORT-$((BASELINE_PORT + 2 * NSHARDS - 1))) once the main server had stopped (shard-0 keys preloaded, then the same durable SET load); \"req/s vs 1 fsync/write\" divides a durable SET row by the baseline row of the same tool"
    fi
    echo "- server CPU = utime+stime of the server process (nginx: master + worker) over the run ÷ responses"
} >"$WORK/header.md"
python3 "$BENCH_DIR/report.py" table "$INDEX" --header "$WORK/header.md" --conns "$CONNS" >"$WORK/latest.md"
if [ -s "$FINDINGS" ]; then
    { echo; echo "Findings:"; echo; cat "$FINDINGS"; } >>"$WORK/latest.md"
fi
cp "$WORK/latest.md" "$RESULTS_DIR/latest.md"
echo
cat "$WORK/latest.md"
echo
log "wrote $RESULTS_DIR/latest.md and $RESULTS_DIR/latest.log"
[ $alive = 1 ] && [ $BASE_ALIVE = 1 ]
