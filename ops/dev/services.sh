#!/usr/bin/env bash
# Makes sure PostgreSQL and nats-server (with JetStream) are installed and running on this
# Debian/Ubuntu machine, and that Logbook's database role exists. Installs from the system
# packages when something is missing. Safe to run again.
#
# Prints nothing but progress; the variables it settles are written to .logbook/env so the
# other scripts can source them.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
state="$root/.logbook"
mkdir -p "$state"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  echo "==> installing $* from the system packages"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The `name = value` lines of a settings file (ops/postgresql.conf, ops/sysctl.conf), one
# `name<TAB>value` per line, comments and quotes taken off.
settings_in() {
  local line value
  while IFS= read -r line; do
    line=${line%%#*}
    [[ $line =~ ^[[:space:]]*([a-z0-9_.]+)[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$ ]] || continue
    value=${BASH_REMATCH[2]}
    value=${value#\'}
    value=${value%\'}
    printf '%s\t%s\n' "${BASH_REMATCH[1]}" "$value"
  done <"$1"
}

# --- PostgreSQL -----------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! command -v psql >/dev/null 2>&1; then
  apt_install postgresql
fi
started_postgres=
if ! port_open 5432; then
  echo "==> starting PostgreSQL"
  started_postgres=1
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$version" ]; then
    apt_install postgresql
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
  fi
  if ! as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null; then
    as_root pg_ctlcluster "$version" main start
  fi
  for _ in $(seq 1 50); do port_open 5432 && break; sleep 0.2; done
  port_open 5432 || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
fi

# Run SQL as a PostgreSQL superuser: over TCP when trust auth allows it, else as the postgres
# OS user over the socket (peer auth, the Debian default).
pg_admin() {
  if psql -h 127.0.0.1 -U postgres -d postgres -tAq -c 'SELECT 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"
  elif [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- psql -d postgres -v ON_ERROR_STOP=1 -tAq "$@")
  else
    (cd / && sudo -u postgres psql -d postgres -v ON_ERROR_STOP=1 -tAq "$@")
  fi
}

# A login role for Logbook that may create databases (tests create one per test).
pg_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'logbook') THEN
    CREATE ROLE logbook LOGIN CREATEDB PASSWORD 'logbook';
  END IF;
END \$\$;"
if [ "$(pg_admin -c "SELECT 1 FROM pg_database WHERE datname = 'logbook'")" != "1" ]; then
  pg_admin -c "CREATE DATABASE logbook OWNER logbook"
fi

# --- PostgreSQL settings ----------------------------------------------------------------------
# ops/postgresql.conf holds what Logbook needs of the server (each setting says why). They are
# applied with ALTER SYSTEM (kept in postgresql.auto.conf) and a reload, and only those that
# differ are changed. A setting that takes effect only at a restart is named, not forced: when
# to restart a server that other programs may use is the operator's call.
# LOGBOOK_POSTGRES_SETTINGS=keep leaves the server's settings alone.
if [ "${LOGBOOK_POSTGRES_SETTINGS:-apply}" != keep ]; then
  changed=()
  while IFS=$'\t' read -r name value; do
    if [ "$name" = shared_buffers ] && [ "$(awk '/^MemTotal/ {print $2}' /proc/meminfo)" -lt 4000000 ]; then
      continue
    fi
    # Already in effect as written, or already set by an earlier run (as written there).
    if [ "$(pg_admin -c "SELECT current_setting('$name') = '$value' OR EXISTS (
                           SELECT 1 FROM pg_file_settings WHERE name = '$name' AND setting = '$value'
                              AND sourcefile LIKE '%/postgresql.auto.conf')")" != t ]; then
      if pg_admin -c "ALTER SYSTEM SET $name = '$value'" 2>/dev/null; then
        changed+=("$name")
      else
        echo "==> PostgreSQL refused $name = '$value' from ops/postgresql.conf; left as it is" >&2
      fi
    fi
  done < <(settings_in "$root/ops/postgresql.conf")
  if [ ${#changed[@]} -gt 0 ]; then
    pg_admin -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.5
    echo "==> PostgreSQL settings from ops/postgresql.conf applied: ${changed[*]}"
  fi
  restart=$(pg_admin -c "SELECT string_agg(name, ', ') FROM pg_settings WHERE pending_restart")
  if [ -n "$restart" ] && [ -n "$started_postgres" ]; then
    # Started by this script a moment ago: nothing else uses it yet.
    echo "==> restarting PostgreSQL for: $restart"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main restart 2>/dev/null ||
      as_root pg_ctlcluster "$version" main restart
    for _ in $(seq 1 50); do port_open 5432 && break; sleep 0.2; done
  elif [ -n "$restart" ]; then
    echo "==> PostgreSQL applies these at its next restart: $restart"
  fi
fi

# --- Kernel settings ----------------------------------------------------------------------------
# ops/sysctl.conf holds what the database's host needs of the kernel (each setting says why).
# They are applied to the running kernel, only those that differ, and last until the next
# reboot: copying the file to /etc/sysctl.d/ is the operator's call. Setting one needs root
# (or sudo without a password prompt: the scripts never stop to ask for this); one that cannot
# be set (no root, a container without the right to) is named and left as it is. In a
# privileged container these settings are the host's. `sysctl -w vm.dirty_background_ratio=10`
# restores the kernel's default writeback. LOGBOOK_POSTGRES_SETTINGS=keep leaves these alone too.
apply_kernel_settings() {
  local sysctl_bin changed=() name value current set_it
  sysctl_bin=$(command -v sysctl || echo /usr/sbin/sysctl)
  if [ ! -x "$sysctl_bin" ]; then
    echo "==> no sysctl here (Debian's procps); the kernel settings of ops/sysctl.conf are not applied" >&2
    return
  fi
  if [ "$(id -u)" -eq 0 ]; then set_it=("$sysctl_bin"); else set_it=(sudo -n "$sysctl_bin"); fi
  while IFS=$'\t' read -r name value; do
    current=$("$sysctl_bin" -n "$name" 2>/dev/null) || { echo "==> this kernel has no $name (ops/sysctl.conf); skipped" >&2; continue; }
    [ "$current" = "$value" ] && continue
    if "${set_it[@]}" -qw "$name=$value" >/dev/null 2>&1; then
      changed+=("$name")
    else
      echo "==> could not set $name = $value from ops/sysctl.conf (needs root, or the kernel refused it); left at $current" >&2
    fi
  done < <(settings_in "$root/ops/sysctl.conf")
  if [ ${#changed[@]} -gt 0 ]; then
    echo "==> kernel settings from ops/sysctl.conf applied until the next reboot: ${changed[*]} (copy the file to /etc/sysctl.d/ to keep them)"
  fi
}
if [ "${LOGBOOK_POSTGRES_SETTINGS:-apply}" != keep ]; then
  apply_kernel_settings
fi

# --- NATS with JetStream ----------------------------------------------------------------------
nats_bin=$(command -v nats-server || true)
[ -z "$nats_bin" ] && [ -x /usr/sbin/nats-server ] && nats_bin=/usr/sbin/nats-server
if [ -z "$nats_bin" ]; then
  apt_install nats-server
  nats_bin=$(command -v nats-server || echo /usr/sbin/nats-server)
fi
if ! port_open 4222; then
  echo "==> starting nats-server with JetStream"
  mkdir -p "$state/nats"
  nohup "$nats_bin" -a 127.0.0.1 -p 4222 -js -sd "$state/nats" -l "$state/nats-server.log" >/dev/null 2>&1 &
  for _ in $(seq 1 50); do port_open 4222 && break; sleep 0.2; done
  port_open 4222 || { echo "nats-server did not start on 127.0.0.1:4222" >&2; exit 1; }
fi

cat >"$state/env" <<ENV
export LOGBOOK_DATABASE__URL=postgres://logbook:logbook@127.0.0.1:5432/logbook
export LOGBOOK_TEST_DATABASE_URL=postgres://logbook:logbook@127.0.0.1:5432/postgres
export LOGBOOK_NATS__URL=nats://127.0.0.1:4222
export LOGBOOK_TEST_NATS_SERVER=$nats_bin
ENV
echo "==> PostgreSQL and NATS (JetStream) are running"
