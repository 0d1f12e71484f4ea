#!/usr/bin/env bash
# FedKSeed on Flower, deployed on this machine: a SuperLink and N SuperNodes on 127.0.0.1 (free ports),
# one run of RECIPE, then everything stopped. Results in RUN_DIR (summary.json, checkpoints/, logs/).
#   FEDKSEED_DATA_ROOT=../shared/data scripts/deploy_local.sh recipes/quickstart.yaml 3 runs/flower
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${1:?usage: scripts/deploy_local.sh RECIPE [NODES] [RUN_DIR] [OVERRIDES_JSON]}
exec .venv/bin/python -m kit.deploy.local --recipe "$RECIPE" --nodes "${2:-3}" --run-dir "${3:-runs/flower}" \
    --overrides "${4:-{\}}"
