"""Inputs of COCO evaluation: read and check a GT annotation and COCO-results detections.

Checks happen here, once, so the COCO libraries never see a malformed entry: a bad file or field
gives a message naming the file (or the detection index) and the field, not a traceback from
inside pycocotools.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from worldtune.jsonfile import as_id, id_problem, is_finite_number, is_int, load_json


def read_json(path: str | Path, what: str):
    """Parse a JSON file; FileNotFoundError / ValueError name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return load_json(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_coco_gt(ann: str | Path | dict, drop_annotations=()) -> dict:
    """Read and check a COCO instances annotation (path or already-parsed dict).

    Returns a copy safe to hand to the COCO APIs: annotations get `iscrowd` 0 and `area` = w*h
    when absent (pycocotools needs both), and ids 1..N in file order (the COCO APIs take id 0 for
    "unmatched" and look annotations up by id, so an id of 0 or a repeated id would turn a correct
    detection into a false positive); the caller's dict is never modified.
    `drop_annotations`: positions in the `annotations` list to leave out (those a `CocoDetection`
    dropped under on_bad_data="skip").
    Raises FileNotFoundError / ValueError naming the file and the faulty field.
    """
    source = "<dict>"
    if not isinstance(ann, dict):
        source = str(ann)
        ann = read_json(ann, "COCO annotation file")
    if not isinstance(ann, dict):
        raise ValueError(f"{source}: a COCO annotation must be a JSON object, got {type(ann).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(ann.get(key), list):
            raise ValueError(f"{source}: field '{key}' is missing or not a list")
    # Integer ids, as the COCO APIs and the detections use them: a string id "7" would match no
    # detection (every object a miss), and mixed types make the APIs' sorting fail with a TypeError.
    # A whole float (7.0) is read as the int 7 (`as_id`) in the copies returned.
    for key in ("images", "categories"):
        for entry in ann[key]:
            if not isinstance(entry, dict) or "id" not in entry:
                raise ValueError(f"{source}: an entry of '{key}' has no 'id': {str(entry)[:80]}")
            if not is_int(as_id(entry["id"])):
                raise ValueError(f"{source}: an entry of '{key}' has a non-integer 'id': {str(entry)[:80]}")
            if id_problem(entry["id"]):
                raise ValueError(f"{source}: an entry of '{key}': 'id' {id_problem(entry['id'])}")
    image_ids = {as_id(img["id"]) for img in ann["images"]}
    cat_ids = {as_id(cat["id"]) for cat in ann["categories"]}
    dropped = set(drop_annotations)
    annotations = []
    for position, a in enumerate(ann["annotations"]):
        if position in dropped:
            continue
        problem = _gt_annotation_problem(a, image_ids, cat_ids)
        if problem:
            name = f"id {a['id']}" if isinstance(a, dict) and "id" in a else f"#{position} (no id)"
            raise ValueError(f"{source}: annotation {name}: {problem}")
        bbox = a["bbox"]
        a = dict(a)  # the COCO APIs write keys (e.g. 'ignore') into annotations
        a["id"] = len(annotations) + 1
        a["image_id"], a["category_id"] = as_id(a["image_id"]), as_id(a["category_id"])
        a.setdefault("iscrowd", 0)
        a.setdefault("area", float(bbox[2]) * float(bbox[3]))
        annotations.append(a)
    out = {k: v for k, v in ann.items() if k != "annotations"}
    out["images"] = [dict(i, id=as_id(i["id"])) for i in ann["images"]]
    out["categories"] = [dict(c, id=as_id(c["id"])) for c in ann["categories"]]
    out["annotations"] = annotations
    return out


def _gt_annotation_problem(a, image_ids: set, cat_ids: set) -> str:
    """What makes a GT annotation unusable for scoring ("" if nothing)."""
    if not isinstance(a, dict):
        return f"not an object: {str(a)[:80]}"
    missing = [k for k in ("image_id", "category_id", "bbox") if k not in a]
    if missing:
        return f"lacks field(s) {missing}"
    for key in ("image_id", "category_id"):  # 7.5 or "7": say why it is refused, not "not the id of"
        if not is_int(as_id(a[key])):
            return f"'{key}' must be an integer, as the ids of 'images' and 'categories' are, got {a[key]!r}"
    # (the COCO APIs would leave such an object out of the scoring without a word)
    if as_id(a["image_id"]) not in image_ids:
        return f"'image_id' {a['image_id']!r} is not the id of an entry of 'images'"
    if as_id(a["category_id"]) not in cat_ids:
        return f"'category_id' {a['category_id']!r} is not the id of an entry of 'categories'"
    if a.get("iscrowd", 0) not in (0, 1):
        return f"'iscrowd' must be 0 or 1, got {a['iscrowd']!r}"
    if "area" in a and not is_finite_number(a["area"]):
        return f"'area' must be a finite number, got {a['area']!r}"
    bbox = a["bbox"]
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(is_finite_number(v) for v in bbox):
        return f"'bbox' must be 4 finite numbers [x, y, w, h], got {str(bbox)[:80]}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"'bbox' {bbox} has a negative width or height"
    return ""


def _check_one(i: int, d, image_ids: set, cat_ids: set, source: str) -> None:
    """Raise a ValueError naming detection `i` and its first faulty field (slow, exact)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}[{i}]: a detection must be an object, got {type(d).__name__}")
    missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
    if missing:
        raise ValueError(f"{source}[{i}]: missing field(s) {missing}")
    img_id, cat_id, bbox, score = as_id(d["image_id"]), as_id(d["category_id"]), d["bbox"], d["score"]
    for key, value in (("image_id", img_id), ("category_id", cat_id)):
        if not is_int(value):  # 7.5 or "7" equals no GT id as COCO ids are compared: say why, not "unknown"
            raise ValueError(f"{source}[{i}]: {key} must be an integer, as the GT's ids are, got {value!r}")
    if img_id not in image_ids:
        raise ValueError(f"{source}[{i}]: unknown image_id {img_id!r} (not in the GT 'images')")
    if cat_id not in cat_ids:
        raise ValueError(f"{source}[{i}]: unknown category_id {cat_id!r} "
                         f"(GT categories: {sorted(cat_ids)[:10]}{'...' if len(cat_ids) > 10 else ''})")
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(is_finite_number(v) for v in bbox)
            or bbox[2] < 0 or bbox[3] < 0):
        raise ValueError(f"{source}[{i}]: 'bbox' must be 4 finite numbers [x, y, w, h] with w, h >= 0, "
                         f"got {bbox!r}")
    if not is_finite_number(score):
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
        if img.dtype.kind not in "iu" or cat.dtype.kind not in "iu":  # 7.0 read as 7: one Python call each
            img = np.asarray([as_id(d["image_id"]) for d in detections])
            cat = np.asarray([as_id(d["category_id"]) for d in detections])
        boxes = np.asarray([d["bbox"] for d in detections]).reshape(n, -1)
        scores = np.asarray([d["score"] for d in detections])
        # dtype kinds: numbers only (a '3' string or a None would make them 'U' or 'O').
        ok = (img.dtype.kind in "iu" and cat.dtype.kind in "iu" and boxes.dtype.kind in "iuf"
              and scores.dtype.kind in "iuf" and boxes.shape[1] == 4
              # one pass: a bbox is a list, and no id is a bool (numpy reads a `true` among int ids as 1)
              and all(type(d["bbox"]) in (list, tuple) and type(d["image_id"]) is not bool
                      and type(d["category_id"]) is not bool for d in detections)
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
