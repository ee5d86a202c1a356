#!/usr/bin/env bash
# One-command local cluster: builds corekv, starts the 3 primaries and 3
# replicas of ./sharding.toml in one process (data under ./data), prints the
# endpoints, and stops exactly that process on Ctrl-C or when the terminal
# closes (SIGHUP): the server drains its requests and exits.
#
#   scripts/launch.sh [extra corekv options, e.g. --data-dir /tmp/kv]
set -euo pipefail
cd "$(dirname "$0")/.."

addrs=$(grep -E '^\s*(address|replica)\s*=' sharding.toml | sed -E 's/.*"(.*)".*/\1/')

# Refuse to start, before building or touching any data, when something
# already listens on a configured address (another cluster, most often):
# its answers would otherwise pass for this launch's.
busy=""
for a in $addrs; do
  host=${a%:*}; port=${a##*:}
  [ "$host" = localhost ] && host=127.0.0.1
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then busy="$busy $a"; fi
done
if [ -n "$busy" ]; then
  echo "launch.sh: already in use:$busy" >&2
  echo "launch.sh: is a cluster already running? (ss -ltnp shows who listens)" >&2
  exit 1
fi

echo "launch.sh: cargo build --release (the first build takes a few minutes)" >&2
cargo build --release
bin=target/release/corekv

"$bin" --config sharding.toml "$@" &
pid=$!
stop() {
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
}
trap stop INT TERM HUP EXIT

# Wait (bounded) until every configured address answers /health; the ports
# were free before the start, so the answers are this process's.
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
