#!/usr/bin/env bash
# Install fedkseed-kit into ./.venv with pinned packages, then fetch and convert the embedded
# SmolLM2-135M-Instruct once into ~/.cache/fedkseed (or $FEDKSEED_CACHE). Safe to re-run.
#   scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first and pinned, so that no dependency pulls a multi-GB CUDA build on a CPU machine
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev,notebooks]"
.venv/bin/python -m kit.models smollm2-135m
