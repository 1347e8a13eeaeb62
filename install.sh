#!/usr/bin/env bash
# Create a venv and install medminds into it from a lock file: exactly the versions CI tested (idempotent: a second
# run only checks). The lock, by machine:
#   locks/gpu.txt         a CUDA node (nvidia-smi on PATH), or MEDMINDS_LOCK=gpu (MEDMINDS_GPU_EXTRA=1 too): unsloth
#   locks/cpu.txt         everywhere else: CI, laptops, CPU nodes (the CPU build of torch)
#   locks/gpu-on-cpu.txt  MEDMINDS_LOCK=gpu-on-cpu: the GPU lock's versions with CPU torch (CI's second venv)
# MEDMINDS_VENV: the venv's folder (default .venv). `python3 locks/resolve.py` rewrites the locks.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
venv=${MEDMINDS_VENV:-.venv}
lock=${MEDMINDS_LOCK:-}
if [ -z "$lock" ]; then
  if [ "${MEDMINDS_GPU_EXTRA:-0}" = 1 ] || command -v nvidia-smi >/dev/null 2>&1; then lock=gpu; else lock=cpu; fi
fi
file=locks/$lock.txt
[ -f "$file" ] || { echo "install.sh: MEDMINDS_LOCK=$lock: no $file; locks: cpu, gpu, gpu-on-cpu" >&2; exit 2; }
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
stamp=$venv/.medminds-installed
want=$(cat pyproject.toml "$file" | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ "$(cat "$venv/.medminds-lock" 2>/dev/null)" != "$lock" ]; then
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  log=$venv/install.log
  # --no-deps: the lock is the whole environment, resolved once by locks/resolve.py; nothing else comes in
  if ! { "$venv/bin/pip" install --no-deps -r "$file" && "$venv/bin/pip" install --no-deps -e .; } >"$log" 2>&1; then
    tail -n 40 "$log"; echo "install.sh: pip install from $file failed (full log: $log)" >&2; exit 1
  fi
  echo "$lock" > "$venv/.medminds-lock"
  # fail loudly if the install did not work, or left a version outside the lock (e.g. a venv that held another lock)
  "$venv/bin/python" -c "import medminds_hpc, torch, transformers, peft, trl, submitit" >>"$log" 2>&1 \
    || { tail -n 20 "$log"; echo "install.sh: the installed packages do not import (full log: $log)" >&2; exit 1; }
  if ! "$venv/bin/python" -m medminds_hpc.environment; then
    echo "install.sh: $venv differs from $file (above); remove $venv and run install.sh again" >&2; exit 1
  fi
  echo "$want" > "$stamp"
fi
