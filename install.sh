#!/usr/bin/env bash
# Create .venv and install medminds into it (idempotent: a second run only checks).
# CPU machines pin the CPU build of torch (constraints-cpu.txt); with nvidia-smi present, pip picks the CUDA build.
# Set MEDMINDS_GPU_EXTRA=1 on a GPU node to add unsloth (never in CI: its pins downgrade transformers/trl).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.medminds-installed
want=$(cat pyproject.toml constraints-cpu.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  extras="dev,real"
  [ "${MEDMINDS_GPU_EXTRA:-0}" = 1 ] && extras="dev,real,gpu"
  constraints=()
  command -v nvidia-smi >/dev/null 2>&1 || constraints=(-c constraints-cpu.txt)
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  log=.venv/install.log
  if ! .venv/bin/pip install "${constraints[@]}" -e ".[$extras]" >"$log" 2>&1; then
    tail -n 40 "$log"; echo "install.sh: pip install failed (full log: $log)" >&2; exit 1
  fi
  .venv/bin/python -c "import medminds_hpc, torch, transformers, peft, trl, submitit" # fail loudly if the install did not work
  echo "$want" > "$stamp"
fi
