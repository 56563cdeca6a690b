"""Using a model: resolve it, run it behind a backend, read inputs, predict, evaluate, bench, and the ASE
calculator (one module each; see docs/architecture.md)."""
