#!/usr/bin/env bash
# Stop the single-host Slurm dev cluster started by up.sh: cancels all jobs, then stops
# slurmd's, slurmctld, slurmdbd, mariadbd and munged (only the ones up.sh started, found
# via the pid files under $MEDMINDS_SLURM_DIR) and waits until they are gone.
# State (MariaDB data, slurmctld state) is kept, so up.sh afterwards restarts warm.
# Set MEDMINDS_SLURM_KEEP_JOBS=1 to leave running jobs alone (their slurmstepd's keep running).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root"

if [[ ${MEDMINDS_SLURM_KEEP_JOBS:-0} != 1 ]] && pid_alive "$DIR/run/slurmctld.pid" slurmctld &&
  command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [[ -n $jobs ]]; then
    log "cancelling jobs: ${jobs//$'\n'/ }"
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do   # up to ~20 s (KillWait=5)
      [[ -z $(squeue -h -t running,completing,configuring -o %i 2>/dev/null) ]] && break
      sleep 0.2
    done
  fi
fi

stop_slurmds
stop_slurmctld
stop_slurmdbd
stop_mariadb
stop_munge
log "cluster medminds-dev is down (state kept in $DIR)"
