#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this). Slurm tests run when a cluster answers
# (start the dev cluster with `bash slurm/dev-cluster/up.sh`), and are skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
