#!/usr/bin/env bash
# Installs (Debian packages, pip) and starts what the fleet needs, reusing
# whatever already runs: RabbitMQ with the management plugin, PostgreSQL,
# Redis, osmem-server (the search side in development), and a Rust toolchain.
# Idempotent; safe to run again. Needs root (or sudo) only to install.
set -euo pipefail

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

wait_port() { # name port seconds
  for _ in $(seq 1 "$3"); do port_open "$2" && return 0; sleep 1; done
  echo "error: $1 did not open port $2 within $3 s" >&2; return 1
}

APT_UPDATED=""
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "Installing ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- toolchain -------------------------------------------------------------
if ! have cargo; then
  apt_install cargo rustc pkg-config
fi
have python3 || apt_install python3 python3-pip
python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip

# --- RabbitMQ ----------------------------------------------------------------
if ! port_open 5672; then
  have rabbitmq-server || apt_install rabbitmq-server
  log "Starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port RabbitMQ 5672 90
fi
if ! port_open 15672; then
  log "Enabling the RabbitMQ management plugin"
  $SUDO rabbitmq-plugins enable rabbitmq_management >/dev/null
  wait_port "RabbitMQ management" 15672 60
fi

# --- PostgreSQL --------------------------------------------------------------
if ! port_open 5432; then
  have pg_ctlcluster || apt_install postgresql
  log "Starting PostgreSQL"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  wait_port PostgreSQL 5432 60
fi
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  # A fresh Debian cluster asks for a password on TCP; the fleet's
  # development URL has none. Trust loopback (development only).
  log "Allowing password-less PostgreSQL connections from 127.0.0.1 (development)"
  hba="$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -1)"
  $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main reload
  sleep 1
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test' >/dev/null

# --- Redis -------------------------------------------------------------------
if ! port_open 6379; then
  have redis-server || apt_install redis-server
  log "Starting Redis"
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/fleet.log
  wait_port Redis 6379 30
fi

# --- osmem-server (search, development and tests) -----------------------------
if ! python3 -c 'import osmem_server' >/dev/null 2>&1; then
  log "Installing osmem-server"
  python3 -m pip install -q osmem-server 2>/dev/null || python3 -m pip install -q --break-system-packages osmem-server
fi

# --- pika (the producer guide's Python publisher runs in the tests) ----------
if ! python3 -c 'import pika' >/dev/null 2>&1; then
  log "Installing pika"
  python3 -m pip install -q pika 2>/dev/null || python3 -m pip install -q --break-system-packages pika
fi

# --- promtool (the tests check every worker's /metrics with it) -------------
have promtool || apt_install prometheus

# --- TLS test tools -----------------------------------------------------------
# The TLS tests make a private CA and server certificates (openssl), put TLS
# in front of plaintext services (socat), and trust the platform store
# (ca-certificates).
apt_install openssl socat ca-certificates

log "Services ready: RabbitMQ :5672 (management :15672), PostgreSQL :5432, Redis :6379, osmem-server installed"
