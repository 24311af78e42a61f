"""`worldtune eval`: scoring a results file, argument and input errors (module worldtune/cli/eval.py)."""
import json

import pytest

from worldtune.cli import main


@pytest.fixture
def gt_and_dets(tmp_path):
    gt = {"images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
          "categories": [{"id": 3, "name": "dog"}, {"id": 8, "name": "kite"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 100, 100],
                           "area": 10000, "iscrowd": 0},
                          {"id": 2, "image_id": 2, "category_id": 8, "bbox": [50, 50, 100, 100],
                           "area": 10000, "iscrowd": 0}]}
    # The dog is found exactly; the kite box is shifted by 10 px (IoU 0.818 -> AP 0.7).
    dets = [{"image_id": 1, "category_id": 3, "bbox": [10, 10, 100, 100], "score": 0.9},
            {"image_id": 2, "category_id": 8, "bbox": [60, 50, 100, 100], "score": 0.8}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path / "gt.json", tmp_path / "dets.json"


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_scores_a_results_file(gt_and_dets, tmp_path, capsys, backend):
    gt, dets = gt_and_dets
    out = tmp_path / "out" / "metrics.json"
    assert main(["eval", "--detections", str(dets), "--ann", str(gt), "--json", str(out), "--backend", backend]) == 0
    text = capsys.readouterr().out
    assert "kite" in text and "AP50" in text and "85.0" in text  # mean of 100 and 70
    metrics = json.loads(out.read_text())
    assert metrics["AP"] == pytest.approx(0.85) and metrics["per_class"]["kite"] == pytest.approx(0.7)
    assert metrics["APm"] is None and metrics["APl"] == pytest.approx(0.85)  # area 10000 > 96^2: large


def test_data_root_layout(gt_and_dets, tmp_path, capsys):
    gt, dets = gt_and_dets
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    gt.rename(tmp_path / "coco" / "annotations" / "instances_val2017.json")
    assert main(["eval", "--detections", str(dets), "--data-root", str(tmp_path / "coco")]) == 0
    assert "dog" in capsys.readouterr().out


def test_bad_results_give_a_message_not_a_traceback(gt_and_dets, tmp_path, capsys):
    gt, _ = gt_and_dets
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    assert main(["eval", "--detections", str(bad), "--ann", str(gt)]) == 1
    err = capsys.readouterr().err
    assert "unknown image_id 5" in err and "bad.json" in err
    assert main(["eval", "--detections", str(tmp_path / "nope.json"), "--ann", str(gt)]) == 1
    assert "nope.json" in capsys.readouterr().err


def test_argument_errors(gt_and_dets, capsys):
    gt, dets = gt_and_dets
    assert main(["eval", "--ann", str(gt)]) == 2
    assert main(["eval", "--detections", str(dets), "--weights", "x.pth", "--ann", str(gt)]) == 2
    assert main(["eval", "--detections", str(dets)]) == 2
    assert "--ann" in capsys.readouterr().err
