#!/usr/bin/env bash
# Builds the release binaries and runs the benchmark against the local PostgreSQL and NATS
# (started or installed if missing). Arguments go to logbook-bench, for example:
#   ops/dev/bench.sh --scenario checkin --agents 10000
#   ops/dev/bench.sh --smoke
# Results: a table on stdout and bench-results.json.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
"$root/ops/dev/services.sh"
cargo build --release -p logbook-gateway -p logbook-agent -p logbook-bench
# The benchmark creates and drops its own databases: it needs a role that may create them.
export LOGBOOK_BENCH_POSTGRES=${LOGBOOK_BENCH_POSTGRES:-postgres://logbook:logbook@127.0.0.1:5432/postgres}
exec "$root/target/release/logbook-bench" "$@"
