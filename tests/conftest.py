"""Shared fixtures: where the golden reference outputs and the shared real data live.

Large files stay outside the repository: the golden outputs of the authors' code (~150 MB) are found
through EQUIZOO_GOLDEN (default ../shared/golden next to the repository), the shared data through
EQUIZOO_SHARED_DATA (default ../shared/data). Tests that need them skip with the reason when absent.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", message=".*TorchScript.*")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")


def _dir(env: str, default: Path) -> Path:
    return Path(os.environ.get(env, default)).resolve()


GOLDEN_DIR = _dir("EQUIZOO_GOLDEN", REPO.parent / "shared" / "golden")
SHARED_DATA = _dir("EQUIZOO_SHARED_DATA", REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN_DIR / "index_all.json").is_file():
        pytest.skip(f"golden reference outputs not found at {GOLDEN_DIR} (set EQUIZOO_GOLDEN)")
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set EQUIZOO_SHARED_DATA)")
    return SHARED_DATA



@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A local Hub (token required for writes), an empty HF cache, and a registry file for this test."""
    from hubtools import TOKEN, USER, point_client_at
    from zoo.hub.server import serve_hub

    with serve_hub(tmp_path / "hub-store", tokens={TOKEN: USER}) as running:
        point_client_at(monkeypatch, running.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("EQUIZOO_REGISTRY", str(tmp_path / "registry.json"))
        yield running


@pytest.fixture(scope="session")
def example_binary(tmp_path_factory) -> Path:
    """examples/cpp built with CMake against the torch wheel's libtorch (once per session)."""
    import shutil
    import subprocess

    import torch

    if shutil.which("cmake") is None or shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build the C++ example")
    build = tmp_path_factory.mktemp("cpp-build")
    prefix = torch.utils.cmake_prefix_path
    example = REPO / "examples" / "cpp"
    for cmd in (["cmake", "-S", str(example), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"], ["cmake", "--build", str(build)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exe = build / "equiformer_run"
    assert exe.is_file()
    return exe


@pytest.fixture()
def one_thread():
    """One intra-op torch thread during the test, restored after: the small graphs of the tests gain nothing from
    more, and the test machines (two cores) are shared. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
