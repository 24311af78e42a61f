#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_checks.sh needs on a lent GPU machine and that its
# image lacks (Python 3.12, x86-64; it has torch, pytest, transformers, opencv, pyyaml, ...): into
# .whl/, which git ignores (add `/.whl/` to .git/info/exclude) and the device run carries.
# (The CUDA tests' tiny CLIP tower needs no open_clip there: tests/helpers/clip_factory.py then takes
# worldtune's bundled tokenizer files.)
#
#   bash benchmarks/device_wheels.sh      # then: run `bash benchmarks/gpu_checks.sh` with carry [".whl"]
#
# .whl/ is replaced only once every download succeeded: two versions of one package there would make
# the device's install refuse them, and a failed download keeps the old set.
set -eu
for ignored in /.whl/ /.whl.new/; do
    grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
rm -rf .whl.new
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl.new \
    orjson pycocotools faster-coco-eval ultralytics==8.4.190
rm -rf .whl
mv .whl.new .whl
ls -l .whl
