"""Single-image transforms. A sample is a plain dict:

    img      uint8 [H, W, 3] BGR (cv2 order, so the HSV look-up tables match the official ones)
    bboxes   float32 [N, 4] xyxy pixels
    labels   int64 [N] class indices 0..K-1
    polygons list of N lists of float32 [P, 2] parts, or None when the recipe has no masks

Every random choice comes from the `rng` argument (a numpy Generator), never from global state.
"""
import cv2
import numpy as np

PAD_VALUE = 114
# Stage 2's letterbox bars, BGR. The official stage-2 LetterResize is given pad_val 114.0, a float,
# which it does not spread over the channels (only an int is); cv2.copyMakeBorder then fills channel 0
# alone from the single number. Kept, so that stage-2 images match the official ones.
STAGE2_PAD_BGR = (PAD_VALUE, 0, 0)


def resample_parts(parts: list, num_points: int = 1000) -> np.ndarray:
    """Close each polygon part and resample it linearly to `num_points` points (vectorised).

    Args:
        parts: list of P float arrays [L_i, 2].
    Returns:
        float32 [P, num_points, 2]; point 0 and point num_points-1 are both the first vertex.
    """
    if not parts:
        return np.zeros((0, num_points, 2), dtype=np.float32)
    lengths = np.array([len(p) for p in parts])
    closed = np.concatenate([np.concatenate([p, p[:1]]) for p in parts]).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    t = np.linspace(0.0, 1.0, num_points)[None, :] * lengths[:, None]  # [P, n] in 0..L_i
    i0 = np.minimum(np.floor(t).astype(np.int64), lengths[:, None] - 1)
    frac = (t - i0)[..., None].astype(np.float32)
    g0 = offsets[:, None] + i0
    out = np.take(closed, g0, axis=0)  # in place below: same float32 operations, fewer temporaries
    out *= 1 - frac
    out += np.take(closed, g0 + 1, axis=0) * frac
    return out


def _flatten(polygons: list):
    parts = [p for inst in polygons for p in inst]
    owner = np.array([i for i, inst in enumerate(polygons) for _ in inst], dtype=np.int64)
    return parts, owner


def affine_matrix(rng: np.random.Generator, in_size: tuple, border: int = 0, scale_range=(0.5, 1.5),
                  translate: float = 0.1):
    """Draw the official affine: scale s about the input centre, centre moved to (U(0.5±t)·W_out, U(0.5±t)·H_out).

    The matrix is built as upstream builds its homography, in float32: translation @ scaling @
    centring (rotation and shear are 0 in every official recipe, identities that change no bit).
    Warping with its top two rows gives the same pixels as upstream's warpPerspective.

    Args:
        in_size: (W_in, H_in); output size = input size + 2·border (mosaic: 1280 + 2·(-320) = 640).
    Returns:
        (s, float32 [2, 3] forward matrix x' = m00·x + m02, y' = m11·y + m12, (W_out, H_out)).
    """
    w_in, h_in = in_size
    w_out, h_out = w_in + 2 * border, h_in + 2 * border
    s = rng.uniform(*scale_range)
    tx = rng.uniform(0.5 - translate, 0.5 + translate) * w_out
    ty = rng.uniform(0.5 - translate, 0.5 + translate) * h_out
    centre = np.array([[1, 0, -w_in / 2], [0, 1, -h_in / 2], [0, 0, 1]], dtype=np.float32)
    scale = np.array([[s, 0, 0], [0, s, 0], [0, 0, 1]], dtype=np.float32)
    move = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=np.float32)
    return s, ((move @ scale) @ centre)[:2], (w_out, h_out)


def random_affine(sample: dict, rng: np.random.Generator, scale_range=(0.5, 1.5), border: int = 0,
                  translate: float = 0.1, min_area_ratio: float = 0.01, min_size: float = 2.0,
                  max_aspect: float = 100.0) -> dict:
    """Scale about the input centre, move the centre to (U(0.5±t)·W_out, U(0.5±t)·H_out), warp.

    Output size = input size + 2·border (mosaic: 1280 + 2·(-320) = 640). Boxes and polygons:
    see `affine_labels`.
    """
    img = sample["img"]
    s, matrix, out_size = affine_matrix(rng, img.shape[1::-1], border, scale_range, translate)
    out = affine_labels(sample, s, matrix, out_size, min_area_ratio, min_size, max_aspect)
    out["img"] = warp_bgr(img, matrix, out_size)
    return out


def warp_bgr(img: np.ndarray, matrix: np.ndarray, out_size: tuple) -> np.ndarray:
    """cv2.warpAffine(img, matrix, out_size), bilinear, border 114, for uint8 [H, W, 3] images.

    Run on a BGRA copy: OpenCV's bilinear warp is about 2.5x faster on 4 channels than on 3, and
    each channel is computed on its own, so the result is the same to the bit.
    """
    warped = cv2.warpAffine(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA), matrix, out_size, flags=cv2.INTER_LINEAR,
                            borderValue=(PAD_VALUE,) * 4)
    return cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR)


def affine_labels(sample: dict, s: float, matrix: np.ndarray, out_size: tuple, min_area_ratio: float = 0.01,
                  min_size: float = 2.0, max_aspect: float = 100.0) -> dict:
    """Boxes, labels and polygons of `sample` under the scale+shift `matrix` (image not touched);
    `s` is the drawn scale, used for the area test as upstream does.

    With polygons (mask-refine) each part is resampled to 1000 points, warped, and the box is
    the min/max of the warped points inside the image; without, the 4 box corners are warped.
    Boxes are kept when w > 2, h > 2, area / (old area·s²) > min_area_ratio and aspect < max_aspect.
    Polygons (for display only) keep the parts that reach the image, clipped to it; a part wholly
    outside, which the official code keeps flattened onto the border, is left out.
    """
    boxes = sample["bboxes"]
    w_out, h_out = out_size
    out = dict(sample)
    n = len(boxes)
    polygons = sample.get("polygons")
    if polygons is not None:
        # Resampled points lie on a part's edges, so inside its vertices' box: a part whose warped
        # vertex box misses the output (by more than a pixel, far above float rounding) has no point
        # inside and adds nothing to its instance's box (no part left: the zero box, dropped).
        # Skipping its 1000-point work changes no result.
        parts, owner = _flatten(polygons)
        reach = _reaches_output(parts, matrix, w_out, h_out)
        parts, owner = [p for p, r in zip(parts, reach) if r], owner[reach]
        pts = resample_parts(parts)
        pts *= np.array([matrix[0, 0], matrix[1, 1]], dtype=np.float32)
        pts += matrix[:, 2].astype(np.float32)  # [P, 1000, 2]
        new_boxes = _boxes_inside(pts, owner, n, w_out, h_out)
        clipped = np.clip(pts, 0, np.array([w_out, h_out], dtype=np.float32))
        new_polys = [[] for _ in range(n)]
        for k, i in enumerate(owner.tolist()):
            new_polys[i].append(clipped[k])
    else:
        corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n, 4, 2) * matrix[[0, 1], [0, 1]] + matrix[:, 2]
        new_boxes = np.concatenate([corners.min(1), corners.max(1)], 1)
        new_boxes = np.clip(new_boxes, 0, [w_out, h_out, w_out, h_out])
        new_polys = None
    w, h = new_boxes[:, 2] - new_boxes[:, 0], new_boxes[:, 3] - new_boxes[:, 1]
    old_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * s * s
    aspect = np.maximum(w / (h + 1e-16), h / (w + 1e-16))
    keep = (w > min_size) & (h > min_size) & (w * h / (old_area + 1e-16) > min_area_ratio) & (aspect < max_aspect)
    if polygons is not None:  # mask path: clip after the test, just inside the border
        new_boxes = np.clip(new_boxes, 0, [w_out - 1e-3, h_out - 1e-3, w_out - 1e-3, h_out - 1e-3])
        new_polys = [p for p, k in zip(new_polys, keep) if k]
    out["bboxes"] = new_boxes[keep].astype(np.float32)
    out["labels"] = sample["labels"][keep]
    out["polygons"] = new_polys
    return out


def _reaches_output(parts: list, matrix: np.ndarray, w_out: float, h_out: float) -> np.ndarray:
    """bool [P]: the warped box of each part's vertices comes within a pixel of [0, W]x[0, H]."""
    if not parts:
        return np.zeros(0, dtype=bool)
    starts = np.cumsum([0] + [len(p) for p in parts[:-1]])
    verts = np.concatenate(parts)
    scale = matrix[[0, 1], [0, 1]]
    lo = np.minimum.reduceat(verts, starts) * scale + matrix[:, 2]
    hi = np.maximum.reduceat(verts, starts) * scale + matrix[:, 2]
    return (hi > -1).all(1) & (lo < np.array([w_out, h_out]) + 1).all(1)


def _boxes_inside(pts: np.ndarray, owner: np.ndarray, n: int, w_out: float, h_out: float) -> np.ndarray:
    """float64 [n, 4]: per instance, min/max of its points [P, K, 2] inside [0, W]x[0, H] (none -> zeros)."""
    xy = np.ascontiguousarray(pts.transpose(2, 0, 1))  # [2, P, K]: reductions over K run on contiguous memory
    inside = ((xy >= 0) & (xy <= np.array([w_out, h_out], np.float32)[:, None, None])).all(0)  # [P, K]
    masked = np.where(inside, xy, np.inf)
    lo = masked.min(2).T  # [P, 2]
    masked[:, ~inside] = -np.inf  # the inside entries are still the points
    hi = masked.max(2).T
    new_lo, new_hi = np.full((n, 2), np.inf), np.full((n, 2), -np.inf)
    np.minimum.at(new_lo, owner, lo)
    np.maximum.at(new_hi, owner, hi)
    new_boxes = np.concatenate([new_lo, new_hi], 1)
    new_boxes[~np.isfinite(new_boxes).all(1)] = 0  # nothing inside -> zero box, filtered below
    return new_boxes


def keep_ratio_resize(img: np.ndarray, size: int = 640):
    """Long side to `size`: (int(w·r), int(h·r)), r = size / max(h, w); area when shrinking.

    Returns:
        (resized uint8 [h', w', 3], r).
    """
    h, w = img.shape[:2]
    r = size / max(h, w)
    # at least 1 px: a side of a very thin image (e.g. 32 x 25000) would round to 0, which upstream cannot resize
    new_w, new_h = max(int(w * r), 1), max(int(h * r), 1)
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    return img, r


def letterbox(img: np.ndarray, size: int = 640, allow_scale_up: bool = True, pad_bgr: tuple = (PAD_VALUE,) * 3):
    """Fit into size x size keeping the ratio, pad centred with `pad_bgr` (odd pixel bottom/right).

    Returns:
        (uint8 [size, size, 3], (scale_x, scale_y), pad [top, bottom, left, right]).
    """
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    if not allow_scale_up:
        r = min(r, 1.0)
    new_h, new_w = max(int(round(h * r)), 1), max(int(round(w * r)), 1)
    if (new_h, new_w) != (h, w):
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_h, pad_w = size - new_h, size - new_w
    top, left = pad_h // 2, pad_w // 2
    pad = [top, pad_h - top, left, pad_w - left]
    img = cv2.copyMakeBorder(img, pad[0], pad[1], pad[2], pad[3], cv2.BORDER_CONSTANT, value=pad_bgr)
    return img, (new_w / w, new_h / h), pad


def letterbox_for_test(img: np.ndarray, size: int = 640):
    """The official test pipeline: long side to `size` (smaller images are scaled up too), then
    centred padding of 114 to `size` x `size` (the letterbox step itself never scales up).

    Returns:
        (uint8 [size, size, 3], scale_factor (sx, sy) original -> network, pad [top, bottom, left, right]).
        A network box maps back as (box - [left, top, left, top]) / [sx, sy, sx, sy]. As upstream, the
        factors are per axis, from the sizes the image actually got (w'/w, not the ratio r).
    """
    h, w = img.shape[:2]
    resized, _ = keep_ratio_resize(img, size)
    boxed, (sx, sy), pad = letterbox(resized, size, allow_scale_up=False)
    return boxed, (resized.shape[1] / w * sx, resized.shape[0] / h * sy), pad


def resize_and_letterbox(sample: dict, size: int = 640) -> dict:
    """Stage 2's YOLOv5KeepRatioResize + LetterResize (upscaling allowed) on image, boxes and polygons.

    Boxes follow the image as upstream moves them: scaled per axis by w'/w and h'/h (the sizes the
    image got) and clipped to it, then by the letterbox factors, shifted by the padding and clipped.
    Polygons follow upstream's mask arithmetic, which rounds differently: the keep-ratio step
    rescales them to (round(w·r), round(h·r)) (mmcv.rescale_size), the letterbox resizes that to
    round(size × factor) and shifts them by the padding, clipping to the image only along an axis
    that has padding. The bars are `STAGE2_PAD_BGR`, as upstream's (not the grey of evaluation).
    """
    img = sample["img"]
    h, w = img.shape[:2]
    resized, r = keep_ratio_resize(img, size)
    h1, w1 = resized.shape[:2]
    out = dict(sample)
    out["img"], (sx, sy), (top, _, left, _) = letterbox(resized, size, allow_scale_up=True,
                                                         pad_bgr=STAGE2_PAD_BGR)
    boxes = sample["bboxes"].astype(np.float32) * np.float32([w1 / w, h1 / h, w1 / w, h1 / h])
    boxes = np.clip(boxes, 0, np.float32([w1, h1, w1, h1])) * np.float32([sx, sy, sx, sy])
    out["bboxes"] = np.clip(boxes + np.float32([left, top, left, top]), 0, size).astype(np.float32)
    if sample.get("polygons") is not None:
        mask_w, mask_h = int(w * r + 0.5), int(h * r + 0.5)  # the keep-ratio step's mask size
        factor = np.array([int(round(mask_w * sx)) / w, int(round(mask_h * sy)) / h])  # to the letterbox's
        low = np.array([0 if left else -np.inf, 0 if top else -np.inf])
        high = np.array([size if left else np.inf, size if top else np.inf])
        out["polygons"] = [[np.clip(p * factor + (left, top), low, high) for p in inst] for inst in sample["polygons"]]
    return out


def hsv_augment(img: np.ndarray, rng: np.random.Generator, gains=(0.015, 0.7, 0.4)) -> np.ndarray:
    """Random hue/saturation/value gains 1 + U(-1, 1)·gain through cv2 look-up tables (hue mod 180)."""
    r = rng.uniform(-1, 1, 3) * np.asarray(gains) + 1
    if not np.any(np.asarray(gains)):
        return img
    x = np.arange(256, dtype=np.float64)
    lut = np.stack([(x * r[0]) % 180, np.clip(x * r[1], 0, 255), np.clip(x * r[2], 0, 255)], 1).astype(np.uint8)
    # One 3-channel table: cv2.LUT maps each channel with its own column, no split/merge copies.
    hsv = cv2.LUT(cv2.cvtColor(img, cv2.COLOR_BGR2HSV), lut.reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def light_albu(img: np.ndarray, rng: np.random.Generator, p: float = 0.01) -> np.ndarray:
    """Blur, MedianBlur, ToGray, CLAHE, each with probability p (albumentations' default ranges:
    odd kernel 3..7, CLAHE clip U(1, 4) on the L channel with an 8x8 grid), done with cv2.

    The official pipeline hands its BGR image to albumentations, which takes it for RGB: ToGray
    weighs blue as red and CLAHE computes lightness with the two swapped. The RGB codes below on
    our BGR array do the same, so the pixels match."""
    draws = rng.random(4)
    if draws[0] < p:
        k = int(rng.choice([3, 5, 7]))
        img = cv2.blur(img, (k, k))
    if draws[1] < p:
        img = cv2.medianBlur(img, int(rng.choice([3, 5, 7])))
    if draws[2] < p:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    if draws[3] < p:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1, 4)), tileGridSize=(8, 8))
        lab[..., 0] = clahe.apply(np.ascontiguousarray(lab[..., 0]))
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    return img


def random_hflip(sample: dict, rng: np.random.Generator, p: float = 0.5) -> dict:
    """Mirror image, boxes and polygons horizontally with probability p."""
    if rng.random() >= p:
        return sample
    out = dict(sample)
    w = sample["img"].shape[1]
    out["img"] = cv2.flip(sample["img"], 1)
    b = sample["bboxes"]
    out["bboxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1).astype(np.float32)
    if sample.get("polygons") is not None:
        out["polygons"] = [[np.stack([w - p[:, 0], p[:, 1]], 1) for p in inst] for inst in sample["polygons"]]
    return out
