#!/usr/bin/env bash
# One-command local cluster: builds corekv, starts the 3 primaries and 3
# replicas of ./sharding.toml in one process (data under ./data), prints the
# endpoints, and stops exactly that process on Ctrl-C.
#
#   scripts/launch.sh [extra corekv options, e.g. --data-dir /tmp/kv]
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
bin=target/release/corekv

"$bin" --config sharding.toml "$@" &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap stop INT TERM EXIT

# Wait (bounded) until every configured address answers /health.
addrs=$(grep -E '^\s*(address|replica)\s*=' sharding.toml | sed -E 's/.*"(.*)".*/\1/')
deadline=$((SECONDS + 30))
for a in $addrs; do
  until curl -sf "http://$a/health" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "launch.sh: corekv exited during start-up" >&2
      exit 1
    fi
    if (( SECONDS > deadline )); then
      echo "launch.sh: $a did not become ready within 30 s" >&2
      exit 1
    fi
    sleep 0.1
  done
done

cat <<MSG

corekv is up (pid $pid). Endpoints:
$(for a in $addrs; do echo "  http://$a"; done)

Try:
  curl "http://localhost:8081/set?key=exampleKey&value=exampleValue"
  curl "http://localhost:8080/get?key=exampleKey"
  curl "http://localhost:8084/get?key=exampleKey"     # the key's replica
  curl "http://localhost:8080/status"

Ctrl-C stops the cluster.
MSG
wait "$pid"
