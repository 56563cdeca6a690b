#!/usr/bin/env bash
# The one GPU check of the fast runners, run from the repository root on a CUDA machine:
#   1. `equizoo bench --suite speed --profile` for eager and cuda-graphs (one JSON each);
#   2. the tests marked cuda (CUDA-graph runner, CUDA vs CPU);
#   3. benchmarks/precision.py: bf16 and TF32 energy/force deviations and a short training comparison;
#   4. the suite's cases with torch.compile, one process per case (a slow cold compile costs only its own
#      row), and compile+cuda-graphs for the MD17 one-molecule latency; merged into bench-compile.json.
# Every step has its own timeout and the script goes on after a failure; steps run in order of priority
# and the whole run stays inside BUDGET seconds (default 480: steps that no longer fit are skipped).
# Results (at most 8 files) go to $OUT (default /tmp/gpu-check): log, summary.txt, bench-eager.json,
# bench-cuda-graphs.json, bench-compile.json, precision.json, cuda-tests.txt.
# ase travels as a wheel in .whl/ (installed with --target /tmp/site when `import ase` fails).
# CPU rehearsal (checks the script, not the numbers): DEVICE=cpu QUICK=1 bash benchmarks/gpu-check.sh
# (the eager rows on a small trained model; the suite's full-size networks only as cuda-graphs rows, which
# build every case's model and workload and then say that they need CUDA).
set -u -o pipefail
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-480}
DEADLINE=$(( $(date +%s) + BUDGET - 30 ))  # 30 s kept for merging and the summary
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import ase" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
WORK=$(mktemp -d /tmp/gpu-check-work.XXXXXX)
if [ "$QUICK" = 1 ]; then
    REPS=(--warmup 0 --repeats 1)
    EAGER_CASES=(--model releases/equiformer-md17-aspirin-l2-small-cpu --task latency --task inference --batch-size 2)
    export EQUIZOO_COMPILE_BACKEND=${EQUIZOO_COMPILE_BACKEND:-eager}  # no code generation on a small CPU
    T_SUITE=1800 T_CASE=1800 TRAIN_STEPS=3
    COMPILE_CASES=("releases/equiformer-md17-aspirin-l2-small-cpu latency 1 compile")  # a small trained model
else
    REPS=(--warmup 3 --repeats 10)
    EAGER_CASES=(--suite speed)
    T_SUITE=150 T_CASE=100 TRAIN_STEPS=30
    COMPILE_CASES=("md17-l2 latency 1 compile" "md17-l2 latency 1 compile+cuda-graphs" "qm9-l2 inference 128 compile"
                   "md17-l3 latency 1 compile" "oc20-l1 inference 16 compile" "oc20-l1 train_step 16 compile"
                   "md17-l2 train_step 8 compile" "qm9-l2 train_step 128 compile")
fi

step() {  # step NAME SECONDS COMMAND...: run with a timeout, log rc and time, never stop the script
    local name=$1 limit=$2 start rc left
    shift 2
    start=$(date +%s)
    left=$(( DEADLINE - start ))
    if [ "${FINAL:-0}" != 1 ]; then
        if [ "$left" -lt 20 ]; then
            echo "=== $name: skipped, ${left}s of the budget left"
            echo "$name skipped (budget)" >>"$OUT/summary.txt"
            return
        fi
        [ "$limit" -gt "$left" ] && limit=$left
    fi
    echo "=== $name (limit ${limit}s)"
    timeout -k 15 "$limit" "$@"
    rc=$?
    echo "=== $name: rc=$rc, $(( $(date +%s) - start ))s"
    echo "$name rc=$rc $(( $(date +%s) - start ))s" >>"$OUT/summary.txt"
}

main() {
    : >"$OUT/summary.txt"
    step environment 60 "$PY" -c "import torch, e3nn, ase; print('torch', torch.__version__, 'e3nn', e3nn.__version__, 'ase', ase.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    step bench-eager "$T_SUITE" "$PY" -m zoo.cli bench "${EAGER_CASES[@]}" --backend eager --profile --device "$DEVICE" "${REPS[@]}" -o "$OUT/bench-eager.json"
    step bench-cuda-graphs "$T_SUITE" "$PY" -m zoo.cli bench --suite speed --backend cuda-graphs --profile --device "$DEVICE" "${REPS[@]}" -o "$OUT/bench-cuda-graphs.json"
    step cuda-tests 150 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_use_accel.py tests/test_network_torchscript.py -rs \
        | tee "$OUT/cuda-tests.txt"
    step precision 90 "$PY" benchmarks/precision.py --device "$DEVICE" --train-steps "$TRAIN_STEPS" --output "$OUT/precision.json"
    for case in "${COMPILE_CASES[@]}"; do
        read -r variant task size backend <<<"$case"
        name="$backend-${variant##*/}-$task"
        step "bench-$name" "$T_CASE" "$PY" -m zoo.cli bench --model "$variant" --task "$task" --batch-size "$size" --backend "$backend" --profile --device "$DEVICE" "${REPS[@]}" -o "$WORK/$name.json"
    done
    FINAL=1 step merge-compile 15 "$PY" benchmarks/bench_merge.py "$OUT/bench-compile.json" "$WORK"/compile*.json
    FINAL=1 step summary 15 "$PY" benchmarks/bench_merge.py --summary "$OUT"/bench-*.json
    echo "=== steps"
    cat "$OUT/summary.txt"
}

main 2>&1 | tee "$OUT/log"
rm -rf "$WORK"
