import cv2
import numpy as np
import pytest

from worldtune.data.mix import blend, copy_paste, load_sample, mixup, mosaic

COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]


def _solid(colour, h, w, with_polys=True):
    box = np.array([[0, 0, w, h]], np.float32)
    poly = [[np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)]] if with_polys else None
    return {"img": np.full((h, w, 3), colour, np.uint8), "bboxes": box, "labels": np.array([0]),
            "polygons": poly, "image_id": 0}


def test_mosaic_places_four_images_around_the_centre():
    samples = [_solid(c, 48, 64) for c in COLOURS]
    rng = np.random.default_rng(3)
    out = mosaic(samples, rng, img_scale=64)
    xc, yc = (int(v * 64) for v in np.random.default_rng(3).uniform(0.5, 1.5, 2))
    assert out["img"].shape == (128, 128, 3)
    quadrant_pixels = [(yc - 1, xc - 1), (yc - 1, xc), (yc, xc - 1), (yc, xc)]
    for (y, x), colour in zip(quadrant_pixels, COLOURS):
        assert tuple(out["img"][y, x]) == colour
    assert len(out["bboxes"]) == 4 and (out["bboxes"] >= 0).all() and (out["bboxes"] <= 128).all()
    for box, colour in zip(out["bboxes"].astype(int), COLOURS):  # each clipped box is exactly its image
        region = out["img"][box[1]:box[3], box[0]:box[2]]
        assert region.size and (region == colour).all()
    np.testing.assert_allclose(out["polygons"][3][0][0], out["bboxes"][3][:2])  # bottom-right starts at centre


def test_mosaic_resizes_keeping_ratio():
    out = mosaic([_solid(c, 20, 40, with_polys=False) for c in COLOURS], np.random.default_rng(0), img_scale=64)
    box = out["bboxes"][3]  # bottom-right image: 40x20 -> 64x32, cropped only by the canvas
    assert out["polygons"] is None
    np.testing.assert_allclose(box[2:] - box[:2], np.minimum([64, 32], 128 - box[:2]))


def _canvas_with_objects(n, width=200):
    img = np.full((100, width, 3), 40, np.uint8)
    boxes, polys = [], []
    for i in range(n):  # small squares on the left half, so every mirror lands on free space
        x, y = 4 + 18 * (i % 5), 4 + 30 * (i // 5)
        img[y:y + 10, x:x + 10] = COLOURS[i % 4]
        boxes.append([x, y, x + 10, y + 10])
        polys.append([np.array([[x, y], [x + 10, y], [x + 10, y + 10], [x, y + 10]], np.float32)])
    return {"img": img, "bboxes": np.array(boxes, np.float32), "labels": np.arange(n) % 4, "polygons": polys}


def test_mosaic_labels_follow_the_official_mosaic():
    from worldtune.data.mix import mosaic_labels

    # A 30x70 image at img_scale 64: r = 64/70, so the image becomes 64x27 (int) while upstream
    # rescales the polygons to round(30 r) = 27 rows and round(70 r) = 64 columns: y scale 27/30, not r.
    # Top-left tile with its bottom-right corner at the centre (20, 40): the image is cropped by 44 columns.
    r = 64 / 70
    sample = {"img": np.zeros((30, 70, 3), np.uint8), "orig_shape": (30, 70), "image_id": 0,
              "bboxes": np.array([[2, 10, 12, 20], [40, 0, 70, 30]], np.float32), "labels": np.array([0, 1]),
              "polygons": [[np.array([[2, 10], [12, 10], [12, 20], [2, 20]], np.float32)],
                           [np.array([[40, 0], [70, 0], [70, 30], [40, 30]], np.float32)]]}
    place = {"r": r, "size": (64, 27), "rect": (0, 13, 20, 40), "origin": (44, 0)}
    out = mosaic_labels([sample], [place], img_scale=64)
    dx, dy = -44, 13
    # object 0 lies in the cropped-off columns: its box is clipped to zero width but kept
    np.testing.assert_allclose(out["bboxes"][0], [0, 10 * r + dy, 0, 20 * r + dy], rtol=1e-6)
    assert out["labels"].tolist() == [0, 1]
    # its polygon is clipped coordinate-wise to the canvas; rows use 27/30, columns 64/70
    np.testing.assert_allclose(out["polygons"][0][0], [[0, 10 * 0.9 + dy], [0, 10 * 0.9 + dy], [0, 20 * 0.9 + dy],
                                                       [0, 20 * 0.9 + dy]])
    np.testing.assert_allclose(out["polygons"][1][0][1], [70 * 64 / 70 + dx, 0 * 0.9 + dy])


def test_copy_paste_fraction_semantics():
    for fraction, expected in [(0.25, 2), (0.35, 4), (0.05, 0)]:  # round(2.5)=2, round(3.5)=4 (half to even)
        out = copy_paste(_canvas_with_objects(10), np.random.default_rng(0), fraction)
        assert len(out["bboxes"]) == 10 + expected
    out = copy_paste(_canvas_with_objects(10), np.random.default_rng(0), 1.0)
    for box, label in zip(out["bboxes"][10:].astype(int), out["labels"][10:]):
        assert box[0] >= 100 and (out["img"][box[1]:box[3], box[0]:box[2]] == COLOURS[label]).all()
    assert len(out["polygons"]) == 20


def test_copy_paste_skips_objects_whose_mirror_overlaps():
    sample = _canvas_with_objects(2)
    sample["bboxes"][1] = [95, 40, 105, 50]  # straddles the middle: its mirror covers itself
    out = copy_paste(sample, np.random.default_rng(0), 1.0)
    assert len(out["bboxes"]) == 3 and np.allclose(out["bboxes"][2], [186, 4, 196, 14])
    no_masks = dict(sample, polygons=None)
    assert copy_paste(no_masks, np.random.default_rng(0), 1.0) is no_masks  # nothing to paste: unchanged


def test_copy_paste_candidates_are_judged_by_their_mirror_against_every_box():
    from worldtune.data.mix import copy_paste_choice

    # Width 100. A's mirror [80, 10, 90, 20] covers 100/900 = 0.11 of B (< 0.3): A is a candidate.
    # B's mirror [0, 0, 30, 30] covers all of A (IoA 1): B is not, although nothing covers B itself much.
    boxes = np.array([[10, 10, 20, 20], [70, 0, 100, 30]], np.float32)
    chosen, mirrored = copy_paste_choice(boxes, 100, np.random.default_rng(0), fraction=1.0)
    assert chosen.tolist() == [0]
    np.testing.assert_array_equal(mirrored, [[80, 10, 90, 20], [0, 0, 30, 30]])


def test_mixup_blends_and_concatenates():
    a, b = _solid(COLOURS[0], 8, 8), _solid(COLOURS[1], 8, 8)
    out = mixup(a, b, np.random.default_rng(5))
    r = np.random.default_rng(5).beta(32, 32)
    expected = np.array(COLOURS[0]) * r + np.array(COLOURS[1]) * (1 - r)
    np.testing.assert_array_equal(out["img"][0, 0], expected.astype(np.uint8))
    assert len(out["bboxes"]) == 2 and len(out["polygons"]) == 2
    # every pair of pixel values, several ratios: the float64 blend of upstream, truncated
    ramp = np.arange(256, dtype=np.uint8)
    a["img"] = np.repeat(ramp, 256).reshape(256, 256, 1).repeat(3, 2)
    b["img"] = np.tile(ramp, 256).reshape(256, 256, 1).repeat(3, 2)
    for seed in range(8):
        r = np.random.default_rng(seed).beta(32, 32)
        out = mixup(a, b, np.random.default_rng(seed))
        np.testing.assert_array_equal(out["img"], (a["img"] * r + b["img"] * (1 - r)).astype(np.uint8))
        # chunks that do not divide the image, and a last short one
        np.testing.assert_array_equal(blend(a["img"], b["img"], r, chunk=1000), out["img"])
    with pytest.raises(ValueError, match="different shapes"):
        blend(a["img"], b["img"][:128], 0.5)


def test_load_sample_falls_back_to_box_polygon(tiny_coco, tmp_path):
    import json
    import shutil

    from worldtune.data.coco import CocoDetection
    from worldtune.data.presets import build_train_dataset

    data = json.loads(tiny_coco["ann_file"].read_text())
    del data["annotations"][0]["segmentation"]
    data["annotations"][1]["segmentation"] = [[1, 2, 3]]  # invalid part only
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(data))
    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    ds = CocoDetection(ann, tmp_path / "images")
    assert ds.num_without_polygons == 2
    # the warning names them, so the export can be checked
    first, second = data["annotations"][0]["id"], data["annotations"][1]["id"]
    with pytest.warns(UserWarning, match=rf"{ann}: 2 instance\(s\) have no usable segmentation \(annotation ids "
                                         rf"{first}, {second}: no polygon"):
        build_train_dataset(ds, imgsz=64, num_texts=8)
    s = load_sample(ds, 0, mask_refine=True)
    assert len(s["polygons"]) == 3 and len(s["polygons"][0][0]) == 4
    np.testing.assert_allclose(s["bboxes"][0], [8, 10, 60, 50])


def _official_copy_paste_pixels(img, polygons, chosen):
    """The upstream steps literally: one full-canvas mask of the chosen polygons (int vertices,
    filled contours), flipped horizontally, then img[mask] = flipped img[mask]."""
    mask = np.zeros(img.shape[:2], np.uint8)
    for i in chosen:
        cv2.drawContours(mask, [p.reshape(-1, 1, 2).astype(np.int32) for p in polygons[i]], -1, (1,), cv2.FILLED)
    flip = mask[:, ::-1].astype(bool)
    out = img.copy()
    out[flip] = img[:, ::-1][flip]
    return out


def test_copy_paste_pixels_equal_the_upstream_full_canvas_steps():
    from worldtune.data.mix import copy_paste_choice

    rng = np.random.default_rng(7)
    for trial in range(20):
        h, w = 120, 200
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        polygons, boxes = [], []
        for _ in range(8):  # irregular shapes, some with integer vertices, some crossing the canvas edge
            c, n = rng.uniform(-10, [w + 10, h + 10]), rng.integers(3, 12)
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            ring = c + rng.uniform(4, 30, (n, 1)) * np.stack([np.cos(angles), np.sin(angles)], 1)
            ring = np.round(ring) if trial % 2 else ring
            polygons.append([ring.astype(np.float32)])
            boxes.append(np.clip(np.concatenate([ring.min(0), ring.max(0)]), 0, [w, h, w, h]))
        sample = {"img": img, "bboxes": np.array(boxes, np.float32), "labels": np.arange(8), "polygons": polygons}
        chosen, _ = copy_paste_choice(sample["bboxes"], w, np.random.default_rng(trial), 0.6)
        out = copy_paste(sample, np.random.default_rng(trial), 0.6)
        if len(chosen):
            np.testing.assert_array_equal(out["img"], _official_copy_paste_pixels(img, polygons, chosen))


def test_copy_paste_mirrors_the_pasted_polygons_like_their_boxes():
    # Upstream flips the pasted masks with PolygonMasks.flip: x -> W - x, the same map as the boxes
    # (x1, x2) -> (W - x2, W - x1). The polygons matter: the following affine step computes the
    # mask-refined boxes from them, so a pasted polygon must bound exactly its mirrored box.
    sample = _canvas_with_objects(3)
    out = copy_paste(sample, np.random.default_rng(0), 1.0)
    assert len(out["polygons"]) == 6
    source = {tuple(b): i for i, b in enumerate(sample["bboxes"].tolist())}
    for box, (part,) in zip(out["bboxes"][3:], out["polygons"][3:]):
        original = source[(200 - box[2], box[1], 200 - box[0], box[3])]  # the object it mirrors
        np.testing.assert_array_equal(part[:, 0], 200 - sample["polygons"][original][0][:, 0])
        np.testing.assert_array_equal(part[:, 1], sample["polygons"][original][0][:, 1])
        np.testing.assert_array_equal(np.concatenate([part.min(0), part.max(0)]), box)


def test_mosaic_polygons_use_the_rounded_resize_of_upstream_masks():
    from worldtune.data.mix import mosaic_labels

    # A 37x70 image at img_scale 64: r = 64/70, 37 r = 33.83. The image gets int(37 r) = 33 rows but
    # upstream rescales masks with mmcv.rescale_size, int(37 r + 0.5) = 34 rows: the polygon's y scale is
    # 34/37. Bottom-right tile at the centre (64, 64), nothing cropped: dx = dy = 64.
    r = 64 / 70
    sample = {"img": np.zeros((37, 70, 3), np.uint8), "orig_shape": (37, 70), "image_id": 0,
              "bboxes": np.array([[0, 0, 70, 37]], np.float32), "labels": np.array([0]),
              "polygons": [[np.array([[0, 0], [70, 0], [70, 37], [0, 37]], np.float32)]]}
    place = {"r": r, "size": (64, 33), "rect": (64, 64, 128, 97), "origin": (0, 0)}
    out = mosaic_labels([sample], [place], img_scale=64)
    np.testing.assert_allclose(out["polygons"][0][0], [[64, 64], [128, 64], [128, 98], [64, 98]])
    np.testing.assert_allclose(out["bboxes"][0], [64, 64, 128, 64 + 37 * r], rtol=1e-6)  # boxes: plain r


class _FixedCentre:
    """An rng whose uniform draws are fixed: the mosaic centre is then known by hand."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def uniform(self, low, high):
        return self.draws.pop(0)


def test_mosaic_layout_truncates_sizes_and_keeps_every_rect_on_the_canvas():
    from worldtune.data.mix import mosaic_layout

    # s = 64, (h, w) = (51, 128): r = min(64/51, 0.5) = 0.5, size (64, int(25.5)) = (64, 25) as upstream's
    # int(), not round()'s 26. Centre (int(1.4 * 64), int(0.6 * 64)) = (89, 38): the right-hand tiles
    # would reach x = 89 + 64 = 153 and are cut at the canvas edge 128.
    layout = mosaic_layout([(51, 128)] * 4, _FixedCentre(1.4, 0.6), img_scale=64)
    assert [t["size"] for t in layout] == [(64, 25)] * 4
    assert [t["rect"] for t in layout] == [(25, 13, 89, 38), (89, 13, 128, 38), (25, 38, 89, 63), (89, 38, 128, 63)]
    assert [t["origin"] for t in layout] == [(0, 0), (0, 0), (0, 0), (0, 0)]


def test_mosaic_labels_stay_with_their_boxes():
    # one box per tile, labels 10..13: after the mosaic, box k (inside tile k) still has label 10 + k
    samples = [{**_solid(c, 48, 64), "labels": np.array([10 + k])} for k, c in enumerate(COLOURS)]
    out = mosaic(samples, np.random.default_rng(3), img_scale=64)
    assert out["labels"].tolist() == [10, 11, 12, 13]
    for box, colour in zip(out["bboxes"].astype(int), COLOURS):
        assert (out["img"][box[1]:box[3], box[0]:box[2]] == colour).all()
