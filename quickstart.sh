#!/usr/bin/env bash
# One command on a fresh machine: install, then run a real job on the embedded default
# (local executor, tiny model, bundled synthetic data), and show its status. Takes about two minutes on 2 CPU cores.
# Runs, data and the tiny model go to $MEDMINDS_HOME (default ~/.cache/medminds/quickstart), never into the checkout.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export MEDMINDS_HOME=${MEDMINDS_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/medminds/quickstart}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
# the task expert on the built-in tiny Mistral, trained on synthetic ARC-style data (prepared first, as a need).
# The paper's learning rate (2e-4, with 8-bit AdamW) suits a pretrained 7B; the random-init tiny model needs a
# larger step to learn the synthetic rule in one epoch (held-out task accuracy 1.0 in ~30 s on 2 cores).
.venv/bin/medminds submit expert-task --dataset micro --model tiny --executor local \
  -o prepare.source=synthetic -o epochs=1 -o eval_rows=200 -o learning_rate=1e-2 -o optimizer=adamw
# the metric column: rows prepared, and the expert's held-out task accuracy (its MedMCQA accuracy is in metrics.json)
.venv/bin/medminds status
echo "to see these runs again: MEDMINDS_HOME=$MEDMINDS_HOME .venv/bin/medminds status"
