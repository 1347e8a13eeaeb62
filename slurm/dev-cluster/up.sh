#!/usr/bin/env bash
# Start (installing if needed) a single-host Slurm dev cluster that mimics UMass Unity:
#   nodes gpu001 (2x a100), gpu002 (2x v100), gpu003 (2x rtx8000) with fake GPU devices,
#   partitions gpu (default, not preemptible) and gpu-preempt (requeued on preemption),
#   accounting via slurmdbd + MariaDB so sacct works.
# Idempotent: running it again is a no-op (or restarts daemons whose config changed).
# State and logs: ${MEDMINDS_SLURM_DIR:-/var/lib/medminds-dev} (logs in $DIR/log/*.log).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root"

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

# ---------------------------------------------------------------- packages
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  # Keep the packages' init scripts from starting daemons; we start them by hand below.
  local own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
  } >"$DIR/log/apt.log" 2>&1 || rc=$?
  [[ $own_policy -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
  [[ $rc -eq 0 ]] || die "apt-get install failed (rc=$rc)" "$DIR/log/apt.log"
}

# ---------------------------------------------------------------- files
prepare_dirs() {
  mkdir -p "$DIR"/{log,run,dev,spool/slurmctld} "$ETC_SLURM"
  chmod 755 "$DIR" "$DIR/log" "$DIR/run"
  local n
  for n in "${NODES[@]}"; do mkdir -p "$DIR/spool/slurmd/$n"; done
  # Fake GPUs: slurm only accepts character devices in gres.conf File=.
  local i dev
  for i in 0 1 2 3 4 5; do
    dev=$DIR/dev/nvidia$i
    if [[ ! -c $dev ]]; then
      rm -f "$dev"
      mknod -m 666 "$dev" c 195 "$i" || die "mknod $dev failed (need CAP_MKNOD)"
    fi
  done
}

CONF_CHANGED=0
DBD_CONF_CHANGED=0
declare -A SLURMD_STARTED=()

# install_file SRC DEST MODE -> returns 0 if DEST changed
install_file() {
  local src=$1 dest=$2 mode=$3
  if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
    rm -f "$src"
    chmod "$mode" "$dest"
    return 1
  fi
  chmod "$mode" "$src"
  mv -f "$src" "$dest"
  return 0
}

render() {  # render TEMPLATE -> stdout
  sed -e "s|@DIR@|$DIR|g" \
    -e "s|@SLURMCTLD_PORT@|$SLURMCTLD_PORT|g" \
    -e "s|@SLURMDBD_PORT@|$SLURMDBD_PORT|g" \
    -e "s|@MYSQL_PORT@|$MYSQL_PORT|g" \
    -e "s|@NODE_CPUS@|${MEDMINDS_NODE_CPUS:-4}|g" \
    -e "s|@NODE_MEM@|${MEDMINDS_NODE_MEM:-4000}|g" \
    -e "s|@PORT_GPU001@|$(node_port gpu001)|g" \
    -e "s|@PORT_GPU002@|$(node_port gpu002)|g" \
    -e "s|@PORT_GPU003@|$(node_port gpu003)|g" \
    -e "s|@DB_PASS@|$DB_PASS|g" \
    "$HERE/$1"
}

write_configs() {
  if [[ ! -s $DIR/db.pass ]]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DIR/db.pass")
  fi
  DB_PASS=$(cat "$DIR/db.pass")
  render slurm.conf.in >"$ETC_SLURM/.slurm.conf.new"
  if install_file "$ETC_SLURM/.slurm.conf.new" "$ETC_SLURM/slurm.conf" 644; then CONF_CHANGED=1; fi
  render gres.conf.in >"$ETC_SLURM/.gres.conf.new"
  if install_file "$ETC_SLURM/.gres.conf.new" "$ETC_SLURM/gres.conf" 644; then CONF_CHANGED=1; fi
  (umask 077; render slurmdbd.conf.in >"$ETC_SLURM/.slurmdbd.conf.new")
  if install_file "$ETC_SLURM/.slurmdbd.conf.new" "$ETC_SLURM/slurmdbd.conf" 600; then DBD_CONF_CHANGED=1; fi
  chown root:root "$ETC_SLURM/slurmdbd.conf"   # must be owned by SlurmUser (root)
}

# ---------------------------------------------------------------- munge
start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0  # a munged (ours or the system's) already answers on the default socket
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p "$MUNGE_RUN" "$DIR/run/munge" /var/lib/munge
  chown munge:munge "$MUNGE_RUN" "$DIR/run/munge" /var/lib/munge
  chmod 755 "$MUNGE_RUN"
  touch "$DIR/log/munged.log"
  chown munge:munge "$DIR/log/munged.log"
  chmod 640 "$DIR/log/munged.log"
  rm -f "$MUNGE_RUN/munge.socket.2" "$MUNGE_RUN/munge.socket.2.lock"
  runuser -u munge -- /usr/sbin/munged --log-file="$DIR/log/munged.log" \
    --pid-file="$DIR/run/munge/munged.pid" ||
    die "munged failed to start" "$DIR/log/munged.log"
  local i
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged does not answer" "$DIR/log/munged.log"
}

# ---------------------------------------------------------------- mariadb
mysql_root() { mariadb --no-defaults --protocol=socket --socket="$MYSQL_SOCK" -uroot "$@"; }

start_mariadb() {
  local datadir=$DIR/mysql
  mkdir -p "$datadir" "$DIR/run/mysqld"
  chown mysql:mysql "$datadir" "$DIR/run/mysqld"
  touch "$DIR/log/mariadb.log"
  chown mysql:mysql "$DIR/log/mariadb.log"
  if [[ ! -d $datadir/mysql ]]; then
    log "initialising MariaDB data dir $datadir"
    mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" \
      --auth-root-authentication-method=socket --skip-test-db \
      >>"$DIR/log/mariadb.log" 2>&1 || die "mariadb-install-db failed" "$DIR/log/mariadb.log"
  fi
  if ! pid_alive "$DIR/run/mysqld/mysqld.pid" mariadbd; then
    rm -f "$MYSQL_SOCK"
    # setsid + nohup: fully detached, survives the calling shell.
    setsid nohup mariadbd --no-defaults --user=mysql --datadir="$datadir" \
      --bind-address=127.0.0.1 --port="$MYSQL_PORT" --socket="$MYSQL_SOCK" \
      --pid-file="$DIR/run/mysqld/mysqld.pid" --log-error="$DIR/log/mariadb.log" \
      --skip-name-resolve --innodb-buffer-pool-size=1024M --innodb-log-file-size=64M \
      --innodb-lock-wait-timeout=900 --max-connections=200 \
      </dev/null >>"$DIR/log/mariadb.log" 2>&1 &
  fi
  local i
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    if [[ -S $MYSQL_SOCK ]] && mysql_root -e 'SELECT 1' >/dev/null 2>&1; then break; fi
    sleep 0.1
  done
  ((i < TIMEOUT * 10)) || die "mariadbd did not come up within ${TIMEOUT}s" "$DIR/log/mariadb.log"
  mysql_root <<SQL || die "creating slurm_acct_db failed" "$DIR/log/mariadb.log"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
}

# ---------------------------------------------------------------- slurmdbd
start_slurmdbd() {
  if [[ $DBD_CONF_CHANGED -eq 1 ]] && pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    log "slurmdbd.conf changed: restarting slurmdbd"
    stop_slurmdbd
  fi
  if ! pid_alive "$DIR/run/slurmdbd.pid" slurmdbd; then
    slurmdbd || die "slurmdbd failed to start" "$DIR/log/slurmdbd.log"
  fi
  local i
  local err=''
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    err=$(sacctmgr -n -P show cluster format=cluster 2>&1 >/dev/null) && break
    pid_alive "$DIR/run/slurmdbd.pid" slurmdbd || [[ $i -lt 20 ]] ||
      die "slurmdbd exited" "$DIR/log/slurmdbd.log" "$DIR/log/mariadb.log"
    sleep 0.2
  done
  ((i < TIMEOUT * 5)) || die "slurmdbd does not answer within ${TIMEOUT}s; sacctmgr said: $err" "$DIR/log/slurmdbd.log"
  # Register cluster (creates the root account/association too).
  if [[ -z $(sacctmgr -n -P show cluster medminds-dev format=cluster 2>/dev/null) ]]; then
    sacctmgr -i add cluster medminds-dev >/dev/null ||
      die "sacctmgr add cluster failed" "$DIR/log/slurmdbd.log"
  fi
}

# ---------------------------------------------------------------- slurmctld / slurmd
start_slurm() {
  local n
  if [[ $CONF_CHANGED -eq 1 ]]; then
    if pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
      log "slurm.conf/gres.conf changed: restarting slurmctld and slurmd's"
    fi
    stop_slurmds
    stop_slurmctld
  fi
  if ! pid_alive "$DIR/run/slurmctld.pid" slurmctld; then
    slurmctld || die "slurmctld failed to start" "$DIR/log/slurmctld.log"
  fi
  local i
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    scontrol ping 2>/dev/null | grep -q 'is UP' && break
    sleep 0.2
  done
  ((i < TIMEOUT * 5)) || die "slurmctld does not answer within ${TIMEOUT}s" "$DIR/log/slurmctld.log"
  for n in "${NODES[@]}"; do
    if ! pid_alive "$DIR/run/slurmd-$n.pid" slurmd; then
      SLURMD_STARTED[$n]=$(date +%s)
      slurmd -N "$n" || die "slurmd -N $n failed to start" "$DIR/log/slurmd-$n.log"
    fi
  done
}

# node_registered NODE: true once the slurmd started by this run has registered.
node_registered() {
  local n=$1 since=${SLURMD_STARTED[$1]:-} sst
  [[ -z $since ]] && return 0
  sst=$(scontrol show node "$n" -o 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2) || return 1
  [[ -n $sst && $sst != None ]] || return 1
  (($(date -d "$sst" +%s 2>/dev/null || echo 0) >= since - 1))
}

wait_ready() {
  local i n state ok
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    ok=1
    for n in "${NODES[@]}"; do
      if ! pid_alive "$DIR/run/slurmd-$n.pid" slurmd && ((i > 15)); then
        die "slurmd for $n is not running" "$DIR/log/slurmd-$n.log"
      fi
      node_registered "$n" || { ok=0; continue; }
      state=$(sinfo -h -N -n "$n" -p gpu -o '%T' 2>/dev/null | head -n1 || true)
      case $state in
        idle | mixed | allocated | completing) ;;
        down | drained | draining | fail | failing)
          # Left over from an earlier run (e.g. "Not responding" while down): bring it back.
          scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
          ok=0 ;;
        *) ok=0 ;;
      esac
    done
    [[ $ok -eq 1 ]] && break
    sleep 0.2
  done
  if [[ $ok -ne 1 ]]; then
    sinfo -N -l >&2 || true
    die "nodes did not become idle within ${TIMEOUT}s" "$DIR/log/slurmctld.log" \
      "$DIR/log/slurmd-gpu001.log" "$DIR/log/slurmd-gpu002.log" "$DIR/log/slurmd-gpu003.log"
  fi
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    sacct -n -X -S now-1minute -o JobID >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  die "sacct does not answer within ${TIMEOUT}s" "$DIR/log/slurmdbd.log" "$DIR/log/slurmctld.log"
}

mkdir -p "$DIR/log"
install_packages
prepare_dirs
write_configs
start_munge
start_mariadb
start_slurmdbd
start_slurm
wait_ready
log "cluster medminds-dev is up ($DIR)"
sinfo
