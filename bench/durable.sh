#!/usr/bin/env bash
# What a durable SET costs below saturation: oha sends SETs of one key at a
# fixed rate (`-q RATE -c CONNS`, latency-corrected, so a stalled commit
# cannot hide its queue) to the key's primary, next to a bare fsync probe
# (bench/fsync_probe.py) run on the same file system in the same round. Per
# SET: latency, server CPU split into committer threads, executors and the
# rest, and (with perf) the system calls of the key's committer thread: how
# many fdatasync and pwrite64 one commit makes and how long fdatasync takes.
# Target (f) of the suite compares the closed-loop SET rows with the probe;
# this is the A/B tool for levers on the commit path (bench/README.md,
# "A write-ahead journal measured …").
#
#   bash bench/durable.sh [RATE]         # default 2500 SET/s
#
# Knobs: CONNS=64, DURATION=5, ROUNDS=3, COREKV_BIN (default
# target/release/corekv, built if missing), COREKV_OPTS (its options),
# COREKV_BIN_B and/or COREKV_OPTS_B (a second variant, e.g.
# COREKV_OPTS_B="--journal-mb 4": rounds alternate A, B), NO_REPLICAS=1 (no
# replicas in sharding.toml), BASE_PORT=29180.
# Needs oha (bench/install.sh); perf for the system-call columns (left
# empty without it). Starts its own corekv per row in a temp dir and stops
# exactly that PID.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
RATE="${1:-2500}"
CONNS="${CONNS:-64}"
DURATION="${DURATION:-5}"
ROUNDS="${ROUNDS:-3}"
BASE_PORT="${BASE_PORT:-29180}"
NSHARDS=3
[ -x "$COREKV_BIN" ] || (cd "$ROOT_DIR" && cargo build --release --bin corekv)
[ -z "${COREKV_BIN_B:-}" ] || [ -x "$COREKV_BIN_B" ] || die "durable.sh: no binary at COREKV_BIN_B=$COREKV_BIN_B"
AB=0
[ -z "${COREKV_BIN_B:-}${COREKV_OPTS_B:-}" ] || AB=1
command -v oha >/dev/null || die "durable.sh: oha not found (bash bench/install.sh)"
HAVE_PERF=1
command -v perf >/dev/null || HAVE_PERF=0
W="$(mktemp -d)"
cleanup() {
    corekv_stop
    rm -rf "$W"
}
trap cleanup EXIT
write_sharding_toml "$W/sharding.toml" "$NSHARDS" "$BASE_PORT"
HEALTH=$((BASE_PORT + 2 * NSHARDS - 1))
if [ -n "${NO_REPLICAS:-}" ]; then
    grep -v '^replica' "$W/sharding.toml" >"$W/s.toml" && mv "$W/s.toml" "$W/sharding.toml"
    HEALTH=$((BASE_PORT + NSHARDS - 1))
fi
HZ="$(getconf CLK_TCK)"

# thread_ticks PID: "comm<TAB>utime+stime" per thread.
thread_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        printf '%s\t%s\n' "$(cat "$t/comm" 2>/dev/null)" \
            "$(awk '{print $14 + $15}' "$t/stat" 2>/dev/null)"
    done
}

# set_row LABEL BIN OPTS: one fresh server, one oha run at RATE, one table line.
set_row() {
    local label="$1" bin="$2" data="$W/data-$1" owner shard tid=""
    read -r -a COREKV_ARGS <<< "$3"
    rm -rf "$data"
    COREKV_BIN="$bin" corekv_start "$W/sharding.toml" "$data" "$W/log-$label" "$HEALTH" >/dev/null
    # The key's primary answers its own SET (no forwarding in the measurement).
    shard="$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$BASE_PORT/set?key=a&value=v" \
        | tr -d '\r' | awk -F': ' 'tolower($1) == "x-shard" {print $2}')"
    [ -n "$shard" ] || die "durable.sh: no X-Shard header on a SET"
    owner=$((BASE_PORT + shard))
    local t
    for t in /proc/"$COREKV_PID"/task/*; do
        case "$(cat "$t/comm")" in "commit shard$((shard + 1))/p"*) tid="${t##*/}" ;; esac
    done
    thread_ticks "$COREKV_PID" >"$W/t0"
    : >"$W/trace.txt"
    if [ "$HAVE_PERF" = 1 ] && [ -n "$tid" ]; then
        perf trace -s -t "$tid" -o "$W/trace.txt" -- sleep "$DURATION" >/dev/null 2>&1 &
    fi
    local pp=$!
    oha --no-tui -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction --output-format json \
        "http://127.0.0.1:$owner/set?key=a&value=vvvvvvvvvvvvvvvv" >"$W/oha.json"
    [ "$HAVE_PERF" = 1 ] && [ -n "$tid" ] && { wait "$pp" || true; }
    thread_ticks "$COREKV_PID" >"$W/t1"
    corekv_stop
    python3 - "$label" "$W/oha.json" "$W/t0" "$W/t1" "$W/trace.txt" "$HZ" "$PROBE_P99" <<'PY'
import json, re, sys
label, oha, t0, t1, trace, hz, probe_p99 = sys.argv[1:8]
hz, probe_p99 = float(hz), float(probe_p99)
d = json.load(open(oha)); s = d["summary"]; p = d["latencyPercentiles"]
n = max(sum(d.get("statusCodeDistribution", {}).values()), 1)
def ticks(path):
    out = {}
    for line in open(path):
        comm, _, v = line.rstrip("\n").rpartition("\t")
        out[comm] = out.get(comm, 0) + int(v or 0)
    return out
a, b = ticks(t0), ticks(t1)
groups = {"commit": 0.0, "exec": 0.0, "other": 0.0}
for comm, v in b.items():
    dv = v - a.get(comm, 0)
    key = "commit" if comm.startswith("commit") else "exec" if comm.startswith("exec") else "other"
    groups[key] += dv / hz * 1e6 / n
calls = {}
for line in open(trace):
    m = re.match(r"\s+(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
    if m:
        calls[m.group(1)] = (int(m.group(2)), float(m.group(6)), float(m.group(7)))
fs = calls.get("fdatasync"); pw = calls.get("pwrite64")
cols = ["", "", ""]
if fs:
    cols = ["%d" % fs[0], "%.1f" % (pw[0] / fs[0]) if pw else "0", "%.3f / %.2f" % (fs[1], fs[2])]
p99 = p["p99"] * 1e3
print("| %s | %.0f | %.3f | %.3f | %.3f | %s | %.0f | %.0f | %.0f | %s | %s | %s |" % (
    label, s["requestsPerSec"], p["p50"] * 1e3, p99, p["p99.9"] * 1e3,
    "%.1f×" % (p99 / probe_p99) if probe_p99 else "-",
    sum(groups.values()), groups["commit"], groups["exec"], *cols))
PY
}

echo "oha -q $RATE -c $CONNS, ${DURATION} s, SETs of one key on its primary$([ -n "${NO_REPLICAS:-}" ] && echo ", no replicas"); per SET:"
echo "A = $COREKV_BIN ${COREKV_OPTS:-}"
[ "$AB" = 0 ] || echo "B = ${COREKV_BIN_B:-$COREKV_BIN} ${COREKV_OPTS_B:-}"
echo
echo "| run | SET/s | p50 ms | p99 ms | p99.9 ms | p99 vs probe p99 | server CPU µs | committers µs | executors µs | fdatasync calls (key's committer) | pwrite per fdatasync | fdatasync avg / max ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for ((r = 1; r <= ROUNDS; r++)); do
    mkdir -p "$W/probe"
    probe="$(python3 "$BENCH_DIR/fsync_probe.py" "$W/probe" --count 2000 --max-seconds 4)"
    PROBE_P99="$(echo "$probe" | sed -n 's/.* p99_us=\([0-9.]*\).*/\1/p')"
    PROBE_P99="$(python3 -c "print(float('${PROBE_P99:-0}') / 1000)")"
    echo "$probe" | python3 -c '
import re, sys
f = dict(re.findall(r"(\w+)=([\d.]+)", sys.stdin.read()))
print("| round %s: bare fsync probe | %.0f fsyncs/s | %.3f | %.3f | %.3f | 1.0× | | | | | | |" % (
    sys.argv[1], float(f["rate"]), float(f["p50_us"]) / 1e3, float(f["p99_us"]) / 1e3, float(f["p999_us"]) / 1e3))
' "$r"
    set_row "A-r$r" "$COREKV_BIN" "${COREKV_OPTS:-}"
    [ "$AB" = 0 ] || set_row "B-r$r" "${COREKV_BIN_B:-$COREKV_BIN}" "${COREKV_OPTS_B:-}"
done
