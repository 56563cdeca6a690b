"""A plain, non-editable install: the project's wheel and the model distribution `equizoo-models` (both
built here by the project's own build, nothing downloaded) installed into a fresh venv that borrows only
third-party packages (torch, e3nn, ...) from the test venv. Outside any checkout and offline, every released
model is listed and predicts; a changed file of the installed model distribution is refused by sha256."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from zoo.release import local_releases

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(m.name for m in local_releases())
pytestmark = pytest.mark.install


def _run(cmd: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """(venv python, environment, work folder) of a fresh venv holding the two wheels, non-editable."""
    root = tmp_path_factory.mktemp("fresh-install")
    dist, src = root / "dist", root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    shutil.copytree(REPO / "zoo", src / "zoo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist]
    proc = _run(build + [src], root, dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    proc = _run([sys.executable, "-m", "zoo.distribution", dist], root, dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    venv = root / "venv"
    proc = _run([sys.executable, "-m", "venv", venv], root, dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, dict(os.environ)
        ).stdout.strip()
    )
    # third-party packages only: the test venv's site-packages, after the fresh venv's own (its .pth files,
    # such as an editable install of this checkout, are not processed from there)
    (purelib / "zz_borrowed_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = sorted(dist.glob("*.whl"))
    proc = _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", *wheels], root, dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    work = root / "work"
    work.mkdir()
    from ase.build import molecule
    from ase.io import write

    write(work / "benzene.xyz", molecule("C6H6"))  # H and C: elements every release was trained on
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EQUIZOO_", "HF_", "PYTHONPATH"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"), EQUIZOO_CACHE=str(root / "cache"), OMP_NUM_THREADS="1", COLUMNS="200",
               PYTHONWARNINGS="ignore", no_proxy="*", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")  # fmt: skip
    return python, env, work, {p.name: p.stat().st_size for p in wheels}


def test_the_install_is_not_the_checkout(fresh):
    python, env, work, _ = fresh
    proc = _run(
        [python, "-c", "import zoo, equizoo_models; print(zoo.__file__); print(equizoo_models.__file__)"], work, env
    )
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.split():
        assert str(python.parents[1]) in line and str(REPO) not in line


def test_every_release_is_listed_and_predicts_offline(fresh):
    python, env, work, _ = fresh
    equizoo = python.parent / "equizoo"
    proc = _run([equizoo, "list", "--published", "--json"], work, env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["name"] for r in json.loads(proc.stdout)) == SHIPPED and len(SHIPPED) == 7
    proc = _run(
        [equizoo, "predict", work / "benzene.xyz", "--model", SHIPPED[0], "-o", work / f"{SHIPPED[0]}.json"], work, env
    )
    assert proc.returncode == 0, proc.stderr
    # the same command for the other six in one interpreter (the installed console script's app), to save six start-ups
    script = (
        "import sys\nfrom zoo.cli import app\n"
        "for name in sys.argv[2:]:\n"
        "    try:\n        app(['predict', sys.argv[1], '--model', name, '-o', name + '.json'], prog_name='equizoo')\n"
        "    except SystemExit as exc:\n        assert exc.code in (0, None), (name, exc.code)\n"
    )
    proc = _run([python, "-c", script, work / "benzene.xyz", *SHIPPED[1:]], work, env)
    assert proc.returncode == 0, proc.stderr
    for name in SHIPPED:
        result = json.loads((work / f"{name}.json").read_text())
        assert result["model"] == name and result["n_failed"] == 0 and result["structures"][0]["status"] == "ok", name
        assert str(REPO) not in result["model_source"]


def test_a_changed_file_of_the_installed_models_is_refused(fresh):
    python, env, work, _ = fresh
    name = "equiformer-md17-ethanol-l2-small-cpu"
    located = _run(
        [python, "-c", "import equizoo_models, os; print(os.path.dirname(equizoo_models.__file__))"], work, env
    )
    weights = Path(located.stdout.strip()) / name / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        proc = _run(
            [python.parent / "equizoo", "predict", work / "benzene.xyz", "--model", name, "-o", work / "tampered.json"],
            work,
            env,
        )
        assert proc.returncode != 0 and "sha256 mismatch for model.safetensors" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not (work / "tampered.json").exists()
    finally:
        weights.write_bytes(original)
