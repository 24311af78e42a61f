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
import json
import math
import numbers
from pathlib import Path

import numpy as np

BACKENDS = ("faster", "pycocotools")
# Order of the standard COCO summary (pycocotools `stats[0:12]`).
SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
_AREA_INDEX = {"all": 0, "small": 1, "medium": 2, "large": 3}
_MAXDETS = (1, 10, 100)


def load_coco_gt(ann: str | Path | dict) -> dict:
    """Read and check a COCO instances annotation (path or already-parsed dict).

    Returns a copy safe to hand to the COCO APIs: annotations get `iscrowd` 0 and `area` = w*h
    when absent (pycocotools needs both), and the caller's dict is never modified.
    Raises FileNotFoundError / ValueError naming the file and the faulty field.
    """
    source = "<dict>"
    if not isinstance(ann, dict):
        source = str(ann)
        path = Path(ann)
        if not path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {path}")
        try:
            ann = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(ann, dict):
        raise ValueError(f"{source}: a COCO annotation must be a JSON object, got {type(ann).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(ann.get(key), list):
            raise ValueError(f"{source}: field '{key}' is missing or not a list")
    for img in ann["images"]:
        if not isinstance(img, dict) or "id" not in img:
            raise ValueError(f"{source}: an entry of 'images' has no 'id': {str(img)[:80]}")
    for cat in ann["categories"]:
        if not isinstance(cat, dict) or "id" not in cat:
            raise ValueError(f"{source}: an entry of 'categories' has no 'id': {str(cat)[:80]}")
    annotations = []
    for a in ann["annotations"]:
        bbox = a.get("bbox") if isinstance(a, dict) else None
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise ValueError(f"{source}: annotation id {a.get('id') if isinstance(a, dict) else '?'} "
                             f"has no valid 'bbox' [x, y, w, h]")
        a = dict(a)  # the COCO APIs write keys (e.g. 'ignore') into annotations
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(bbox[2]) * float(bbox[3]))
        annotations.append(a)
    out = {k: v for k, v in ann.items() if k != "annotations"}
    out["images"] = [dict(i) for i in ann["images"]]
    out["categories"] = [dict(c) for c in ann["categories"]]
    out["annotations"] = annotations
    return out


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _check_one(i: int, d, image_ids: set, cat_ids: set, source: str) -> None:
    """Raise a ValueError naming detection `i` and its first faulty field (slow, exact)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}[{i}]: a detection must be an object, got {type(d).__name__}")
    missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
    if missing:
        raise ValueError(f"{source}[{i}]: missing field(s) {missing}")
    img_id, cat_id, bbox, score = d["image_id"], d["category_id"], d["bbox"], d["score"]
    if not _is_int(img_id) or img_id not in image_ids:
        raise ValueError(f"{source}[{i}]: unknown image_id {img_id!r} (not in the GT 'images')")
    if not _is_int(cat_id) or cat_id not in cat_ids:
        raise ValueError(f"{source}[{i}]: unknown category_id {cat_id!r} "
                         f"(GT categories: {sorted(cat_ids)[:10]}{'...' if len(cat_ids) > 10 else ''})")
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_finite(v) for v in bbox)
            or bbox[2] < 0 or bbox[3] < 0):
        raise ValueError(f"{source}[{i}]: 'bbox' must be 4 finite numbers [x, y, w, h] with w, h >= 0, "
                         f"got {bbox!r}")
    if not _is_finite(score):
        raise ValueError(f"{source}[{i}]: 'score' must be a finite number, got {score!r}")


def validate_detections(detections: list, gt: dict, source: str = "detections") -> list[dict]:
    """Check COCO-results detections against a GT dict and return clean copies.

    Each detection must be {image_id, category_id, bbox [x, y, w, h] with w, h >= 0, score}.
    An image_id or category_id absent from the GT is refused with a message naming it (silently
    dropping them would hide a label-mapping bug). The check is vectorised (a COCO-size result
    set has 1.5 M entries); on any failure a per-entry pass finds and names the first bad one.
    """
    if not isinstance(detections, list):
        raise ValueError(f"{source}: expected a list of detections, got {type(detections).__name__}")
    image_ids = {img["id"] for img in gt["images"]}
    cat_ids = {cat["id"] for cat in gt["categories"]}
    n = len(detections)
    if n == 0:
        return []
    try:
        img = np.asarray([d["image_id"] for d in detections])
        cat = np.asarray([d["category_id"] for d in detections])
        boxes = np.asarray([d["bbox"] for d in detections]).reshape(n, -1)
        scores = np.asarray([d["score"] for d in detections])
        # dtype kinds: numbers only (a '3' string or a None would make them 'U' or 'O').
        ok = (img.dtype.kind in "iu" and cat.dtype.kind in "iu" and boxes.dtype.kind in "iuf"
              and scores.dtype.kind in "iuf" and boxes.shape[1] == 4
              and all(type(d["bbox"]) in (list, tuple) for d in detections)
              and np.isin(img, list(image_ids)).all() and np.isin(cat, list(cat_ids)).all()
              and np.isfinite(boxes).all() and (boxes[:, 2:] >= 0).all() and np.isfinite(scores).all())
    except (KeyError, TypeError, ValueError, IndexError):
        ok = False
    if not ok:
        for i, d in enumerate(detections):
            _check_one(i, d, image_ids, cat_ids, source)
        raise ValueError(f"{source}: malformed detections (a field has a non-numeric value)")
    boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
    areas = (boxes[:, 2] * boxes[:, 3]).tolist()
    return [{"id": i + 1, "image_id": im, "category_id": c, "bbox": b, "score": s, "area": a, "iscrowd": 0}
            for i, (im, c, b, s, a) in enumerate(zip(img.tolist(), cat.tolist(), boxes.tolist(),
                                                    scores.tolist(), areas))]


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


def coco_evaluate(ann: str | Path | dict, detections: list | str | Path, backend: str = "faster") -> dict:
    """COCO box metrics of `detections` against the GT `ann`.

    Args:
        ann: path to a COCO instances JSON, or the parsed dict.
        detections: list of {image_id, category_id, bbox [x, y, w, h], score}, or a path to such
            a JSON list (COCO results format).
        backend: "faster" (faster-coco-eval) or "pycocotools".
    Returns:
        dict with the fractions in [0, 1] `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AR1`, `AR10`,
        `AR100`, `ARs`, `ARm`, `ARl` (None when the GT has no object of that area range),
        `per_class` {category name: AP or None when the class has no GT}, `num_images`,
        `num_detections`, `backend`.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; choose one of {BACKENDS}")
    gt = load_coco_gt(ann)
    source = "detections"
    if not isinstance(detections, list):
        source = str(detections)
        path = Path(detections)
        if not path.is_file():
            raise FileNotFoundError(f"detections file not found: {path}")
        try:
            detections = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    dets = validate_detections(detections, gt, source)
    if not gt["images"] or not gt["categories"]:
        raise ValueError("the GT annotation has no images or no categories; nothing to evaluate")
    precision, recall = accumulate(gt, dets, backend)
    metrics = summarize(precision, recall)
    metrics["per_class"] = per_class_ap(precision, gt["categories"])
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
