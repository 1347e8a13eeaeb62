#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): every tier. `pytest` alone runs only the fast unit tier;
# this adds the slow tier (tiny-model training, the quickstart) and the slurm tier, which runs when a cluster answers
# (start the dev cluster with `bash slurm/dev-cluster/up.sh` as root) and is skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest -m "not gpu" --durations=25 "$@"
