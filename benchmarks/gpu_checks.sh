#!/usr/bin/env bash
# Everything worth measuring or checking on a lent GPU, in one run that fits a short device budget
# (at most GPU_CHECKS_BUDGET seconds of commands, 540 (9 minutes) by default, plus the machine start). Results
# go to $OUT (or ./gpu_checks_out), one file per step, written as the step runs: a run cut short
# still brings back what was done.
#
#   bash benchmarks/gpu_checks.sh
#
# The device machine has torch but not the benchmark references nor some of worldtune's needs:
# `bash benchmarks/device_wheels.sh` puts wheels for orjson, pycocotools, faster-coco-eval and
# ultralytics in .whl/; carry .whl and they are installed into /tmp/site first. The compiled ones
# are for CPython 3.12: on another Python they are skipped (said in setup.txt) and the steps that
# need them are skipped too; the benchmark needs only ultralytics, which fits any Python 3.
# Steps run most important first (the train-step benchmark of S and L against Ultralytics), each
# under its own time limit (cut to what is left of the budget), so one hang costs only its share;
# the last step, compiling, gets whatever time the others left.
set -u
OUT=${OUT:-gpu_checks_out}
BUDGET=${GPU_CHECKS_BUDGET:-540}
mkdir -p "$OUT"
SETUP=$OUT/setup.txt
: > "$SETUP"
say() { echo "$@" | tee -a "$SETUP"; }
PY=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")' 2>/dev/null || echo unknown)
if ls .whl/*.whl >/dev/null 2>&1; then
    # One install per wheel: a wheel that does not fit this Python must not keep the others out.
    for wheel in .whl/*.whl; do
        if ! timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/site "$wheel" >> "$SETUP" 2>&1; then
            say "NOT INSTALLED: $(basename "$wheel") (this python is $PY; the compiled wheels of device_wheels.sh are cp312)"
        fi
    done
else
    say "no .whl/ carried: run benchmarks/device_wheels.sh here and carry .whl"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg  # no network there: fail fast, never wait on it
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$SETUP"
timeout 60 python3 - <<'EOF' 2>&1 | tee -a "$SETUP"
import importlib.util, platform, sys
print(f"python {platform.python_version()} ({sys.executable})")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU visible: {torch.cuda.is_available()}")
except Exception as e:
    print(f"torch does not import: {e}")
for name in ("orjson", "pycocotools", "faster_coco_eval", "ultralytics", "transformers", "cv2", "pytest"):
    print(f"  {name}: {'ok' if importlib.util.find_spec(name) else 'MISSING'}")
EOF

step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2 left=$((BUDGET - SECONDS))
    shift 2
    if [ "$left" -lt 20 ]; then
        echo "== $name skipped: the ${BUDGET} s budget is spent" | tee "$OUT/$name.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit $limit s)"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "exit $? after $((SECONDS - start)) s" >> "$OUT/$name.txt"
    grep -v "Warn" "$OUT/$name.txt" | tail -n 12
}
B=benchmarks/train_step.py
step train_step_bf16 120 python3 $B --device cuda --batch 16 --steps 10 --rounds 3 --warmup 3 --amp bf16 --variants s l
if ! python3 -c "import pytest" 2>/dev/null; then
    echo "== gpu_tests skipped: pytest is not installed here (carry its wheel, and pluggy/iniconfig, in .whl/)" | tee "$OUT/gpu_tests.txt"
elif ! python3 -c "import orjson, pycocotools, faster_coco_eval" 2>/dev/null; then
    echo "== gpu_tests skipped: worldtune's orjson, pycocotools or faster-coco-eval is missing (see setup.txt)" | tee "$OUT/gpu_tests.txt"
else
    step gpu_tests 120 python3 -m pytest -q -p no:cacheprovider tests/engine/test_gpu.py
fi
step cuda_graph_bf16 120 python3 $B --device cuda --batch 16 --steps 10 --rounds 3 --warmup 3 --amp bf16 --variants s l --cuda-graph
step train_step_fp16 50 python3 $B --device cuda --batch 16 --steps 10 --rounds 3 --warmup 3 --amp fp16 --variants s
step compile_reduce_overhead 180 python3 $B --device cuda --batch 16 --steps 10 --rounds 2 --warmup 3 --amp bf16 --variants s --compile reduce-overhead
echo "done after $SECONDS s; results in $OUT"
