#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL and NATS, installing and starting them
# (and protoc, which checks the generated protobuf code) when they are missing.
# Extra arguments go to cargo nextest, for example: ops/dev/test.sh -E 'test(checkin)'
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
"$root/ops/dev/services.sh"
# shellcheck disable=SC1091
source "$root/.logbook/env"

if ! command -v protoc >/dev/null 2>&1; then
  echo "==> installing protoc from the system packages"
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); else sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "==> cargo-nextest not found; using cargo test (install it with: cargo install cargo-nextest --locked)"
  cargo test --workspace --no-fail-fast "$@"
fi
