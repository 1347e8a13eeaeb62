#!/usr/bin/env bash
# One command on a fresh machine: install, then run a real job on the embedded default
# (local executor, tiny model, bundled synthetic data), and show its status.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export MEDMINDS_HOME=${MEDMINDS_HOME:-$PWD}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
.venv/bin/medminds submit doctor --dataset micro --executor local --force
.venv/bin/medminds status
