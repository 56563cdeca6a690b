"""Shared fixtures (where the golden reference outputs and the shared real data live, the C++ example build)
and the grouping of tests for parallel runs under pytest-xdist.

Large files stay outside the repository: the golden outputs of the authors' code (~150 MB) are found
through EQUIZOO_GOLDEN (default ../shared/golden next to the repository), the shared data through
EQUIZOO_SHARED_DATA (default ../shared/data). Tests that need them skip with the reason when absent.
"""

from __future__ import annotations

import json
import os
import tempfile
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


# --- pytest-xdist (scripts/test.sh runs `-n 2 --dist loadgroup`) ------------------------------------------
# Tests that share an expensive fixture go to one worker, so that it is built once: the tests using a fixture
# of module scope (per module) and those using a session-wide build named in ONE_WORKER_BUILDS (per build).
# Other session fixtures are cheap, or cached on disk behind a lock (the LAMMPS plugin), and may be made once
# per worker. Each worker writes the test -> group table at collection into a file the controller's scheduler
# reads (xdist's own loadgroup renames node ids, which pytest >= 9.2 no longer takes). Tests marked slow
# are sent first, so that none is left to run alone at the end.
ONE_WORKER_BUILDS = {"example_binary": "libtorch-builds", "aoti_model": "libtorch-builds", "qm9_full": "qm9-full"}
_GROUPS_INPUT = "equizoo_test_groups"
_GROUPS_FILE = pytest.StashKey[Path]()


def shared_fixture_groups(items) -> dict:
    """{node id: group} of the tests that share an expensive fixture; a test needing two joins their groups."""
    parent: dict = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    needs = []
    for item in items:
        keys = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(item, "fixturenames", ()):
            defs = info.name2fixturedefs.get(name) if info is not None else None
            if name in ONE_WORKER_BUILDS:
                keys.add(ONE_WORKER_BUILDS[name])
            elif defs and defs[-1].scope in ("class", "module", "package"):
                keys.add(item.nodeid.split("::")[0])
        for key in keys:
            parent[root(key)] = root(min(keys))
        needs.append((item.nodeid, keys))
    return {nodeid: root(min(keys)) for nodeid, keys in needs if keys}


def pytest_configure(config):
    if not hasattr(config, "workerinput") and config.getoption("dist", "no") == "loadgroup":
        fd, name = tempfile.mkstemp(prefix="equizoo-test-groups-", suffix=".json")
        os.close(fd)
        config.stash[_GROUPS_FILE] = Path(name)
        config.add_cleanup(Path(name).unlink)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    if _GROUPS_FILE in node.config.stash:
        node.workerinput[_GROUPS_INPUT] = str(node.config.stash[_GROUPS_FILE])


@pytest.hookimpl(trylast=True)  # the final selection, with the node ids the worker reports
def pytest_collection_modifyitems(config, items):
    target = getattr(config, "workerinput", {}).get(_GROUPS_INPUT)
    if target is None:
        return
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    partial = Path(f"{target}.{os.getpid()}")
    partial.write_text(json.dumps(shared_fixture_groups(items)))
    os.replace(partial, target)  # every worker writes the same table


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if _GROUPS_FILE not in config.stash:
        return None
    from xdist.scheduler import LoadGroupScheduling

    path = config.stash[_GROUPS_FILE]

    class SharedFixtureScheduling(LoadGroupScheduling):
        """loadgroup with the groups the workers wrote (read once their collections are in)."""

        groups = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:
                self.groups = json.loads(path.read_text() or "{}")
            return self.groups.get(nodeid) or super()._split_scope(nodeid)

    return SharedFixtureScheduling(config, log)


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
    for cmd in (
        ["cmake", "-S", str(example), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", str(build)],
    ):
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


@pytest.fixture(scope="session")
def qm9_full(tmp_path_factory) -> tuple:
    """The full QM9 (qm9pack, 130,831 molecules) prepared by zoo.data into a fresh cache, once per session for
    the data and the training tests: (the prepared dataset's folder, seconds the preparation took)."""
    import importlib.util
    import time

    from zoo.data import prepare_dataset

    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("qm9pack not installed; run `pip install qm9pack==1.0.3`")
    cache = tmp_path_factory.mktemp("qm9-cache")
    start = time.perf_counter()
    path = prepare_dataset("qm9", cache_dir=cache)
    return path, time.perf_counter() - start
