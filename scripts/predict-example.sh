#!/usr/bin/env bash
# The main job on a fresh machine: install equizoo, then predict the README's example molecules with the
# embedded default model (offline). Writes predictions.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/equizoo predict examples/qm9_molecules.extxyz --output predictions.csv
