"""The model distribution `equizoo-models`: every local release packaged as a wheel (package
`equizoo_models`, one folder per registry name holding the release's files and manifest), so that a plain,
non-editable install loads the released models offline, each file checked against the packaged registry.

    python -m zoo.distribution dist/            # -> dist/equizoo_models-<version>-py3-none-any.whl

The wheel is built by setuptools (pip wheel, no build isolation, nothing downloaded) from a staging copy of
the release folders, after every file was verified against the registry's sha256.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

from zoo._version import __version__
from zoo.errors import ZooError
from zoo.paths import releases_dir
from zoo.registry import MODELS_DISTRIBUTION, MODELS_PACKAGE


class DistributionError(ZooError, RuntimeError):
    """The model distribution cannot be built (no releases, a file failing its hash, the build failing)."""


_PYPROJECT = """[build-system]
requires = ["setuptools>=77", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
description = "Released Equiformer models of equizoo: weights, configs, model cards, manifests and checked exports."
requires-python = ">=3.10"
license = "MIT"
dependencies = ["equizoo>={version}"]

[tool.setuptools]
packages = ["{package}"]
include-package-data = false

[tool.setuptools.package-data]
{package} = ["*/*"]
"""


def stage(out: Union[str, Path], releases: Union[str, Path, None] = None) -> list:
    """Write the distribution's source tree into `out` (pyproject.toml + the package with one verified
    copy of every local release); returns the release names."""
    from zoo.hub.manifest import MANIFEST, verified_dir
    from zoo.release import local_releases

    root = Path(releases) if releases is not None else releases_dir()
    if root is None:
        raise DistributionError(
            "no releases folder: pass one (or set EQUIZOO_RELEASES); only a source checkout has releases/ of its own"
        )
    out = Path(out)
    package = out / MODELS_PACKAGE
    package.mkdir(parents=True)
    names = []
    for entry in local_releases():
        folder = root / entry.release
        if not folder.is_dir():
            raise DistributionError(
                f"release {entry.name} is registered but {folder} does not exist; release it or remove its registry entry"
            )
        with tempfile.TemporaryDirectory() as views:
            checked = verified_dir(folder, entry.file_hashes(), f"release {entry.name}", views)
            (package / entry.release).mkdir()
            for name in entry.file_hashes():
                shutil.copyfile(checked / name, package / entry.release / name)
        if (folder / MANIFEST).is_file():
            shutil.copyfile(folder / MANIFEST, package / entry.release / MANIFEST)
        names.append(entry.name)
    if not names:
        raise DistributionError("the registry lists no local releases to package")
    listing = "\n".join(f"    {n}" for n in sorted(names))
    (package / "__init__.py").write_text(
        f'"""equizoo\'s released models, one folder per registry name (read by zoo.registry):\n\n{listing}\n"""\n'
    )
    (out / "pyproject.toml").write_text(
        _PYPROJECT.format(name=MODELS_DISTRIBUTION, version=__version__, package=MODELS_PACKAGE)
    )
    return sorted(names)


def build_models_wheel(
    out_dir: Union[str, Path], releases: Union[str, Path, None] = None, python: Optional[str] = None
) -> Path:
    """Build the `equizoo-models` wheel into `out_dir` and return its path."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="equizoo-models-") as tmp:
        src = Path(tmp) / "src"
        stage(src, releases)
        cmd = [
            python or sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out_dir),
            str(src),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise DistributionError(
                f"building the {MODELS_DISTRIBUTION} wheel failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}"
            )
    wheels = sorted(out_dir.glob(f"{MODELS_PACKAGE}-{__version__}-*.whl"))
    if not wheels:
        raise DistributionError(f"pip reported success but wrote no {MODELS_PACKAGE} wheel into {out_dir}")
    return wheels[-1]


def main(argv: Optional[list] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2) or args[0].startswith("-"):
        print("usage: python -m zoo.distribution OUT_DIR [RELEASES_DIR]", file=sys.stderr)
        return 2
    try:
        wheel = build_models_wheel(args[0], args[1] if len(args) == 2 else None)
    except (DistributionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{wheel} ({wheel.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
