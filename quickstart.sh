#!/usr/bin/env bash
# One command on a fresh machine: install, then run a real job on the embedded default
# (local executor, tiny model, bundled synthetic data), and show its status. Takes about two minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export MEDMINDS_HOME=${MEDMINDS_HOME:-$PWD}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
# the task expert on the built-in tiny Mistral, trained on synthetic ARC-style data (prepared first, as a need)
.venv/bin/medminds submit expert-task --dataset micro --model tiny --executor local \
  -o prepare.source=synthetic -o epochs=1 -o eval_rows=200
.venv/bin/medminds status
