"""The process's allocator setting that the `equizoo` command makes (zoo.host)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
    reason="a glibc malloc setting",
)

ROUNDS = """
import resource, torch
from zoo.host import keep_freed_memory
print(keep_freed_memory())
def once():  # 600 tensors of 100 kB (60 MB), made and freed
    xs = [torch.ones(25_000) for _ in range(600)]
    del xs
once(); once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    once()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(env: dict) -> list:
    proc = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_kept_memory_is_reused_without_page_faults():
    """Three rounds of 60 MB of small tensors: glibc's defaults give the freed heap back and fault ~5,000
    pages in again (measured here); kept, the memory is reused."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    took, faults = _run(env)
    assert took == "True"
    assert int(faults) < 500, f"{faults} page faults"


def test_the_users_own_malloc_tunables_win():
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")
    took, _ = _run(env)
    assert took == "False"
