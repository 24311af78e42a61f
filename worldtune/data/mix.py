"""Multi-image steps of stage 1: loading with mask-to-box, Mosaic, CopyPaste and MixUp.

All samples come from one dataset, so every label is already an index into the
dataset's class list and the official "union of the texts of the mixed images" is the
identity here: labels stay class indices until `texts.sample_texts` remaps them.
"""
import numpy as np
import cv2

from worldtune.data.transforms import PAD_VALUE


def load_sample(dataset, index: int, mask_refine: bool) -> dict:
    """Image + trainable instances (crowd/degenerate dropped) of one dataset index.

    With `mask_refine` the box is the tight box of the polygon vertices (official
    mask2bbox); an instance without a usable polygon falls back to its annotation box as
    a 4-corner polygon (the official pipeline silently drops it). Without, polygons is None.
    """
    rec = dataset.get_record(index)
    img = dataset.load_image(index)
    keep = ~rec["ignore"]
    boxes, labels = rec["bboxes"][keep], rec["labels"][keep]
    polygons = None
    if mask_refine:
        polygons = []
        for parts, box in zip([p for p, k in zip(rec["polygons"], keep) if k], boxes):
            if not parts:
                x1, y1, x2, y2 = box
                parts = [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)]
            polygons.append(parts)
        if polygons:
            boxes = np.array([np.concatenate([p.min(0), p.max(0)]) for p in
                              (np.concatenate(parts) for parts in polygons)], dtype=np.float32)
    return {"img": img, "bboxes": boxes.astype(np.float32).reshape(-1, 4), "labels": labels,
            "polygons": polygons, "image_id": rec["image_id"]}


def mosaic(samples: list, rng: np.random.Generator, img_scale: int = 640) -> dict:
    """Four samples around a random centre on a (2·s)x(2·s) canvas padded with 114.

    Centre (x, y) = int(U(0.5, 1.5)·s) each; each image is resized by r = min(s/h, s/w)
    (bilinear, may upscale) and placed top-left, top-right, bottom-left, bottom-right of
    the centre, cropped at the canvas edge. Boxes are clipped to the canvas (those left
    empty are dropped); polygons are only translated.
    """
    s = img_scale
    canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, dtype=np.uint8)
    xc, yc = int(rng.uniform(0.5, 1.5) * s), int(rng.uniform(0.5, 1.5) * s)
    boxes, labels, polygons = [], [], []
    with_polys = samples[0]["polygons"] is not None
    for pos, sample in enumerate(samples):
        img = sample["img"]
        h0, w0 = img.shape[:2]
        r = min(s / h0, s / w0)
        w, h = int(w0 * r), int(h0 * r)
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if pos == 0:    # top-left: bottom-right corner at the centre
            x1, y1, x2, y2 = max(xc - w, 0), max(yc - h, 0), xc, yc
            cx1, cy1 = w - (x2 - x1), h - (y2 - y1)
        elif pos == 1:  # top-right
            x1, y1, x2, y2 = xc, max(yc - h, 0), min(xc + w, 2 * s), yc
            cx1, cy1 = 0, h - (y2 - y1)
        elif pos == 2:  # bottom-left
            x1, y1, x2, y2 = max(xc - w, 0), yc, xc, min(yc + h, 2 * s)
            cx1, cy1 = w - (x2 - x1), 0
        else:           # bottom-right
            x1, y1, x2, y2 = xc, yc, min(xc + w, 2 * s), min(yc + h, 2 * s)
            cx1, cy1 = 0, 0
        canvas[y1:y2, x1:x2] = img[cy1:cy1 + (y2 - y1), cx1:cx1 + (x2 - x1)]
        dx, dy = x1 - cx1, y1 - cy1
        boxes.append(sample["bboxes"] * r + np.array([dx, dy, dx, dy], dtype=np.float32))
        labels.append(sample["labels"])
        if with_polys:
            polygons += [[p * r + np.array([dx, dy], dtype=np.float32) for p in inst] for inst in sample["polygons"]]
    boxes = np.clip(np.concatenate(boxes), 0, 2 * s)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {"img": canvas, "bboxes": boxes[keep].astype(np.float32), "labels": np.concatenate(labels)[keep],
            "polygons": [p for p, k in zip(polygons, keep) if k] if with_polys else None,
            "image_id": samples[0]["image_id"]}


def copy_paste(sample: dict, rng: np.random.Generator, fraction: float = 0.3, ioa_thr: float = 0.3) -> dict:
    """Mirror a fraction of the objects to the other side of the canvas (YOLOv5 CopyPaste).

    Candidates: objects whose horizontally mirrored box covers < `ioa_thr` of every existing
    box (IoA = intersection / existing box area, own box included). round(fraction·n)
    distinct candidates are pasted: their polygon mask is mirrored and the pixels under it
    are taken from the mirrored image. No-op without polygons.
    """
    boxes, polygons = sample["bboxes"], sample["polygons"]
    if polygons is None or len(boxes) == 0 or fraction <= 0:
        return sample
    h, w = sample["img"].shape[:2]
    mirrored = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
    iw = np.clip(np.minimum(mirrored[:, None, 2], boxes[None, :, 2]) - np.maximum(mirrored[:, None, 0], boxes[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(mirrored[:, None, 3], boxes[None, :, 3]) - np.maximum(mirrored[:, None, 1], boxes[None, :, 1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ioa = iw * ih / (area[None, :] + 1e-7)
    candidates = np.flatnonzero(ioa.max(1) < ioa_thr)
    k = round(fraction * len(candidates))  # Python round: half to even, as upstream
    if k == 0:
        return sample
    chosen = rng.choice(candidates, k, replace=False)
    # Per pasted object, fill its mirrored polygon (pixel column x -> w-1-x) inside its mirrored box
    # only and copy the mirrored pixels there: no full-canvas flip or mask.
    img = sample["img"].copy()
    for i in chosen:
        x0, y0 = (int(max(v, 0)) for v in mirrored[i, :2])
        x1, y1 = (int(min(v, lim)) + 1 for v, lim in zip(mirrored[i, 2:], (w - 1, h - 1)))
        mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        parts = [p.astype(np.int32) for p in polygons[i]]  # upstream casts vertices to int before filling
        for q in parts:
            q[:, 0] = w - 1 - q[:, 0]
        cv2.fillPoly(mask, parts, 1, offset=(-x0, -y0))
        source = sample["img"][y0:y1, w - x1:w - x0][:, ::-1]
        np.copyto(img[y0:y1, x0:x1], source, where=mask.astype(bool)[..., None])
    out = dict(sample)
    out["img"] = img
    out["bboxes"] = np.concatenate([boxes, mirrored[chosen]]).astype(np.float32)
    out["labels"] = np.concatenate([sample["labels"], sample["labels"][chosen]])
    out["polygons"] = polygons + [[np.stack([w - p[:, 0], p[:, 1]], 1) for p in polygons[i]] for i in chosen]
    return out


def mixup(sample: dict, other: dict, rng: np.random.Generator, alpha: float = 32.0) -> dict:
    """Blend two same-size samples with r ~ Beta(32, 32) (cast to uint8 by truncation), keep all boxes."""
    r = rng.beta(alpha, alpha)
    out = dict(sample)
    out["img"] = (sample["img"].astype(np.float32) * r + other["img"].astype(np.float32) * (1 - r)).astype(np.uint8)
    out["bboxes"] = np.concatenate([sample["bboxes"], other["bboxes"]])
    out["labels"] = np.concatenate([sample["labels"], other["labels"]])
    if sample["polygons"] is not None:
        out["polygons"] = sample["polygons"] + other["polygons"]
    return out
