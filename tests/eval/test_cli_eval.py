"""`worldtune eval`: scoring a results file, argument and input errors (module worldtune/cli/eval.py)."""
import json
from pathlib import Path

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


def test_whole_float_ids_score_as_the_int_ids(gt_and_dets, tmp_path):
    """Files written through numpy carry ids as 9.0: read as 9, as pycocotools does, not refused."""
    gt, dets = gt_and_dets
    assert main(["eval", "--detections", str(dets), "--ann", str(gt), "--json", str(tmp_path / "ints.json")]) == 0
    data, results = json.loads(gt.read_text()), json.loads(dets.read_text())
    for entry in data["images"] + data["categories"]:
        entry["id"] = float(entry["id"])
    for a in data["annotations"] + results:
        a.update(image_id=float(a["image_id"]), category_id=float(a["category_id"]))
    (tmp_path / "float_gt.json").write_text(json.dumps(data))
    (tmp_path / "float_dets.json").write_text(json.dumps(results))
    assert main(["eval", "--detections", str(tmp_path / "float_dets.json"), "--ann", str(tmp_path / "float_gt.json"),
                 "--json", str(tmp_path / "floats.json")]) == 0
    ints, floats = (json.loads((tmp_path / name).read_text()) for name in ("ints.json", "floats.json"))
    assert floats == ints and floats["AP"] == pytest.approx(0.85)


@pytest.mark.parametrize("objects", ["none", "crowd only"])
def test_a_ground_truth_without_objects_to_score_is_told(gt_and_dets, capsys, objects):
    """A val file without (non-crowd) annotations gives a table of n/a: the output says why."""
    gt, dets = gt_and_dets
    assert main(["eval", "--detections", str(dets), "--ann", str(gt)]) == 0
    assert "note:" not in capsys.readouterr().out  # objects to score: nothing to say
    data = json.loads(gt.read_text())
    if objects == "none":
        data["annotations"] = []
    else:
        for a in data["annotations"]:
            a["iscrowd"] = 1
    gt.write_text(json.dumps(data))
    assert main(["eval", "--detections", str(dets), "--ann", str(gt)]) == 0
    assert f"note: {gt} holds no object to score (no annotation, or only crowd ones), so every AP is n/a" \
        in capsys.readouterr().out


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
    assert main(["eval", "--detections", str(bad), "--ann", str(gt)]) == 2
    err = capsys.readouterr().err
    assert "unknown image_id 5" in err and "bad.json" in err
    assert main(["eval", "--detections", str(tmp_path / "nope.json"), "--ann", str(gt)]) == 2
    assert "nope.json" in capsys.readouterr().err


def test_argument_errors(gt_and_dets, capsys):
    gt, dets = gt_and_dets
    assert main(["eval", "--ann", str(gt)]) == 2
    assert main(["eval", "--detections", str(dets), "--weights", "x.pth", "--ann", str(gt)]) == 2
    assert main(["eval", "--detections", str(dets)]) == 2
    assert "--ann" in capsys.readouterr().err


def test_checkpoint_path_end_to_end(tmp_path, capsys):
    """--weights: a tiny worldtune checkpoint over the demo set; its written detections, scored
    again with --detections, give the same numbers."""
    import torch

    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.data.demo_set import build_demo_dataset
    from worldtune.model import build_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    data = build_demo_dataset(tmp_path / "demo", num_train=1, num_val=3, imgsz=96)
    clip_dir = make_clip_text_folder(tmp_path / "clip", hidden=32, layers=1, heads=2, projection=512)
    torch.manual_seed(0)
    model = build_model("n", CLIPTextEncoder.from_pretrained(str(clip_dir)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.text_model.")}
    for k in state:  # the prior bias keeps an untrained head below the 0.001 score threshold
        if "cls_contrasts" in k and k.endswith(".bias"):
            state[k] = torch.zeros_like(state[k])
    torch.save({"model": state}, tmp_path / "tiny.pth")

    dets, metrics = tmp_path / "dets.json", tmp_path / "metrics.json"
    assert main(["eval", "--weights", str(tmp_path / "tiny.pth"), "--ann", str(data["val_ann"]),
                 "--images", str(data["val_images"]), "--text-model", str(clip_dir), "--imgsz", "64",
                 "--batch-size", "2", "--workers", "0", "--device", "cpu",
                 "--out-detections", str(dets), "--json", str(metrics)]) == 0
    assert "coffee cup" in capsys.readouterr().out
    from_model = json.loads(metrics.read_text())
    written = json.loads(dets.read_text())
    assert from_model["num_detections"] == len(written) > 0
    assert {d["category_id"] for d in written} <= {1, 17, 47, 101, 102}
    assert main(["eval", "--detections", str(dets), "--ann", str(data["val_ann"]), "--json", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["AP"] == from_model["AP"]


def test_missing_weights_give_a_message(tmp_path, capsys):
    from worldtune.data.demo_set import build_demo_dataset

    data = build_demo_dataset(tmp_path / "demo", num_train=1, num_val=1, imgsz=96)
    assert main(["eval", "--weights", str(tmp_path / "nope.pth"), "--ann", str(data["val_ann"]),
                 "--images", str(data["val_images"]), "--workers", "0"]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_image_size_must_suit_the_strides(tmp_path, capsys):
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.data.demo_set import build_demo_dataset

    data = build_demo_dataset(tmp_path / "demo", num_train=1, num_val=1, imgsz=96)
    clip_dir = make_clip_text_folder(tmp_path / "clip", hidden=32, layers=1, heads=2, projection=512)
    with pytest.raises(SystemExit) as exit_info:  # refused while parsing the arguments
        main(["eval", "--weights", "none", "--variant", "n", "--text-model", str(clip_dir),
              "--ann", str(data["val_ann"]), "--images", str(data["val_images"]), "--imgsz", "600",
              "--workers", "0", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "argument --imgsz: must be a multiple of 32 (32 or more), got 600" in capsys.readouterr().err


def test_unreadable_images_are_reported_under_skip(tmp_path, capsys):
    """--on-bad-data skip: a broken val image is named, left out of the scoring, and the run goes on."""
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.data.coco import CocoDetection
    from worldtune.data.demo_set import build_demo_dataset

    paths = build_demo_dataset(tmp_path / "demo", num_train=1, num_val=3, imgsz=64)
    clip_dir = make_clip_text_folder(tmp_path / "clip", hidden=32, layers=1, heads=2, projection=512)
    dataset = CocoDetection(paths["val_ann"], paths["val_images"])
    name = dataset.image_path(1).name
    (Path(paths["val_images"]) / name).write_bytes(b"broken")
    common = ["eval", "--weights", "none", "--variant", "n", "--text-model", str(clip_dir),
              "--ann", str(paths["val_ann"]), "--images", str(paths["val_images"]), "--imgsz", "64",
              "--workers", "0", "--device", "cpu"]
    assert main(common) == 2
    err = capsys.readouterr().err
    # warned about before the model loads (a file check, no decoding), then the error when met
    warned = err.index(f"1 validation image file(s) do not look like pictures, e.g. {dataset.image_path(1)}: "
                       "the evaluation will stop on them")
    assert warned < err.index("evaluating at image size") and err.count(name) >= 2  # and the error names it
    assert main(common + ["--on-bad-data", "skip"]) == 0
    out = capsys.readouterr().out
    assert "(2 images," in out and f"image ids [{dataset.image_ids[1]}]" in out


def test_output_paths_are_checked_before_any_work(gt_and_dets, tmp_path, capsys):
    gt, dets = gt_and_dets
    for flag, bad, message in (("--json", tmp_path, "is a folder; name a file in it"),
                               ("--json", gt / "m.json", "is a file, not a folder")):
        with pytest.raises(SystemExit):
            main(["eval", "--detections", str(dets), "--ann", str(gt), flag, str(bad)])
        err = capsys.readouterr().err
        assert message in err and "COCO box metrics" not in err


def test_an_output_folder_that_takes_no_file_is_refused_before_any_work(gt_and_dets, tmp_path, capsys, monkeypatch):
    import errno

    from worldtune import outputs

    def refused(*args, **kwargs):  # a read-only mount: permission bits would not tell (nor for root)
        raise OSError(errno.EROFS, "Read-only file system")

    gt, dets = gt_and_dets
    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", refused)
    with pytest.raises(SystemExit) as info:
        main(["eval", "--detections", str(dets), "--ann", str(gt), "--json", str(tmp_path / "out" / "m.json")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "COCO box metrics" not in err
    assert f"argument --json: cannot write {tmp_path}/out/m.json: Read-only file system" in err


def test_a_full_disk_at_the_end_names_the_file_and_leaves_none_cut_short(gt_and_dets, tmp_path, capsys, monkeypatch):
    """The metrics are printed; the file that could not be written is named (a failed write() names
    none: "[Errno 28] No space left on device"), and no empty or partial file is left in its place."""
    import os

    from tests.helpers.full_disk import FullDisk

    gt, dets = gt_and_dets
    real_fdopen = os.fdopen

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), keep=10))
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["eval", "--detections", str(dets), "--ann", str(gt), "--json", str(out / "m.json")]) == 2
    captured = capsys.readouterr()
    assert "COCO box metrics" in captured.out
    assert captured.err == f"worldtune eval: error: cannot write {out}/m.json: No space left on device\n"
    assert list(out.iterdir()) == []


def test_an_error_the_command_does_not_catch_is_still_one_line(gt_and_dets, tmp_path, capsys, monkeypatch):
    import worldtune.cli.eval as eval_cli

    gt, dets = gt_and_dets

    def unwritable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "m.json"))

    monkeypatch.setattr(eval_cli, "metrics_to_json", unwritable)  # fails after scoring, outside its try
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    assert main(["eval", "--detections", str(dets), "--ann", str(gt), "--json", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldtune eval: error: [Errno 13] Permission denied") and "Traceback" not in err
    monkeypatch.setenv("WORLDTUNE_DEBUG", "1")  # the traceback, for whoever wants it
    with pytest.raises(PermissionError):
        main(["eval", "--detections", str(dets), "--ann", str(gt), "--json", str(tmp_path / "m.json")])


def test_a_data_loader_workers_error_reads_as_the_original_message():
    from torch._utils import ExceptionWrapper

    from worldtune.cli.errors import user_message
    from worldtune.data.coco import DataError

    try:
        raise DataError("cannot read image x.jpg (image id 3): missing or corrupt")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert str(info.value).startswith("Caught DataError in DataLoader worker process 0")
    assert user_message(info.value) == "cannot read image x.jpg (image id 3): missing or corrupt"
    assert user_message(DataError("plain")) == "plain"
    try:
        raise DataError("first line\nsecond line")  # a message of several lines stays whole
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 1")
    with pytest.raises(DataError) as info:
        wrapped.reraise()
    assert user_message(info.value) == "first line\nsecond line"


def test_plot_writes_the_pr_curves_and_class_bars(gt_and_dets, tmp_path, capsys):
    import cv2

    gt, dets = gt_and_dets
    out = tmp_path / "plots" / "pr.png"
    assert main(["eval", "--detections", str(dets), "--ann", str(gt), "--plot", str(out)]) == 0
    assert f"plot written to {out}" in capsys.readouterr().out
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] == 12 * 90  # 12 in at 90 dpi


def test_a_full_disk_while_plotting_names_the_picture_and_keeps_the_earlier_one(gt_and_dets, tmp_path, capsys,
                                                                                monkeypatch):
    import os

    from tests.helpers.full_disk import FullDisk

    gt, dets = gt_and_dets
    out = tmp_path / "plots" / "pr.png"
    out.parent.mkdir()
    out.write_bytes(b"an earlier plot")
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), keep=10))
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)
    assert main(["eval", "--detections", str(dets), "--ann", str(gt), "--plot", str(out)]) == 2
    captured = capsys.readouterr()
    assert "COCO box metrics" in captured.out
    assert captured.err == f"worldtune eval: error: cannot write {out}: No space left on device\n"
    assert out.read_bytes() == b"an earlier plot" and os.listdir(out.parent) == ["pr.png"]  # no temporary file


def test_plot_of_many_classes_shows_the_best_and_worst_only(tmp_path):
    import cv2

    from worldtune.eval.plots import MAX_CLASS_BARS, plot_eval

    recall = [r / 100 for r in range(101)]
    metrics = {"AP": 0.4, "AP50": 0.6, "AP75": 0.4, "pr_curves": {"recall": recall, "AP": [0.4] * 101,
                                                                   "AP50": [0.6] * 101, "AP75": [None] * 101},
               "per_class": {f"class {i}": i / 200 for i in range(150)} | {"no gt": None}}
    height = cv2.imread(str(plot_eval(metrics, tmp_path / "many.png"))).shape[0]
    assert height == round((0.2 * (MAX_CLASS_BARS + 1) + 1.2) * 90)  # the rows shown plus the gap row
    few = dict(metrics, per_class={f"class {i}": i / 10 for i in range(5)})
    assert cv2.imread(str(plot_eval(few, tmp_path / "few.png"))).shape[0] == 4 * 90  # the minimum height


def test_a_model_trained_with_other_class_texts_gets_a_note(tmp_path, capsys, monkeypatch):
    import worldtune.model.loading as loading
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.data.demo_set import build_demo_dataset

    data = build_demo_dataset(tmp_path / "demo", num_train=1, num_val=1, imgsz=64)
    clip_dir = make_clip_text_folder(tmp_path / "clip", hidden=32, layers=1, heads=2, projection=512)
    real_load = loading.load_model

    def trained_with_other_texts(*args, **kwargs):  # as a run's checkpoint with its vocabulary loads
        model = real_load(*args, **kwargs)
        model.set_vocabulary([f"a photo of a {n}" for n in data["class_names"]])
        return model

    monkeypatch.setattr(loading, "load_model", trained_with_other_texts)
    assert main(["eval", "--weights", "none", "--variant", "n", "--text-model", str(clip_dir),
                 "--ann", str(data["val_ann"]), "--images", str(data["val_images"]), "--imgsz", "64",
                 "--workers", "0", "--device", "cpu"]) == 0
    first = data["class_names"][0]
    assert f"trained with other class texts ('a photo of a {first}' for '{first}'" in capsys.readouterr().err


def test_a_model_trained_on_another_number_of_classes_gets_a_note_naming_them(tmp_path, capsys, monkeypatch):
    # It said "trained with other class texts ()" when the shared classes matched: nothing was listed.
    import worldtune.model.loading as loading
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.data.demo_set import build_demo_dataset

    data = build_demo_dataset(tmp_path / "demo", num_train=1, num_val=1, imgsz=64)
    clip_dir = make_clip_text_folder(tmp_path / "clip", hidden=32, layers=1, heads=2, projection=512)
    real_load = loading.load_model
    trained = list(data["class_names"]) + ["forklift"]

    def trained_with_one_more_class(*args, **kwargs):  # as a run's checkpoint with its vocabulary loads
        model = real_load(*args, **kwargs)
        model.set_vocabulary(trained)
        return model

    monkeypatch.setattr(loading, "load_model", trained_with_one_more_class)
    assert main(["eval", "--weights", "none", "--variant", "n", "--text-model", str(clip_dir),
                 "--ann", str(data["val_ann"]), "--images", str(data["val_images"]), "--imgsz", "64",
                 "--workers", "0", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"trained on {len(trained)} classes ({trained[0]!r}" in err
    assert f"{data['val_ann']} has {len(trained) - 1}: scored with its category names" in err
    assert "()" not in err
