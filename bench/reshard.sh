#!/usr/bin/env bash
# corekv online resharding benchmark: a one-process cluster of 2 shards (one
# replica each) under a 90% GET / 10% SET wrk load, measured BEFORE, DURING
# and AFTER `corekv reshard` doubles it to 4 shards; nginx (1 worker,
# `return 200 "v"`) measured by the same client in the same run is the
# reference. Bounded: about 1-2 min once the tools are installed and the
# release build is cached.
#
#   bash bench/reshard.sh
#
# The load: wrk + bench/lua/corekv.lua mode=mixed (SETPCT % SETs, the rest
# GETs, keys drawn at random from key-0..key-(KEYS-1), all preloaded), CONNS
# connections, all to the primary of old shard 0 (it forwards the keys it
# does not own, in-process). BEFORE and AFTER run DURATION s each. DURING
# starts wrk, then `corekv reshard --config NEW.toml`, and stops wrk (SIGINT:
# wrk reports what it measured so far) the moment the command exits, so the
# DURING row covers exactly the reshard (its length is in the table).
#
# Knobs (environment): DURATION=5, CONNS=32, THREADS=2 (wrk), KEYS=50000,
# VALUE_SIZE=16, SETPCT=10, PAUSE_MS=0 (`--pause-ms` of the reshard: > 0
# stretches it between phases), RESHARD_TIMEOUT=300 (s), BASE_PORT=19180
# (old primaries BASE, BASE+1, replicas BASE+2, BASE+3; the new shards
# BASE+4..BASE+7), NGINX_PORT=18180, SKIP_FRESH=1 (no fresh 4-shard
# reference row), SKIP_INSTALL=1, SKIP_BUILD=1, KEEP_TMP=1, COREKV_BIN=path,
# ETCD=1 (the cluster runs with `--etcd` on a single-member etcd started by
# this script on ETCD_PORT=18190: roles move through the control plane, the
# new shards get their first primary in a new epoch at the cutover; needs
# Debian's etcd-server).
#
# Last row: the NEW layout started fresh (own data dir, the same keys
# preloaded) under the same load: what 4 shards cost on this machine, to
# compare the AFTER row with.
#
# Output: a markdown table on stdout and in bench/results/reshard.md (reshard-etcd.md with ETCD=1); the
# raw wrk outputs, the reshard command's output and the server log's tail
# in bench/results/reshard.log. Exit status 0 only when the reshard exited
# 0, /admin/reshard says done with 4 shards and the server stayed up.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

DURATION="${DURATION:-5}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-2}"
KEYS="${KEYS:-50000}"
VALUE_SIZE="${VALUE_SIZE:-16}"
SETPCT="${SETPCT:-10}"
PAUSE_MS="${PAUSE_MS:-0}"
RESHARD_TIMEOUT="${RESHARD_TIMEOUT:-300}"
BASE_PORT="${BASE_PORT:-19180}"
NGINX_PORT="${NGINX_PORT:-18180}"
export DURATION THREADS

bench_workdir reshard
WRK_PID=""       # the DURING wrk, while it runs
RESHARD_PID=""   # the reshard command, while it runs

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in $WRK_PID $RESHARD_PID; do
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    nginx_stop || true
    corekv_stop || true
    etcd_stop || true
    bench_finish "$rc" reshard.log
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- tools
if [ "${SKIP_INSTALL:-0}" != 1 ]; then bash "$BENCH_DIR/install.sh"; fi
for t in wrk python3 curl; do
    command -v "$t" >/dev/null || die "$t not found (run bench/install.sh)"
done
nginx_bin >/dev/null || die "nginx not found (run bench/install.sh)"
server_binary

# ---------------------------------------------------------------- layout
OLD="$WORK/sharding.toml"
NEW="$WORK/sharding-new.toml"
write_sharding_toml "$OLD" 2 "$BASE_PORT"
cp "$OLD" "$NEW"
for i in 2 3; do
    cat >>"$NEW" <<EOF
[[shards]]
name = "shard$((i + 1))"
idx = $i
address = "127.0.0.1:$((BASE_PORT + 2 + i))"
replica = "127.0.0.1:$((BASE_PORT + 4 + i))"

EOF
done
P0=$BASE_PORT
OLD_PORTS="$(seq "$BASE_PORT" $((BASE_PORT + 3)))"
NEW_PORTS="$(seq $((BASE_PORT + 4)) $((BASE_PORT + 7)))"
for p in $OLD_PORTS $NEW_PORTS $NGINX_PORT; do
    port_busy "$p" && die "127.0.0.1:$p already answers; another server is running there"
done
KEYFILE="$WORK/keys.txt"
awk -v n="$KEYS" 'BEGIN { for (i = 0; i < n; i++) print "key-" i }' >"$KEYFILE"
VALUE="$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' v)"
MIXED=(mode=mixed setpct="$SETPCT" keys="$KEYFILE" value="$VALUE")

# wrk_window ID URL SECONDS: wrk with the mixed load for SECONDS (bounded),
# raw output in RAW_DIR/ID.txt and the run log.
wrk_window() {
    local id="$1" url="$2" secs="$3" rc=0
    log "run: $id [wrk+lua mixed ${SETPCT}% SET, $url, ${CONNS} connections, ${secs} s]"
    timeout -k 5 $((secs + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --timeout 5s \
        -s "$BENCH_DIR/lua/corekv.lua" "$url" -- "${MIXED[@]}" >"$RAW_DIR/$id.txt" 2>&1 || rc=$?
    [ "$rc" = 0 ] || log "wrk exited with status $rc (see $RAW_DIR/$id.txt)"
    { echo "===== $id ($url, ${secs} s) rc=$rc"; cat "$RAW_DIR/$id.txt"; } >>"$RUN_LOG"
}

# ---------------------------------------------------------------- nginx
log "== reference: nginx, 1 worker, 127.0.0.1:$NGINX_PORT"
nginx_start "$NGINX_PORT" "$WORK/nginx" || die "could not start nginx"
wrk_window nginx "http://127.0.0.1:$NGINX_PORT" "$DURATION"
nginx_stop

# ---------------------------------------------------------------- corekv
COREKV_ARGS=()
if [ "${ETCD:-0}" = 1 ]; then
    etcd_start "${ETCD_PORT:-18190}" "$WORK/etcd" || die "etcd did not start"
    COREKV_ARGS=(--etcd "$ETCD_URL" --etcd-prefix "/bench-reshard")
fi
# ready_primaries PORT...: with --etcd, wait for the elections.
ready_primaries() {
    [ "${ETCD:-0}" = 1 ] || return 0
    wait_ready 30 "$@"
}
log "== corekv: 2 shards (primaries $P0, $((P0 + 1)); replicas $((P0 + 2)), $((P0 + 3))) -> 4 shards"
# shellcheck disable=SC2086 # word splitting wanted: a list of ports
corekv_start "$OLD" "$WORK/data" "$WORK/corekv.log" $OLD_PORTS || die "corekv did not start"
ready_primaries "$P0" $((P0 + 1)) || die "no primaries elected"
log "preloading $KEYS keys (key-0..key-$((KEYS - 1)), ${VALUE_SIZE} B values) to their owner primaries"
python3 "$BENCH_DIR/keys.py" load --shards 2 --addr "0=127.0.0.1:$P0" --addr "1=127.0.0.1:$((P0 + 1))" \
    --prefix key- --count "$KEYS" --value-size "$VALUE_SIZE" --timeout 300 2>>"$RUN_LOG" \
    || die "preload failed: not every SET returned 200"

reshard_state() {
    curl -s --max-time 3 "http://127.0.0.1:$P0/admin/reshard" 2>/dev/null || echo '(no answer)'
}
log "before: /admin/reshard: $(reshard_state)"

wrk_window before "http://127.0.0.1:$P0" "$DURATION"

# DURING: wrk in the background (no `timeout` wrapper: SIGINT must reach wrk
# itself, which then prints its report), the reshard in the foreground of
# this window, wrk stopped when the command exits.
log "run: during [wrk+lua mixed ${SETPCT}% SET, http://127.0.0.1:$P0, ${CONNS} connections, while corekv reshard runs]"
wrk -t"$THREADS" -c"$CONNS" -d"$((RESHARD_TIMEOUT + 60))s" --timeout 5s \
    -s "$BENCH_DIR/lua/corekv.lua" "http://127.0.0.1:$P0" -- "${MIXED[@]}" >"$RAW_DIR/during.txt" 2>&1 &
WRK_PID=$!
sleep 0.5   # let wrk connect: the window starts with the load running
RESHARD_ARGS=(reshard --config "$NEW")
[ "$PAUSE_MS" = 0 ] || RESHARD_ARGS+=(--pause-ms "$PAUSE_MS")
t0=$(date +%s%N)
"$COREKV_BIN" "${RESHARD_ARGS[@]}" >"$WORK/reshard.out" 2>&1 &
RESHARD_PID=$!
deadline=$(( $(date +%s) + RESHARD_TIMEOUT ))
while kill -0 "$RESHARD_PID" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 0.05
done
t1=$(date +%s%N)
TIMED_OUT=0
if kill -0 "$RESHARD_PID" 2>/dev/null; then
    log "corekv reshard still running after ${RESHARD_TIMEOUT} s: killing it"
    kill -KILL "$RESHARD_PID" 2>/dev/null || true
    TIMED_OUT=1
fi
wait "$RESHARD_PID" && RESHARD_RC=0 || RESHARD_RC=$?
[ "$TIMED_OUT" = 0 ] || RESHARD_RC="timeout (killed)"
RESHARD_PID=""
RESHARD_MS=$(( (t1 - t0) / 1000000 ))
kill -INT "$WRK_PID" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$WRK_PID" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$WRK_PID" 2>/dev/null || true
wait "$WRK_PID" 2>/dev/null || true
WRK_PID=""
{ echo "===== during (http://127.0.0.1:$P0, while corekv reshard ran ${RESHARD_MS} ms)"; cat "$RAW_DIR/during.txt"
  echo "===== corekv ${RESHARD_ARGS[*]} -> exit $RESHARD_RC after ${RESHARD_MS} ms"; cat "$WORK/reshard.out"; } >>"$RUN_LOG"
log "corekv reshard exited $RESHARD_RC after ${RESHARD_MS} ms; its last lines:"
tail -n 5 "$WORK/reshard.out" >&9 || true
FINAL_STATE="$(reshard_state)"
log "after: /admin/reshard: $FINAL_STATE"

SERVER_OK=1
kill -0 "$COREKV_PID" 2>/dev/null || SERVER_OK=0
for p in $OLD_PORTS $NEW_PORTS; do
    curl -sf -o /dev/null --max-time 3 "http://127.0.0.1:$p/health" || { SERVER_OK=0; log "no /health on :$p"; }
done
wrk_window after "http://127.0.0.1:$P0" "$DURATION"
if [ -f "$WORK/corekv.log" ]; then
    { echo "===== corekv log (last 100 lines)"; tail -n 100 "$WORK/corekv.log"; } >>"$RUN_LOG"
fi
corekv_stop

# The same 4-shard layout started fresh (own data dir, same keys preloaded):
# tells what 4 shards cost on this machine from what the reshard left behind.
if [ "${SKIP_FRESH:-0}" != 1 ]; then
    log "== reference: a fresh 4-shard cluster from NEW.toml (own data dir)"
    # shellcheck disable=SC2086 # word splitting wanted: a list of ports
    if [ "${ETCD:-0}" = 1 ]; then COREKV_ARGS=(--etcd "$ETCD_URL" --etcd-prefix "/bench-fresh"); fi
    if corekv_start "$NEW" "$WORK/data-fresh" "$WORK/corekv-fresh.log" $OLD_PORTS $NEW_PORTS \
            && ready_primaries "$P0" $((P0 + 1)) $((P0 + 4)) $((P0 + 5)); then
        FRESH_ADDRS=()
        for i in 0 1 2 3; do FRESH_ADDRS+=(--addr "$i=127.0.0.1:$((BASE_PORT + (i < 2 ? i : i + 2)))"); done
        if python3 "$BENCH_DIR/keys.py" load --shards 4 "${FRESH_ADDRS[@]}" --prefix key- --count "$KEYS" \
                --value-size "$VALUE_SIZE" --timeout 300 2>>"$RUN_LOG"; then
            wrk_window fresh4 "http://127.0.0.1:$P0" "$DURATION"
        else
            log "preload of the fresh 4-shard cluster failed; no fresh row"
        fi
    else
        log "the fresh 4-shard cluster did not start; no fresh row"
    fi
    corekv_stop
fi

# ---------------------------------------------------------------- report
DONE=0
python3 - "$FINAL_STATE" <<'EOF' && DONE=1
import json, sys
try:
    st = json.loads(sys.argv[1])
except ValueError:
    sys.exit(1)
sys.exit(0 if st.get("state") == "done" and st.get("shards") == 4 else 1)
EOF
python3 - "$RAW_DIR" "$RESHARD_MS" "$RESHARD_RC" "$DONE" "$SERVER_OK" >"$WORK/reshard.md" <<'EOF'
import os, re, sys
raw, reshard_ms, reshard_rc, done, server_ok = sys.argv[1:6]

def parse(name):
    try:
        text = open(os.path.join(raw, name + ".txt")).read()
    except OSError:
        return None
    m = re.search(r"WRK_RESULT (.*)", text)
    if not m:
        return None
    return {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}

def ms(us):
    return "%.2f ms" % (us / 1000.0)

rows = [("nginx (reference)", "nginx"), ("before", "before"),
        ("during reshard", "during"), ("after (4 shards)", "after"),
        ("fresh 4-shard cluster (reference)", "fresh4")]
ref = parse("nginx")
print("| phase | window | requests | req/s | p50 | p99 | p99.9 | max | non-2xx | socket errors | req/s vs nginx | p99 vs nginx |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for label, name in rows:
    r = parse(name)
    if r is None and name == "fresh4" and not os.path.exists(os.path.join(raw, name + ".txt")):
        continue
    if r is None:
        print("| %s | - | no result (see reshard.log) | | | | | | | | | |" % label)
        continue
    errs = int(r["connect_err"] + r["read_err"] + r["write_err"] + r["timeout_err"])
    vs_rps = "%.2fx" % (r["rps"] / ref["rps"]) if ref and ref["rps"] else "-"
    vs_p99 = "%.1fx" % (r["p99_us"] / ref["p99_us"]) if ref and ref["p99_us"] else "-"
    print("| %s | %.1f s | %d | %.0f | %s | %s | %s | %s | %d | %d | %s | %s |" % (
        label, r["duration_us"] / 1e6, r["requests"], r["rps"], ms(r["p50_us"]), ms(r["p99_us"]),
        ms(r["p999_us"]), ms(r["max_us"]), r["non2xx"], errs, vs_rps, vs_p99))
print()
print("- corekv reshard: exit %s after %.1f s; /admin/reshard afterwards %s; server %s" % (
    reshard_rc, int(reshard_ms) / 1000.0,
    "done with 4 shards" if done == "1" else "NOT done with 4 shards",
    "up on all 8 nodes" if server_ok == "1" else "NOT up on all 8 nodes"))
d = parse("during")
if d and d["duration_us"] < 1e6:
    print("- the DURING window is shorter than 1 s: its percentiles rest on few requests (raise KEYS or PAUSE_MS)")
EOF
{
    echo "# corekv online resharding benchmark (2 -> 4 shards)"
    echo
    env_header "$WORK"
    if [ "${ETCD:-0}" = 1 ]; then
        echo "- roles: \`--etcd\` (a single-member etcd on loopback, started by the script): elections, leases, the new shards' first primaries through etcd"
    else
        echo "- roles: static (no etcd)"
    fi
    echo "- dataset: $KEYS keys key-0..key-$((KEYS - 1)), ${VALUE_SIZE} B values; load: wrk+lua mode=mixed, ${SETPCT}% durable SETs, keys at random, $CONNS connections to the primary of old shard 0 (it forwards the rest); nginx gets the same requests"
    pause=""; [ "$PAUSE_MS" = 0 ] || pause=" (--pause-ms $PAUSE_MS)"
    echo "- before/after: ${DURATION} s each; during: from just before \`corekv reshard\`$pause starts until it exits"
    echo
    cat "$WORK/reshard.md"
} >"$WORK/report.md"
REPORT_NAME=reshard
[ "${ETCD:-0}" != 1 ] || REPORT_NAME=reshard-etcd
cp "$WORK/report.md" "$RESULTS_DIR/$REPORT_NAME.md"
echo
cat "$WORK/report.md"
echo
log "wrote $RESULTS_DIR/$REPORT_NAME.md and $RESULTS_DIR/reshard.log"
[ "$RESHARD_RC" = 0 ] && [ "$DONE" = 1 ] && [ "$SERVER_OK" = 1 ]
