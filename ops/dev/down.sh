#!/usr/bin/env bash
# Stops the gateway and the local agent started by ops/dev/up.sh (PostgreSQL and NATS keep
# running).
set -euo pipefail
state="$(cd "$(dirname "$0")/../.." && pwd)/.logbook"
for name in agent gateway; do
  pidfile="$state/$name.pid"
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "stopped $name ($pid)"
    fi
    rm -f "$pidfile"
  fi
done
