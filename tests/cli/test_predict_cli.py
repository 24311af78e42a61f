"""`worldtune predict`: annotated images, JSON detections, skipped unreadable files, vocabulary files.

Variant `n` at 128 px with a 1-layer CLIP text tower; the checkpoint is saved in the official layout.
"""
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.helpers.calibrated_model import make_calibrated_model
from worldtune.cli import main
from worldtune.cli.predict import _output_name, expand_inputs, read_vocabulary

IMGSZ = 128
CLASSES = ["person", "coffee cup", "cat"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint, text tower folder, image folder) with two photos, a corrupt file and a non-image."""
    from skimage import data

    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.model.predict import letterbox_for_test
    from worldtune.model.text_encoder import CLIPTextEncoder

    root = tmp_path_factory.mktemp("predict")
    clip = make_clip_text_folder(root / "clip", hidden=32, layers=1, heads=2, projection=512)
    photos = {"astronaut.png": data.astronaut(), "coffee.jpg": data.coffee()}
    images = root / "images"
    images.mkdir()
    for name, rgb in photos.items():
        cv2.imwrite(str(images / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (images / "notes.txt").write_text("not an image")
    tower = CLIPTextEncoder.from_pretrained(str(clip))
    feats = tower.encode_vocabulary(CLASSES)
    # Calibrate on what the CLI will feed the network: the letterboxed photos.
    boxed = [letterbox_for_test(rgb, IMGSZ)[0] for rgb in photos.values()]
    batch = torch.from_numpy(np.stack(boxed)).permute(0, 3, 1, 2).float() / 255
    model = make_calibrated_model(batch, feats.expand(2, -1, -1), text_model=tower)
    ckpt = root / "model.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return ckpt, clip, images


def _predict(setup, out, *extra) -> int:
    ckpt, clip, images = setup
    return main(["predict", str(images), "--weights", str(ckpt), "--text-model", str(clip), "--imgsz", str(IMGSZ),
                 "--out", str(out), "--batch-size", "2", *extra])


def test_predict_writes_annotated_images_and_json(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(setup, out, "--classes", ",".join(CLASSES)) == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "notes.txt" not in err
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["classes"] == CLASSES and summary["score_thr"] == 0.25
    assert [r["annotated"] for r in summary["images"]] == ["astronaut.png", "coffee.jpg"]
    assert [s["image"] for s in summary["skipped"]] == [str(setup[2] / "broken.jpg")]
    assert "cannot read image" in summary["skipped"][0]["error"]
    for record in summary["images"]:
        per_image = json.loads((out / record["annotated"]).with_suffix(".json").read_text())
        assert per_image == record
        assert set(record) == {"image", "width", "height", "annotated", "detections"}
        dets = record["detections"]
        assert dets, "the calibrated model should detect something"
        scores = [d["score"] for d in dets]
        assert scores == sorted(scores, reverse=True) and min(scores) > 0.25
        for d in dets:
            assert set(d) == {"label", "name", "score", "box_xyxy"} and d["name"] == CLASSES[d["label"]]
            x1, y1, x2, y2 = d["box_xyxy"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
    # The PNG is lossless: it equals the input except where boxes and labels were drawn.
    original = cv2.imread(str(setup[2] / "astronaut.png"))
    annotated = cv2.imread(str(out / "astronaut.png"))
    assert annotated.shape == original.shape
    changed = np.abs(annotated.astype(int) - original.astype(int)).sum(axis=2) > 0
    box = summary["images"][0]["detections"][0]["box_xyxy"]
    x1, y1 = min(int(box[0]), original.shape[1] - 1), min(int(box[1]), original.shape[0] - 1)
    assert changed[y1, min(x1 + 3, original.shape[1] - 1)] or changed[min(y1 + 3, original.shape[0] - 1), x1]
    assert 0 < changed.mean() < 1


def test_threshold_and_class_texts_file(setup, tmp_path):
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps([[c, c + "s"] for c in CLASSES]))  # synonyms: the first one is used
    out = tmp_path / "out"
    assert _predict(setup, out, "--class-texts", str(texts), "--score-thr", "0.5", "--max-det", "3") == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["classes"] == CLASSES
    for record in summary["images"]:
        assert len(record["detections"]) <= 3 and all(d["score"] > 0.5 for d in record["detections"])


def test_a_low_threshold_keeps_the_weaker_detections(setup, tmp_path):
    """--score-thr reaches the post-processing both ways: below the default 0.25 it keeps detections
    that the default drops."""
    out = tmp_path / "out"
    assert _predict(setup, out, "--classes", ",".join(CLASSES), "--score-thr", "0.02") == 0
    summary = json.loads((out / "predictions.json").read_text())
    scores = [d["score"] for record in summary["images"] for d in record["detections"]]
    assert summary["score_thr"] == 0.02 and min(scores) > 0.02
    assert any(score <= 0.25 for score in scores)


def test_nothing_readable_is_an_error(setup, tmp_path, capsys):
    ckpt, clip, images = setup
    code = main(["predict", str(images / "broken.jpg"), str(tmp_path / "missing.png"), "--weights", str(ckpt),
                 "--text-model", str(clip), "--classes", "cat", "--imgsz", str(IMGSZ), "--out", str(tmp_path / "o")])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "missing.png: no such file or folder" in err


def _disk_full_at(monkeypatch, suffix: str) -> None:
    """The disk is full when an output file whose name ends with `suffix` is renamed into place."""
    import errno

    from worldtune import outputs

    real = outputs.os.replace

    def full(tmp, path):
        if str(path).endswith(suffix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tmp, path)

    monkeypatch.setattr(outputs.os, "replace", full)
    monkeypatch.delenv("WORLDTUNE_DEBUG", raising=False)


def test_an_annotated_image_that_cannot_be_written_is_an_error_naming_the_cause(setup, tmp_path, monkeypatch,
                                                                               capsys):
    """cv2.imwrite tells a failure (full disk, no permission) only by returning False: the picture is
    encoded, then written as any output file, so the message names the file and the cause."""
    _disk_full_at(monkeypatch, ".jpg")
    out = tmp_path / "o"
    assert _predict(setup, out, "--classes", "cat") == 2
    err = capsys.readouterr().err
    # on a line of its own, after the progress bar's last state (and no bar drawn after it)
    assert re.search(rf"\nworldtune predict: error: cannot write {re.escape(str(out))}/\w+\.jpg: No space left on "
                     rf"device\n$", err), err
    assert not [p for p in out.iterdir() if p.suffix == ".jpg" or p.name.startswith(".")]  # nothing cut short


def test_a_full_disk_at_the_summary_names_it_and_leaves_no_cut_short_file(setup, tmp_path, monkeypatch, capsys):
    """A failed write() names no file ("[Errno 28] No space left on device"): the error says which."""
    _disk_full_at(monkeypatch, "predictions.json")
    out = tmp_path / "o"
    assert _predict(setup, out, "--classes", "cat") == 2
    assert f"worldtune predict: error: cannot write {out}/predictions.json: No space left on device" in \
        capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json" or p.name.startswith(".")) == \
        ["astronaut.json", "coffee.json"]  # what was written stays; no temporary or partial summary


def test_read_vocabulary(tmp_path):
    assert read_vocabulary(" person, red car ,", None) == ["person", "red car"]
    assert read_vocabulary(None, None) is None
    txt = tmp_path / "classes.txt"
    txt.write_text("# my classes\nperson\n\nred car\n")
    assert read_vocabulary(None, txt) == ["person", "red car"]
    good = tmp_path / "good.json"
    good.write_text(json.dumps([["bike", "bicycle"], "car"]))
    assert read_vocabulary(None, good) == ["bike", "car"]
    bad = tmp_path / "bad.json"
    for content, message in (("{oops", "malformed JSON"), ('{"a": 1}', "expected a JSON list"),
                             ('[["a"], []]', "entry 1 must be a non-empty list"), ("[]", "holds no class text")):
        bad.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            read_vocabulary(None, bad)
        assert str(bad) in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        read_vocabulary(None, tmp_path / "nope.json")
    with pytest.raises(ValueError, match="no class text"):
        read_vocabulary(" , ", None)
    with pytest.raises(ValueError, match="class 2 is empty"):  # not dropped: later indices would shift
        read_vocabulary("rocket, ,cat face", None)
    txt.write_bytes("\ufeffperson\ncar\n".encode("utf-8"))  # saved with a byte-order mark
    assert read_vocabulary(None, txt) == ["person", "car"]


def test_a_class_text_file_in_the_wrong_format_is_one_line_before_any_model_loads(tmp_path, capsys):
    texts = tmp_path / "classes.txt"  # JSON, but read as one text per line it would be one class
    texts.write_text('[["person"], ["red car"]]')
    assert main(["predict", str(tmp_path), "--weights", str(tmp_path / "nope.pt"), "--class-texts", str(texts)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"worldtune predict: error: class-text file {texts} holds a JSON list")
    assert err.rstrip().endswith("rename it to .json") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize("weights, why", [
    ("v2-s-coco", "--weights v2-s-coco is an official checkpoint, which holds no class texts"),
    ("none", "--weights none (random weights) brings no class texts"),
    ("None", "--weights none (random weights) brings no class texts"),  # load_model reads it as none too
])
def test_forgetting_the_classes_is_told_before_any_download(command, weights, why, tmp_path, monkeypatch, capsys):
    import worldtune.zoo

    def download(*args, **kwargs):
        raise AssertionError("the checkpoint was fetched before the missing vocabulary was told")

    monkeypatch.setattr(worldtune.zoo, "resolve_weights", download)
    where = [str(tmp_path)] if command == "predict" else ["--out", str(tmp_path / "m.onnx")]
    assert main([command, *where, "--weights", weights, "--variant", "n", "--text-model", "random"]) == 2
    assert capsys.readouterr().err == (f"worldtune {command}: error: no vocabulary: {why}; give --classes "
                                       "'person,car' or --class-texts FILE\n")


def test_inputs_and_output_names(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for name in ("x.JPG", "predictions.png", "readme.md"):
            (tmp_path / folder / name).write_bytes(b"")
    paths, missing = expand_inputs([tmp_path / "a", tmp_path / "b" / "x.JPG", tmp_path / "c", tmp_path / "a"])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "a/predictions.png", "a/x.JPG", "b/x.JPG", "a/predictions.png", "a/x.JPG"]
    assert missing == [{"image": str(tmp_path / "c"), "error": "no such file or folder"}]
    used = {"predictions"}
    # Names never collide, with each other or with the summary predictions.json.
    out = tmp_path / "out"
    assert [_output_name(p, used, out, set()) for p in paths] == [
        "predictions_1.png", "x.jpg", "x_1.jpg", "predictions_2.png", "x_2.jpg"]
    # --out is an input folder: no input image is overwritten
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    inputs = {(tmp_path / "a" / "x.jpg").resolve()}
    assert _output_name(tmp_path / "a" / "x.jpg", set(), tmp_path / "a", inputs) == "x_1.jpg"


def test_videos_and_unsearched_subfolders_are_reported_not_passed_over(tmp_path):
    (tmp_path / "photos" / "day 2").mkdir(parents=True)
    (tmp_path / "photos" / ".cache").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    (tmp_path / "photos" / "clip.MP4").write_bytes(b"")
    (tmp_path / "only_folders" / "day 1").mkdir(parents=True)
    (tmp_path / "walk.mov").write_bytes(b"")
    paths, skipped = expand_inputs([tmp_path / "photos", tmp_path / "only_folders", tmp_path / "walk.mov"])
    assert paths == [tmp_path / "photos" / "a.jpg"]
    errors = {Path(s["image"]).name: s["error"] for s in skipped}
    assert errors["clip.MP4"].startswith("a video: predict reads images only")
    assert errors["walk.mov"] == errors["clip.MP4"]
    assert errors["photos"] == "1 subfolder(s) not searched (day 2): give them as inputs too"  # not the hidden one
    assert errors["only_folders"].startswith("folder has no images") and errors["only_folders"].endswith(
        "; 1 subfolder(s) not searched (day 1): give them as inputs too")
    assert len(skipped) == 4
    # a subfolder given as an input too, or holding one, is not reported
    (tmp_path / "photos" / "day 2" / "am").mkdir()
    _, skipped = expand_inputs([tmp_path / "photos", tmp_path / "photos" / "day 2" / "am"])
    assert not any("subfolder" in s["error"] for s in skipped)


def test_a_very_thin_image_is_predicted(setup, tmp_path, capsys):
    ckpt, clip, images = setup
    cv2.imwrite(str(tmp_path / "strip.png"), np.zeros((1, 2000, 3), np.uint8))  # a side that rounds to 0 px
    code = main(["predict", str(tmp_path / "strip.png"), str(images / "coffee.jpg"), "--weights", str(ckpt),
                 "--text-model", str(clip), "--classes", "cat", "--imgsz", str(IMGSZ), "--out", str(tmp_path / "o")])
    assert code == 0
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert summary["skipped"] == [] and len(summary["images"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before anything loads
        main(["predict", str(images), "--batch-size", "0"])
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_a_jpeg_cut_short_is_predicted_with_a_warning(setup, tmp_path, capsys):
    ckpt, clip, images = setup
    whole = (images / "coffee.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # OpenCV decodes it, the lower half grey
    code = main(["predict", str(tmp_path / "cut.jpg"), str(images / "coffee.jpg"), "--weights", str(ckpt),
                 "--text-model", str(clip), "--classes", "cat", "--imgsz", str(IMGSZ), "--out", str(tmp_path / "o")])
    assert code == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'cut.jpg'} is cut short" in err and "as motion photos do" in err
    summary = json.loads((tmp_path / "o" / "predictions.json").read_text())
    records = {Path(r["image"]).name: r for r in summary["images"]}
    assert records["cut.jpg"].get("cut_short") is True and "cut_short" not in records["coffee.jpg"]


@pytest.mark.parametrize("command, option", [("predict", "--score-thr"), ("export", "--dynamic-vocab")])
def test_help(command, option, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert option in capsys.readouterr().out


def test_classes_and_class_texts_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict", "x.jpg", "--weights", "none", "--classes", "a", "--class-texts", "t.json"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_most_confident_label_is_drawn_on_top():
    import cv2

    from worldtune.cli.predict import PALETTE, draw_detections

    image = np.full((200, 300, 3), 255, np.uint8)
    box = [20.0, 60.0, 120.0, 150.0]
    det = {"boxes_xyxy": torch.tensor([box, box]), "scores": torch.tensor([0.13, 0.07]),
           "labels": torch.tensor([0, 1])}
    out = draw_detections(image, det, ["cat face", "coffee mug"])
    font_scale, thick = max(0.4, 500 / 2400), 1
    (_, th), base = cv2.getTextSize("cat face 0.13", cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
    corner = out[60 - base - 2 - th - 1, 20]  # top-left pixel of the label backgrounds, both drawn there
    assert tuple(int(v) for v in corner[::-1]) == PALETTE[0]  # RGB of label 0, the higher score


def test_many_inputs_and_subfolders_expand_quickly(tmp_path):
    """A shell glob gives thousands of inputs: whether a subfolder is searched is one look-up, not a
    walk over every input's parents per subfolder (minutes for 5000 inputs and 200 subfolders)."""
    import time

    for i in range(100):
        (tmp_path / "photos" / f"day {i}").mkdir(parents=True)
    (tmp_path / "photos" / "day 7" / "am").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"")
    inputs = [tmp_path / "photos"] + [tmp_path / "photos" / "a.jpg"] * 2000 + [tmp_path / "photos" / "day 7" / "am"]
    start = time.perf_counter()
    paths, skipped = expand_inputs(inputs)
    assert time.perf_counter() - start < 1.0
    assert len(paths) == 2001 and skipped[0]["error"].startswith("99 subfolder(s) not searched (day 0, day 1, day 10")


def test_a_slim_file_without_its_tower_predicts_its_classes_with_no_clip(setup, tmp_path, monkeypatch, capsys):
    import worldtune.model.loading as loading

    ckpt, clip, images = setup
    run = tmp_path / "best.pt"
    torch.save({"format": "worldtune-train-1", "ema": torch.load(ckpt)["state_dict"], "vocabulary": CLASSES,
                "config": {"model": {"text_model": str(clip)}, "data": {"imgsz": IMGSZ}},
                "text_tower": {"num_heads": 2}}, run)
    slim = tmp_path / "light.safetensors"
    assert main(["slim", str(run), "--out", str(slim), "--no-text-tower"]) == 0
    assert _predict(setup, tmp_path / "full", "--classes", ",".join(CLASSES)) == 0
    expected = json.loads((tmp_path / "full" / "predictions.json").read_text())["images"]
    assert sum(len(r["detections"]) for r in expected) > 0
    with monkeypatch.context() as m:
        m.setattr(loading, "build_text_model", lambda *a, **k: pytest.fail("a CLIP text model was built"))
        for name, extra in (("own", []), ("same", ["--classes", ",".join(CLASSES)])):
            assert main(["predict", str(images), "--weights", str(slim), "--out", str(tmp_path / name), *extra]) == 0
            summary = json.loads((tmp_path / name / "predictions.json").read_text())
            assert summary["classes"] == CLASSES and summary["imgsz"] == IMGSZ
            # the same detections; the scores to the last bits of the embeddings (encoded with
            # another thread count by `slim` than by `predict`, so summed in another order)
            for got, want in zip(summary["images"], expected):
                assert [(d["label"], d["box_xyxy"]) for d in got["detections"]] == \
                    [(d["label"], d["box_xyxy"]) for d in want["detections"]]
                np.testing.assert_allclose([d["score"] for d in got["detections"]],
                                           [d["score"] for d in want["detections"]], atol=2e-5)
    capsys.readouterr()
    # other class texts need the tower: where it cannot be had, the message says what the file can do
    assert main(["predict", str(images), "--weights", str(slim), "--classes", "dog", "--text-model",
                 str(tmp_path / "no_clip"), "--out", str(tmp_path / "dog")]) == 2
    err = capsys.readouterr().err
    assert "no_clip" in err and f"{slim} stores the embeddings of its own 3 class texts only" in err
    assert "(leave out --text-model, and --classes/--class-texts or name exactly those texts" in err


def test_a_runs_own_classes_are_given_with_the_datasets_category_ids(setup, tmp_path, capsys):
    """Detections of the classes a run was trained on carry the training file's category ids (which
    COCO tools and the user's own data use), not only the label counted from 0; other class texts
    carry none, as no dataset numbers them."""
    from worldtune.engine.checkpoint import CheckpointLoadError, load_checkpoint_file

    ckpt, clip, images = setup
    run = tmp_path / "best.pt"
    ids = [3, 17, 90]  # non-contiguous, as exports number them
    content = {"format": "worldtune-train-1", "ema": torch.load(ckpt)["state_dict"], "vocabulary": CLASSES,
               "category_ids": ids, "config": {"model": {"text_model": str(clip)}, "data": {"imgsz": IMGSZ}},
               "text_tower": {"num_heads": 2}}
    torch.save(content, run)
    slim = tmp_path / "light.safetensors"
    assert main(["slim", str(run), "--out", str(slim), "--no-text-tower"]) == 0
    for name, weights, extra in (("run", run, ["--text-model", str(clip)]), ("slim", slim, [])):
        assert main(["predict", str(images), "--weights", str(weights), "--out", str(tmp_path / name), *extra]) == 0
        summary = json.loads((tmp_path / name / "predictions.json").read_text())
        assert summary["category_ids"] == ids
        dets = [d for r in summary["images"] for d in r["detections"]]
        assert dets and all(d["category_id"] == ids[d["label"]] and d["name"] == CLASSES[d["label"]] for d in dets)
        per_image = json.loads((tmp_path / name / "coffee.json").read_text())["detections"]
        assert all(d["category_id"] == ids[d["label"]] for d in per_image)
    assert main(["predict", str(images), "--weights", str(run), "--text-model", str(clip), "--classes", "cat,person",
                 "--out", str(tmp_path / "other")]) == 0
    summary = json.loads((tmp_path / "other" / "predictions.json").read_text())
    assert "category_ids" not in summary
    assert all("category_id" not in d for r in summary["images"] for d in r["detections"])
    # a hand-edited file whose ids do not pair with its class texts is refused, naming the entry
    torch.save({**content, "category_ids": ids[:2]}, run)
    with pytest.raises(CheckpointLoadError, match=r"best.pt: its 'category_ids' entry must be a list of 3 integer "
                                                  r"ids, one per class text of 'vocabulary', got \[3, 17\]"):
        load_checkpoint_file(run)
