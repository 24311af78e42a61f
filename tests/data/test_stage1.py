"""The windowed stage-1 path must equal Mosaic -> CopyPaste -> RandomAffine run one after the other."""
import cv2
import numpy as np
import pytest

from worldtune.data.mix import copy_paste, mosaic
from worldtune.data.stage1 import mosaic_copypaste_affine
from worldtune.data.transforms import random_affine


def _random_sample(rng, with_polys=True):
    """Textured image (so any misplaced pixel shows) with 2-6 filled ellipses/boxes and their polygons."""
    h, w = (int(v) for v in rng.integers(40, 130, 2))
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 1.5)
    boxes, polys = [], []
    for _ in range(int(rng.integers(2, 7))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)  # may reach past the edge, as in real data
        poly = cv2.ellipse2Poly((int(cx), int(cy)), (int(rng.integers(3, 30)), int(rng.integers(3, 30))),
                                int(rng.integers(180)), 0, 360, 15)
        poly = np.clip(poly, 0, [w - 1, h - 1]).astype(np.float32)
        cv2.fillPoly(img, [poly.astype(np.int32)], tuple(int(v) for v in rng.integers(0, 256, 3)))
        boxes.append(np.concatenate([poly.min(0), poly.max(0)]))
        polys.append([poly])
    return {"img": img, "bboxes": np.array(boxes, np.float32), "labels": rng.integers(0, 5, len(boxes)),
            "polygons": polys if with_polys else None, "image_id": 0}


def _reference(samples, rng, size, copypaste_prob, scale_range):
    out = mosaic(samples, rng, size)
    if copypaste_prob > 0:
        out = copy_paste(out, rng, copypaste_prob)
    return random_affine(out, rng, scale_range, border=-size // 2)


@pytest.mark.parametrize("copypaste_prob,scale_range,with_polys", [
    (0.3, (0.5, 1.5), True), (1.0, (0.5, 1.5), True), (1.0, (0.1, 1.9), True), (0.0, (0.1, 1.9), False)])
def test_windowed_path_equals_the_composition(copypaste_prob, scale_range, with_polys):
    size = 64
    for seed in range(40):
        rng = np.random.default_rng(seed)
        samples = [_random_sample(rng, with_polys) for _ in range(4)]
        ref = _reference(samples, np.random.default_rng([seed, 1]), size, copypaste_prob, scale_range)
        out = mosaic_copypaste_affine(samples, np.random.default_rng([seed, 1]), size, copypaste_prob, scale_range,
                                      border=-size // 2)
        assert out["img"].shape == (size, size, 3)
        np.testing.assert_array_equal(out["img"], ref["img"], err_msg=f"seed {seed}")
        np.testing.assert_array_equal(out["bboxes"], ref["bboxes"])
        np.testing.assert_array_equal(out["labels"], ref["labels"])
        if with_polys:
            assert len(out["polygons"]) == len(ref["polygons"])
            for a, b in zip(out["polygons"], ref["polygons"]):
                assert all(np.array_equal(p, q) for p, q in zip(a, b))
        else:
            assert out["polygons"] is None
