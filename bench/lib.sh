# shellcheck shell=bash
# Shared helpers for bench/run.sh, bench/scaling.sh and bench/soak.sh (source
# it, don't run it).
# Everything here talks to 127.0.0.1 only and is bounded in time.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$BENCH_DIR/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=bench/nginx.sh
. "$BENCH_DIR/nginx.sh"

CLK_TCK="$(getconf CLK_TCK)"
COREKV_PID=""
COREKV_BIN="${COREKV_BIN:-$ROOT_DIR/target/release/corekv}"
# Extra command-line options for the next corekv_start (e.g. --commit-batch 1).
COREKV_ARGS=()

# Logs go to the stderr the script started with (fd 9), so that messages of a
# signal trap that fires during a redirected command are not lost in a file.
exec 9>&2
log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&9; }
die() { log "ERROR: $*"; exit 1; }

# bench_workdir NAME: RESULTS_DIR (created), WORK (a fresh temp dir
# corekv-NAME.XXXXXX), RAW_DIR, INDEX and RUN_LOG (empty) in it, START_TS.
bench_workdir() {
    RESULTS_DIR="${RESULTS_DIR:-$BENCH_DIR/results}"
    mkdir -p "$RESULTS_DIR"
    WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/corekv-$1.XXXXXX")"
    RAW_DIR="$WORK/raw"; mkdir -p "$RAW_DIR"
    INDEX="$WORK/index.tsv"; : >"$INDEX"
    RUN_LOG="$WORK/run.log"; : >"$RUN_LOG"
    START_TS=$SECONDS
}

# bench_finish RC [LOG_NAME]: the end of every script's EXIT trap: copies
# RUN_LOG to RESULTS_DIR/LOG_NAME (when given and not empty), removes WORK
# (unless KEEP_TMP=1) and exits with RC.
bench_finish() {
    local rc=$1 name=${2:-}
    if [ -n "$name" ] && [ -s "$RUN_LOG" ]; then cp "$RUN_LOG" "$RESULTS_DIR/$name" 2>/dev/null || true; fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    log "done in $((SECONDS - START_TS)) s (exit $rc)"
    exit "$rc"
}

# server_binary: builds corekv and its bench helper `soakclient` (the soak
# client, also `soakclient place`, the key placement bench/keys.py asks)
# unless SKIP_BUILD=1, and points COREKV_BIN and COREKV_PLACE at private
# copies in WORK, so that a rebuild during the run cannot swap them.
server_binary() {
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "cargo build --release (server and the soakclient example)"
        (cd "$ROOT_DIR" && timeout 1500 cargo build --release --quiet --bin corekv --example soakclient) \
            || die "cargo build --release failed"
    fi
    [ -x "$COREKV_BIN" ] || die "no binary at $COREKV_BIN"
    local place="$ROOT_DIR/target/release/examples/soakclient"
    [ -x "$place" ] || die "no $place (cargo build --release --example soakclient)"
    cp "$COREKV_BIN" "$WORK/corekv"
    cp "$place" "$WORK/soakclient"
    log "server binary: $COREKV_BIN ($(stat -c '%y' "$COREKV_BIN" | cut -d. -f1), sha256 $(sha256sum "$COREKV_BIN" | cut -c1-12))"
    COREKV_BIN="$WORK/corekv"
    COREKV_PLACE="$WORK/soakclient"
    export COREKV_PLACE
}

# cpu_ticks PID: utime+stime (clock ticks) of PID and its direct children
# (nginx master + worker). For a multi-threaded process /proc/PID/stat
# already sums all threads. Prints nothing and fails if PID is gone.
cpu_ticks() {
    local pid="$1" total=0 p line rest
    [ -r "/proc/$pid/stat" ] || return 1
    local kids=""
    kids="$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
    for p in $pid $kids; do
        line="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        rest="${line##*) }"            # drop "pid (comm) " (comm may hold spaces)
        # shellcheck disable=SC2086
        set -- $rest                   # $1=state ... $12=utime $13=stime
        total=$(( total + ${12} + ${13} ))
    done
    echo "$total"
}

# machine_busy: busy jiffies of all CPUs (user nice system irq softirq steal).
machine_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# children_cpu_ms VAR: stores in VAR the user+sys CPU (ms) of this shell's
# waited-for children (the `times` builtin): the load generator's own CPU.
# `times` must run in this shell, not in a $(...) subshell, hence the file.
children_cpu_ms() {
    local f="${TMPDIR:-/tmp}/.corekv-bench-times.$$"
    times >"$f"
    printf -v "$1" '%s' "$(tail -n 1 "$f" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] } printf "%d", t * 1000 }')"
    rm -f "$f"
}

# rss_kib PID: VmRSS of PID in KiB.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null; }

# wait_http URL TIMEOUT_S [PID]: poll until URL answers 2xx; fail on timeout
# or when PID (if given) exits.
wait_http() {
    local url="$1" timeout_s="$2" pid="${3:-}"
    local deadline=$(( $(date +%s) + timeout_s ))
    while :; do
        curl -sf -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited while waiting for $url"; return 1
        fi
        [ "$(date +%s)" -lt "$deadline" ] || { log "timeout (${timeout_s}s) waiting for $url"; return 1; }
        sleep 0.2
    done
}

port_busy() { curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; }

# write_sharding_toml FILE NSHARDS BASE_PORT: primaries BASE..BASE+N-1,
# replicas BASE+N..BASE+2N-1 (3 shards, 19080: primaries 19080-19082,
# replicas 19083-19085).
write_sharding_toml() {
    local file="$1" n="$2" base="$3" i
    : >"$file"
    for ((i = 0; i < n; i++)); do
        cat >>"$file" <<EOF
[[shards]]
name = "shard$((i + 1))"
idx = $i
address = "127.0.0.1:$((base + i))"
replica = "127.0.0.1:$((base + n + i))"

EOF
    done
}

# corekv_start CONFIG DATA_DIR LOGFILE HEALTH_PORTS...: start the server in
# the background (with the options in the COREKV_ARGS array, if any), wait
# (max COREKV_START_TIMEOUT s, default 30) for /health on every given port.
# Sets COREKV_PID.
corekv_start() {
    local config="$1" data="$2" logfile="$3"; shift 3
    [ -x "$COREKV_BIN" ] || die "no server binary at $COREKV_BIN"
    local p
    for p in "$@"; do
        port_busy "$p" && die "127.0.0.1:$p already answers; another server is running there"
    done
    mkdir -p "$data"
    "$COREKV_BIN" --config "$config" --data-dir "$data" "${COREKV_ARGS[@]}" >"$logfile" 2>&1 &
    COREKV_PID=$!
    log "started corekv PID $COREKV_PID${COREKV_ARGS[*]:+ (${COREKV_ARGS[*]})} (log $logfile)"
    local deadline=$(( $(date +%s) + ${COREKV_START_TIMEOUT:-30} ))
    for p in "$@"; do
        local left=$(( deadline - $(date +%s) ))
        [ "$left" -gt 0 ] || left=1
        if ! wait_http "http://127.0.0.1:$p/health" "$left" "$COREKV_PID"; then
            log "corekv did not become healthy on port $p; last log lines:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
    done
    log "corekv healthy on ports $*"
}

# corekv_stop: TERM exactly COREKV_PID, KILL after 10 s.
corekv_stop() {
    local pid="$COREKV_PID"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "corekv PID $pid ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    COREKV_PID=""
}

# wait_quiet PID: before a run, wait until the rest of the machine (all CPU
# minus PID's own) uses less than QUIET_PCT (20) % of one core over 1 s.
# Bounded: at most QUIET_MAX_WAIT (30) s per run and QUIET_BUDGET (120) s in
# total, so the suite's run time stays bounded on a busy machine.
QUIET_SPENT=0
wait_quiet() {
    local pid="$1" waited=0 b0 b1 p0 p1 other
    while :; do
        b0=$(machine_busy); p0=$(cpu_ticks "$pid" 2>/dev/null || echo 0)
        sleep 1
        b1=$(machine_busy); p1=$(cpu_ticks "$pid" 2>/dev/null || echo 0)
        other=$(( ((b1 - b0) - (p1 - p0)) * 100 / CLK_TCK ))
        [ "$other" -ge "${QUIET_PCT:-20}" ] || return 0
        if [ "$waited" -ge "${QUIET_MAX_WAIT:-30}" ] || [ "$QUIET_SPENT" -ge "${QUIET_BUDGET:-120}" ]; then
            log "machine still busy (${other}% of a core used by other processes); running anyway"
            return 0
        fi
        [ "$waited" -gt 0 ] || log "machine busy (${other}% of a core used by other processes); waiting up to ${QUIET_MAX_WAIT:-30} s"
        sleep 1
        waited=$((waited + 2)); QUIET_SPENT=$((QUIET_SPENT + 2))
    done
}

# measure ID SCENARIO TOOL TARGET CONNS DEPTH REF SERVER_PID HEALTH_URL -- CMD...
# Runs CMD (bounded), records server CPU ticks around it and appends a row
# to $INDEX. MEASURE_BASE (optional) names a second row to compare with (the
# one-fsync-per-write baseline of a durable SET row; the row's own id for the
# baseline itself). MEASURE_EXTRA (optional) is the row's `key=value;...`
# column for bench/report.py (scenario group, table section, asked rate...).
# Raw output goes to $RAW_DIR/ID.txt and is appended to $RUN_LOG.
measure() {
    local id="$1" scen="$2" tool="$3" target="$4" conns="$5" depth="$6" ref="$7" pid="$8" health="$9"
    shift 9
    [ "$1" = "--" ] && shift
    local raw="$RAW_DIR/$id.txt"
    local t0 t1 ok=1 rc=0 m0 m1 c0 c1
    [ "${QUIET_BUDGET:-120}" = 0 ] || wait_quiet "$pid"
    t0="$(cpu_ticks "$pid")" || { log "server PID $pid is gone before '$scen' ($tool)"; t0=0; ok=0; }
    log "run: $scen [$tool, $target, ${conns}x${depth}]"
    local w0 w1
    children_cpu_ms c0; m0="$(machine_busy)"; w0="$(date +%s%N)"
    "$@" >"$raw" 2>&1 || rc=$?
    w1="$(date +%s%N)"; m1="$(machine_busy)"; children_cpu_ms c1
    t1="$(cpu_ticks "$pid")" || { t1="$t0"; ok=0; }
    if [ "$ok" = 1 ] && [ -n "$health" ]; then
        curl -sf -o /dev/null --max-time 3 "$health" || { ok=0; log "server unhealthy after '$scen'"; }
    fi
    [ "$rc" = 0 ] || log "$tool exited with status $rc (see $raw)"
    {
        echo "===== $id: $scen [$tool $target ${conns}x${depth}] rc=$rc server_ok=$ok server_cpu_ticks=$((t1 - t0)) client_cpu_ms=$((c1 - c0)) machine_busy_ticks=$((m1 - m0))"
        printf '$'; printf ' %q' "$@"; echo
        cat "$raw"
    } >>"$RUN_LOG"
    local rss
    rss="$(rss_kib "$pid" 2>/dev/null || true)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$id" "$scen" "$tool" "$target" "$conns" "$depth" "$raw" "$((t1 - t0))" "$CLK_TCK" "$ok" "$ref" \
        "$((c1 - c0))" "$((m1 - m0))" "$(( (w1 - w0) / 1000000 ))" "${rss:-0}" "${MEASURE_BASE:--}" \
        "${MEASURE_EXTRA:--}" >>"$INDEX"
    local summary
    summary="$(python3 "$BENCH_DIR/report.py" parse "$tool" "$raw" 2>&1 | cut -c1-200)" || true
    log "   -> $summary"
    [ "$ok" = 1 ]
}

# wrk_run URL CONNS LUA_ARGS...: wrk with the suite's settings (bounded).
# wrk_argv sets WRK_ARGV to the same command line without running it (for a
# background client: `"${WRK_ARGV[@]}" &` makes $! the PID of `timeout`,
# which passes a TERM on to wrk).
wrk_argv() {
    local url="$1" conns="$2"; shift 2
    WRK_ARGV=(timeout -k 5 $(( ${DURATION:-10} + 30 ))
        wrk -t"${THREADS:-2}" -c"$conns" -d"${DURATION:-10}s" --timeout 5s
        -s "$BENCH_DIR/lua/corekv.lua" "$url" -- "$@")
}
wrk_run() { wrk_argv "$@"; "${WRK_ARGV[@]}"; }

# oha_run CONNS OHA_ARGS...: oha with the suite's settings (bounded). For key
# rotation pass `--urls-from-file FILE` (oha picks URLs from it at random).
# oha_argv: the same into OHA_ARGV, like wrk_argv.
oha_argv() {
    local conns="$1"; shift
    OHA_ARGV=(timeout -k 5 $(( ${DURATION:-10} + 30 ))
        oha --no-tui -z "${DURATION:-10}s" -c "$conns" -t 5s --output-format json "$@")
}
oha_run() { oha_argv "$@"; "${OHA_ARGV[@]}"; }

# oha_rate_run CONNS RATE OHA_ARGS...: oha at a fixed rate (RATE requests/s
# over all connections), latencies measured from when each request was due
# (--latency-correction), so a stalled server cannot hide its queue
# (no coordinated omission).
oha_rate_run() {
    local conns="$1" rate="$2"; shift 2
    oha_run "$conns" -q "$rate" --latency-correction "$@"
}

env_header() {
    # Markdown description of the machine and software for the results file.
    local commit fs
    commit="$(git -C "$ROOT_DIR" rev-parse --short HEAD 2>/dev/null || echo 'uncommitted')"
    fs="$(df -T "${1:-/tmp}" 2>/dev/null | awk 'NR==2 {print $2}')"
    cat <<EOF
- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')
- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)
- corekv: commit $commit$(git -C "$ROOT_DIR" diff --quiet HEAD -- src 2>/dev/null || echo ' + uncommitted changes'); data dir on ${fs:-?}
- clients: $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), $(oha --version 2>/dev/null); reference: $(nginx_bin >/dev/null && "$(nginx_bin)" -v 2>&1 | sed 's/nginx version: //')
- load: ${THREADS:-2} wrk threads (oha: 2 worker threads), ${DURATION:-10} s per run; clients and servers share the same $(nproc) cores
EOF
}

# etcd_start PORT DIR: a single-member etcd (Debian's etcd-server) on
# 127.0.0.1:PORT (peer port PORT+1), data in DIR; ETCD_PID, ETCD_URL.
etcd_start() {
    local port="$1" dir="$2"
    command -v etcd >/dev/null || die "etcd not found (apt-get install etcd-server)"
    mkdir -p "$dir"
    etcd --name bench --data-dir "$dir/data" \
        --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
        --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
        --initial-cluster "bench=http://127.0.0.1:$((port + 1))" >"$dir/etcd.log" 2>&1 &
    ETCD_PID=$!
    ETCD_URL="http://127.0.0.1:$port"
    wait_http "$ETCD_URL/health" 30 "$ETCD_PID" || { tail -n 20 "$dir/etcd.log" >&2; return 1; }
    log "etcd PID $ETCD_PID at $ETCD_URL"
}

# etcd_stop: TERM exactly ETCD_PID.
etcd_stop() {
    [ -n "${ETCD_PID:-}" ] || return 0
    kill -TERM "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
    ETCD_PID=""
}

# wait_ready TIMEOUT PORT...: with --etcd, /health answers before the
# elections end: wait until /ready (every local primary holds a lease,
# every local replica follows) answers 200 on each port.
wait_ready() {
    local timeout_s="$1" p; shift
    for p in "$@"; do
        wait_http "http://127.0.0.1:$p/ready" "$timeout_s" || return 1
    done
}
