#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, from the Debian package,
# beside (never instead of) the machine's own broker on 5672: for trying the
# fleet on a cluster and for the cluster failover tests.
#
#   scripts/cluster.sh start          start (or find running) and cluster the nodes; prints
#                                     AMQP_URL=… and RABBITMQ_MANAGEMENT_URL=… (eval-able)
#   scripts/cluster.sh status         each node up or down, and the cluster as node 1 sees it
#   scripts/cluster.sh env            print the two variables again
#   scripts/cluster.sh stop [--purge] stop every node (--purge also deletes their data)
#   scripts/cluster.sh stop-node N    stop node N cleanly (fault tests)
#   scripts/cluster.sh kill-node N    kill node N's VM at once (a crash)
#   scripts/cluster.sh start-node N   start node N again; it rejoins the cluster by itself
#
# Everything is configurable by environment, so a test runs its own cluster
# on free ports without touching anyone else's:
#   CLUSTER_DIR        data, logs, config, cookie   (/tmp/fleet-cluster)
#   CLUSTER_NAME       node name prefix: <name>1@localhost …   (fleet)
#   CLUSTER_NODES      number of nodes               (3)
#   CLUSTER_AMQP_PORT  AMQP port of node 1; node N uses +N-1   (5701)
#   CLUSTER_MGMT_PORT  management port of node 1     (AMQP port + 10000)
#   CLUSTER_DIST_PORT  Erlang distribution port of node 1 (AMQP port + 20000)
#
# Each node runs as the `rabbitmq` user with its own config file (its own
# listener and management port: /etc/rabbitmq/rabbitmq.conf pins 5672), data
# and log directories, plugins file (management), environment file and an
# Erlang cookie shared by the cluster (HOME is the cluster directory), and
# an open-files limit of 20,000: with the default 1,024 a node leading the
# quorum topology's 262 queues exhausts its file handles and then accepts TCP
# connections without ever answering them (shared/CRATES.md, last section).
# Installs nothing: rabbitmq-server comes from scripts/services.sh.
set -euo pipefail

DIR="${CLUSTER_DIR:-/tmp/fleet-cluster}"
NAME="${CLUSTER_NAME:-fleet}"
NODES="${CLUSTER_NODES:-3}"
AMQP_PORT="${CLUSTER_AMQP_PORT:-5701}"
MGMT_PORT="${CLUSTER_MGMT_PORT:-$((AMQP_PORT + 10000))}"
DIST_PORT="${CLUSTER_DIST_PORT:-$((AMQP_PORT + 20000))}"
RMQ_BIN=/usr/lib/rabbitmq/bin
START_WAIT="${CLUSTER_START_WAIT:-180}"   # seconds a node may take to boot

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node() { echo "${NAME}$1@localhost"; }
node_dir() { echo "$DIR/node$1"; }
amqp_port() { echo $((AMQP_PORT + $1 - 1)); }
mgmt_port() { echo $((MGMT_PORT + $1 - 1)); }
dist_port() { echo $((DIST_PORT + $1 - 1)); }

as_rabbitmq() { # command… : runs as the rabbitmq user with the cluster's environment
  local n="$1"; shift
  local d; d="$(node_dir "$n")"
  local cmd=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$DIR" LANG=C.UTF-8 LC_ALL=C.UTF-8
    RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
    RABBITMQ_NODENAME="$(node "$n")"
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$d/mnesia"
    RABBITMQ_LOG_BASE="$d/log"
    RABBITMQ_PID_FILE="$d/pid"
    RABBITMQ_DIST_PORT="$(dist_port "$n")"
    RABBITMQ_CTL_DIST_PORT_MIN="$(( $(dist_port "$n") + 10000 ))"
    RABBITMQ_CTL_DIST_PORT_MAX="$(( $(dist_port "$n") + 10010 ))"
    ERL_EPMD_ADDRESS=127.0.0.1
    "$@")
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u rabbitmq -- "${cmd[@]}"
  elif [ "$(id -un)" = rabbitmq ]; then
    "${cmd[@]}"
  else
    sudo -u rabbitmq -- "${cmd[@]}"
  fi
}

ctl() { local n="$1"; shift; as_rabbitmq "$n" "$RMQ_BIN/rabbitmqctl" -n "$(node "$n")" "$@"; }
running() { ctl "$1" -q ping >/dev/null 2>&1; }
# Whether a process runs. A killed VM can stay a zombie for a while where
# PID 1 is slow to reap (kill -0 still succeeds on it): that is not running.
pid_alive() {
  local state
  [[ "${1:-}" =~ ^[0-9]+$ ]] || return 1
  # /proc/PID/stat: "PID (comm) STATE …"
  state="$(sed -n 's/^.*) \([A-Za-z]\).*$/\1/p' "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
node_pid() { cat "$(node_dir "$1")/pid" 2>/dev/null || true; }
# Whether node n's VM runs (cheap: its pid file, no CLI round trip).
vm_alive() { pid_alive "$(node_pid "$1")"; }

check_node_arg() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$NODES" ] \
    || die "which node? a number from 1 to $NODES"
}

print_env() {
  local amqp="" mgmt="" n
  for n in $(seq 1 "$NODES"); do
    amqp+="${amqp:+,}amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/%2f"
    mgmt+="${mgmt:+,}http://guest:guest@127.0.0.1:$(mgmt_port "$n")"
  done
  echo "AMQP_URL=$amqp"
  echo "RABBITMQ_MANAGEMENT_URL=$mgmt"
}

prepare() {
  command -v rabbitmq-server >/dev/null && [ -x "$RMQ_BIN/rabbitmq-server" ] \
    || die "rabbitmq-server is not installed: run scripts/services.sh first"
  id rabbitmq >/dev/null 2>&1 || die "no rabbitmq user: is the rabbitmq-server package installed?"
  mkdir -p "$DIR"
  chown rabbitmq:rabbitmq "$DIR" 2>/dev/null || true
  chmod 755 "$DIR"
  # One Erlang cookie for the nodes and the CLI tools of this cluster only.
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \n' | head -c 40 >"$DIR/.erlang.cookie"
  fi
  chown rabbitmq:rabbitmq "$DIR/.erlang.cookie" 2>/dev/null || true
  chmod 400 "$DIR/.erlang.cookie"
  local n d
  for n in $(seq 1 "$NODES"); do
    d="$(node_dir "$n")"
    mkdir -p "$d/mnesia" "$d/log"
    cat >"$d/rabbitmq.conf" <<EOF
# Node $(node "$n") of the fleet's local test cluster (scripts/cluster.sh).
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$n")
# Quorum queues need a majority; a minority side pauses instead of diverging.
cluster_partition_handling = pause_minority
# The shared machine has little disk to spare; the default 50 MB is fine.
log.file.level = info
EOF
    echo '[rabbitmq_management].' >"$d/enabled_plugins"
    echo '[].' >"$d/advanced.config"
    # Replaces /etc/rabbitmq/rabbitmq-env.conf, which names the machine's node.
    cat >"$d/rabbitmq-env.conf" <<'EOF'
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    chown -R rabbitmq:rabbitmq "$d"
  done
}

start_node() { # n: starts the VM if it does not run (does not wait)
  local n="$1"
  if vm_alive "$n"; then return 0; fi
  local p
  for p in "$(amqp_port "$n")" "$(mgmt_port "$n")" "$(dist_port "$n")"; do
    port_open "$p" && die "port $p (for $(node "$n")) is taken by another process; choose other ports with CLUSTER_AMQP_PORT"
  done
  # The pid file of a VM that was killed: the new VM writes its own.
  rm -f "$(node_dir "$n")/pid"
  log "Starting $(node "$n") (AMQP $(amqp_port "$n"), management $(mgmt_port "$n"))"
  # `runuser` resets the soft open-files limit to 1,024: raise it inside.
  as_rabbitmq "$n" sh -c "ulimit -n 20000 && exec $RMQ_BIN/rabbitmq-server -detached" \
    >>"$(node_dir "$n")/log/startup.log" 2>&1
}

await_node() { # n
  local n="$1" deadline=$((SECONDS + START_WAIT))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if ctl "$n" -q await_startup --timeout 5 >/dev/null 2>&1; then return 0; fi
    # The VM writes its pid file as it boots; one that wrote it and died is not coming.
    if [ -n "$(node_pid "$n")" ] && ! vm_alive "$n"; then break; fi
    sleep 1
  done
  tail -n 20 "$(node_dir "$n")/log/"*.log >&2 2>/dev/null || true
  die "$(node "$n") did not start within ${START_WAIT} s (or its VM exited); logs in $(node_dir "$n")/log"
}

clustered() { # n: whether node n counts node 1 among its cluster's members
  ctl "$n" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$(node 1)\""
}

# Joining: a node leaves its own one-node cluster (stop_app, reset), joins
# node 1, and starts again. The slow steps run on all joining nodes at once;
# join_cluster itself, one node at a time.
join_all() {
  local n pending=()
  for n in $(seq 2 "$NODES"); do
    clustered "$n" || pending+=("$n")
  done
  [ ${#pending[@]} -gt 0 ] || return 0
  log "Joining ${pending[*]/#/node } to $(node 1)"
  for n in "${pending[@]}"; do step "$n" stop_app & done; wait_all
  for n in "${pending[@]}"; do step "$n" reset & done; wait_all
  for n in "${pending[@]}"; do step "$n" join_cluster "$(node 1)"; done
  for n in "${pending[@]}"; do step "$n" start_app & done; wait_all
}

step() { # n ctl-args…: one joining step, its output in the node's join.log
  local n="$1"; shift
  local out; out="$(node_dir "$n")/log/join.log"
  ctl "$n" -q "$@" >>"$out" 2>&1 \
    || { tail -n 20 "$out" >&2; die "$(node "$n"): rabbitmqctl $* failed; see $out"; }
}

wait_all() { # waits for every background job; fails when one failed
  local pid ok=0
  for pid in $(jobs -p); do wait "$pid" || ok=1; done
  [ "$ok" -eq 0 ] || die "joining the cluster failed"
}

cmd_start() {
  local t0=$SECONDS n
  prepare
  for n in $(seq 1 "$NODES"); do start_node "$n"; done
  for n in $(seq 1 "$NODES"); do await_node "$n" & done; wait_all
  join_all
  local members
  members="$(ctl 1 -q cluster_status --formatter json | grep -o "\"${NAME}[0-9]*@localhost\"" | sort -u | wc -l)"
  [ "$members" -ge "$NODES" ] || die "the cluster has $members of $NODES nodes; see scripts/cluster.sh status"
  log "Cluster of $NODES nodes up in $((SECONDS - t0)) s; use:"
  print_env
}

stop_one() { # n: a clean stop, waiting for the VM to exit; a node that would
              # not stop (or a half-started one) is killed by its pid
  local n="$1" pid i
  [ -d "$(node_dir "$n")" ] || return 0
  pid="$(node_pid "$n")"
  [[ "$pid" =~ ^[0-9]+$ ]] || pid=""
  if [ -n "$pid" ] && ! pid_alive "$pid"; then return 0; fi
  log "Stopping $(node "$n")"
  ctl "$n" -q stop --idempotent >/dev/null 2>&1 || true
  [ -n "$pid" ] || return 0
  for i in $(seq 1 60); do
    pid_alive "$pid" || return 0
    sleep 0.5
  done
  log "Killing $(node "$n") (pid $pid): it did not stop within 30 s"
  kill -9 "$pid" 2>/dev/null || true
}

cmd_stop() {
  local purge="${1:-}" n
  # All at once: the cluster goes away as a whole.
  for n in $(seq 1 "$NODES"); do stop_one "$n" & done
  wait
  if [ "$purge" = "--purge" ]; then
    case "$DIR" in /|"") die "refusing to delete $DIR" ;; esac
    rm -rf "$DIR"
    log "Deleted $DIR"
  fi
}

cmd_status() {
  local n any=""
  for n in $(seq 1 "$NODES"); do
    if running "$n"; then
      echo "$(node "$n")  up    AMQP 127.0.0.1:$(amqp_port "$n")  management 127.0.0.1:$(mgmt_port "$n")"
      [ -n "$any" ] || any="$n"
    else
      echo "$(node "$n")  DOWN  AMQP 127.0.0.1:$(amqp_port "$n")"
    fi
  done
  [ -n "$any" ] || { echo "no node runs"; return 3; }
  ctl "$any" cluster_status
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop "${2:-}" ;;
  status) cmd_status ;;
  env) print_env ;;
  stop-node)
    check_node_arg "${2:-}"
    vm_alive "$2" || die "$(node "$2") is not running"
    stop_one "$2"
    ;;
  kill-node)
    check_node_arg "${2:-}"
    pid="$(node_pid "$2")"
    pid_alive "$pid" || die "$(node "$2") is not running"
    log "Killing $(node "$2") (pid $pid)"
    kill -9 "$pid"
    ;;
  start-node)
    check_node_arg "${2:-}"
    prepare
    start_node "$2"
    await_node "$2"
    log "$(node "$2") is up"
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
