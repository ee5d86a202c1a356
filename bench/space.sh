#!/usr/bin/env bash
# Space amplification under an overwrite workload: one shard (primary +
# replica in one corekv process), KEYS keys of VALUE_SIZE bytes written
# ROUNDS times (round 1 creates them, the others overwrite them). After
# each round it waits until the replica has applied everything and the
# primary has trimmed its log, then prints the logical bytes (keys +
# values, per node), the size of each redb file (allocated blocks, `du`,
# and apparent length) and the ratio of the two files' blocks to the
# logical bytes of primary + replica (2 x logical). It also prints each
# node's space figures from /status: data (keys + values), log (records
# kept for the replica) and the rest of the file's blocks (free pages, page
# slack, redb's own pages).
#
#   bash bench/space.sh                         # 2000 x 64 KiB, 3 rounds (~1 min)
#   KEYS=10000 ROUNDS=2 bash bench/space.sh     # the issue's 10,000 x 64 KiB
#
# Knobs: KEYS [2000], VALUE_SIZE [65536], ROUNDS [3], BASE_PORT [19180],
# SETTLE_S [60] (longest wait for the replica and the trim after a round),
# COREKV_OPTS (extra corekv options), SKIP_BUILD=1, KEEP_TMP=1.
# Talks only to 127.0.0.1; stops exactly the corekv it started.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

KEYS="${KEYS:-2000}"
VALUE_SIZE="${VALUE_SIZE:-65536}"
ROUNDS="${ROUNDS:-3}"
BASE_PORT="${BASE_PORT:-19180}"
SETTLE_S="${SETTLE_S:-60}"
P="$BASE_PORT"
R=$((BASE_PORT + 1))

bench_workdir space
trap 'rc=$?; corekv_stop || true; bench_finish $rc' EXIT
trap 'exit 130' INT TERM
server_binary

write_sharding_toml "$WORK/sharding.toml" 1 "$BASE_PORT"
DATA="$WORK/data"
read -r -a COREKV_ARGS <<<"${COREKV_OPTS:-}"
corekv_start "$WORK/sharding.toml" "$DATA" "$WORK/corekv.log" "$P" "$R" || die "corekv did not start"

# status_field NODE FIELD: a numeric field of NODE in /status on the primary's process.
status_field() {
    curl -sf --max-time 5 "http://127.0.0.1:$P/status" | python3 -c '
import json, sys
node, field = sys.argv[1], sys.argv[2]
for n in json.load(sys.stdin)["nodes"]:
    if n["name"] == node:
        print(n.get(field, 0)); break
' "$1" "$2"
}

# Logical bytes of one node: every key and its value once.
KEY_BYTES=$(python3 -c "print(sum(len('key-%d' % i) for i in range($KEYS)))")
LOGICAL=$((KEYS * VALUE_SIZE + KEY_BYTES))

printf '\n| round | logical per node | primary file (du / length) | replica file (du / length) | (primary + replica) / (2 x logical) | primary data / log / rest (MiB) | replica data / rest (MiB) |\n'
printf '| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n' 
for round in $(seq 1 "$ROUNDS"); do
    python3 "$BENCH_DIR/keys.py" load --shards 1 --addr "0=127.0.0.1:$P" --prefix key- \
        --count "$KEYS" --value-size "$VALUE_SIZE" --connections 8 --depth 4 --timeout 1200 \
        || die "load of round $round failed"
    # Settle: the replica has applied everything and the log is trimmed to it.
    deadline=$((SECONDS + SETTLE_S))
    while :; do
        committed=$(status_field shard1/primary committed_seq)
        applied=$(status_field shard1/replica applied_seq)
        log_entries=$(status_field shard1/primary log_entries)
        if [ "$applied" = "$committed" ] && [ "${log_entries:-0}" -le 1 ]; then break; fi
        [ $SECONDS -lt $deadline ] || { log "not settled after ${SETTLE_S}s (applied $applied of $committed, log $log_entries entries)"; break; }
        sleep 0.5
    done
    # One more second: a trim and a space check of the committer run each second.
    sleep 2
    pf="$DATA/shard1-primary.redb"; rf="$DATA/shard1-replica.redb"
    pdu=$(( $(du -k "$pf" | cut -f1) * 1024 )); rdu=$(( $(du -k "$rf" | cut -f1) * 1024 ))
    plen=$(stat -c %s "$pf"); rlen=$(stat -c %s "$rf")
    ratio=$(python3 -c "print('%.2f' % (($pdu + $rdu) / (2 * $LOGICAL)))")
    mib() { python3 -c "print('%.0f' % ($1 / 1048576))"; }
    pd=$(status_field shard1/primary data_bytes); pl=$(status_field shard1/primary log_bytes)
    rd=$(status_field shard1/replica data_bytes)
    pfree=$((pdu - ${pd:-0} - ${pl:-0})); rfree=$((rdu - ${rd:-0}))
    printf '| %d | %s MiB | %s / %s MiB | %s / %s MiB | **%sx** | %s / %s / %s | %s / %s |\n' \
        "$round" "$(mib "$LOGICAL")" "$(mib "$pdu")" "$(mib "$plen")" "$(mib "$rdu")" "$(mib "$rlen")" "$ratio" \
        "$(mib "${pd:-0}")" "$(mib "${pl:-0}")" "$(mib "${pfree:-0}")" "$(mib "${rd:-0}")" "$(mib "${rfree:-0}")"
done
printf '\nKEYS=%s VALUE_SIZE=%s ROUNDS=%s on %s (%s CPUs), file system of %s: %s\n' \
    "$KEYS" "$VALUE_SIZE" "$ROUNDS" "$(uname -r)" "$(nproc)" "$WORK" "$(df -T "$WORK" | awk 'NR==2 {print $2}')"
