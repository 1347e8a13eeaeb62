#!/usr/bin/env bash
# The device check, prepared for a lent GPU machine, in one call:
#   bash benchmarks/device_check.sh
# 1. the GPU lock: installed into .venv-gpu when pip reaches an index (MEDMINDS_LOCK=gpu bash install.sh); where it
#    cannot (a machine cut off from PyPI), the machine's own python3, with the versions that differ from the lock
#    printed first;
# 2. benchmarks/gpu_check.py: each stage (expert, classifier, features, ensemble head, mixture) on a random-init
#    Mistral-7B-shaped model, bf16, 4-bit and unsloth's 4-bit: tokens/s and peak memory beside the planner's estimate;
# 3. benchmarks/memory_estimate.py --device cuda --mistral-layer: the planner's per-token figures beside measured ones.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
if MEDMINDS_LOCK=gpu MEDMINDS_VENV=.venv-gpu bash install.sh; then
  py=.venv-gpu/bin/python
else
  echo "device_check: locks/gpu.txt could not be installed here; the machine's python3 instead" >&2
  py=${PYTHON:-python3}
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
status=0
"$py" benchmarks/gpu_check.py "$@" || status=$?
"$py" benchmarks/memory_estimate.py --device cuda --mistral-layer || status=$?
exit $status
