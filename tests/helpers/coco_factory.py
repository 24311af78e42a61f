"""Write a tiny, deterministic COCO-format detection set for tests and benchmarks.

Every object is drawn with cv2 as a filled polygon whose vertices are exactly the
annotation, in a pure colour that identifies its class (BGR in `PALETTE_BGR`), on a
dark grey background. Category names are the colour names, so a test can check
that a box's text matches the colour under it.

Contents (num_images=6, scale=1):
    0 `img_000.jpg` 160x120: rectangle + ellipse + a two-part polygon (one instance)
    1 `img_001.png` 128x96 : rectangle + non-crowd RLE ellipse
    2 `img_002.png` 112x112, grayscale (1-channel PNG): one crowd instance with RLE
    3 `img_003.jpg` 96x128 : no annotation at all (empty image)
    4.. `img_00k.jpg/png`   : 2-3 rectangles/ellipses each
Category ids are non-contiguous: 1, 3, 4, 9, 17.
"""
import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

CATEGORY_IDS = [1, 3, 4, 9, 17]
CATEGORY_NAMES = ["red", "green", "blue", "yellow", "cyan"]
PALETTE_BGR = {
    "red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0),
    "yellow": (0, 255, 255), "cyan": (255, 255, 0),
}
BACKGROUND = 40


def _rect(x1, y1, x2, y2):
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def _ellipse(cx, cy, ax, ay):
    return cv2.ellipse2Poly((int(cx), int(cy)), (int(ax), int(ay)), 0, 0, 360, 20).astype(np.float64)


def _layout(index: int):
    """(width, height, extension, grayscale, objects). objects: (class index, kind, [polygon parts])."""
    if index == 0:
        return 160, 120, "jpg", False, [
            (0, "poly", [_rect(8, 10, 60, 50)]),
            (1, "poly", [_ellipse(110, 40, 30, 22)]),
            (2, "poly", [_rect(10, 70, 40, 110), _rect(60, 75, 95, 112)]),  # multi-part
        ]
    if index == 1:
        return 128, 96, "png", False, [
            (3, "poly", [_rect(6, 8, 56, 60)]),
            (4, "rle", [_ellipse(92, 55, 26, 30)]),
        ]
    if index == 2:
        return 112, 112, "png", True, [(1, "crowd", [_rect(20, 20, 90, 90)])]
    if index == 3:
        return 96, 128, "jpg", False, []
    rng = np.random.default_rng(index)
    w, h = int(rng.integers(96, 161)), int(rng.integers(96, 161))
    objects = []
    for k, x0 in enumerate(range(4, w - 30, w // 3)):
        cls = int(rng.integers(0, len(CATEGORY_IDS)))
        bw, bh = int(rng.integers(18, w // 3 - 4)), int(rng.integers(18, h - 20))
        y0 = int(rng.integers(4, h - bh - 2))
        part = _rect(x0, y0, x0 + bw, y0 + bh) if k % 2 == 0 else _ellipse(x0 + bw / 2, y0 + bh / 2, bw / 2, bh / 2)
        objects.append((cls, "poly", [part]))
    return w, h, ("png" if index % 2 else "jpg"), False, objects


def make_tiny_coco(root, num_images: int = 6, scale: float = 1.0) -> dict:
    """Write images and `annotations.json` under `root`.

    Args:
        root: output folder (created).
        num_images: at least 4 gives every special case listed in the module docstring.
        scale: multiplies every size and coordinate (e.g. 5 for ~640 px benchmark images).
    Returns:
        dict(ann_file, image_dir, class_texts_file, category_ids, category_names, palette_bgr).
    """
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 100  # ids need not start at 1
    for index in range(num_images):
        w, h, ext, gray, objects = _layout(index)
        w, h = int(round(w * scale)), int(round(h * scale))
        canvas = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
        file_name = f"img_{index:03d}.{ext}"
        image_id = 1000 + 7 * index
        for cls, kind, parts in objects:
            parts = [p * scale for p in parts]
            colour = PALETTE_BGR[CATEGORY_NAMES[cls]]
            cv2.fillPoly(canvas, [np.round(p).astype(np.int32) for p in parts], colour)
            xy = np.concatenate(parts)
            x1, y1 = xy.min(0)
            x2, y2 = xy.max(0)
            ann = {"id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[cls],
                   "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                   "area": float(sum(cv2.contourArea(p.astype(np.float32)) for p in parts)), "iscrowd": 0}
            if kind == "poly":
                ann["segmentation"] = [[float(v) for v in p.reshape(-1)] for p in parts]
            else:
                mask = np.zeros((h, w), dtype=np.uint8)
                cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in parts], 1)
                if kind == "crowd":  # COCO writes crowd regions as uncompressed RLE
                    ann["iscrowd"] = 1
                    ann["segmentation"] = _uncompressed_rle(mask)
                else:
                    rle = mask_utils.encode(np.asfortranarray(mask))
                    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            annotations.append(ann)
            ann_id += 3
        if gray:
            cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY))
        else:
            params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == "jpg" else []
            cv2.imwrite(str(image_dir / file_name), canvas, params)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
    categories = [{"id": i, "name": n, "supercategory": "colour"} for i, n in zip(CATEGORY_IDS, CATEGORY_NAMES)]
    ann_file = root / "annotations.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    texts_file = root / "class_texts.json"
    texts_file.write_text(json.dumps([[n, f"{n} thing"] for n in CATEGORY_NAMES]))
    return {"ann_file": ann_file, "image_dir": image_dir, "class_texts_file": texts_file,
            "category_ids": list(CATEGORY_IDS), "category_names": list(CATEGORY_NAMES),
            "palette_bgr": dict(PALETTE_BGR)}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major flattened mask, starting with zeros."""
    flat = mask.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}
