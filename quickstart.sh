#!/usr/bin/env bash
# One command on a fresh machine: install, then `medminds demo`: the study in miniature on the embedded default
# (local executor, tiny model, synthetic data; no Slurm, GPU or download), one line per finished stage, then the
# report. A few minutes on 2 CPU cores. Runs, data, the tiny model and the report go to $MEDMINDS_HOME
# (default ~/.cache/medminds/quickstart), never into the checkout; a second call reuses the finished runs.
set -euo pipefail
cd "$(dirname "$0")"
bash install.sh
export MEDMINDS_HOME=${MEDMINDS_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/medminds/quickstart}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
.venv/bin/medminds demo
echo "to see these runs again: MEDMINDS_HOME=$MEDMINDS_HOME .venv/bin/medminds status"
echo "the report, with its figures: $MEDMINDS_HOME/results/index.html"
