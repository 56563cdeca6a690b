#!/usr/bin/env bash
# Make .venv with the CPU torch pin and equizoo (editable) plus the extras given as arguments.
# torch==2.13.0 goes first: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
say() { echo "setup-venv: $*" >&2; }
say "virtual environment .venv ($(.venv/bin/python --version 2>&1)); upgrading pip"
.venv/bin/python -m pip install -q --upgrade pip
say "installing torch==2.13.0 (CPU build; the largest download, about a minute on a fresh machine)"
.venv/bin/python -m pip install -q "torch==2.13.0"
extras=$(IFS=,; echo "$*")
say "installing equizoo (editable) with its dependencies (e3nn, ase, typer, rich, ...)${extras:+ and the extras: $extras}"
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
say "done: .venv/bin/equizoo --help lists the commands"
