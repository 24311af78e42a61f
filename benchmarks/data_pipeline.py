"""Images/s of the full stage-1 mask-refine training pipeline (v2-S recipe) at 640, on generated images.

Pipeline timed: load -> Mosaic(4) -> CopyPaste(0.3) -> RandomAffine with mask refinement
(1000-point polygons) -> MixUp(0.15) -> Blur/MedianBlur/ToGray/CLAHE -> HSV -> flip ->
RandomLoadText(80) -> collate, through the real DataLoader, for each worker count. Rows (all
with the official uniform mosaic/MixUp partner sampling except the last; the caches change no sample):
the default (`cache_images=auto`, which caches these images in RAM because they fit),
`cache_images=false` (every image decoded each time it is used: what the default does on a set too
big for the cache, e.g. COCO), `cache_dir` (the cache in a file on disk, mapped by every worker)
and `mosaic_pool` = batch without a cache (partners from the sample's batch; not official).
When `ultralytics` is importable (benchmark-only AGPL reference, the `bench` extra; worldtune
never imports it), its YOLO-World training dataset (YOLOMultiModalDataset, mosaic 1.0,
copy_paste 0.3, mixup 0.15, scale 0.5, polygon labels) is timed on the same images in the same
run, without and with its RAM cache. OpenCV runs serially in every row (--cv2-threads 0), as
importing ultralytics forces for its own rows, so the rows compare the same amount of CPU.

    python benchmarks/data_pipeline.py [--images 256] [--batch 8] [--batches 30] [--rounds 3]
                                       [--workers 0 2] [--cv2-threads 0]
"""
import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from worldtune.data.coco import CocoDetection
from worldtune.data.loader import build_train_loader
from worldtune.data.presets import build_train_dataset

NAMES = ["red", "green", "blue", "yellow", "cyan", "magenta", "white", "orange"]


def make_images(root: Path, num_images: int, seed: int = 0) -> dict:
    """JPEGs of 480-800 px sides with 4-10 filled ellipses/rectangles; COCO polygons + YOLO labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    images, anns = [], []
    for i in range(num_images):
        w, h = int(rng.integers(480, 801)), int(rng.integers(480, 801))
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        lines = []
        for _ in range(int(rng.integers(4, 11))):
            cls = int(rng.integers(len(NAMES)))
            cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            ax, ay = rng.uniform(15, w / 6), rng.uniform(15, h / 6)
            if rng.random() < 0.5:
                poly = cv2.ellipse2Poly((int(cx), int(cy)), (int(ax), int(ay)), int(rng.integers(180)), 0, 360, 10)
            else:
                poly = np.array([[cx - ax, cy - ay], [cx + ax, cy - ay], [cx + ax, cy + ay], [cx - ax, cy + ay]])
            poly = np.clip(poly, 0, [w - 1, h - 1]).astype(np.float64)
            cv2.fillPoly(img, [poly.astype(np.int32)], tuple(int(v) for v in rng.integers(60, 256, 3)))
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls + 1, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(cv2.contourArea(poly.astype(np.float32))),
                         "segmentation": [poly.reshape(-1).tolist()]})
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in (poly / [w, h]).reshape(-1)))
        cv2.imwrite(str(root / "images" / f"{i:06d}.jpg"), img)
        (root / "labels" / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "width": w, "height": h})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return {"ann_file": root / "ann.json", "image_dir": root / "images"}


def time_loader(loader, batches: int, batch_size: int) -> float:
    """Images per second over `batches` batches, after one warm-up batch (worker start-up excluded)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def bench_worldtune(paths: dict, args, **options) -> dict:
    ds = CocoDetection(paths["ann_file"], paths["image_dir"])
    start = time.perf_counter()
    train = build_train_dataset(ds, imgsz=args.imgsz, num_texts=80, **options)  # v2-S defaults
    if train.cache_report:  # what cache_images=auto decided
        print(f"worldtune {options or 'default'}: {train.cache_report}")
    if train.images is not None and train.images.cached is not None:
        where = f" in {options['cache_dir']}" if options.get("cache_dir") else " in RAM"
        print(f"worldtune {options or 'default'}: {train.images.cached_count} images cached{where}, "
              f"{train.images.cached.nbytes / 2**20:.0f} MiB, filled in {time.perf_counter() - start:.1f} s")
    out = {}
    for workers in args.workers:
        loader = build_train_loader(train, args.batch, workers=workers, seed=0)
        loader.set_epoch(0)
        out[workers] = time_loader(loader, args.batches, args.batch)
        if workers == 0 and options.get("mosaic_pool"):  # the main process did the decoding: count it
            per_sample = train.images.decodes / (args.batch * (args.batches + 1))
            print(f"worldtune mosaic_pool={options['mosaic_pool']}: {per_sample:.2f} decodes per sample"
                  " at 0 workers (official sampling: 4, 8 with MixUp)")
    return out


def bench_ultralytics(paths: dict, args, cache=False) -> dict:
    from ultralytics.cfg import get_cfg
    from ultralytics.data.dataset import YOLOMultiModalDataset

    hyp = get_cfg(overrides={"mosaic": 1.0, "copy_paste": 0.3, "mixup": 0.15, "scale": 0.5, "imgsz": args.imgsz})
    data = {"names": dict(enumerate(NAMES)), "nc": len(NAMES), "channels": 3}
    ds = YOLOMultiModalDataset(img_path=str(paths["image_dir"]), imgsz=args.imgsz, augment=True, hyp=hyp,
                               batch_size=args.batch, data=data, task="detect", cache=cache)
    out = {}
    for workers in args.workers:
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=workers,
                                             collate_fn=ds.collate_fn, generator=torch.Generator().manual_seed(0))
        out[workers] = time_loader(loader, args.batches, args.batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per setting (after 1 warm-up)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=3,
                        help="repeats of every row, taking turns; the median is reported")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--cv2-threads", type=int, default=0,
                        help="cv2.setNumThreads for every row (default 0 = serial OpenCV, which importing "
                             "ultralytics forces for its rows; -1 leaves OpenCV's default)")
    args = parser.parse_args()
    if args.cv2_threads >= 0:
        cv2.setNumThreads(args.cv2_threads)
    if args.images < args.batch * (args.batches + 1):
        parser.error(f"--images must be at least batch x (batches + 1) = {args.batch * (args.batches + 1)}")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    print(f"machine: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, cv2 {cv2.__version__}"
          f" ({cv2.getNumThreads()} threads)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), args.images)
        settings = [("worldtune, default (data.cache_images=auto: cached in RAM)",
                     lambda: bench_worldtune(paths, args)),
                    ("worldtune, data.cache_images=false (no cache)",
                     lambda: bench_worldtune(paths, args, cache_images="false")),
                    ("worldtune, data.cache_dir (a file on disk)",
                     lambda: bench_worldtune(paths, args, cache_dir=str(Path(tmp) / "cache"))),
                    (f"worldtune, data.mosaic_pool={args.batch}, no cache",
                     lambda: bench_worldtune(paths, args, mosaic_pool=args.batch, cache_images="false"))]
        try:
            import ultralytics
        except ImportError:
            print("ultralytics not importable: reference not measured (pip install --no-deps ultralytics)")
        else:
            name = f"ultralytics {ultralytics.__version__}"
            settings.append((name, lambda: bench_ultralytics(paths, args)))
            if importlib.util.find_spec("psutil") is None:  # its RAM cache needs psutil; --no-deps lacks it
                print("psutil not importable: ultralytics cache=ram not measured (pip install psutil)")
            else:
                settings.append((f"{name}, cache=ram", lambda: bench_ultralytics(paths, args, cache="ram")))
        # Rows take turns within each round, so a neighbour's load or a clock change hits all of them alike.
        runs = {name: [] for name, _ in settings}
        for _ in range(args.rounds):
            for name, bench in settings:
                runs[name].append(bench())
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(f"\nimages/s, stage 1 at {args.imgsz}, batch {args.batch}, {args.batches} timed batches, median of"
          f" {args.rounds} rounds (min-max); load average after the run {' '.join(load)}")
    print("| pipeline | " + " | ".join(f"{w} workers" for w in args.workers) + " |")
    print("|---|" + "---|" * len(args.workers))
    for name, results in runs.items():
        cells = []
        for w in args.workers:
            rates = [r[w] for r in results]
            cells.append(f"{statistics.median(rates):.1f} ({min(rates):.1f}-{max(rates):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()
