"""evaluate_model: label -> category id mapping, scoring, and a real tiny model end to end."""
import json

import pytest
import torch
from torch import nn

from worldtune.data.coco import CocoDetection
from worldtune.data.demo_set import build_demo_dataset
from worldtune.data.loader import build_eval_loader
from worldtune.data.presets import build_eval_dataset
from worldtune.eval.evaluate import detections_to_coco, evaluate_model


@pytest.fixture(scope="module")
def demo_val(tmp_path_factory):
    paths = build_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=1, num_val=5, imgsz=96)
    dataset = CocoDetection(paths["val_ann"], paths["val_images"])
    loader = build_eval_loader(build_eval_dataset(dataset, imgsz=64), batch_size=2)
    return dataset, loader, json.loads(paths["val_ann"].read_text())


class FakeDetector(nn.Module):
    """Stands in for YOLOWorld: records the vocabulary and whether it ran in eval mode."""

    def __init__(self):
        super().__init__()
        self.vocabulary, self.modes = [], []

    def set_vocabulary(self, texts):
        self.vocabulary = list(texts)


def gt_predictor(gt, cat_id_to_label, label_shift=0):
    """A predict_fn returning each image's GT boxes (xyxy, original pixels) with vocabulary labels."""
    def predict_fn(model, images, scale_factors, pad_params, ori_shapes):
        model.modes.append(model.training)
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 64, 64)
        return [{"boxes_xyxy": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes]).reshape(-1, 4),
                 "scores": torch.linspace(0.9, 0.5, len(boxes)),
                 "labels": (torch.tensor(labels, dtype=torch.int64) + label_shift) % len(cat_id_to_label)}
                for boxes, labels in next_images(len(images))]

    order = [img["id"] for img in gt["images"]]
    per_image = {i: ([], []) for i in order}
    for a in gt["annotations"]:
        per_image[a["image_id"]][0].append(a["bbox"])
        per_image[a["image_id"]][1].append(cat_id_to_label[a["category_id"]])
    queue = [per_image[i] for i in order]

    def next_images(n):
        taken = queue[:n]
        del queue[:n]
        return taken

    return predict_fn


def test_detections_to_coco_maps_labels_and_boxes():
    dets = [{"boxes_xyxy": torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
             "scores": torch.tensor([0.9, 0.2]), "labels": torch.tensor([2, 0])},
            {"boxes_xyxy": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]
    out = detections_to_coco(dets, [7, 8], cat_ids=[1, 17, 47])
    assert out == [{"image_id": 7, "category_id": 47, "bbox": [10.0, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
                   {"image_id": 7, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": pytest.approx(0.2)}]
    # nothing is rounded (the official metric does not round): close low scores keep their order
    close = [{"boxes_xyxy": torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 2), "scores": torch.tensor([0.0012347, 0.0012345]),
              "labels": torch.tensor([0, 0])}]
    low = detections_to_coco(close, [7], cat_ids=[1])
    assert low[0]["score"] > low[1]["score"]
    with pytest.raises(ValueError, match="label 3 outside the vocabulary of 3"):
        detections_to_coco([dict(dets[0], labels=torch.tensor([3, 0]))], [7], cat_ids=[1, 17, 47])
    with pytest.raises(ValueError, match="label -1 outside the vocabulary of 3"):  # not the largest, 2
        detections_to_coco([dict(dets[0], labels=torch.tensor([2, -1]))], [7], cat_ids=[1, 17, 47])


def test_evaluate_model_scores_mapped_detections(demo_val, tmp_path):
    dataset, loader, gt = demo_val
    model = FakeDetector().train()
    out = tmp_path / "dets.json"
    metrics = evaluate_model(model, loader, dataset, predict_fn=gt_predictor(gt, dataset.cat_id_to_label),
                             out_detections=out)
    assert model.vocabulary == ["person", "cat", "coffee cup", "rocket", "coin"]
    assert model.modes and not any(model.modes) and model.training  # eval inside, restored after
    assert metrics["AP"] == pytest.approx(1.0) and metrics["num_detections"] == len(gt["annotations"])
    written = json.loads(out.read_text())
    assert {d["category_id"] for d in written} == {a["category_id"] for a in gt["annotations"]}


def test_a_set_with_whole_float_ids_evaluates_as_with_int_ids(demo_val, tmp_path):
    """Ids written as 9.0 (through numpy) are the ints 9: the same scores, and int ids in the detections written."""
    dataset, loader, gt = demo_val
    floats = json.loads(json.dumps(gt))
    for entry in floats["images"] + floats["categories"]:
        entry["id"] = float(entry["id"])
    for a in floats["annotations"]:
        a.update(id=float(a["id"]), image_id=float(a["image_id"]), category_id=float(a["category_id"]))
    (tmp_path / "val.json").write_text(json.dumps(floats))
    float_set = CocoDetection(tmp_path / "val.json", dataset.image_dir)
    float_loader = build_eval_loader(build_eval_dataset(float_set, imgsz=64), batch_size=2)
    expected = evaluate_model(FakeDetector(), loader, dataset, out_detections=tmp_path / "ints.json",
                              predict_fn=gt_predictor(gt, dataset.cat_id_to_label))
    got = evaluate_model(FakeDetector(), float_loader, float_set, out_detections=tmp_path / "floats.json",
                         predict_fn=gt_predictor(gt, dataset.cat_id_to_label))
    assert expected["AP"] == pytest.approx(1.0)
    assert {k: got[k] for k in ("AP", "AP50", "AR100", "per_class", "num_detections")} == \
        {k: expected[k] for k in ("AP", "AP50", "AR100", "per_class", "num_detections")}
    written = (tmp_path / "floats.json").read_text()
    assert written == (tmp_path / "ints.json").read_text() and '.0, "category_id"' not in written
    assert all(type(d[k]) is int for d in json.loads(written) for k in ("image_id", "category_id"))


def test_wrong_label_mapping_scores_zero(demo_val):
    dataset, loader, gt = demo_val
    metrics = evaluate_model(FakeDetector(), loader, dataset, backend="pycocotools",
                             predict_fn=gt_predictor(gt, dataset.cat_id_to_label, label_shift=1))
    assert metrics["AP"] == 0.0


def test_sharded_loader_is_refused(demo_val):
    dataset, loader, gt = demo_val
    sharded = build_eval_loader(loader.dataset, batch_size=2, rank=0, world_size=2)
    with pytest.raises(ValueError, match="unsharded"):
        evaluate_model(FakeDetector(), sharded, dataset, predict_fn=gt_predictor(gt, dataset.cat_id_to_label))


def test_tiny_real_model_end_to_end(demo_val):
    from worldtune.model import build_model

    dataset, loader, gt = demo_val
    torch.manual_seed(0)
    model = build_model("n")
    with torch.no_grad():  # the prior bias keeps an untrained head below the 0.001 score threshold
        for name, param in model.named_parameters():
            if name.endswith(".bias") and "cls_contrasts" in name:
                param.fill_(0.0)
    names = dataset.class_names
    model.set_vocabulary(names, text_feats=nn.functional.normalize(torch.randn(len(names), 512), dim=-1))
    metrics = evaluate_model(model, loader, dataset)
    assert 0.0 <= metrics["AP"] <= 1.0 and metrics["num_images"] == len(gt["images"])
    assert metrics["num_detections"] > 0 and metrics["images_per_second"] > 0


def test_unreadable_image_under_skip_is_left_out_of_the_scoring(demo_val, tmp_path):
    import shutil

    from worldtune.data.coco import DataError

    dataset, _, gt = demo_val
    images = tmp_path / "images"
    shutil.copytree(dataset.image_dir, images)
    broken = dataset.image_path(2).name
    (images / broken).write_bytes(b"not a jpeg")
    strict = CocoDetection(dataset.ann_file, images)
    with pytest.raises(DataError, match=broken):
        evaluate_model(FakeDetector(), build_eval_loader(build_eval_dataset(strict, imgsz=64), batch_size=2), strict,
                       predict_fn=gt_predictor(gt, strict.cat_id_to_label))
    lenient = CocoDetection(dataset.ann_file, images, on_bad_data="skip")
    loader = build_eval_loader(build_eval_dataset(lenient, imgsz=64), batch_size=2)
    with pytest.warns(UserWarning, match=broken):
        metrics = evaluate_model(FakeDetector(), loader, lenient, predict_fn=gt_predictor(gt, lenient.cat_id_to_label))
    assert metrics["skipped_images"] == [lenient.image_ids[2]]
    # the other images are predicted perfectly; the unreadable one's objects do not count as misses
    assert metrics["AP"] == pytest.approx(1.0) and metrics["num_images"] == len(gt["images"]) - 1


def test_missing_image_and_bad_annotation_under_skip_are_left_out_of_the_scoring(demo_val, tmp_path):
    """What the dataset drops under on_bad_data="skip" (a missing file, a box of negative size) is
    not scored either: the rest, predicted perfectly, scores AP 1."""
    import shutil

    dataset, _, gt = demo_val
    images = tmp_path / "images"
    shutil.copytree(dataset.image_dir, images)
    missing = gt["images"][1]
    (images / missing["file_name"]).unlink()
    bad_gt = json.loads(json.dumps(gt))
    kept = gt["images"][0]
    bad_gt["annotations"].append({"id": 999, "image_id": kept["id"], "category_id": gt["categories"][0]["id"],
                                  "bbox": [5, 0, -10, 10]})  # negative size
    (tmp_path / "val.json").write_text(json.dumps(bad_gt))
    with pytest.warns(UserWarning, match="skipped"):
        lenient = CocoDetection(tmp_path / "val.json", images, on_bad_data="skip")
    assert lenient.dropped_image_ids == [missing["id"]]
    assert lenient.dropped_annotations == [len(bad_gt["annotations"]) - 1]
    scored = {"images": [i for i in gt["images"] if i["id"] != missing["id"]],
              "annotations": [a for a in gt["annotations"] if a["image_id"] != missing["id"]]}
    loader = build_eval_loader(build_eval_dataset(lenient, imgsz=64), batch_size=2)
    metrics = evaluate_model(FakeDetector(), loader, lenient, predict_fn=gt_predictor(scored, lenient.cat_id_to_label))
    assert metrics["skipped_images"] == [missing["id"]] and metrics["num_images"] == len(gt["images"]) - 1
    assert metrics["AP"] == pytest.approx(1.0)
