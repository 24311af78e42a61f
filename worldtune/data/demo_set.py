"""A small COCO-format detection set built offline from real photographs shipped with scikit-image.

Objects are cut out of skimage photographs along known polygons (hand-written outlines for the
cat, the coffee cup, the rocket and the astronaut; thresholded outlines for the coins) and pasted,
scaled and sometimes mirrored, onto crops of other photographs that contain none of the classes
(grass, gravel, brick, deep-field sky, wood, night sky). Objects never overlap, so each pasted
polygon is exactly the visible object and its box is the tight box of the polygon: the labels are
exact, which makes the set useful to check that a fine-tune learns (`worldtune demo`).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

# (category id, class text, skimage image, outline as (x, y) vertices in that image's pixels).
# Ids are deliberately non-contiguous, as in COCO. Coins come from thresholding, not from here.
_OUTLINES = {
    "person": (1, "astronaut", [(165, 45), (200, 15), (260, 15), (295, 45), (300, 110), (295, 165), (330, 220),
                                (355, 280), (370, 350), (330, 360), (290, 400), (280, 511), (30, 511), (25, 380),
                                (40, 290), (60, 250), (110, 215), (125, 185), (160, 160), (158, 100)]),
    "cat": (17, "chelsea", [(0, 0), (330, 0), (360, 10), (385, 40), (375, 100), (370, 170), (350, 240),
                            (320, 299), (0, 299)]),
    "coffee cup": (47, "coffee", [(175, 95), (190, 45), (240, 22), (300, 18), (360, 28), (400, 55), (412, 95),
                                  (405, 150), (390, 200), (365, 240), (330, 262), (290, 270), (255, 268),
                                  (250, 285), (225, 295), (200, 285), (195, 255), (205, 230), (190, 190),
                                  (178, 140)]),
    "rocket": (101, "rocket", [(322, 125), (330, 132), (335, 150), (335, 400), (308, 400), (308, 150), (313, 132)]),
}
_COIN_ID = 102
# Texture-only regions (y0, y1, x0, x1) of skimage photographs, free of the classes above.
_BACKGROUNDS = {"grass": None, "gravel": None, "brick": None, "hubble_deep_field": None, "moon": None,
                "coffee": (0, 400, 470, 600), "rocket": (0, 110, 90, 290)}


def _rgb(name: str) -> np.ndarray:
    from skimage import data
    img = getattr(data, name)()
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[:, :, :3])


def _coin_outlines() -> tuple[np.ndarray, list[np.ndarray]]:
    """The coins photograph (RGB) and one outline per coin, each a float array [P, 2] of (x, y)."""
    from skimage import data
    gray = data.coins()
    blur = cv2.GaussianBlur(gray, (5, 5), 0)
    # The coins sit on an unevenly lit dark background, so a local threshold separates them.
    mask = cv2.adaptiveThreshold(blur, 255, cv2.ADAPTIVE_THRESH_GAUSSIAN_C, cv2.THRESH_BINARY, 51, -10)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for c in sorted(contours, key=lambda c: tuple(cv2.boundingRect(c)[:2])):
        area, (_, _, w, h) = cv2.contourArea(c), cv2.boundingRect(c)
        roundness = 4 * np.pi * area / max(cv2.arcLength(c, True) ** 2, 1e-9)
        if area > 800 and roundness > 0.75 and 0.75 < w / h < 1.33:  # whole, separate coins only
            outlines.append(cv2.approxPolyDP(c, 1.0, True)[:, 0, :].astype(np.float64))
    return np.repeat(gray[:, :, None], 3, axis=2), outlines


def _sources() -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per class, [(category id, RGB photograph, outline float[P, 2])] for each cut-out object."""
    out = [[(cid, _rgb(img), np.asarray(poly, np.float64))] for cid, img, poly in _OUTLINES.values()]
    coins, outlines = _coin_outlines()
    out.append([(_COIN_ID, coins, poly) for poly in outlines])
    return out


def _background(rng: np.random.Generator, photos: dict, width: int, height: int) -> np.ndarray:
    name = sorted(photos)[rng.integers(len(photos))]
    img = photos[name]
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = cv2.resize(img[y:y + ch, x:x + cw], (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(crop.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)


def _paste(canvas, src, poly, rng, taken) -> np.ndarray | None:
    """Paste `src` cut along `poly` at a random scale/place not overlapping `taken` boxes.

    Returns the pasted polygon float[P, 2] in canvas pixels, or None when no free place was found.
    """
    height, width = canvas.shape[:2]
    x0, y0 = poly.min(0)
    pw, ph = poly.max(0) - (x0, y0)
    for _ in range(30):
        scale = rng.uniform(0.15, 0.55) * min(width, height) / max(pw, ph)
        flip = rng.random() < 0.5
        tx = rng.uniform(1, width - 1 - pw * scale)
        ty = rng.uniform(1, height - 1 - ph * scale)
        box = (tx, ty, tx + pw * scale, ty + ph * scale)
        if any(box[0] < b[2] + 2 and b[0] < box[2] + 2 and box[1] < b[3] + 2 and b[1] < box[3] + 2 for b in taken):
            continue
        # One affine map for pixels and vertices, so the annotation is exactly the pasted outline.
        sx = -scale if flip else scale
        m = np.array([[sx, 0, tx - sx * (x0 + (pw if flip else 0))], [0, scale, ty - scale * y0]])
        new_poly = poly @ m[:, :2].T + m[:, 2]
        warped = cv2.warpAffine(src, m, (width, height), flags=cv2.INTER_LINEAR)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(new_poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
        canvas[mask.astype(bool)] = warped[mask.astype(bool)]
        taken.append(box)
        return new_poly
    return None


def _make_split(root: Path, split: str, num_images: int, imgsz: int, seed: int, sources, photos, categories):
    image_dir = root / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        # One generator per (seed, split, image): changing num_train never changes the val images.
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        width, height = imgsz, int(round(imgsz * rng.uniform(0.7, 1.0)))
        canvas = _background(rng, photos, width, height)
        taken: list = []
        for _ in range(int(rng.integers(1, 5))):
            # Class first, then one of its cut-outs: 24 coins must not crowd out the other classes.
            class_sources = sources[int(rng.integers(len(sources)))]
            cid, src, poly = class_sources[int(rng.integers(len(class_sources)))]
            new_poly = _paste(canvas, src, poly, rng, taken)
            if new_poly is None:
                continue
            new_poly = np.round(new_poly, 2)
            x1, y1 = new_poly.min(0)
            x2, y2 = new_poly.max(0)
            area = 0.5 * abs(np.dot(new_poly[:, 0], np.roll(new_poly[:, 1], 1))
                             - np.dot(new_poly[:, 1], np.roll(new_poly[:, 0], 1)))
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cid,
                                "segmentation": [[round(float(v), 2) for v in new_poly.ravel()]],
                                "area": round(float(area), 2), "iscrowd": 0,
                                "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)]})
        file_name = f"{split}_{i:04d}.jpg"
        cv2.imwrite(str(image_dir / file_name), canvas[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
        images.append({"id": i + 1, "file_name": file_name, "width": width, "height": height})
    ann_file = root / "annotations" / f"{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file, image_dir


def build_demo_dataset(root: str | Path, num_train: int = 48, num_val: int = 12, imgsz: int = 416,
                       seed: int = 0) -> dict:
    """Write the demo set under `root` (reused as is when already built with the same arguments).

    Args:
        root: output folder; gets train/, val/, annotations/{train,val}.json, class_texts.json.
        num_train / num_val: image counts. imgsz: image width; heights vary in [0.7, 1.0]·imgsz.
        seed: everything (backgrounds, objects, placement) is a function of the seed.
    Returns:
        dict(train_ann, train_images, val_ann, val_images, class_texts) of paths (class_texts is the
        official list-of-synonym-lists JSON, in category-id order) plus class_names (list of str).
    """
    if num_train < 1 or num_val < 1 or imgsz < 64:
        raise ValueError(f"build_demo_dataset: need num_train, num_val >= 1 and imgsz >= 64, "
                         f"got {num_train}, {num_val}, {imgsz}")
    root = Path(root)
    params = {"num_train": num_train, "num_val": num_val, "imgsz": imgsz, "seed": seed, "version": 1}
    names = sorted(list(_OUTLINES) + ["coin"], key=lambda n: _COIN_ID if n == "coin" else _OUTLINES[n][0])
    result = {"train_ann": root / "annotations" / "train.json", "train_images": root / "train",
              "val_ann": root / "annotations" / "val.json", "val_images": root / "val",
              "class_texts": root / "class_texts.json", "class_names": names}
    manifest = root / "demo_manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()) == params:
        return result
    categories = [{"id": _COIN_ID if n == "coin" else _OUTLINES[n][0], "name": n} for n in names]
    sources = _sources()
    photos = {}
    for name, region in _BACKGROUNDS.items():
        img = _rgb(name)
        photos[name] = img if region is None else img[region[0]:region[1], region[2]:region[3]]
    _make_split(root, "train", num_train, imgsz, seed, sources, photos, categories)
    _make_split(root, "val", num_val, imgsz, seed, sources, photos, categories)
    result["class_texts"].write_text(json.dumps([[n] for n in names]))
    manifest.write_text(json.dumps(params))  # written last: a half-built folder is rebuilt
    return result
