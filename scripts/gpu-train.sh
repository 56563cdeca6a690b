#!/usr/bin/env bash
# Train RECIPE within MINUTES (training, the test evaluation, TorchScript and ONNX exports checked against
# eager, and a release folder) and leave it all under OUT:
#   scripts/gpu-train.sh budget/md17-l2-ethanol-10m 10 out/ethanol [--set data.source=PATH] [--name NAME]
# The window counts from this command's start; everything runs in one Python process (scripts/gpu_train.py).
# Python: $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x "$here/../.venv/bin/python" ]; then
    py="$here/../.venv/bin/python"
else
    py=python3
fi
exec "$py" "$here/gpu_train.py" "$@"
