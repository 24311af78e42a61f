"""Seconds to score a COCO-size result set with faster-coco-eval vs pycocotools, in one run.

Generated data: 5,000 images, ~7 GT boxes per image over 80 categories, 300 detections per image
(jittered copies of the GT plus random boxes), i.e. 1.5 M detections, like a YOLO test_cfg with
max_per_img 300 on COCO val2017. Both backends score the same validated data with the code
`worldtune.eval.coco_eval.coco_evaluate` runs, and must agree.

    python benchmarks/eval_speed.py [--images 5000] [--gt-per-image 7] [--dets-per-image 300]
"""
import argparse
import os
import platform
import time

import numpy as np

from worldtune.eval.coco_eval import SUMMARY_KEYS, accumulate, summarize
from worldtune.eval.coco_inputs import load_coco_gt, validate_detections


def make_data(num_images: int, gt_per_image: float, dets_per_image: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cats = [{"id": i + 1, "name": f"class{i}"} for i in range(80)]
    images, anns, dets = [], [], []
    for img_id in range(1, num_images + 1):
        w, h = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id:012d}.jpg"})
        n = int(rng.poisson(gt_per_image))
        bw, bh = rng.uniform(4, w / 2, n), rng.uniform(4, h / 2, n)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        labels = rng.integers(1, 81, n)
        for i in range(n):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(labels[i]),
                         "bbox": [float(x[i]), float(y[i]), float(bw[i]), float(bh[i])],
                         "area": float(bw[i] * bh[i]), "iscrowd": 0})
        # Up to 3 jittered candidates per GT (some with the wrong class), the rest random.
        k = min(3 * n, dets_per_image)
        src = rng.integers(0, max(n, 1), k)
        jitter = rng.normal(0, 0.1, (k, 4))
        jx = np.stack([x, y, bw, bh], 1)[src] if n else np.zeros((0, 4))
        boxes = np.concatenate([jx + jitter * jx[:, [2, 3, 2, 3]] if n else np.zeros((0, 4)),
                                np.stack([rng.uniform(0, w * 0.8, dets_per_image - k),
                                          rng.uniform(0, h * 0.8, dets_per_image - k),
                                          rng.uniform(2, w * 0.3, dets_per_image - k),
                                          rng.uniform(2, h * 0.3, dets_per_image - k)], 1)])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1.0)
        det_labels = np.concatenate([np.where(rng.random(k) < 0.8, labels[src] if n else 1, rng.integers(1, 81, k)),
                                     rng.integers(1, 81, dets_per_image - k)])
        scores = np.concatenate([rng.uniform(0.2, 1.0, k), rng.uniform(0.001, 0.5, dets_per_image - k)])
        for b, c, s in zip(boxes.round(2).tolist(), det_labels.tolist(), scores.round(5).tolist()):
            dets.append({"image_id": img_id, "category_id": int(c), "bbox": b, "score": s})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--gt-per-image", type=float, default=7.0)
    parser.add_argument("--dets-per-image", type=int, default=300)
    args = parser.parse_args()

    t = time.perf_counter()
    gt, dets = make_data(args.images, args.gt_per_image, args.dets_per_image)
    print(f"generated {len(gt['images'])} images, {len(gt['annotations'])} GT, {len(dets)} detections "
          f"in {time.perf_counter() - t:.1f} s")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")

    print(f"load average at start: {os.getloadavg()[0]:.1f} (wall times grow when the CPUs are shared; "
          f"CPU seconds of this process do much less)")
    t, c = time.perf_counter(), time.process_time()
    checked = load_coco_gt(gt)
    clean = validate_detections(dets, checked)
    prep, prep_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"GT check + detection validation (shared by both backends): {prep:.1f} s wall, {prep_cpu:.1f} s CPU")
    results = {}
    for backend in ("faster", "pycocotools"):
        t, c = time.perf_counter(), time.process_time()
        precision, recall = accumulate(checked, clean, backend)
        results[backend] = summarize(precision, recall)
        core, core_cpu = time.perf_counter() - t, time.process_time() - c
        print(f"{backend:>12}: evaluate + accumulate + summary {core:7.1f} s wall {core_cpu:7.1f} s CPU;"
              f"  with validation {core + prep:7.1f} s wall {core_cpu + prep_cpu:7.1f} s CPU;"
              f"  AP {results[backend]['AP']:.4f}")
    diff = max(abs((results["faster"][k] or 0) - (results["pycocotools"][k] or 0)) for k in SUMMARY_KEYS)
    print(f"max |faster - pycocotools| over the 12 summary numbers: {diff:.2e}")

if __name__ == "__main__":
    main()
