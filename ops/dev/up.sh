#!/usr/bin/env bash
# Starts Logbook on this machine: PostgreSQL and nats-server (installed if missing), a build of
# the gateway and the agent, the database schema, the gateway, and one local agent enrolled
# into it. Prints the API address and the admin token. Run it again to restart everything.
#
#   LOGBOOK_PROFILE=release ops/dev/up.sh   # build optimised binaries
#   ops/dev/down.sh                         # stop the gateway and the agent
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
state="$root/.logbook"
profile=${LOGBOOK_PROFILE:-debug}
listen=${LOGBOOK_HTTP__LISTEN:-127.0.0.1:8080}
api="http://$listen"

"$root/ops/dev/services.sh"
if ! command -v curl >/dev/null 2>&1; then
  echo "==> installing curl from the system packages"
  if [ "$(id -u)" -eq 0 ]; then sudo_cmd=(); else sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
# shellcheck disable=SC1091
source "$state/env"
export LOGBOOK_ADMIN__TOKEN_FILE="$state/admin-token"
export LOGBOOK_HTTP__LISTEN="$listen"

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust from https://rustup.rs and run this again" >&2
  exit 1
fi
echo "==> building logbook and logbook-agent ($profile)"
if [ "$profile" = release ]; then
  cargo build --release -p logbook-gateway -p logbook-agent
else
  cargo build -p logbook-gateway -p logbook-agent
fi
bin="$root/target/$profile"

"$root/ops/dev/down.sh" >/dev/null 2>&1 || true

echo "==> migrating the database"
"$bin/logbook" migrate

echo "==> starting the gateway on $api (log: $state/gateway.log)"
nohup "$bin/logbook" serve >>"$state/gateway.log" 2>&1 &
echo $! >"$state/gateway.pid"
for _ in $(seq 1 150); do
  curl -fsS "$api/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "$api/readyz" >/dev/null || { echo "the gateway did not become ready; see $state/gateway.log" >&2; exit 1; }
admin_token=$(cat "$state/admin-token")

agent_state="$state/agent"
if [ ! -f "$agent_state/identity.json" ]; then
  echo "==> enrolling a local agent"
  client=$("$bin/logbook" admin create-client --name "Local")
  site=$("$bin/logbook" admin create-site --client "$client" --name "This machine")
  token=$("$bin/logbook" admin create-enrollment-token --site "$site" --expires-in 1h 2>/dev/null)
  LOGBOOK_AGENT_TOKEN="$token" "$bin/logbook-agent" --state-dir "$agent_state" enroll --server "$api"
fi
echo "==> starting the local agent (log: $state/agent.log)"
nohup "$bin/logbook-agent" --state-dir "$agent_state" run >>"$state/agent.log" 2>&1 &
echo $! >"$state/agent.pid"

cat <<DONE

Logbook is running.
  API:          $api   (OpenAPI: $api/api/v1/openapi.json)
  Admin token:  $admin_token   (stored in $state/admin-token)

  curl -s -H "Authorization: Bearer $admin_token" $api/api/v1/agents

Stop it with ops/dev/down.sh.
DONE
