#!/usr/bin/env bash
# GPU check of AOTInductor packages (expected 2-4 minutes on one GPU): export a CUDA .pt2 of a small float64
# force field and compare it with eager in Python; if cmake, a C++ compiler and libtorch headers are there,
# build examples/cpp and check that it prints the same energy and forces from the CUDA package.
# Results go to $OUT (default ./gpu-aoti-check): python.json, cpp.txt, cpp.json, summary.txt.
# Its first run (H200, torch 2.11) died of a segfault before printing anything, so each step now prints a
# stage line as it starts and a crash prints the Python stack (faulthandler) to python.txt.
#   Usage: OUT=/some/dir bash benchmarks/gpu-aoti-check.sh      (needs torch with CUDA, e3nn, ase, equizoo's deps)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-aoti-check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1 || true

PYTHONFAULTHANDLER=1 timeout 200 "$PY" -u benchmarks/gpu_aoti_check.py "$OUT" > "$OUT/python.txt" 2>&1
py_rc=$?
echo "python check: rc $py_rc" | tee "$OUT/summary.txt"
tail -25 "$OUT/python.txt"

cpp_rc=skipped
if [ $py_rc -eq 0 ] && command -v cmake > /dev/null && { command -v c++ > /dev/null || command -v g++ > /dev/null; }; then
  prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  build="$OUT/cpp-build"
  if timeout 60 cmake -S examples/cpp -B "$build" -DCMAKE_PREFIX_PATH="$prefix" > "$OUT/cpp-build.log" 2>&1 &&
     timeout 180 cmake --build "$build" -j 8 >> "$OUT/cpp-build.log" 2>&1; then
    timeout 60 "$build/equiformer_run" "$OUT/model-cuda.pt2" "$OUT/check.xyz" --device cuda > "$OUT/cpp.txt" 2>&1
    cpp_rc=$?
    cat "$OUT/cpp.txt" | head -5
    "$PY" - "$OUT" <<'PYEOF' >> "$OUT/summary.txt"
import json, re, sys
from pathlib import Path
out = Path(sys.argv[1])
ref = json.loads((out / "python.json").read_text())
text = (out / "cpp.txt").read_text()
m = re.search(r"^energy: (\S+)", text, re.M)
rows = [ln.split() for ln in text.split("forces:", 1)[-1].splitlines()[1:] if ln.strip()]
if not m or not rows:
    print("C++ output not parsed")
    sys.exit(0)
e = float(m.group(1))
f = [[float(v) for v in r[1:4]] for r in rows]
fr = ref["check_xyz_forces"]
rel_e = abs(e - ref["check_xyz_energy"]) / abs(ref["check_xyz_energy"])
rel_f = max(abs(a - b) for ra, rb in zip(f, fr) for a, b in zip(ra, rb)) / max(abs(b) for rb in fr for b in rb)
res = {"cpp_energy": e, "python_energy": ref["check_xyz_energy"], "energy_rel": rel_e, "forces_max_rel": rel_f, "ok": rel_e <= 1e-9 and rel_f <= 1e-9}
(out / "cpp.json").write_text(json.dumps(res, indent=2))
print("C++ vs Python eager (CPU float64):", json.dumps(res))
PYEOF
  else
    cpp_rc=build-failed
    tail -20 "$OUT/cpp-build.log"
  fi
fi
echo "C++ example on the CUDA package: $cpp_rc" | tee -a "$OUT/summary.txt"
cat "$OUT/summary.txt"
[ $py_rc -eq 0 ]
