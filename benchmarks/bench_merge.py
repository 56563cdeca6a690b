"""Merge `equizoo bench -o X.json` results, or print a compact summary of several (used by gpu-check.sh).

Usage: python benchmarks/bench_merge.py OUT.json IN.json ...     (rows of all inputs into one file)
       python benchmarks/bench_merge.py --summary IN.json ...   (one line per row, speed-up vs eager)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _rows(paths: list[str]) -> tuple[dict, list, list]:
    machine, fields, rows = {}, [], []
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            print(f"skipped {path}: {exc}")
            continue
        machine = machine or payload.get("machine", {})
        fields = fields or payload.get("fields", [])
        rows += payload.get("rows", [])
    return machine, fields, rows


def _num(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value)}"


def summary(paths: list[str]) -> None:
    machine, _, rows = _rows(paths)
    print(f"machine: {machine.get('gpu') or machine.get('cpu')}, torch {machine.get('torch')}")
    eager = {
        (r["variant"], r["task"], r["batch_size"]): r["median_ms"]
        for r in rows
        if r["backend"] == "eager" and r["status"] == "ok"
    }
    print(
        f"{'variant':8} {'task':10} {'batch':>5} {'backend':19} {'ms':>8} {'x eager':>7} {'aten':>6} {'kernels':>7} {'launch':>6} {'busy ms':>7} status"
    )
    for r in sorted(rows, key=lambda r: (r["variant"], r["task"], r["batch_size"], r["backend"])):
        base = eager.get((r["variant"], r["task"], r["batch_size"]))
        speed = base / r["median_ms"] if base and r.get("median_ms") else None
        status = "ok" if r["status"] == "ok" else f"error: {r['error'][:60]}"
        print(
            f"{r['variant']:8} {r['task']:10} {r['batch_size']:>5} {r['backend']:19} {_num(r.get('median_ms')):>8} {_num(speed, 2):>7} "
            f"{_num(r.get('aten_calls')):>6} {_num(r.get('gpu_kernels')):>7} {_num(r.get('kernel_launches')):>6} {_num(r.get('gpu_busy_ms')):>7} {status}"
        )


def merge(out: str, paths: list[str]) -> None:
    machine, fields, rows = _rows(paths)
    Path(out).write_text(json.dumps({"machine": machine, "fields": fields, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}: {len(rows)} rows from {len(paths)} files")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if sys.argv[1] == "--summary":
        summary(sys.argv[2:])
    else:
        merge(sys.argv[1], sys.argv[2:])
