#!/usr/bin/env bash
# Everything worth measuring or checking on a lent GPU, in one run that fits a short device budget
# (at most 9 minutes of commands, plus the machine start). Results go to $OUT (or ./gpu_checks_out).
#
#   bash benchmarks/gpu_checks.sh
#
# The device machine has torch but not the benchmark references nor some of worldtune's needs:
# `bash benchmarks/device_wheels.sh` puts wheels for orjson, pycocotools, faster-coco-eval and
# ultralytics in .whl/; carry .whl and they are installed into /tmp/site first. Each step has its own time limit, so one hang costs only its share.
set -u
OUT=${OUT:-gpu_checks_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
B=benchmarks/train_step.py
step() {  # name, time limit in seconds, command...
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "exit $?" >> "$OUT/$name.txt"
    grep -v "Warn" "$OUT/$name.txt" | tail -n 12
}
if python3 -c "import pytest" 2>/dev/null; then
    step gpu_tests 120 python3 -m pytest -q tests/engine/test_gpu.py
else
    echo "== gpu_tests skipped: pytest is not installed here (carry its wheel, and pluggy/iniconfig, in .whl/)"
fi
step train_step_bf16 120 python3 $B --device cuda --batch 16 --steps 10 --rounds 3 --warmup 3 --amp bf16 --variants s l
step cuda_graph_bf16 120 python3 $B --device cuda --batch 16 --steps 10 --rounds 3 --warmup 3 --amp bf16 --variants s l --cuda-graph
step train_step_fp16 60 python3 $B --device cuda --batch 16 --steps 10 --rounds 3 --warmup 3 --amp fp16 --variants s
step compile_reduce_overhead 120 python3 $B --device cuda --batch 16 --steps 10 --rounds 2 --warmup 3 --amp bf16 --variants s --compile reduce-overhead
