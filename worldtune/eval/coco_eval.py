"""COCO box AP/AR from a ground-truth file and detections in COCO results format.

Two interchangeable backends compute the matching: `faster-coco-eval` (C++, default) and the
reference `pycocotools`. Both fill the same accumulated arrays (precision [T,R,K,A,M], recall
[T,K,A,M]); the summary and the per-class table are read from those arrays here, so both backends
go through one summarising code path. The summary is the standard COCO one: maxDets (1, 10, 100),
every AP and area-range metric at 100 detections per image (REFERENCE.md §6).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from pathlib import Path

import numpy as np

from worldtune.eval.coco_inputs import load_coco_gt, read_json, validate_detections

BACKENDS = ("faster", "pycocotools")
# Order of the standard COCO summary (pycocotools `stats[0:12]`).
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_AREA_INDEX = {"all": 0, "small": 1, "medium": 2, "large": 3}
_MAXDETS = (1, 10, 100)


def _coco_api(backend: str):
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster
        return COCO, COCOeval_faster
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        return COCO, COCOeval
    raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")


def _make_coco(coco_cls, dataset: dict):
    """Build a COCO index from a dict without touching files (works for both APIs)."""
    coco = coco_cls()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def accumulate(gt: dict, detections: list[dict], backend: str = "faster") -> tuple[np.ndarray, np.ndarray]:
    """Run evaluate + accumulate on validated inputs.

    Returns:
        precision: float array [T=10, R=101, K, A=4, M=3], -1 where undefined.
        recall: float array [T=10, K, A=4, M=3], -1 where undefined.
        K follows the sorted GT category ids.
    """
    coco_cls, eval_cls = _coco_api(backend)
    # Built directly (not via loadRes): pycocotools' loadRes crashes on an empty list and edits
    # the caller's dicts in place.
    gt_api = _make_coco(coco_cls, gt)
    dt_api = _make_coco(coco_cls, {"images": gt["images"], "categories": gt["categories"],
                                   "annotations": detections})
    if backend == "faster":
        ev = eval_cls(gt_api, dt_api, iouType="bbox", print_function=lambda *a, **k: None)
    else:
        ev = eval_cls(gt_api, dt_api, iouType="bbox")
    ev.params.maxDets = list(_MAXDETS)
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    return np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])


def _quiet(fn):
    """pycocotools prints progress lines to stdout; keep the CLI's output to our own table."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


def _mean_defined(x: np.ndarray) -> float | None:
    x = x[x > -1]
    return float(x.mean()) if x.size else None


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict:
    """The 12 standard COCO numbers from accumulated arrays (None where no GT defines them)."""
    def ap(iou_index=None, area="all"):
        p = precision if iou_index is None else precision[iou_index:iou_index + 1]
        return _mean_defined(p[:, :, :, _AREA_INDEX[area], -1])

    def ar(max_dets=100, area="all"):
        return _mean_defined(recall[:, :, _AREA_INDEX[area], _MAXDETS.index(max_dets)])

    # IoU thresholds are 0.50:0.05:0.95, so index 0 is 0.50 and index 5 is 0.75.
    values = [ap(), ap(0), ap(5), ap(None, "small"), ap(None, "medium"), ap(None, "large"),
              ar(1), ar(10), ar(100), ar(100, "small"), ar(100, "medium"), ar(100, "large")]
    return dict(zip(SUMMARY_KEYS, values))


def coco_evaluate(ann: str | Path | dict, detections: list | str | Path, backend: str = "faster",
                  exclude_image_ids=(), drop_annotations=()) -> dict:
    """COCO box metrics of `detections` against the GT `ann`.

    Args:
        ann: path to a COCO instances JSON, or the parsed dict.
        detections: list of {image_id, category_id, bbox [x, y, w, h], score}, or a path to such
            a JSON list (COCO results format).
        backend: "faster" (faster-coco-eval) or "pycocotools".
        exclude_image_ids: images left out of the scoring with their GT (images that could not be
            read under on_bad_data="skip": scoring them would count their objects as misses).
        drop_annotations: positions in the GT's `annotations` list to leave out (the annotations
            a `CocoDetection` dropped as bad under on_bad_data="skip", `dataset.dropped_annotations`).
    Returns:
        dict with the fractions in [0, 1] `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AR1`, `AR10`,
        `AR100`, `ARs`, `ARm`, `ARl` (None when the GT has no object of that area range),
        `per_class` {category name: AP or None when the class has no GT}, `pr_curves` (see
        `pr_curves`), `num_images`,
        `num_detections`, `backend`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")
    gt = load_coco_gt(ann, drop_annotations)
    excluded = set(exclude_image_ids)
    if excluded:
        gt["images"] = [img for img in gt["images"] if img["id"] not in excluded]
        gt["annotations"] = [a for a in gt["annotations"] if a.get("image_id") not in excluded]
    source = "detections"
    if not isinstance(detections, list):
        source = str(detections)
        detections = read_json(detections, "detections file")
    dets = validate_detections(detections, gt, source)
    if not gt["images"] or not gt["categories"]:
        raise ValueError("the GT annotation has no images or no categories; nothing to evaluate")
    precision, recall = accumulate(gt, dets, backend)
    metrics = summarize(precision, recall)
    metrics["per_class"] = per_class_ap(precision, gt["categories"])
    metrics["pr_curves"] = pr_curves(precision)
    metrics.update(num_images=len(gt["images"]), num_detections=len(dets), backend=backend)
    return metrics


def per_class_ap(precision: np.ndarray, categories: list[dict]) -> dict:
    """{category name: AP@[.5:.95] at 100 dets, area all}; None for classes without GT.

    Names repeated across categories get their id appended so no class is lost.
    """
    cats = sorted(categories, key=lambda c: c["id"])  # K axis = sorted category ids
    names = [str(c.get("name", c["id"])) for c in cats]
    out = {}
    for k, (cat, name) in enumerate(zip(cats, names)):
        key = name if names.count(name) == 1 else f"{name} ({cat['id']})"
        out[key] = _mean_defined(precision[:, :, k, 0, -1])
    return out


def pr_curves(precision: np.ndarray) -> dict:
    """Precision at the 101 COCO recall points, averaged over the classes with GT (area all, 100
    detections): `AP50` and `AP75` at one IoU threshold, `AP` over all ten. The area under each
    curve is the metric of that name. None at a recall point no class defines."""
    def curve(p):  # p: [T, R, K]
        p = np.where(p > -1, p, np.nan)
        counts = np.sum(~np.isnan(p), axis=(0, 2))
        sums = np.nansum(p, axis=(0, 2))
        return [float(s / c) if c else None for s, c in zip(sums, counts)]

    p = precision[:, :, :, _AREA_INDEX["all"], -1]
    return {"recall": [round(r, 2) for r in np.linspace(0, 1, p.shape[1]).tolist()],
            "AP": curve(p), "AP50": curve(p[0:1]), "AP75": curve(p[5:6])}


def format_metrics(metrics: dict) -> str:
    """A readable summary plus per-class table (percent, one decimal)."""
    def pct(v):
        return "  n/a" if v is None else f"{100 * v:5.1f}"

    lines = ["  ".join(f"{k:>5}" for k in SUMMARY_KEYS), "  ".join(pct(metrics.get(k)) for k in SUMMARY_KEYS)]
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(12, max(len(n) for n in per_class))
        lines += ["", f"{'class':<{width}}     AP"]
        lines += [f"{name:<{width}}  {pct(ap)}" for name, ap in per_class.items()]
    return "\n".join(lines)


def metrics_to_json(metrics: dict) -> dict:
    """Deep copy with NaN replaced by None so `json.dump` writes strict JSON."""
    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v
    return clean(copy.deepcopy(metrics))
