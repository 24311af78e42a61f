"""Multi-image steps of stage 1: loading with mask-to-box, Mosaic, CopyPaste and MixUp.

All samples come from one dataset, so every label is already an index into the
dataset's class list and the official "union of the texts of the mixed images" is the
identity here: labels stay class indices until `texts.sample_texts` remaps them.
"""
import functools

import cv2
import numpy as np

from worldtune.data.transforms import PAD_VALUE


def load_sample(dataset, index: int, mask_refine: bool, image=None) -> dict:
    """Image + trainable instances (crowd/degenerate dropped) of one dataset index.

    With `mask_refine` the box is the tight box of the polygon vertices (official
    mask2bbox); an instance without a usable polygon falls back to its annotation box as
    a 4-corner polygon (the official pipeline silently drops it). Without, polygons is None.
    `image`: (image already resized for the mosaic, (H, W) of the original) from a
    `MosaicImageStore`, or None to decode. `orig_shape` is the (H, W) the boxes refer to.
    """
    rec = dataset.get_record(index)
    img, orig_shape = image if image is not None else (dataset.load_image(index), None)
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
            "polygons": polygons, "image_id": rec["image_id"], "orig_shape": orig_shape or img.shape[:2]}


def sample_shape(sample: dict) -> tuple:
    """(H, W) the sample's boxes refer to: `orig_shape` (set by `load_sample`), else the image's."""
    return sample.get("orig_shape") or sample["img"].shape[:2]


def mosaic_layout(shapes: list, rng: np.random.Generator, img_scale: int = 640) -> list:
    """Draw the centre and place four images of `shapes` [(h, w)] on the (2·s)x(2·s) canvas.

    Centre (x, y) = int(U(0.5, 1.5)·s) each; image k is resized by r = min(s/h, s/w) to
    (int(w·r), int(h·r)) and put top-left, top-right, bottom-left, bottom-right of the centre.
    Returns:
        per image dict(r, size (w, h) after resizing, rect (x1, y1, x2, y2) on the canvas,
        origin (cx1, cy1) of the part of the resized image shown there).
    """
    s = img_scale
    xc, yc = int(rng.uniform(0.5, 1.5) * s), int(rng.uniform(0.5, 1.5) * s)
    layout = []
    for pos, (h0, w0) in enumerate(shapes):
        r = min(s / h0, s / w0)
        w, h = max(int(w0 * r), 1), max(int(h0 * r), 1)  # >= 1 px: see transforms.keep_ratio_resize
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
        layout.append({"r": r, "size": (w, h), "rect": (x1, y1, x2, y2), "origin": (cx1, cy1)})
    return layout


def mosaic_labels(samples: list, layout: list, img_scale: int = 640) -> dict:
    """Boxes, labels and polygons of a mosaic, as the official MultiModalMosaic computes them.

    Boxes are scaled by r, moved and clipped to the canvas; boxes left empty by the clip (objects
    in the cropped-off part of an image) are kept: CopyPaste counts them among its candidates and
    RandomAffine drops them. Polygons are scaled per axis by round(w·r)/w and round(h·r)/h
    (upstream rescales masks to the rounded size, the image to the truncated one), moved, and
    each coordinate clipped to [0, 2·s], in float64 as upstream (the clip keeps mask-refined
    boxes inside the canvas, i.e. off the padding that a small affine scale brings into view).
    """
    boxes, labels, polygons = [], [], []
    with_polys = samples[0]["polygons"] is not None
    canvas = 2 * img_scale
    for sample, tile in zip(samples, layout):
        r = tile["r"]
        dx, dy = tile["rect"][0] - tile["origin"][0], tile["rect"][1] - tile["origin"][1]
        boxes.append(sample["bboxes"] * r + np.array([dx, dy, dx, dy], dtype=np.float32))
        labels.append(sample["labels"])
        if with_polys:
            h0, w0 = sample_shape(sample)
            scale = np.array([int(w0 * r + 0.5) / w0, int(h0 * r + 0.5) / h0])
            polygons += [[np.clip(p * scale + (dx, dy), 0, canvas) for p in inst] for inst in sample["polygons"]]
    return {"bboxes": np.clip(np.concatenate(boxes), 0, canvas).astype(np.float32),
            "labels": np.concatenate(labels), "polygons": polygons if with_polys else None,
            "image_id": samples[0]["image_id"]}


def render_canvas(tiles: list, layout: list, rect: tuple, out: np.ndarray | None = None) -> np.ndarray:
    """Pixels of the canvas rectangle `rect` (x0, y0, x1, y1): 114 where no image lies.

    Args:
        tiles: per image, a function returning the resized uint8 [h, w, 3] image (so images
            that `rect` does not reach are never resized).
        out: optional uint8 [y1 - y0, x1 - x0, 3] array (e.g. a view) to draw into.
    Returns:
        uint8 [y1 - y0, x1 - x0, 3] (`out` when given).
    """
    x0, y0, x1, y1 = rect
    if out is None:
        out = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, dtype=np.uint8)
    else:
        out[:] = PAD_VALUE
    for tile, place in zip(tiles, layout):
        tx1, ty1, tx2, ty2 = place["rect"]
        ix1, iy1, ix2, iy2 = max(tx1, x0), max(ty1, y0), min(tx2, x1), min(ty2, y1)
        if ix1 >= ix2 or iy1 >= iy2:
            continue
        ox, oy = place["origin"][0] - tx1, place["origin"][1] - ty1  # canvas -> resized-image offset
        out[iy1 - y0:iy2 - y0, ix1 - x0:ix2 - x0] = tile()[iy1 + oy:iy2 + oy, ix1 + ox:ix2 + ox]
    return out


def resized_tiles(samples: list, layout: list) -> list:
    """One function per sample returning its image resized (bilinear) to its mosaic size, resized once.

    An image that already has that size (resized by a `MosaicImageStore`) is used as it is.
    """
    return [(lambda img=sample["img"]: img) if sample["img"].shape[1::-1] == tile["size"] else
            functools.cache(functools.partial(cv2.resize, sample["img"], tile["size"], interpolation=cv2.INTER_LINEAR))
            for sample, tile in zip(samples, layout)]


def mosaic(samples: list, rng: np.random.Generator, img_scale: int = 640) -> dict:
    """Four samples around a random centre on a (2·s)x(2·s) canvas padded with 114.

    Centre (x, y) = int(U(0.5, 1.5)·s) each; each image is resized by r = min(s/h, s/w)
    (bilinear, may upscale) and placed top-left, top-right, bottom-left, bottom-right of
    the centre, cropped at the canvas edge. Labels: see `mosaic_labels` (boxes clipped to the
    canvas, empty ones kept; polygons rescaled per axis and clipped).
    """
    layout = mosaic_layout([sample_shape(x) for x in samples], rng, img_scale)
    out = mosaic_labels(samples, layout, img_scale)
    out["img"] = render_canvas(resized_tiles(samples, layout), layout, (0, 0, 2 * img_scale, 2 * img_scale))
    return out


def copy_paste_choice(boxes: np.ndarray, width: int, rng: np.random.Generator, fraction: float = 0.3,
                      ioa_thr: float = 0.3):
    """Which objects CopyPaste mirrors (YOLOv5 rule), from the boxes only.

    Candidates: objects whose horizontally mirrored box covers < `ioa_thr` of every existing
    box (IoA = intersection / existing box area, own box included); round(fraction·n)
    distinct candidates are drawn.
    Returns:
        (chosen int64 [k] object indices, mirrored float32 [N, 4] mirrored boxes).
    """
    mirrored = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    iw = np.clip(np.minimum(mirrored[:, None, 2], boxes[None, :, 2])
                 - np.maximum(mirrored[:, None, 0], boxes[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(mirrored[:, None, 3], boxes[None, :, 3])
                 - np.maximum(mirrored[:, None, 1], boxes[None, :, 1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ioa = iw * ih / (area[None, :] + 1e-7)
    candidates = np.flatnonzero(ioa.max(1) < ioa_thr)
    k = round(fraction * len(candidates))  # Python round: half to even, as upstream
    if k == 0:
        return np.zeros(0, dtype=np.int64), mirrored
    return rng.choice(candidates, k, replace=False), mirrored


def paste_objects(img: np.ndarray, source, polygons: list, chosen, size: tuple, origin: tuple = (0, 0)) -> None:
    """Paste the chosen objects, mirrored, into `img` (in place): the canvas window at `origin`.

    Per object, as upstream: its polygon (vertices cast to int) is filled where it lies on the
    canvas, the mask is mirrored (pixel column x -> W-1-x) and the mirrored canvas pixels are
    copied where it is set. OpenCV's polygon fill is not mirror-symmetric (filling the mirrored
    polygon instead changes about 1 % of the pixels, on the boundary), so the mask is mirrored,
    not the polygon. `source(rect)` returns the canvas pixels of rect (x0, y0, x1, y1) before any paste.
    """
    w, h = size
    ox, oy = origin
    wx1, wy1 = ox + img.shape[1], oy + img.shape[0]
    for i in chosen:
        parts = [p.astype(np.int32) for p in polygons[i]]
        xy = np.concatenate(parts)
        # The fill stays inside the integer vertices' box; upstream fills the whole canvas, which clips
        # at the canvas edges only. Filling the box cut at those same edges gives the same pixels.
        sx0, sy0 = max(int(xy[:, 0].min()), 0), max(int(xy[:, 1].min()), 0)
        sx1, sy1 = min(int(xy[:, 0].max()), w - 1) + 1, min(int(xy[:, 1].max()), h - 1) + 1
        x0, x1 = w - sx1, w - sx0  # the mirrored columns
        cx0, cy0, cx1, cy1 = max(x0, ox), max(sy0, oy), min(x1, wx1), min(sy1, wy1)  # part inside the window
        if cx0 >= cx1 or cy0 >= cy1:
            continue
        mask = np.zeros((sy1 - sy0, sx1 - sx0), dtype=np.uint8)
        cv2.fillPoly(mask, parts, 1, offset=(-sx0, -sy0))
        mask = mask[cy0 - sy0:cy1 - sy0, ::-1][:, cx0 - x0:cx1 - x0]
        pixels = source((w - cx1, cy0, w - cx0, cy1))[:, ::-1]
        np.copyto(img[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox], pixels, where=mask.astype(bool)[..., None])


def copy_paste_labels(sample: dict, chosen, mirrored: np.ndarray, width: int) -> dict:
    """Append the mirrored boxes, labels and polygons of the pasted objects (image not touched)."""
    out = dict(sample)
    polygons = sample["polygons"]
    out["bboxes"] = np.concatenate([sample["bboxes"], mirrored[chosen]]).astype(np.float32)
    out["labels"] = np.concatenate([sample["labels"], sample["labels"][chosen]])
    out["polygons"] = polygons + [[np.stack([width - p[:, 0], p[:, 1]], 1) for p in polygons[i]] for i in chosen]
    return out


def copy_paste(sample: dict, rng: np.random.Generator, fraction: float = 0.3, ioa_thr: float = 0.3) -> dict:
    """Mirror a fraction of the objects to the other side of the canvas (YOLOv5 CopyPaste).

    See `copy_paste_choice` for which objects and `paste_objects` for the pixels: only the box of
    each pasted object's mirrored mask is touched (no full-canvas flip or mask). No-op without polygons.
    """
    boxes, polygons = sample["bboxes"], sample["polygons"]
    if polygons is None or len(boxes) == 0 or fraction <= 0:
        return sample
    h, w = sample["img"].shape[:2]
    chosen, mirrored = copy_paste_choice(boxes, w, rng, fraction, ioa_thr)
    if len(chosen) == 0:
        return sample
    img = sample["img"].copy()
    canvas = sample["img"]
    paste_objects(img, lambda r: canvas[r[1]:r[3], r[0]:r[2]], polygons, chosen, (w, h))
    out = copy_paste_labels(sample, chosen, mirrored, w)
    out["img"] = img
    return out


def mixup(sample: dict, other: dict, rng: np.random.Generator, alpha: float = 32.0) -> dict:
    """Blend two same-size samples with r ~ Beta(32, 32) (cast to uint8 by truncation), keep all boxes.

    The blend is computed in float64 as upstream does: in float32, about 1 in 20,000 pixel values
    truncate to one less or one more.
    """
    r = rng.beta(alpha, alpha)
    out = dict(sample)
    out["img"] = blend(sample["img"], other["img"], r)
    out["bboxes"] = np.concatenate([sample["bboxes"], other["bboxes"]])
    out["labels"] = np.concatenate([sample["labels"], other["labels"]])
    if sample["polygons"] is not None:
        out["polygons"] = sample["polygons"] + other["polygons"]
    return out


def blend(a: np.ndarray, b: np.ndarray, r: float, chunk: int = 1 << 16) -> np.ndarray:
    """uint8 (a·r + b·(1 - r)) computed in float64 and truncated, as `(a * r + b * (1 - r)).astype(uint8)`.

    Same operations, bit for bit, in chunks of `chunk` values: the float64 temporaries stay in
    the CPU cache (3.5x faster than whole-image temporaries of 8 bytes per value at 640 px).
    """
    if a.shape != b.shape:
        raise ValueError(f"blend: images of different shapes {a.shape} and {b.shape}")
    out = np.empty(a.shape, dtype=np.uint8)
    flat_a, flat_b, flat_out = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for start in range(0, flat_a.size, chunk):
        part = slice(start, start + chunk)
        flat_out[part] = flat_a[part] * r + flat_b[part] * (1 - r)  # assignment truncates like astype
    return out
