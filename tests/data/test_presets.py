import numpy as np
import pytest

from worldtune.data.presets import build_eval_dataset, build_train_dataset

IMGSZ = 128


def _train_set(ds, **kw):
    args = dict(imgsz=IMGSZ, num_texts=8, hsv_gains=(0, 0, 0), albu_prob=0.0, mixup_prob=0.0, seed=0)
    args.update(kw)
    return build_train_dataset(ds, **args)


def _colour_fraction(img, box, colour, strict):
    x1, y1, x2, y2 = np.round(box).astype(int)
    region = img[y1:y2, x1:x2].astype(int)
    if strict:  # nearly the pure colour
        hit = np.abs(region - np.array(colour)).max(-1) < 60
    else:       # blended with another image: the colour's saturated channels stay bright
        hit = (region[..., np.array(colour) == 255] >= 80).all(-1)
    return hit.mean()


@pytest.mark.parametrize("mixup_prob", [0.0, 1.0])
def test_box_text_matches_colour_under_it(tiny_coco, tiny_dataset, mixup_prob):
    """Mosaic, copy-paste, affine, flip, mixup and text shuffling keep each label on its object."""
    train = _train_set(tiny_dataset, mixup_prob=mixup_prob)
    checked = 0
    for index in range(len(train)):
        s = train[index]
        assert s["img"].shape == (IMGSZ, IMGSZ, 3) and len(s["texts"]) == 8
        for box, label in zip(s["bboxes"], s["labels"]):
            if min(box[2] - box[0], box[3] - box[1]) < 6:
                continue
            colour = tiny_coco["palette_bgr"][s["texts"][label].split()[0]]
            fraction = _colour_fraction(s["img"], box, colour, strict=mixup_prob == 0)
            assert fraction > 0.25, (index, box, s["texts"][label])
            checked += 1
    assert checked >= 20


def test_boxes_inside_and_tight_to_polygons(tiny_dataset):
    train = _train_set(tiny_dataset, mixup_prob=0.5, hsv_gains=(0.015, 0.7, 0.4), albu_prob=0.5)
    for epoch in (0, 1, 70):
        train.set_epoch(epoch)
        for index in range(len(train)):
            s = train[index]
            b = s["bboxes"]
            assert (b >= 0).all() and (b < IMGSZ).all() and (b[:, 2:] > b[:, :2]).all()
            assert len(s["polygons"]) == len(b) == len(s["labels"])
            for box, parts in zip(b, s["polygons"]):
                pts = np.concatenate(parts)
                if pts.min() > 0 and pts.max() < IMGSZ:  # fully visible: the box is the polygon's extent
                    np.testing.assert_allclose(box, np.concatenate([pts.min(0), pts.max(0)]), atol=1e-3)


def test_stage_two_from_switch_epoch_and_after_resume(tiny_dataset):
    train = _train_set(tiny_dataset, close_mosaic_epoch=3, affine_scale=(0.9, 1.1))
    own = [int((~tiny_dataset.get_record(i)["ignore"]).sum()) for i in range(len(tiny_dataset))]

    def more_boxes_than_own_image():
        return sum(len(train[i]["labels"]) > own[i] for i in range(len(train)))

    train.set_epoch(2)
    assert train.stage == 1 and more_boxes_than_own_image() > 0  # mosaic brings other images' objects
    for epoch in (3, 9):  # the switch epoch, and a run resumed later
        train.set_epoch(epoch)
        assert train.stage == 2 and more_boxes_than_own_image() == 0
        s = train[0]
        assert s["img"].shape == (IMGSZ, IMGSZ, 3)


def test_same_seed_same_sample_and_no_mask_refine(tiny_dataset):
    a = build_train_dataset(tiny_dataset, imgsz=64, seed=3, num_texts=8)
    b = build_train_dataset(tiny_dataset, imgsz=64, seed=3, num_texts=8)
    c = build_train_dataset(tiny_dataset, imgsz=64, seed=4, num_texts=8)
    sa, sb, sc = a[5], b[5], c[5]
    np.testing.assert_array_equal(sa["img"], sb["img"])
    np.testing.assert_array_equal(sa["bboxes"], sb["bboxes"])
    assert sa["texts"] == sb["texts"] and not np.array_equal(sa["img"], sc["img"])
    sgd = build_train_dataset(tiny_dataset, imgsz=64, mask_refine=False, num_texts=8)
    assert sgd.min_area_ratio == 0.1 and sgd[5]["polygons"] is None


def test_epoch_seeds_the_augmentation(tiny_dataset):
    # Samples are seeded by (seed, epoch, index): the same index differs from one epoch to the next
    # (both stage 1 here) and is drawn again bit for bit when its epoch comes back.
    train = build_train_dataset(tiny_dataset, imgsz=64, seed=3, num_texts=8)
    first = train[5]
    train.set_epoch(1)
    assert train.stage == 1
    second = train[5]
    train.set_epoch(0)
    again = train[5]
    np.testing.assert_array_equal(first["img"], again["img"])
    np.testing.assert_array_equal(first["bboxes"], again["bboxes"])
    assert first["texts"] == again["texts"]
    assert not np.array_equal(first["img"], second["img"])


def test_missing_polygons_warn_once_with_count(tiny_coco, tmp_path):
    import json
    import shutil
    import warnings

    from worldtune.data.coco import CocoDetection

    data = json.loads(tiny_coco["ann_file"].read_text())
    for a in data["annotations"][:3]:
        a.pop("segmentation")
    (tmp_path / "a.json").write_text(json.dumps(data))
    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    ds = CocoDetection(tmp_path / "a.json", tmp_path / "images")
    with pytest.warns(UserWarning, match="3 instance"):
        train = build_train_dataset(ds, imgsz=64, num_texts=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warning per sample
        assert len(train[0]["labels"]) > 0


def test_eval_dataset_letterbox_maps_back(tiny_coco, tiny_dataset):
    ev = build_eval_dataset(tiny_dataset, imgsz=IMGSZ)
    s = ev[0]  # 160x120 -> 128x96, padded 16 top and bottom
    assert s["ori_shape"] == (120, 160) and s["pad_param"] == [16, 16, 0, 0]
    assert s["scale_factor"] == pytest.approx((0.8, 0.8)) and s["texts"] == tiny_dataset.class_names
    assert (s["img"][:16] == 114).all() and (s["img"][-16:] == 114).all()
    box = tiny_dataset.get_record(0)["bboxes"][0]  # red rectangle 8,10 .. 60,50
    sx, sy = s["scale_factor"]
    top, _, left, _ = s["pad_param"]
    mapped = box * [sx, sy, sx, sy] + [left, top, left, top]
    assert _colour_fraction(s["img"], mapped + [2, 2, -2, -2], tiny_coco["palette_bgr"]["red"], True) > 0.95
    np.testing.assert_allclose((mapped - [left, top, left, top]) / [sx, sy, sx, sy], box, atol=1e-4)
    small = ev[2]  # 112x112 -> enlarged to 128x128: no padding
    assert small["pad_param"] == [0, 0, 0, 0] and small["scale_factor"] == pytest.approx((128 / 112,) * 2)


def test_training_draws_random_synonyms(tiny_dataset):
    train = _train_set(tiny_dataset, mixup_prob=0.0)
    words = {t for i in range(len(train)) for t in train[i]["texts"] if t}
    assert {"red", "red thing"} <= words or {"green", "green thing"} <= words  # both synonyms get used
    assert build_eval_dataset(tiny_dataset)[0]["texts"] == ["red", "green", "blue", "yellow", "cyan"]


def test_the_training_set_leaves_the_coco_sets_warning_limit_alone(tiny_coco, tmp_path):
    """The CocoDetection given to the training set may serve other code too: read there directly, it
    still lists its first 3 mis-sized images only (the training loader lists its own, in its process)."""
    import shutil
    import warnings

    import cv2

    from worldtune.data.coco import CocoDetection

    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    dataset = CocoDetection(tiny_coco["ann_file"], tmp_path / "images")
    for index in range(len(dataset)):
        h, w = dataset.image_size(index)
        cv2.imwrite(str(dataset.image_path(index)), np.zeros((h + 8, w + 8, 3), np.uint8))
    _train_set(dataset, cache_images=False)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for index in range(len(dataset)):
            dataset.load_image(index)
    messages = [str(w.message) for w in shown]
    assert len(messages) == 3 and messages[-1].endswith("(further such images are not listed)"), messages


def test_cache_images_false_in_any_form_caches_nothing(tiny_dataset):
    """"false" as written in a YAML config or on --set is a string: it must not count as true."""
    for off in (False, "false"):
        assert _train_set(tiny_dataset, cache_images=off).images is None
    assert _train_set(tiny_dataset, cache_images="true").images is not None


def test_without_mask_refine_missing_polygons_are_not_warned_about_and_bad_sizes_refused(tiny_coco, tmp_path):
    import json
    import warnings

    from worldtune.data.coco import CocoDetection

    data = json.loads(open(tiny_coco["ann_file"]).read())
    for ann in data["annotations"]:
        ann.pop("segmentation", None)
    ann_file = tmp_path / "no_polygons.json"
    ann_file.write_text(json.dumps(data))
    coco = CocoDetection(ann_file, tiny_coco["image_dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train_set(coco, mask_refine=False, cache_images=False)  # boxes are all it uses
    with pytest.raises(ValueError, match="cache_max_gb must be >= 0, got 0, -1"):
        _train_set(coco, cache_max_gb=-1)


def test_copy_paste_acts_with_mask_refine_only(tiny_dataset):
    """Copy-paste pastes mirrored objects when masks are refined; the official non-mask (SGD) pipeline
    has no CopyPaste, so there the configured copypaste_prob changes no sample."""
    for mask_refine in (True, False):
        plain = _train_set(tiny_dataset, mask_refine=mask_refine, copypaste_prob=0.0, cache_images=False)
        pasted = _train_set(tiny_dataset, mask_refine=mask_refine, copypaste_prob=1.0, cache_images=False)
        pairs = [(plain[i], pasted[i]) for i in range(len(plain))]
        changed = [not np.array_equal(a["img"], b["img"]) for a, b in pairs]
        boxes = [sum(len(s["bboxes"]) for s in samples) for samples in zip(*pairs)]
        if mask_refine:
            assert all(changed) and boxes[1] > boxes[0], (changed, boxes)
        else:
            assert not any(changed) and boxes[1] == boxes[0]
