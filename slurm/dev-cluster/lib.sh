# Shared helpers for up.sh / down.sh (sourced, not executed).
# shellcheck shell=bash disable=SC2034

DIR=${MEDMINDS_SLURM_DIR:-/var/lib/medminds-dev}
ETC_SLURM=/etc/slurm
TIMEOUT=${MEDMINDS_SLURM_TIMEOUT:-90}
SLURMCTLD_PORT=${MEDMINDS_SLURMCTLD_PORT:-6817}
SLURMDBD_PORT=${MEDMINDS_SLURMDBD_PORT:-6819}
MYSQL_PORT=${MEDMINDS_MYSQL_PORT:-3307}
NODE_PORT_BASE=${MEDMINDS_SLURMD_PORT_BASE:-17000}   # gpu00N listens on BASE+N
NODES=(gpu001 gpu002 gpu003)
MUNGE_RUN=/run/munge
MYSQL_SOCK=$DIR/run/mysqld/mysqld.sock

log() { echo "[dev-cluster] $*" >&2; }

# die MESSAGE [LOGFILE...]: print message plus the tail of the given logs, exit 1.
die() {
  local msg=$1; shift
  log "ERROR: $msg"
  local f
  for f in "$@"; do
    if [[ -f $f ]]; then
      echo "----- tail -n 40 $f -----" >&2
      tail -n 40 "$f" >&2 || true
    fi
  done
  exit 1
}

# pid_alive PIDFILE COMM: true if PIDFILE names a live process whose comm is COMM.
pid_alive() {
  local pidfile=$1 comm=$2 pid
  [[ -r $pidfile ]] || return 1
  pid=$( { tr -dc '0-9' <"$pidfile"; } 2>/dev/null || true)
  [[ -n $pid ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
  # A zombie (exited, not yet reaped) counts as gone.
  local stat
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# stop_pidfile PIDFILE COMM [WAIT_S]: SIGTERM, wait, then SIGKILL.
stop_pidfile() {
  local pidfile=$1 comm=$2 wait_s=${3:-20} pid i
  if ! pid_alive "$pidfile" "$comm"; then
    rm -f "$pidfile"
    return 0
  fi
  pid=$( { tr -dc '0-9' <"$pidfile"; } 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    pid_alive "$pidfile" "$comm" || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  log "$comm (pid $pid) did not exit after ${wait_s}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "$pidfile" "$comm" || { rm -f "$pidfile"; return 0; }
    sleep 0.1
  done
  die "could not stop $comm (pid $pid)"
}

node_port() {  # node_port gpu002 -> 17002
  echo $((NODE_PORT_BASE + 10#${1#gpu}))
}

stop_slurmds() {
  local n
  for n in "${NODES[@]}"; do
    stop_pidfile "$DIR/run/slurmd-$n.pid" slurmd 20
  done
}
stop_slurmctld() { stop_pidfile "$DIR/run/slurmctld.pid" slurmctld 30; }
stop_slurmdbd() { stop_pidfile "$DIR/run/slurmdbd.pid" slurmdbd 30; }
stop_mariadb() { stop_pidfile "$DIR/run/mysqld/mysqld.pid" mariadbd 60; }
stop_munge() { stop_pidfile "$DIR/run/munge/munged.pid" munged 20; }
