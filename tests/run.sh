#!/usr/bin/env bash
# The test command (README; .ci/run calls exactly this): every tier, in both environments.
# 1. The CPU lock (.venv): `pytest` alone runs only the fast unit tier; this adds the slow tier (tiny-model training,
#    the quickstart) and the slurm tier, which runs when a cluster answers (start the dev cluster with
#    `bash slurm/dev-cluster/up.sh` as root) and is skipped otherwise.
# 2. The GPU lock's versions with torch's CPU build and without unsloth (.venv-gpu-on-cpu, locks/gpu-on-cpu.txt):
#    the fast tier and the stages' slow tests, so what a GPU cluster installs is tested here too. Each run's header
#    names its libraries' versions.
set -uo pipefail
cd "$(dirname "$0")/.."
bash install.sh || exit 1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
status=0
.venv/bin/python -m pytest -m "not gpu" --durations=25 "$@" || status=$?
echo "== the GPU lock's versions (locks/gpu-on-cpu.txt) =="
MEDMINDS_LOCK=gpu-on-cpu MEDMINDS_VENV=.venv-gpu-on-cpu bash install.sh || exit 1
.venv-gpu-on-cpu/bin/python -m pytest -m "not gpu and not slow and not slurm" "$@" || status=$?
if [ $# -eq 0 ]; then
  .venv-gpu-on-cpu/bin/python -m pytest -m "slow and not slurm and not gpu" tests/test_expert.py tests/test_baseline_classifier.py \
    tests/test_baseline_nextword.py tests/test_features.py tests/test_ensemble.py tests/test_moe_stage.py tests/test_merge.py \
    tests/test_training_engine.py tests/test_data_prepare.py tests/test_gpu_check.py || status=$?
fi
exit $status
