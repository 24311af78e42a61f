"""COCO metrics: known answers, backend equivalence, and pycocotools' own numbers."""
import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from worldtune.eval.coco_eval import BACKENDS, SUMMARY_KEYS, coco_evaluate, format_metrics, metrics_to_json


def random_gt(num_images=50, seed=0):
    """GT over `num_images` images with non-contiguous category ids; category 90 never has GT."""
    rng = np.random.default_rng(seed)
    cats = [{"id": cid, "name": name} for cid, name in [(1, "person"), (3, "car"), (17, "cat"), (90, "toothbrush")]]
    images, anns = [], []
    for img_id in range(1, num_images + 1):
        w, h = int(rng.integers(200, 640)), int(rng.integers(200, 640))
        images.append({"id": img_id * 7, "width": w, "height": h, "file_name": f"{img_id}.jpg"})
        for _ in range(int(rng.integers(0, 8))):
            bw, bh = rng.uniform(4, w / 2), rng.uniform(4, h / 2)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            anns.append({"id": len(anns) + 1, "image_id": img_id * 7, "category_id": int(rng.choice([1, 3, 17])),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": int(rng.random() < 0.05)})
    return {"images": images, "annotations": anns, "categories": cats}


def random_detections(gt, seed=1):
    """Jittered copies of GT boxes plus random boxes; some images get >100 detections, some
    detections use a category (90) absent from the GT."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08, 4) * [w, h, w, h]
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                         "bbox": [x + j[0], y + j[1], max(w + j[2], 1.0), max(h + j[3], 1.0)],
                         "score": float(rng.uniform(0.3, 1.0))})
    for i, img in enumerate(gt["images"]):
        n = 150 if i % 10 == 0 else int(rng.integers(0, 20))
        for _ in range(n):
            bw, bh = rng.uniform(2, img["width"] / 2), rng.uniform(2, img["height"] / 2)
            dets.append({"image_id": img["id"], "category_id": int(rng.choice([1, 3, 17, 90])),
                         "bbox": [rng.uniform(0, img["width"] - bw), rng.uniform(0, img["height"] - bh), bw, bh],
                         "score": float(rng.uniform(0.0, 0.9))})
    return dets


def pycocotools_stats(gt, dets):
    """The reference numbers, computed the usual way (loadRes + evaluate + summarize)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def single_box_gt():
    return {"images": [{"id": 1, "width": 400, "height": 400}],
            "categories": [{"id": 5, "name": "box"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [100, 100, 100, 100],
                             "area": 10000, "iscrowd": 0}]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_give_ap_one(backend):
    gt = random_gt(20)
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"]]
    m = coco_evaluate(gt, dets, backend=backend)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert m[key] == pytest.approx(1.0)
    assert m["per_class"]["toothbrush"] is None  # no GT for that class
    assert m["per_class"]["person"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dx, expected_ap", [(10, 0.7), (30, 0.1), (0, 1.0), (40, 0.0)])
def test_shifted_box_ap_counts_iou_thresholds(backend, dx, expected_ap):
    # IoU of a 100x100 box shifted by dx = (100-dx)/(100+dx); AP = share of thresholds .50:.05:.95 it passes.
    iou = (100 - dx) / (100 + dx)
    assert expected_ap == pytest.approx(sum(iou >= t for t in np.linspace(0.5, 0.95, 10)) / 10)
    dets = [{"image_id": 1, "category_id": 5, "bbox": [100 + dx, 100, 100, 100], "score": 0.5}]
    m = coco_evaluate(single_box_gt(), dets, backend=backend)
    assert m["AP"] == pytest.approx(expected_ap)
    assert m["AP50"] == pytest.approx(1.0 if iou >= 0.5 else 0.0)


def test_shifted_boxes_match_pycocotools_and_backends_agree():
    gt = random_gt(50)
    dets = random_detections(gt)
    per_image = np.bincount([d["image_id"] for d in dets])
    assert per_image.max() > 100  # maxDets truncation is exercised
    assert any(d["category_id"] == 90 for d in dets)  # class absent from the GT
    ref = pycocotools_stats(gt, dets)
    results = {b: coco_evaluate(gt, dets, backend=b) for b in BACKENDS}
    for backend, m in results.items():
        ours = [m[k] if m[k] is not None else -1 for k in SUMMARY_KEYS]
        np.testing.assert_allclose(ours, ref[:12], rtol=0, atol=1e-12, err_msg=backend)
    assert 0.05 < results["faster"]["AP"] < 0.95  # a non-trivial score
    for name, ap in results["pycocotools"]["per_class"].items():
        other = results["faster"]["per_class"][name]
        assert (ap is None) == (other is None)
        if ap is not None:
            assert ap == pytest.approx(other, abs=1e-12)


def test_per_class_table_matches_single_class_evaluation():
    gt = random_gt(30, seed=3)
    dets = random_detections(gt, seed=4)
    m = coco_evaluate(gt, dets)
    assert list(m["per_class"]) == ["person", "car", "cat", "toothbrush"]  # category-id order
    for cat in gt["categories"][:3]:
        sub_gt = dict(gt, categories=[cat],
                      annotations=[a for a in gt["annotations"] if a["category_id"] == cat["id"]])
        sub_dets = [d for d in dets if d["category_id"] == cat["id"]]
        assert m["per_class"][cat["name"]] == pytest.approx(pycocotools_stats(sub_gt, sub_dets)[0], abs=1e-12)
    assert m["per_class"]["toothbrush"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_give_zero(backend):
    m = coco_evaluate(single_box_gt(), [], backend=backend)
    assert m["AP"] == 0.0 and m["AR100"] == 0.0 and m["num_detections"] == 0
    assert m["per_class"] == {"box": 0.0}


def test_inputs_are_not_modified_and_files_work(tmp_path):
    gt = random_gt(5)
    dets = random_detections(gt)
    gt_copy, dets_copy = copy.deepcopy(gt), copy.deepcopy(dets)
    from_dicts = coco_evaluate(gt, dets)
    assert gt == gt_copy and dets == dets_copy
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    from_files = coco_evaluate(tmp_path / "gt.json", tmp_path / "dets.json")
    assert from_files["AP"] == pytest.approx(from_dicts["AP"])
    text = json.dumps(metrics_to_json(dict(from_files, x=math.nan)))
    assert "NaN" not in text
    assert "toothbrush" in format_metrics(from_files)


@pytest.mark.parametrize("bad, message", [
    ({"image_id": 999, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}, "unknown image_id 999"),
    ({"image_id": 1, "category_id": 6, "bbox": [0, 0, 1, 1], "score": 1.0}, "unknown category_id 6"),
    ({"image_id": 1, "category_id": 5, "bbox": [0, 0, -1, 1], "score": 1.0}, "'bbox'"),
    ({"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, -1], "score": 1.0}, "'bbox'"),  # height too
    ({"image_id": 1, "category_id": 5, "bbox": [0, 0, 1], "score": 1.0}, "'bbox'"),
    ({"image_id": 1, "category_id": 5, "bbox": ["0", 0, 1, 1], "score": 1.0}, "'bbox'"),
    # a string id equal to a GT id is told as not an integer, not as an id the GT lacks (1.0 is the id 1)
    ({"image_id": 1.5, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}, "image_id must be an integer, as "
                                                                                "the GT's ids are, got 1.5"),
    ({"image_id": 1, "category_id": 5.5, "bbox": [0, 0, 1, 1], "score": 1.0}, "category_id must be an integer, "
                                                                                "as the GT's ids are, got 5.5"),
    ({"image_id": 1, "category_id": float("inf"), "bbox": [0, 0, 1, 1], "score": 1.0}, "category_id must be an "
                                                                                         "integer, as the GT's ids"),
    # numpy reads a `true` among ints as 1 (the GT's id 1 here)
    ({"image_id": True, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}, "image_id must be an integer, as "
                                                                                 "the GT's ids are, got True"),
    ({"image_id": "1", "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1.0}, "image_id must be an integer, as "
                                                                                "the GT's ids are, got '1'"),
    ({"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "score": float("nan")}, "'score'"),
    ({"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1]}, "missing field"),
])
def test_bad_detections_are_refused_with_a_message(bad, message):
    good = {"image_id": 1, "category_id": 5, "bbox": [100, 100, 100, 100], "score": 0.9}
    with pytest.raises(ValueError, match=r"detections\[1\].*" + message.replace("[", r"\[")):
        coco_evaluate(single_box_gt(), [good, bad])


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        coco_evaluate(tmp_path / "missing.json", [])
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        coco_evaluate(tmp_path / "broken.json", [])
    (tmp_path / "noimages.json").write_text(json.dumps({"annotations": [], "categories": []}))
    with pytest.raises(ValueError, match="noimages.json.*'images'"):
        coco_evaluate(tmp_path / "noimages.json", [])
    with pytest.raises(ValueError, match="backend"):
        coco_evaluate(single_box_gt(), [], backend="nope")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ids", [[0, 0], [7, 7], [0, 1]])
def test_annotation_ids_zero_or_repeated_do_not_cost_ap(backend, ids):
    """The COCO APIs take id 0 for "unmatched" and index annotations by id: GT ids are renumbered."""
    gt = {"images": [{"id": 1, "width": 400, "height": 400}, {"id": 2, "width": 400, "height": 400}],
          "categories": [{"id": 5, "name": "box"}],
          "annotations": [{"id": ids[k], "image_id": k + 1, "category_id": 5, "bbox": [100, 100, 100, 100]}
                          for k in range(2)]}
    dets = [{"image_id": k + 1, "category_id": 5, "bbox": [100, 100, 100, 100], "score": 0.9} for k in range(2)]
    assert coco_evaluate(gt, dets, backend=backend)["AP"] == pytest.approx(1.0)
    assert [a["id"] for a in gt["annotations"]] == ids  # the caller's dict is not modified


@pytest.mark.parametrize("bbox,message", [
    (None, "'bbox' must be 4 finite numbers"), ([100, 100, "5", 100], "'bbox' must be 4 finite numbers"),
    ([100, 100, float("nan"), 100], "'bbox' must be 4 finite numbers"), ([100, 100, -5, 100], "negative"),
    ([100, 100, 100, -5], "negative"),
])
def test_bad_gt_annotations_name_the_annotation(tmp_path, bbox, message):
    gt = single_box_gt()
    gt["annotations"].append({"id": 7, "image_id": 1, "category_id": 5, "bbox": bbox})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=r"gt.json: annotation id 7: .*" + message):
        coco_evaluate(tmp_path / "gt.json", [])
    # left out by position (what a CocoDetection under on_bad_data="skip" dropped), it is not scored
    dets = [{"image_id": 1, "category_id": 5, "bbox": [100, 100, 100, 100], "score": 0.9}]
    assert coco_evaluate(tmp_path / "gt.json", dets, drop_annotations=[1])["AP"] == pytest.approx(1.0)
    del gt["annotations"][1]["id"]
    with pytest.raises(ValueError, match=r"annotation #1 \(no id\)"):
        coco_evaluate(gt, [])


@pytest.mark.parametrize("edit,message", [
    (lambda gt: gt["images"][0].update(id="1"), r"an entry of 'images' has a non-integer 'id'"),
    (lambda gt: gt["categories"][0].update(id="5"), r"an entry of 'categories' has a non-integer 'id'"),
    (lambda gt: gt["images"][0].update(id=2**63 + 5), r"an entry of 'images': 'id' 9223372036854775813 does not fit "
                                                      r"in a signed 64-bit integer"),  # was 'a non-numeric value'
    (lambda gt: gt["annotations"][0].update(category_id=9), r"annotation id 1: 'category_id' 9 is not the id"),
    (lambda gt: gt["annotations"][0].update(image_id=2), r"annotation id 1: 'image_id' 2 is not the id"),
    # equal to an existing id but not an integer: told as such, not as an id the file lacks (1.0 is the id 1)
    (lambda gt: gt["annotations"][0].update(image_id="1"), r"annotation id 1: 'image_id' must be an integer, as "
                                                          r"the ids of 'images' and 'categories' are, got '1'"),
    (lambda gt: gt["annotations"][0].update(category_id=5.5), r"annotation id 1: 'category_id' must be an integer"),
    (lambda gt: gt["images"][0].update(id=1.5), r"an entry of 'images' has a non-integer 'id'"),
    (lambda gt: gt["categories"][0].update(id=float("nan")), r"an entry of 'categories' has a non-integer 'id'"),
    (lambda gt: gt["annotations"][0].update(iscrowd="yes"), r"annotation id 1: 'iscrowd' must be 0 or 1"),
    (lambda gt: gt["annotations"][0].update(area="big"), r"annotation id 1: 'area' must be a finite number"),
])
def test_gt_ids_and_fields_of_the_wrong_type_name_the_field(tmp_path, edit, message):
    # Before: a TypeError from the COCO APIs' sorting, int('yes'), or an object silently not scored.
    gt = single_box_gt()
    edit(gt)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=r"gt.json: " + message):
        coco_evaluate(tmp_path / "gt.json", [])


def _with_float_ids(gt: dict, dets: list) -> tuple[dict, list]:
    """Copies with every id a whole float (9.0), as files written through numpy carry them."""
    gt = copy.deepcopy(gt)
    for entry in gt["images"] + gt["categories"]:
        entry["id"] = float(entry["id"])
    for a in gt["annotations"]:
        a.update(id=float(a["id"]), image_id=float(a["image_id"]), category_id=float(a["category_id"]))
    return gt, [dict(d, image_id=float(d["image_id"]), category_id=float(d["category_id"])) for d in dets]


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_float_ids_score_as_the_int_ids(tmp_path, backend):
    """9.0 is the id 9 in the GT and in the detections (as pycocotools reads it); the caller's dicts are kept."""
    from worldtune.eval.coco_inputs import load_coco_gt, validate_detections

    gt = random_gt(4)
    dets = random_detections(gt)
    float_gt, float_dets = _with_float_ids(gt, dets)
    kept = copy.deepcopy((float_gt, float_dets))
    (tmp_path / "gt.json").write_text(json.dumps(float_gt))
    (tmp_path / "dets.json").write_text(json.dumps(float_dets))
    assert '"image_id": 7.0' in (tmp_path / "dets.json").read_text()
    expected = coco_evaluate(gt, dets, backend=backend)
    for got in (coco_evaluate(float_gt, float_dets, backend=backend),
                coco_evaluate(tmp_path / "gt.json", tmp_path / "dets.json", backend=backend),
                coco_evaluate(gt, float_dets[:1] + dets[1:], backend=backend)):  # 7.0 among ints
        assert {k: got[k] for k in SUMMARY_KEYS} == {k: expected[k] for k in SUMMARY_KEYS}
        assert got["per_class"] == expected["per_class"] and got["num_detections"] == expected["num_detections"]
    # the int id 7 leaves out the image 7.0 (the detections of a left-out image are not scored)
    expected = coco_evaluate(gt, [d for d in dets if d["image_id"] != 7], backend=backend, exclude_image_ids=[7])
    got = coco_evaluate(float_gt, [d for d in float_dets if d["image_id"] != 7], backend=backend,
                        exclude_image_ids=[7])
    assert got["num_images"] == expected["num_images"] == 3
    assert {k: got[k] for k in SUMMARY_KEYS} == {k: expected[k] for k in SUMMARY_KEYS}
    assert (float_gt, float_dets) == kept
    gt_read = load_coco_gt(float_gt)
    ids = [i["id"] for i in gt_read["images"] + gt_read["categories"]]
    ids += [a[k] for a in gt_read["annotations"] for k in ("image_id", "category_id")]
    assert all(type(i) is int for i in ids)
    assert all(type(d[k]) is int for d in validate_detections(float_dets, gt_read) for k in ("image_id", "category_id"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pr_curves_are_the_interpolated_precision_and_average_to_ap(backend):
    gt = single_box_gt()
    gt["images"].append({"id": 2, "width": 400, "height": 400})
    gt["annotations"].append({"id": 2, "image_id": 2, "category_id": 5, "bbox": [100, 100, 100, 100],
                              "area": 10000, "iscrowd": 0})
    # By score: a hit on image 1, a miss, then image 2's box shifted by 30 px (IoU 0.538: a hit at .50 only).
    dets = [{"image_id": 1, "category_id": 5, "bbox": [100, 100, 100, 100], "score": 0.9},
            {"image_id": 1, "category_id": 5, "bbox": [300, 300, 50, 50], "score": 0.8},
            {"image_id": 2, "category_id": 5, "bbox": [130, 100, 100, 100], "score": 0.7}]
    m = coco_evaluate(gt, dets, backend=backend)
    curves = m["pr_curves"]
    assert len(curves["recall"]) == 101 and curves["recall"][50] == 0.5
    # At IoU .50, precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1: interpolated 1 up to recall .5, then 2/3.
    assert curves["AP50"] == pytest.approx([1.0] * 51 + [2 / 3] * 50)
    assert curves["AP75"] == pytest.approx([1.0] * 51 + [0.0] * 50)  # image 2 is never found at .75
    assert curves["AP"] == pytest.approx([1.0] * 51 + [2 / 3 / 10] * 50)  # found at 1 of 10 thresholds
    for key in ("AP", "AP50", "AP75"):  # the metric is the mean of its curve over the 101 recall points
        assert np.mean(curves[key]) == pytest.approx(m[key])


def test_pr_curves_leave_out_classes_without_gt():
    gt = random_gt(20)
    m = coco_evaluate(gt, random_detections(gt))
    assert m["per_class"]["toothbrush"] is None  # no GT: its -1 precision must not pull the mean down
    assert np.mean(m["pr_curves"]["AP"]) == pytest.approx(m["AP"])
    assert all(0.0 <= p <= 1.0 for p in m["pr_curves"]["AP"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_annotation_without_area_is_sized_by_its_box(backend):
    """A GT box of 20 x 60 px without 'area' is 1200 px^2: a medium object (32^2 to 96^2), where a
    perfect detection scores; the area of a given entry is kept."""
    from worldtune.eval.coco_inputs import load_coco_gt

    gt = {"images": [{"id": 1, "width": 200, "height": 200}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 60]},
                          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 8, 8], "area": 50.0}]}
    assert [a["area"] for a in load_coco_gt(gt)["annotations"]] == [1200.0, 50.0]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 60], "score": 0.9}]
    metrics = coco_evaluate({**gt, "annotations": gt["annotations"][:1]}, dets, backend=backend)
    assert metrics["APm"] == pytest.approx(1.0) and metrics["APs"] is None and metrics["APl"] is None
