#!/usr/bin/env bash
# The dependency-direction guard (ARCHITECTURE.md, "Architecture invariants"): fails when a
# crate depends on something its layer must not know.
set -euo pipefail
cd "$(dirname "$0")/../.."

fail=0
forbid() {
  local crate=$1 pattern=$2 why=$3
  local found
  found=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' | grep -E "^($pattern) v" | sort -u || true)
  if [ -n "$found" ]; then
    echo "dependency guard: $crate must not depend on $why, but depends on:" >&2
    echo "$found" | sed 's/^/  /' >&2
    fail=1
  fi
}

forbid logbook-domain 'sqlx|sqlx-core|axum|tonic|async-nats|tracing-subscriber|tokio-postgres|reqwest' \
  'storage, transport or runtime crates'
forbid logbook-projections 'axum|tonic|async-nats|reqwest|hyper' 'HTTP, gRPC or NATS'
forbid logbook-proto 'sqlx|sqlx-core|axum|async-nats|logbook-domain|tokio' 'anything beyond prost and serde'
forbid logbook-agent 'logbook-domain|logbook-projections|logbook-gateway|sqlx|sqlx-core|postgres-es|cqrs-es' \
  'server crates or the database'

[ "$fail" -eq 0 ] && echo "dependency guard: ok"
exit "$fail"
