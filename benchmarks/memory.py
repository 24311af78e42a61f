"""Host memory (peak RSS) of a model's life cycle on CPU: build, EMA, train, resume, eval, predict.

    python benchmarks/memory.py                   # the L model, in /tmp/worldtune-memory
    python benchmarks/memory.py --variant x --workdir /tmp/mem-x

Part 1, in this process: the resident memory that building the model (with a full-size, randomly
initialised ViT-B/32 CLIP text tower, `--text-model random`) and creating its `ExpMomentumEMA` add.
Part 2, one child process each, peak RSS (ru_maxrss) of the real CLI on a generated 2-image COCO set
(tests/helpers/coco_factory.py) at 128 px, batch 1, no image cache: `worldtune train --weights none`
for 2 epochs (validation and best.pt each epoch, epoch_1.pt kept), `worldtune train --resume
epoch_1.pt` (1 epoch), `worldtune eval` and `worldtune predict` on last.pt. Activations at 128 px are
small, so the numbers are mostly weights, gradients, optimizer state and checkpoints: what a GPU
run holds on the device (weights, EMA, gradients, AdamW state) follows the same accounting.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def rss_mib(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(cmd, env):
    t0 = time.time()
    # ru_maxrss of RUSAGE_CHILDREN is the max over all waited-for children: run each under a
    # fresh python wrapper that reports its own child's peak.
    wrapper = ("import resource,subprocess,sys;r=subprocess.run(sys.argv[1:]);"
               "print('PEAK_KIB',resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,file=sys.stderr);"
               "sys.exit(r.returncode)")
    # cwd: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH
    r = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True, text=True,
                       cwd=env["PYTHONPATH"])
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    peak = int([l for l in r.stderr.splitlines() if l.startswith("PEAK_KIB")][-1].split()[1])
    return peak / 1024, time.time() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="l")
    ap.add_argument("--workdir", default="/tmp/worldtune-memory")
    ap.add_argument("--skip-inprocess", action="store_true")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "2"}
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    if not args.skip_inprocess:
        from worldtune.engine.ema import ExpMomentumEMA
        from worldtune.model import build_model
        from worldtune.model.loading import build_text_model
        base = rss_mib()
        model = build_model(args.variant, build_text_model("random"), num_classes=80)
        built = rss_mib()
        n_img = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.text_model."))
        n_txt = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.text_model."))
        ema = ExpMomentumEMA(model)
        with_ema = rss_mib()
        ema.update(model)
        print(f"params: image side {n_img / 1e6:.1f} M, text tower {n_txt / 1e6:.1f} M")
        print(f"in-process RSS (MiB): imports {base:.0f}, +model {built - base:.0f}, +EMA {with_ema - built:.0f}")
        del ema, model

    from tests.helpers.coco_factory import make_tiny_coco
    data = make_tiny_coco(work / "data", num_images=2)
    run = work / "run"
    py = [sys.executable, "-m", "worldtune"]
    common = ["--set", "data.cache_images=false", "--set", "data.num_texts=5"]
    train = [*py, "train", "--train-ann", str(data["ann_file"]), "--train-images", str(data["image_dir"]),
             "--val-ann", str(data["ann_file"]), "--val-images", str(data["image_dir"]),
             "--variant", args.variant, "--weights", "none", "--text-model", "random", "--epochs", "2",
             "--batch-size", "1", "--imgsz", "128", "--device", "cpu", "--workers", "0", "--out", str(run),
             *common, "--set", "train.checkpoint_interval=1", "--set", "train.val_interval=1"]
    rows = []
    rows.append(("train 2 epochs (2 steps each, val, best.pt)", *child(train, env)))
    size = (run / "last.pt").stat().st_size / 2**20
    resume = [*py, "train", "--resume", str(run / "epoch_1.pt")]
    rows.append(("train --resume epoch_1.pt (1 epoch, val)", *child(resume, env)))
    ev = [*py, "eval", "--weights", str(run / "last.pt"), "--ann", str(data["ann_file"]),
          "--images", str(data["image_dir"]), "--imgsz", "128", "--device", "cpu", "--text-model", "random"]
    rows.append(("eval last.pt", *child(ev, env)))
    pred = [*py, "predict", "--weights", str(run / "last.pt"), str(data["image_dir"]),
            "--imgsz", "128", "--device", "cpu", "--text-model", "random", "--out", str(work / "pred")]
    rows.append(("predict last.pt", *child(pred, env)))
    print(f"last.pt: {size:.0f} MiB")
    for name, peak, secs in rows:
        print(f"{name:45s} peak RSS {peak:7.0f} MiB  ({secs:.0f} s)")


if __name__ == "__main__":
    main()
