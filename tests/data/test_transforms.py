import cv2
import numpy as np
import pytest

from worldtune.data.transforms import (hsv_augment, keep_ratio_resize, letterbox, light_albu, random_affine,
                                       random_hflip, resample_parts)


def test_resample_parts_matches_interp():
    rng = np.random.default_rng(0)
    parts = [rng.uniform(0, 50, (n, 2)).astype(np.float32) for n in (3, 7, 20)]
    out = resample_parts(parts, 1000)
    assert out.shape == (3, 1000, 2)
    for p, r in zip(parts, out):
        closed = np.concatenate([p, p[:1]])
        x = np.linspace(0, len(p), 1000)
        ref = np.stack([np.interp(x, np.arange(len(closed)), closed[:, k]) for k in range(2)], 1)
        np.testing.assert_allclose(r, ref, atol=1e-3)


def _ellipse_sample(centre=(40, 100), axes=(30, 40), size=200):
    img = np.full((size, size, 3), 40, np.uint8)
    poly = cv2.ellipse2Poly(centre, axes, 0, 0, 360, 2).astype(np.float32)
    cv2.fillPoly(img, [poly.astype(np.int32)], (0, 0, 255))
    box = np.concatenate([poly.min(0), poly.max(0)])[None].astype(np.float32)
    return {"img": img, "bboxes": box, "labels": np.array([0]), "polygons": [[poly]]}


def test_mask_refine_box_is_tight_when_object_is_cut():
    # scale 1, no translation jitter, border -50: x' = x - 50, so the ellipse (x 10..70) is cut at x = 50
    # where its half height is 40*sqrt(1 - (10/30)^2) = 37.7, tighter than the corner box (40).
    sample = _ellipse_sample()
    kw = dict(scale_range=(1, 1), border=-50, translate=0.0)
    refined = random_affine(sample, np.random.default_rng(0), **kw)
    corners = random_affine(dict(sample, polygons=None), np.random.default_rng(0), **kw)
    (x1, y1, x2, y2), = refined["bboxes"]
    assert x1 == pytest.approx(0, abs=0.3) and x2 == pytest.approx(20, abs=0.2)
    assert y1 == pytest.approx(50 - 37.7, abs=0.3) and y2 == pytest.approx(50 + 37.7, abs=0.3)
    np.testing.assert_allclose(corners["bboxes"][0], [0, 10, 20, 90], atol=1e-3)
    # the refined box also matches the red pixels of the warped image
    ys, xs = np.nonzero(refined["img"][..., 2] > 128)
    assert abs(ys.min() - y1) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
    # every kept polygon point is inside the output image
    pts = np.concatenate(refined["polygons"][0])
    assert pts.min() >= 0 and pts[:, 0].max() <= 100 and pts[:, 1].max() <= 100


def test_affine_filters_small_and_outside_boxes():
    sample = _ellipse_sample(centre=(15, 15), axes=(10, 10))  # lands completely outside after x' = x - 50
    out = random_affine(sample, np.random.default_rng(0), scale_range=(1, 1), border=-50, translate=0.0)
    assert len(out["bboxes"]) == 0 and out["polygons"] == [] and out["img"].shape == (100, 100, 3)
    # corner path: min_area_ratio filter; x' = -10..50 keeps 50/60 = 0.83 of the area
    box = np.array([[40, 80, 100, 100]], np.float32)
    s = {"img": np.zeros((200, 200, 3), np.uint8), "bboxes": box, "labels": np.array([1]), "polygons": None}
    keep = random_affine(s, np.random.default_rng(0), (1, 1), border=-50, translate=0.0, min_area_ratio=0.8)
    drop = random_affine(s, np.random.default_rng(0), (1, 1), border=-50, translate=0.0, min_area_ratio=0.9)
    assert len(keep["bboxes"]) == 1 and len(drop["bboxes"]) == 0


def test_affine_drops_boxes_with_aspect_ratio_of_100_or_more():
    # scale 1, no translation jitter, no border: the matrix is the identity, so boxes come out as they go in
    # and only the aspect test (max(w/h, h/w) < 100) can drop one: 350 x 3 is 116.7, 280 x 3 is 93.3.
    boxes = np.array([[10, 100, 360, 103], [10, 150, 290, 153]], np.float32)
    s = {"img": np.zeros((200, 400, 3), np.uint8), "bboxes": boxes, "labels": np.array([0, 1]), "polygons": None}
    out = random_affine(s, np.random.default_rng(0), (1, 1), border=0, translate=0.0)
    assert out["labels"].tolist() == [1]
    np.testing.assert_allclose(out["bboxes"], boxes[1:], atol=1e-4)


def test_affine_random_boxes_stay_inside():
    rng = np.random.default_rng(1)
    for _ in range(20):
        sample = _ellipse_sample(centre=tuple(int(v) for v in rng.integers(0, 200, 2)), axes=(25, 15))
        out = random_affine(sample, rng, scale_range=(0.5, 1.5), border=-50)
        b = out["bboxes"]
        assert (b >= 0).all() and (b[:, [0, 2]] < 100).all() and (b[:, [1, 3]] < 100).all()


def test_keep_ratio_resize_and_letterbox_rounding():
    img = np.random.default_rng(0).integers(0, 255, (95, 200, 3), dtype=np.uint8)
    resized, r = keep_ratio_resize(img, 64)
    assert r == 64 / 200 and resized.shape == (30, 64, 3)  # int(95 * 0.32) = 30
    np.testing.assert_array_equal(resized, cv2.resize(img, (64, 30), interpolation=cv2.INTER_AREA))
    boxed, scale, pad = letterbox(resized, 64, allow_scale_up=False)
    assert boxed.shape == (64, 64, 3) and scale == (1.0, 1.0) and pad == [17, 17, 0, 0]
    assert (boxed[:17] == 114).all() and (boxed[-17:] == 114).all()
    odd, _, pad = letterbox(np.zeros((31, 64, 3), np.uint8), 64)
    assert pad == [16, 17, 0, 0]  # odd pixel goes to the bottom
    small, scale, pad = letterbox(np.zeros((10, 20, 3), np.uint8), 64, allow_scale_up=False)
    assert scale == (1.0, 1.0) and pad == [27, 27, 22, 22]
    _, scale, _ = letterbox(np.zeros((10, 20, 3), np.uint8), 64, allow_scale_up=True)
    assert scale == (3.2, 3.2)


def test_hsv_identity_and_range():
    img = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    assert hsv_augment(img, np.random.default_rng(0), (0, 0, 0)) is img
    out = hsv_augment(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    # A grey pixel is (H 0, S 0, V 100): hue and saturation gains leave 0 at 0, and the value gain
    # 1 + U(-1, 1)·0.4 (third draw of seed 0: -0.918) gives int(100 · 0.6328) = 63, grey again.
    gains = np.random.default_rng(0).uniform(-1, 1, 3) * np.array([0.015, 0.7, 0.4]) + 1
    assert int(100 * gains[2]) == 63
    grey = hsv_augment(np.full((4, 4, 3), 100, np.uint8), np.random.default_rng(0))
    np.testing.assert_array_equal(grey, np.full((4, 4, 3), 63, np.uint8))


def test_hsv_hue_wraps_around_180():
    # BGR (42, 0, 255) is OpenCV hue 175 (of 0..179). Seed 4's first draw (0.886) with hue gain 0.1 gives
    # 1.0886; 175 · 1.0886 = 190.5 wraps to 10.5, truncated to 10 (a clipped table would give 179 or 180).
    img = np.full((2, 2, 3), (42, 0, 255), np.uint8)
    assert cv2.cvtColor(img, cv2.COLOR_BGR2HSV)[0, 0].tolist() == [175, 255, 255]
    gain = 1 + np.random.default_rng(4).uniform(-1, 1, 3)[0] * 0.1
    assert int((175 * gain) % 180) == 10
    out = hsv_augment(img, np.random.default_rng(4), (0.1, 0, 0))
    np.testing.assert_array_equal(out, cv2.cvtColor(np.full((2, 2, 3), (10, 255, 255), np.uint8), cv2.COLOR_HSV2BGR))


def test_light_albu_probabilities():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    assert light_albu(img, np.random.default_rng(0), p=0.0) is img
    out = light_albu(img, np.random.default_rng(0), p=1.0)  # all four applied: the last is CLAHE
    assert out.shape == img.shape and not np.array_equal(out, img)
    # The same four steps by hand, in order, with the same draws (4 uniforms, then blur kernel,
    # median kernel, CLAHE clip limit), on the BGR array taken for RGB as albumentations does.
    # Seed 6 draws kernels 5 and 7 (seed 0 draws blur 3, which a fixed 3x3 blur would also give); at
    # 256 px a CLAHE tile holds 1024 pixels, enough for the drawn clip limit to matter (not at 32 px).
    img = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    out = light_albu(img, np.random.default_rng(6), p=1.0)
    rng = np.random.default_rng(6)
    rng.random(4)
    blur_k, median_k, clip = int(rng.choice([3, 5, 7])), int(rng.choice([3, 5, 7])), float(rng.uniform(1, 4))
    assert (blur_k, median_k) == (5, 7)
    expected = cv2.medianBlur(cv2.blur(img, (blur_k, blur_k)), median_k)
    expected = cv2.cvtColor(cv2.cvtColor(expected, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    lab = cv2.cvtColor(expected, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8)).apply(np.ascontiguousarray(lab[..., 0]))
    np.testing.assert_array_equal(out, cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))


def test_light_albu_treats_bgr_as_rgb_like_the_official_albumentations_call():
    # Pure blue in BGR order; albumentations' ToGray weighs channel 0 as red (0.299), not blue (0.114).
    img = np.zeros((8, 8, 3), np.uint8)
    img[..., 0] = 200
    only_gray = next(seed for seed in range(1000)
                     if [d < 0.5 for d in np.random.default_rng(seed).random(4)] == [False, False, True, False])
    gray = light_albu(img, np.random.default_rng(only_gray), p=0.5)
    np.testing.assert_array_equal(gray, np.full_like(img, round(0.299 * 200)))


def test_hflip_twice_is_identity():
    sample = _ellipse_sample()
    flipped = random_hflip(sample, np.random.default_rng(0), p=1.0)
    np.testing.assert_allclose(flipped["bboxes"][0, [0, 2]], 200 - sample["bboxes"][0, [2, 0]])
    back = random_hflip(flipped, np.random.default_rng(0), p=1.0)
    np.testing.assert_array_equal(back["img"], sample["img"])
    np.testing.assert_allclose(back["polygons"][0][0], sample["polygons"][0][0])


def test_warp_bgr_equals_the_three_channel_warp():
    from worldtune.data.transforms import warp_bgr

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8), (0, 0), 1.0)
    for _ in range(20):
        s = rng.uniform(0.1, 1.9)
        m = np.array([[s, 0, rng.uniform(-60, 60)], [0, s, rng.uniform(-60, 60)]])
        ref = cv2.warpAffine(img, m, (64, 80), flags=cv2.INTER_LINEAR, borderValue=(114, 114, 114))
        np.testing.assert_array_equal(warp_bgr(img, m, (64, 80)), ref)


def _reference_mask_refine(polygons, old_boxes, s, matrix, w_out, h_out, min_area_ratio):
    """The official rule written plainly, one instance at a time: resample every part (float64
    np.interp), warp, box = min/max of the points inside [0, W]x[0, H], then the keep test."""
    boxes = []
    for parts in polygons:
        inside_pts = []
        for p in parts:
            closed = np.concatenate([p, p[:1]]).astype(np.float64)
            x = np.linspace(0, len(closed) - 1, 1000)
            pts = np.stack([np.interp(x, np.arange(len(closed)), closed[:, k]) for k in range(2)], 1)
            pts = (pts * s + matrix[:, 2]).astype(np.float32)
            ok = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] <= w_out) & (pts[:, 1] <= h_out)
            inside_pts.append(pts[ok])
        pts = np.concatenate(inside_pts)
        boxes.append(np.concatenate([pts.min(0), pts.max(0)]) if len(pts) else np.zeros(4, np.float32))
    boxes = np.array(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    old_area = (old_boxes[:, 2] - old_boxes[:, 0]) * (old_boxes[:, 3] - old_boxes[:, 1]) * s * s
    keep = ((w > 2) & (h > 2) & (w * h / (old_area + 1e-16) > min_area_ratio)
            & (np.maximum(w / (h + 1e-16), h / (w + 1e-16)) < 100))
    return boxes[keep], keep


def test_mask_refined_boxes_match_the_plain_rule_with_instances_inside_across_and_outside():
    from worldtune.data.transforms import affine_labels, affine_matrix

    rng = np.random.default_rng(3)
    polygons = []
    for _ in range(60):  # all over a 1280 canvas, so after the warp some are inside, some cut, many outside
        centre, radius = rng.uniform(0, 1280, 2), rng.uniform(5, 120)
        angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 12)))
        ring = centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1)
        second_part = [ring[::-1][:3].astype(np.float32) + 300] if rng.random() < 0.3 else []
        polygons.append([ring.astype(np.float32)] + second_part)
    old_boxes = np.array([np.concatenate([np.concatenate(p).min(0), np.concatenate(p).max(0)]) for p in polygons],
                         dtype=np.float32)
    sample = {"img": None, "bboxes": old_boxes, "labels": np.arange(60), "polygons": polygons}
    for _ in range(20):
        s, matrix, out_size = affine_matrix(rng, (1280, 1280), -320, (0.1, 1.9))
        out = affine_labels(sample, s, matrix, out_size, 0.01)
        ref_boxes, keep = _reference_mask_refine(polygons, old_boxes, s, matrix, *out_size, 0.01)
        assert out["labels"].tolist() == np.flatnonzero(keep).tolist()
        np.testing.assert_allclose(out["bboxes"], np.minimum(ref_boxes, np.array(out_size * 2) - 1e-3), atol=1e-3)


def test_affine_warp_equals_the_upstream_homography_warp():
    """Upstream builds translate @ shear @ rotation @ scaling, then @ centring, as float32 3x3
    matrices and calls warpPerspective; ours warps with the top rows of the same product."""
    img = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8), (0, 0), 2)
    sample = {"img": img, "bboxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "polygons": None}
    for seed in range(6):
        out = random_affine(sample, np.random.default_rng(seed), (0.1, 1.9), border=0)
        draws = np.random.default_rng(seed)
        s, tx, ty = draws.uniform(0.1, 1.9), draws.uniform(0.4, 0.6) * 400, draws.uniform(0.4, 0.6) * 300
        f32 = lambda rows: np.array(rows, dtype=np.float32)  # noqa: E731
        translate, identity = f32([[1, 0, tx], [0, 1, ty], [0, 0, 1]]), np.eye(3, dtype=np.float32)
        scaling, centre = f32([[s, 0, 0], [0, s, 0], [0, 0, 1]]), f32([[1, 0, -200], [0, 1, -150], [0, 0, 1]])
        homography = (translate @ identity @ identity @ scaling) @ centre  # shear and rotation are 0
        expected = cv2.warpPerspective(img, homography, (400, 300), borderValue=(114, 114, 114))
        np.testing.assert_array_equal(out["img"], expected)


def _upstream_stage2_labels(boxes, polygons, h, w, size):
    """YOLOv5KeepRatioResize then LetterResize(allow_scale_up) on boxes and polygon masks, step by
    step in upstream's order and rounding (mmdet Resize / PolygonMasks.rescale / resize / translate)."""
    ratio = min(size / max(h, w), size / min(h, w))
    h1, w1 = int(h * ratio), int(w * ratio)  # the image
    boxes = np.clip(boxes * np.float32([w1 / w, h1 / h] * 2), 0, np.float32([w1, h1] * 2))
    mask_w, mask_h = int(w * ratio + 0.5), int(h * ratio + 0.5)  # mmcv.rescale_size
    polys = [[p * [mask_w / w, mask_h / h] for p in inst] for inst in polygons]
    letter = min(size / h1, size / w1)
    new_h, new_w = int(round(h1 * letter)), int(round(w1 * letter))
    sx, sy = new_w / w1, new_h / h1
    top, left = int(round((size - new_h) // 2 - 0.1)), int(round((size - new_w) // 2 - 0.1))
    boxes = np.clip(boxes * np.float32([sx, sy] * 2) + np.float32([left, top] * 2), 0, size)
    out_h, out_w = int(round(mask_h * sy)), int(round(mask_w * sx))
    polys = [[p * [out_w / mask_w, out_h / mask_h] for p in inst] for inst in polys]
    if left:
        polys = [[np.stack([np.clip(p[:, 0] + left, 0, size), p[:, 1]], 1) for p in inst] for inst in polys]
    if top:
        polys = [[np.stack([p[:, 0], np.clip(p[:, 1] + top, 0, size)], 1) for p in inst] for inst in polys]
    return boxes, polys


@pytest.mark.parametrize("h, w", [(751, 1001), (333, 500), (480, 640), (100, 230), (640, 427)])
def test_stage2_resize_and_letterbox_moves_labels_as_upstream(h, w):
    from worldtune.data.transforms import resize_and_letterbox

    rng = np.random.default_rng(h)
    polys = [[np.stack([rng.uniform(-3, w + 3, 7), rng.uniform(-3, h + 3, 7)], 1).astype(np.float32)] for _ in range(5)]
    boxes = np.array([np.concatenate([p[0].min(0), p[0].max(0)]) for p in polys], np.float32)
    sample = {"img": np.zeros((h, w, 3), np.uint8), "bboxes": boxes, "labels": np.arange(5), "polygons": polys}
    out = resize_and_letterbox(sample, 640)
    assert out["img"].shape == (640, 640, 3)
    ref_boxes, ref_polys = _upstream_stage2_labels(boxes, polys, h, w, 640)
    np.testing.assert_allclose(out["bboxes"], ref_boxes, rtol=0, atol=1e-4)
    for mine, ref in zip(out["polygons"], ref_polys):
        np.testing.assert_allclose(mine[0], ref[0], rtol=0, atol=1e-9)


def test_stage2_letterbox_pads_only_the_first_channel_as_upstream():
    # Stage 2's LetterResize gets pad_val 114.0, a float: it is not spread over the channels (only an
    # int is), and cv2.copyMakeBorder fills just channel 0 from a single number, so the bars are BGR
    # (114, 0, 0). The test pipeline's pad_val 114 is an int: grey bars there.
    from worldtune.data.transforms import letterbox_for_test, resize_and_letterbox

    img = np.full((480, 640, 3), 200, np.uint8)
    sample = {"img": img, "bboxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64), "polygons": None}
    trained = resize_and_letterbox(sample, 320)["img"]  # 320 x 240 inside, 40-px bars top and bottom
    bars = np.concatenate([trained[:40], trained[-40:]]).reshape(-1, 3)
    assert (bars == (114, 0, 0)).all() and (trained[40:-40] == 200).all()
    tested, _, pad = letterbox_for_test(img, 320)
    assert pad == [40, 40, 0, 0] and (tested[:40] == 114).all() and (tested[-40:] == 114).all()


def test_test_time_scale_factor_is_per_axis_from_the_resized_size():
    from worldtune.data.transforms import letterbox_for_test

    img = np.zeros((751, 1001, 3), np.uint8)
    out, (sx, sy), pad = letterbox_for_test(img, 640)
    w1, h1 = int(1001 * 640 / 1001), int(751 * 640 / 1001)  # the keep-ratio image: 640 x 480
    assert (sx, sy) == (w1 / 1001, h1 / 751) and sy != 640 / 1001  # upstream: w'/w and h'/h, not r
    assert pad == [80, 80, 0, 0] and out.shape == (640, 640, 3)


def test_very_thin_images_still_resize():
    """A side that would round to 0 px (which upstream cannot resize) gets 1 px, in training and evaluation."""
    from worldtune.data.stage1 import mosaic_copypaste_affine
    from worldtune.data.transforms import letterbox_for_test

    strip = np.full((32, 25000, 3), 200, np.uint8)
    resized, _ = keep_ratio_resize(strip, 640)
    assert resized.shape == (1, 640, 3)
    boxed, (sx, sy), pad = letterbox_for_test(strip, 640)
    assert boxed.shape == (640, 640, 3) and sy > 0
    sample = {"img": strip, "bboxes": np.array([[10, 2, 20000, 30]], np.float32), "labels": np.array([0]),
              "polygons": [[np.array([[10, 2], [20000, 2], [20000, 30], [10, 30]], np.float32)]], "image_id": 1}
    out = mosaic_copypaste_affine([sample] * 4, np.random.default_rng(0), 640)
    assert out["img"].shape == (640, 640, 3)


def test_test_letterbox_never_upscales_the_keep_ratio_image():
    from worldtune.data.transforms import letterbox_for_test

    # Official test pipeline: YOLOv5KeepRatioResize then LetterResize(allow_scale_up=False). For a
    # 1077 px wide image the first step gives int(1077 * 640 / 1077) = 639 columns (float rounding);
    # the letterbox must pad that column, not stretch the image by 640/639.
    img = np.random.default_rng(0).integers(0, 255, (500, 1077, 3), dtype=np.uint8)
    out, (sx, sy), pad = letterbox_for_test(img, 640)
    resized, _ = keep_ratio_resize(img, 640)
    assert resized.shape[:2] == (297, 639)
    assert pad == [171, 172, 0, 1] and (sx, sy) == (639 / 1077, 297 / 500)
    np.testing.assert_array_equal(out[171:468, :639], resized)
    assert (out[:, 639:] == 114).all()
