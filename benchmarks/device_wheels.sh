#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_checks.sh needs on a lent GPU machine and that its
# image lacks (Python 3.12, x86-64; it has torch, pytest, transformers, opencv, pyyaml, ...): into
# .whl/, which git ignores (add `/.whl/` to .git/info/exclude) and the device run carries.
#
#   bash benchmarks/device_wheels.sh      # then: run `bash benchmarks/gpu_checks.sh` with carry [".whl"]
set -eu
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    orjson pycocotools faster-coco-eval ultralytics==8.4.190
ls -l .whl
