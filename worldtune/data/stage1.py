"""Stage 1's Mosaic -> CopyPaste -> RandomAffine, drawing pixels only where the affine reads them.

The official steps fill a 1280x1280 canvas, paste objects into a copy of it and warp it to
640x640. At scale s the warp reads only a window of about (640/s)² canvas pixels (a quarter
of the canvas at s = 1). `mosaic_copypaste_affine` draws the same random numbers in the same
order as `mosaic`, `copy_paste` and `random_affine` run one after the other, computes the
labels with the same functions, and renders only that window (plus the mirrored source
pixels of pasted objects inside it); images that the window does not reach are not even
resized. The result is the same, pixel for pixel (tests/data/test_stage1.py checks it).
"""
import math

import cv2
import numpy as np

from worldtune.data.mix import (copy_paste_choice, copy_paste_labels, mosaic_labels, mosaic_layout, paste_objects,
                                render_canvas, resized_tiles, sample_shape)
from worldtune.data.transforms import PAD_VALUE, affine_labels, affine_matrix


def inverse_scale_shift(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a [2, 3] affine computed as cv2.warpAffine does internally, so that warping with
    it and WARP_INVERSE_MAP reads exactly the source coordinates the forward call would."""
    m = matrix.reshape(-1).astype(np.float64)
    d = m[0] * m[4] - m[1] * m[3]
    d = 1.0 / d if d != 0 else 0.0
    a11, a22, a12, a21 = m[4] * d, m[0] * d, -m[1] * d, -m[3] * d
    b1 = -a11 * m[2] - a12 * m[5]
    b2 = -a21 * m[2] - a22 * m[5]
    return np.array([[a11, a12, b1], [a21, a22, b2]], dtype=np.float64)


def warp_window(inverse: np.ndarray, out_size: tuple, canvas_size: tuple) -> tuple:
    """Canvas rectangle (x0, y0, x1, y1) that a bilinear warp to `out_size` reads (scale+shift only).

    Output pixel u reads source columns floor(x) and floor(x) + 1 with x = a·u + b; two pixels of
    margin on each side cover the warp's 1/32-pixel fixed-point rounding.
    """
    (w_out, h_out), (w, h) = out_size, canvas_size
    ends_x = (inverse[0, 2], inverse[0, 0] * (w_out - 1) + inverse[0, 2])
    ends_y = (inverse[1, 2], inverse[1, 1] * (h_out - 1) + inverse[1, 2])
    x0 = min(max(math.floor(min(ends_x)) - 2, 0), w - 1)
    y0 = min(max(math.floor(min(ends_y)) - 2, 0), h - 1)
    x1 = max(min(math.floor(max(ends_x)) + 4, w), x0 + 1)
    y1 = max(min(math.floor(max(ends_y)) + 4, h), y0 + 1)
    return x0, y0, x1, y1


def mosaic_copypaste_affine(samples: list, rng: np.random.Generator, img_scale: int = 640,
                            copypaste_prob: float = 0.3, scale_range=(0.5, 1.5), border: int = -320,
                            min_area_ratio: float = 0.01) -> dict:
    """Same result as random_affine(copy_paste(mosaic(samples)), border) with the same `rng`.

    Args:
        samples: four `load_sample` dicts (img uint8 [H, W, 3] BGR, bboxes, labels, polygons).
    Returns:
        dict(img uint8 [2·s + 2·border, same, 3], bboxes float32 [N, 4], labels int64 [N],
        polygons (or None), image_id).
    """
    layout = mosaic_layout([sample_shape(x) for x in samples], rng, img_scale)
    sample = mosaic_labels(samples, layout, img_scale)
    tiles = resized_tiles(samples, layout)
    size = (2 * img_scale, 2 * img_scale)
    polygons, chosen = sample["polygons"], []
    if polygons is not None and len(sample["bboxes"]) and copypaste_prob > 0:
        chosen, mirrored = copy_paste_choice(sample["bboxes"], size[0], rng, copypaste_prob)
        if len(chosen):
            sample = copy_paste_labels(sample, chosen, mirrored, size[0])
    s, matrix, out_size = affine_matrix(rng, size, border, scale_range)
    x0, y0, x1, y1 = warp_window(inverse_scale_shift(matrix), out_size, size)
    window = render_canvas(tiles, layout, (x0, y0, x1, y1))
    if len(chosen):
        paste_objects(window, lambda r: render_canvas(tiles, layout, r), polygons, chosen, size, (x0, y0))
    # The warp gets the whole canvas and the official matrix (a view with a shifted matrix would round the
    # source coordinates differently in OpenCV's float kernels, changing a few pixels by 1); unread canvas
    # pixels stay 0 (np.zeros maps fresh pages lazily, so they cost nothing). Four channels: OpenCV's
    # bilinear warp is about 2.5x faster on 8UC4 than on 8UC3, and each channel is computed alone.
    canvas = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    cv2.cvtColor(window, cv2.COLOR_BGR2BGRA, dst=canvas[y0:y1, x0:x1])
    warped = cv2.warpAffine(canvas, matrix, out_size, flags=cv2.INTER_LINEAR, borderValue=(PAD_VALUE,) * 4)
    out = affine_labels(sample, s, matrix, out_size, min_area_ratio)
    out["img"] = cv2.cvtColor(warped, cv2.COLOR_BGRA2BGR)
    return out
