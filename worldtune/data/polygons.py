"""COCO segmentations as polygons: polygon lists and RLE masks to point arrays, and multi-part
polygons joined into one as the official loader joins them.
"""
import warnings

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def polygons_from_segmentation(segm, height: int, width: int) -> list:
    """COCO segmentation -> list of float32 [P, 2] polygon parts (x, y) in pixels.

    Polygon parts with an odd number of values or fewer than 3 points are dropped
    (the official rule). RLE (compressed or not) is decoded with pycocotools and
    traced with cv2.findContours (outer contours, parts with >= 3 points).
    """
    if isinstance(segm, list):
        parts = [_as_points(p) for p in segm if isinstance(p, list) and len(p) % 2 == 0 and len(p) >= 6]
        # a part with a null/NaN (or a value that is no number) is dropped like a short one
        return [p for p in parts if p is not None and np.isfinite(p).all()]
    if isinstance(segm, dict) and "counts" in segm:
        rle = segm
        if isinstance(segm["counts"], list):
            rle = mask_utils.frPyObjects(segm, height, width)
        with warnings.catch_warnings():  # pycocotools' Cython decode trips a numpy-2 DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode(rle)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        return [c.reshape(-1, 2).astype(np.float32) for c in contours if len(c) >= 3]
    return []


def _as_points(part: list):
    """float32 [P, 2], or None when a value is not a number (e.g. "abc" or a nested list)."""
    try:
        return np.asarray(part, dtype=np.float32).reshape(-1, 2)
    except (ValueError, TypeError):
        return None


def merge_polygon_parts(parts: list) -> list:
    """Join a multi-part polygon into one, exactly as the official loader does.

    Consecutive parts i and i + 1 meet at their closest pair of vertices (i's exit, i + 1's entry).
    The path runs out through the parts in order (the first and last part as whole closed loops,
    a middle part for a stretch from its entry) and back through the rest of each middle part.
    Official quirk, kept so that the resampled points (and so the refined boxes) match: when a
    middle part's entry index is larger than its exit index, the part is reversed but the two
    indices are not remapped, so its stretch starts at vertex L-1-exit and walks backwards for
    entry - exit steps instead of joining at the closest vertices.

    Args:
        parts: list of float32 [P_i, 2]. Returns: [merged float32 [Q, 2]] (the input if one part).
    """
    if len(parts) < 2:
        return parts
    joins = [_closest_pair(a, b) for a, b in zip(parts[:-1], parts[1:])]  # (exit of part i, entry of i + 1)

    def loop(part, start):  # closed ring starting and ending at vertex `start`
        return np.concatenate([part[start:], part[:start], part[start:start + 1]])

    out, back = [loop(parts[0], joins[0][0])], []
    for i in range(1, len(parts) - 1):
        entry, exit_ = int(joins[i - 1][1]), int(joins[i][0])
        if entry > exit_:  # the quirk above
            ring, k = loop(parts[i][::-1], exit_), entry - exit_
        else:
            ring, k = loop(parts[i], entry), exit_ - entry
        out.append(ring[:k + 1])
        back.append(ring[k:])
    out.append(loop(parts[-1], joins[-1][1]))
    return [np.concatenate(out + back[::-1]).astype(np.float32)]


def _closest_pair(a: np.ndarray, b: np.ndarray, max_values: int = 1 << 22) -> tuple[int, int]:
    """(i, j) minimising |a[i] - b[j]|^2, the first such pair in row-major order, as the official
    argmin over the full float64 distance matrix, which is computed here in row blocks of at most
    `max_values` entries (two 10,000-vertex parts would need 800 MB at once)."""
    a, b = a.astype(np.float64), b.astype(np.float64)  # the official distances are float64
    rows = max(1, max_values // max(len(b), 1))
    best, best_at = np.inf, (0, 0)
    for start in range(0, len(a), rows):
        dist = ((a[start:start + rows, None, :] - b[None, :, :]) ** 2).sum(-1)
        flat = int(np.argmin(dist))
        if dist.flat[flat] < best:  # strictly smaller: an earlier block keeps ties, as one argmin would
            best, best_at = dist.flat[flat], (start + flat // len(b), flat % len(b))
    return best_at
