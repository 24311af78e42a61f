"""The offline demo set: valid COCO, exact tight boxes, determinism."""
import contextlib
import io
import json

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from worldtune.data.demo_set import build_demo_dataset

SMALL = dict(num_train=10, num_val=3, imgsz=160)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_dataset(tmp_path_factory.mktemp("demo"), **SMALL, seed=0)


def load(ann_file):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def test_valid_coco_with_all_classes(demo):
    coco = load(demo["train_ann"])
    assert len(coco.getImgIds()) == SMALL["num_train"] and len(load(demo["val_ann"]).getImgIds()) == SMALL["num_val"]
    names = [c["name"] for c in coco.loadCats(coco.getCatIds())]
    assert names == demo["class_names"] == ["person", "cat", "coffee cup", "rocket", "coin"]
    assert json.loads(demo["class_texts"].read_text()) == [[n] for n in names]
    assert coco.getCatIds() != list(range(1, len(names) + 1))  # non-contiguous ids, like COCO
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(demo["train_images"] / img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        assert len(coco.getAnnIds(imgIds=img["id"])) >= 1
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img["id"])):
            assert coco.annToMask(ann).sum() > 0  # pycocotools rasterises the polygon


@pytest.mark.parametrize("split", ["train", "val"])
def test_boxes_are_tight_around_polygons_and_inside(demo, split):
    data = json.loads(demo[f"{split}_ann"].read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in data["images"]}
    for ann in data["annotations"]:
        poly = np.asarray(ann["segmentation"][0]).reshape(-1, 2)
        x, y, w, h = ann["bbox"]
        np.testing.assert_allclose([x, y, x + w, y + h], [*poly.min(0), *poly.max(0)], atol=0.011)
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 1 and h > 1
        assert 0 < ann["area"] <= w * h + 1e-6


def test_objects_do_not_overlap(demo):
    data = json.loads(demo["train_ann"].read_text())
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
    for boxes in by_image.values():
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1:]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1


def test_pasted_pixels_come_from_the_photographs(demo):
    """Coins are grey cut-outs: inside a coin polygon the three channels are (nearly) equal."""
    coco = load(demo["train_ann"])
    coin_id = next(c["id"] for c in coco.loadCats(coco.getCatIds()) if c["name"] == "coin")
    coins = coco.loadAnns(coco.getAnnIds(catIds=[coin_id]))
    checked = 0
    for ann in coins:
        img = cv2.imread(str(demo["train_images"] / coco.loadImgs(ann["image_id"])[0]["file_name"])).astype(float)
        mask = cv2.erode(coco.annToMask(ann), np.ones((3, 3), np.uint8)).astype(bool)
        if mask.sum() > 20:
            inside = img[mask]
            assert np.abs(inside - inside.mean(1, keepdims=True)).mean() < 6  # JPEG chroma noise only
            checked += 1
    assert checked >= 1


@pytest.mark.parametrize("seed", range(6))
def test_pasted_outline_matches_pasted_pixels(seed):
    """The annotation polygon covers exactly the pixels that were pasted (also when mirrored)."""
    from pycocotools import mask as mask_utils

    from worldtune.data.demo_set import _paste
    src = np.zeros((200, 300, 3), np.uint8)
    poly = np.array([[40.0, 30.0], [260.0, 60.0], [90.0, 180.0]])  # asymmetric: a wrong mirror shows
    cv2.fillPoly(src, [np.round(poly).astype(np.int32)], (255, 255, 255))
    canvas = np.zeros((300, 400, 3), np.uint8)
    pasted = _paste(canvas, src, poly, np.random.default_rng(seed), [])
    rle = mask_utils.frPyObjects([pasted.ravel().tolist()], 300, 400)
    annotated = mask_utils.decode(rle)[:, :, 0].astype(bool)
    painted = canvas[:, :, 0] > 127
    iou = (annotated & painted).sum() / (annotated | painted).sum()
    assert iou > 0.9


def test_deterministic_and_seed_dependent(tmp_path, demo):
    again = build_demo_dataset(tmp_path / "again", **SMALL, seed=0)
    other = build_demo_dataset(tmp_path / "other", **SMALL, seed=1)
    assert again["train_ann"].read_text() == demo["train_ann"].read_text()
    assert (again["val_images"] / "val_0002.jpg").read_bytes() == (demo["val_images"] / "val_0002.jpg").read_bytes()
    assert other["train_ann"].read_text() != demo["train_ann"].read_text()


def test_val_split_does_not_depend_on_train_size(tmp_path, demo):
    bigger = build_demo_dataset(tmp_path / "bigger", **dict(SMALL, num_train=12), seed=0)
    assert bigger["val_ann"].read_text() == demo["val_ann"].read_text()
    # and the val images are not copies of the first training images
    assert (demo["val_images"] / "val_0000.jpg").read_bytes() != (demo["train_images"] / "train_0000.jpg").read_bytes()


def test_existing_build_is_reused_and_bad_arguments_refused(tmp_path):
    first = build_demo_dataset(tmp_path, num_train=1, num_val=1, imgsz=96)
    stamp = first["train_ann"].stat().st_mtime_ns
    build_demo_dataset(tmp_path, num_train=1, num_val=1, imgsz=96)
    assert first["train_ann"].stat().st_mtime_ns == stamp
    rebuilt = build_demo_dataset(tmp_path, num_train=2, num_val=1, imgsz=96)  # other arguments: built again
    assert len(json.loads(rebuilt["train_ann"].read_text())["images"]) == 2
    with pytest.raises(ValueError, match="num_val"):
        build_demo_dataset(tmp_path, num_train=1, num_val=0)
    with pytest.raises(ValueError, match="num_train"):
        build_demo_dataset(tmp_path, num_train=0)
