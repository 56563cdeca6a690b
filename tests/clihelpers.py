"""Run the `equizoo` command line in a subprocess, as a user would: one definition for every test file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m zoo.cli ARGS` in a subprocess (one torch thread: the CI machines have two cores)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "zoo.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
    )


_MANY = """
import contextlib, io, json, os, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # as if the package were not installed: importing it raises ModuleNotFoundError
os.umask(0o022)
from zoo.cli import app
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(argv, prog_name="equizoo")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_cli_many(commands, env: dict | None = None, missing: tuple = (), timeout: int = 900) -> list:
    """Run several `equizoo` command lines in ONE subprocess (the start-up of torch is paid once), each
    parsed by the real command line app: [(exit code, stdout, stderr)] in order. `missing` names packages
    that behave as not installed there. Umask 022, 80 columns, one torch thread."""
    import json

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80", **(env or {})}
    argvs = json.dumps([[str(a) for a in argv] for argv in commands])
    proc = subprocess.run([sys.executable, "-c", _MANY, json.dumps(list(missing)), argvs], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [tuple(r) for r in json.loads(proc.stdout.splitlines()[-1])]
