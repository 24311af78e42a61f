"""`worldtune slim`: weights that no model of their variant could load are refused; a file without
its text tower stores its class texts' embeddings, which predict and eval use with no CLIP model."""
import json

import numpy as np
import pytest
import torch

from worldtune.cli import main
from worldtune.model import build_model


@pytest.fixture(scope="module")
def n_weights():
    return build_model("n", None).state_dict()


def _run_file(path, state, variant="n"):
    torch.save({"format": "worldtune-train-1", "ema": state, "config": {"model": {"variant": variant}}}, path)
    return path


def test_a_hand_edited_tensor_is_refused_in_one_line(n_weights, tmp_path, capsys):
    key = "neck.top_down_layers.0.main_conv.conv.weight"
    good = _run_file(tmp_path / "good.pt", n_weights)
    assert main(["slim", str(good), "--out", str(tmp_path / "good.safetensors")]) == 0
    capsys.readouterr()
    bad = _run_file(tmp_path / "bad.pt", {**n_weights, key: torch.zeros(3, 3)})
    out = tmp_path / "bad.safetensors"
    assert main(["slim", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err
    assert f"{key}: file (3, 3) vs model {tuple(n_weights[key].shape)}" in err
    assert not out.exists()


def test_weights_of_another_variant_than_the_config_names_are_refused(n_weights, tmp_path, capsys):
    other = _run_file(tmp_path / "s_run.pt", n_weights, variant="s")
    assert main(["slim", str(other), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(other) in err and "do not fit a 's' model" in err
    assert "backbone.image_model.stem.conv.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3)" in err
    not_a_detector = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_a_detector)
    assert main(["slim", str(not_a_detector), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert f"{not_a_detector}: not the weights of a YOLO-World model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory):
    """A run checkpoint with a tiny random CLIP tower (its local folder named in the config) and 3 classes."""
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.model.text_encoder import CLIPTextEncoder

    folder = tmp_path_factory.mktemp("tower_run")
    clip = make_clip_text_folder(folder / "clip", hidden=64, layers=1, heads=1, projection=512)
    torch.manual_seed(0)
    model = build_model("n", CLIPTextEncoder.from_pretrained(str(clip)), num_classes=3).eval()
    torch.save({"format": "worldtune-train-1", "ema": model.state_dict(), "vocabulary": ["cat", "red car", "dog"],
                "config": {"model": {"variant": "n", "text_model": str(clip)}, "data": {"imgsz": 64}},
                "text_tower": {"num_heads": 1}}, folder / "best.pt")
    return folder / "best.pt", clip


@pytest.fixture(scope="module")
def light(tower_run):
    """`tower_run` slimmed without its tower: (file, slim_checkpoint's result, the checkpoint's model
    with its tower)."""
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.model.loading import load_model

    checkpoint, clip = tower_run
    out = checkpoint.with_name("light.safetensors")
    return out, slim_checkpoint(checkpoint, out, text_tower=False), load_model(checkpoint, text_model=str(clip))


def test_a_file_without_its_tower_stores_the_embeddings_its_tower_gives(light, tmp_path):
    from safetensors import safe_open

    from worldtune.cli.slim import slim_checkpoint
    from worldtune.engine.checkpoint import VOCAB_FEATS_KEY, load_checkpoint_file

    out, result, full = light
    assert result["vocabulary_feats"] == 3 and result["note"] == ""
    with safe_open(str(out), framework="pt") as f:
        stored = f.get_tensor(VOCAB_FEATS_KEY)
    expected = full.vocabulary_feats()  # what predicting with the checkpoint encodes
    assert stored.shape == (3, 512) and torch.equal(stored, expected)
    torch.testing.assert_close(stored.norm(dim=-1), torch.ones(3))
    # reading the file: a run entry, not a weight (a strict load reports no unexpected key)
    content = load_checkpoint_file(out)
    assert VOCAB_FEATS_KEY not in content["ema"] and torch.equal(content["vocabulary_feats"], stored)
    assert result["tensors"] == len(content["ema"])
    # slimmed again, the file keeps them (there is no tower left to encode with)
    again = tmp_path / "again.safetensors"
    assert slim_checkpoint(out, again)["vocabulary_feats"] == 3
    assert torch.equal(load_checkpoint_file(again)["vocabulary_feats"], stored)


def test_a_file_with_its_tower_stores_no_embeddings(tower_run, tmp_path):
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.engine.checkpoint import load_checkpoint_file, stored_vocabulary

    out = tmp_path / "full.safetensors"
    assert slim_checkpoint(tower_run[0], out)["vocabulary_feats"] == 0  # the tower encodes them afresh
    assert "vocabulary_feats" not in load_checkpoint_file(out) and stored_vocabulary(out) is None


def test_a_file_without_its_tower_predicts_its_vocabulary_without_clip(tower_run, light):
    from worldtune.engine.checkpoint import stored_vocabulary
    from worldtune.model.detector import YOLOWorld
    from worldtune.model.postprocess import PostprocessConfig

    out, _, full = light
    assert stored_vocabulary(out) == ["cat", "red car", "dog"] and stored_vocabulary(tower_run[0]) is None
    model = YOLOWorld.from_pretrained(out, text_model=None)
    assert model.text_model is None and model.vocabulary == ["cat", "red car", "dog"]
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cfg = PostprocessConfig(score_thr=0.0, max_per_img=20)
    (expected,), (actual,) = full.predict(image, imgsz=64, cfg=cfg), model.predict(image, imgsz=64, cfg=cfg)
    assert actual["names"] == expected["names"] and len(actual["names"]) == 20
    torch.testing.assert_close(actual["scores"], expected["scores"])
    with pytest.raises(RuntimeError, match="no text tower"):  # other texts need one
        model.set_vocabulary(["bird"])


def test_a_file_without_its_tower_loaded_with_one_encodes_its_texts_afresh(tower_run, light):
    from worldtune.model.loading import load_model

    out, _, full = light
    with_tower = load_model(out, text_model=str(tower_run[1]))
    assert with_tower.vocab_feats.numel() == 0  # names only, as from the checkpoint
    assert torch.equal(with_tower.vocabulary_feats(), full.vocabulary_feats())


def test_a_run_whose_tokenizer_is_gone_is_slimmed_without_embeddings(tower_run, tmp_path, capsys):
    checkpoint, _ = tower_run
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["model"]["text_model"] = str(tmp_path / "deleted_clip")
    torch.save(ckpt, tmp_path / "moved.pt")
    out = tmp_path / "light.safetensors"
    assert main(["slim", str(tmp_path / "moved.pt"), "--out", str(out), "--no-text-tower"]) == 0
    captured = capsys.readouterr()
    assert "text tower left out" in captured.out and "embeddings" not in captured.out
    assert "its class texts' embeddings are not stored" in captured.err and "deleted_clip" in captured.err
    assert out.exists()


def test_stored_embeddings_of_another_count_than_the_vocabulary_are_refused(light, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from worldtune.engine.checkpoint import VOCAB_FEATS_KEY, CheckpointLoadError, load_checkpoint_file

    out = light[0]
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(out))
    tensors[VOCAB_FEATS_KEY] = tensors[VOCAB_FEATS_KEY][:2].clone()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointLoadError, match=r"bad.safetensors: its 'vocabulary_feats' entry must be float "
                                                  r"embeddings of shape \(3, D\).*got \(2, 512\)"):
        load_checkpoint_file(tmp_path / "bad.safetensors")


@pytest.fixture(scope="module")
def scored_run(tower_run):
    """For eval: (run checkpoint, its slim file without the tower, COCO file, image folder). The
    checkpoint has `tower_run`'s tower and class texts and scores that vary with the image and the
    text (calibrated on the two small images); the COCO file's categories are its class texts, its
    objects the checkpoint's own second-best box of each class, so its AP depends on the scores' order."""
    import cv2

    from tests.helpers.calibrated_model import make_calibrated_model
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.model.postprocess import PostprocessConfig
    from worldtune.model.predict import letterbox_for_test
    from worldtune.model.text_encoder import CLIPTextEncoder

    folder = tower_run[0].parent / "scored"
    (folder / "images").mkdir(parents=True)
    names = ["cat", "red car", "dog"]
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    tower = CLIPTextEncoder.from_pretrained(str(tower_run[1]))
    boxed = torch.from_numpy(np.stack([letterbox_for_test(rgb, 64)[0] for rgb in photos])).permute(0, 3, 1, 2)
    model = make_calibrated_model(boxed.float() / 255, tower.encode_vocabulary(names).expand(2, -1, -1),
                                  text_model=tower)
    model.set_vocabulary(names)
    images, annotations = [], []
    for image_id, rgb in enumerate(photos, 1):
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), rgb[..., ::-1])
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 64, "height": 48})
        (found,) = model.predict(rgb, imgsz=64, cfg=PostprocessConfig(score_thr=0.001))
        for label in sorted(set(found["labels"].tolist())):
            boxes = found["boxes_xyxy"][found["labels"] == label]  # best first
            x1, y1, x2, y2 = boxes[min(1, len(boxes) - 1)].tolist()
            annotations.append({"id": 10 * image_id + label, "image_id": image_id, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    ann = folder / "val.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    torch.save({"format": "worldtune-train-1", "ema": model.state_dict(), "vocabulary": names,
                "config": {"model": {"variant": "n", "text_model": str(tower_run[1])}, "data": {"imgsz": 64}},
                "text_tower": {"num_heads": 1}}, folder / "best.pt")
    slim_checkpoint(folder / "best.pt", folder / "light.safetensors", text_tower=False)
    return folder / "best.pt", folder / "light.safetensors", ann, folder / "images"


def _eval(weights, scored_run, out, *extra):
    _, _, ann, images = scored_run
    return main(["eval", "--weights", str(weights), "--ann", str(ann), "--images", str(images), "--workers", "0",
                 "--device", "cpu", "--json", str(out / "metrics.json"),
                 "--out-detections", str(out / "dets.json"), *extra])


def _scored(out):
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "dets.json").read_text())


def test_a_file_without_its_tower_is_evaluated_on_its_own_texts_without_clip(tower_run, scored_run, tmp_path,
                                                                              monkeypatch):
    import worldtune.model.loading as loading

    checkpoint, light = scored_run[:2]
    assert _eval(checkpoint, scored_run, tmp_path / "full", "--text-model", str(tower_run[1])) == 0
    expected, expected_dets = _scored(tmp_path / "full")
    assert 0.1 < expected["AP"] < 0.9
    texts = tmp_path / "texts.txt"
    texts.write_text("cat\nred car\ndog\n")
    monkeypatch.setattr(loading, "build_text_model", lambda *a, **k: pytest.fail("a CLIP text model was built"))
    for name, extra in (("names", []), ("texts", ["--class-texts", str(texts)])):
        assert _eval(light, scored_run, tmp_path / name, *extra) == 0
        metrics, dets = _scored(tmp_path / name)
        assert metrics["AP"] == pytest.approx(expected["AP"], abs=1e-6)
        assert metrics["per_class"] == pytest.approx(expected["per_class"], abs=1e-6)
        # the same boxes; the scores to the last bits of the embeddings (encoded by `slim`, with
        # another thread count than `eval`'s)
        assert [(d["image_id"], d["category_id"]) for d in dets] == \
            [(d["image_id"], d["category_id"]) for d in expected_dets]
        np.testing.assert_allclose([d["bbox"] for d in dets], [d["bbox"] for d in expected_dets], atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in dets], [d["score"] for d in expected_dets], atol=2e-5)


def test_a_file_without_its_tower_and_other_class_texts_is_refused_saying_how(tower_run, scored_run, tmp_path,
                                                                              monkeypatch, capsys):
    import shutil

    import worldtune.model.loading as loading
    from worldtune.cli.slim import slim_checkpoint

    clip = shutil.copytree(tower_run[1], tmp_path / "clip")
    ckpt = torch.load(scored_run[0], weights_only=True)
    ckpt["config"]["model"]["text_model"] = str(clip)
    torch.save(ckpt, tmp_path / "run.pt")
    light = tmp_path / "light.safetensors"
    assert slim_checkpoint(tmp_path / "run.pt", light, text_tower=False)["vocabulary_feats"] == 3
    shutil.rmtree(clip)  # the run's CLIP folder is gone, and the default hub id cannot be had (offline)
    monkeypatch.setattr(loading, "DEFAULT_TEXT_MODEL", str(tmp_path / "offline_hub_id"))
    texts = tmp_path / "texts.txt"
    texts.write_text("cat\nred car\nbird\n")
    renamed = json.loads(scored_run[2].read_text())
    renamed["categories"][2]["name"] = "puppy"
    ann = tmp_path / "renamed.json"
    ann.write_text(json.dumps(renamed))
    for extra, differ in ((["--class-texts", str(texts)], "--class-texts differ: 'bird' for 'dog'"),
                          (["--ann", str(ann)], f"the category names of {ann} differ: 'puppy' for 'dog'")):
        assert _eval(light, scored_run, tmp_path / "out", *extra) == 2
        err = capsys.readouterr().err
        assert "offline_hub_id" in err and differ in err
        assert f"{light} stores the embeddings of its own 3 class texts only, which need no CLIP model" in err
        assert "other class texts need a CLIP text tower: give the one the run was trained with, --text-model" in err
    # its own texts with a --text-model that cannot be had: the message says to leave it out
    assert _eval(light, scored_run, tmp_path / "out", "--text-model", str(tmp_path / "gone")) == 2
    err = capsys.readouterr().err
    assert f"the category names of {scored_run[2]} are exactly those: leave out --text-model" in err
    # as the message says: the run's CLIP model, by --text-model
    assert _eval(light, scored_run, tmp_path / "out", "--class-texts", str(texts),
                 "--text-model", str(tower_run[1])) == 0
    assert "COCO box metrics" in capsys.readouterr().out


def test_the_python_api_evaluates_a_file_without_its_tower_on_its_own_texts(tower_run, scored_run, tmp_path):
    from worldtune.data.coco import CocoDetection
    from worldtune.data.loader import build_eval_loader
    from worldtune.data.presets import build_eval_dataset
    from worldtune.eval.evaluate import evaluate_model
    from worldtune.model.detector import YOLOWorld

    checkpoint, light, ann, images = scored_run

    def evaluate(model, class_texts=None):
        dataset = CocoDetection(ann, images, class_texts=class_texts)
        return evaluate_model(model, build_eval_loader(build_eval_dataset(dataset, imgsz=64)), dataset)

    expected = evaluate(YOLOWorld.from_pretrained(checkpoint, text_model=str(tower_run[1])))
    model = YOLOWorld.from_pretrained(light, text_model=None)
    assert model.text_model is None
    assert evaluate(model)["AP"] == pytest.approx(expected["AP"], abs=1e-6) and 0 < expected["AP"] < 1
    texts = tmp_path / "texts.txt"
    texts.write_text("cat\nred car\nbird\n")
    with pytest.raises(ValueError, match=r"the dataset's 3 class texts \['cat', 'red car', 'bird'\] need a CLIP "
                                         r"text tower.*its own 3 class texts \['cat', 'red car', 'dog'\] only"):
        evaluate(model, texts)
    assert model.vocabulary == ["cat", "red car", "dog"]


def test_the_embeddings_come_from_a_tower_in_the_head_count_the_run_recorded(tmp_path):
    """A run from a hub CLIP id (no folder config to read): the tower is rebuilt with the recorded 2 heads, not
    the one head that 64-wide CLIP heads would give, so the stored embeddings are those the run's tower gives."""
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model.loading import DEFAULT_TEXT_MODEL
    from worldtune.model.text_encoder import CLIPTextEncoder

    clip = make_clip_text_folder(tmp_path / "clip", hidden=64, layers=1, heads=2, projection=512)
    tower = CLIPTextEncoder.from_pretrained(str(clip)).eval()
    vocabulary = ["cat", "red car"]
    torch.save({"format": "worldtune-train-1", "ema": build_model("n", tower, num_classes=2).state_dict(),
                "vocabulary": vocabulary, "config": {"model": {"variant": "n", "text_model": DEFAULT_TEXT_MODEL}},
                "text_tower": {"num_heads": 2}}, tmp_path / "best.pt")
    out = tmp_path / "light.safetensors"
    assert slim_checkpoint(tmp_path / "best.pt", out, text_tower=False)["vocabulary_feats"] == 2
    torch.testing.assert_close(load_checkpoint_file(out)["vocabulary_feats"], tower.encode_vocabulary(vocabulary))


def test_stored_embeddings_that_are_not_float_rows_are_refused(light, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from worldtune.engine.checkpoint import VOCAB_FEATS_KEY, CheckpointLoadError, load_checkpoint_file

    with safe_open(str(light[0]), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(light[0]))
    for bad, shape in ((tensors[VOCAB_FEATS_KEY].to(torch.int64), r"\(3, 512\)"),
                       (tensors[VOCAB_FEATS_KEY][:, 0].clone(), r"\(3,\)")):  # one number per text
        save_file({**tensors, VOCAB_FEATS_KEY: bad}, str(tmp_path / "bad.safetensors"), metadata=metadata)
        with pytest.raises(CheckpointLoadError, match=rf"'vocabulary_feats' entry must be float .*got {shape}"):
            load_checkpoint_file(tmp_path / "bad.safetensors")


def test_a_vocabulary_that_is_no_list_is_no_stored_vocabulary(light, tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from worldtune.engine.checkpoint import WEIGHTS_METADATA_KEY, stored_vocabulary

    with safe_open(str(light[0]), framework="pt") as f:
        metadata = f.metadata()
    run = json.loads(metadata[WEIGHTS_METADATA_KEY])
    assert stored_vocabulary(light[0]) == run["vocabulary"]
    run["vocabulary"] = "cat,red car,dog"  # hand-edited
    save_file(load_file(str(light[0])), str(tmp_path / "edited.safetensors"),
              metadata={**metadata, WEIGHTS_METADATA_KEY: json.dumps(run)})
    assert stored_vocabulary(tmp_path / "edited.safetensors") is None


def test_a_run_whose_clip_folder_cannot_be_read_is_slimmed_without_embeddings(tower_run, tmp_path, monkeypatch):
    import errno

    from worldtune.cli.slim import slim_checkpoint
    from worldtune.model import text_encoder

    def unreadable(folder):
        raise PermissionError(errno.EACCES, "Permission denied", str(folder))

    monkeypatch.setattr(text_encoder, "load_folder_config", unreadable)
    result = slim_checkpoint(tower_run[0], tmp_path / "light.safetensors", text_tower=False)
    assert result["vocabulary_feats"] == 0
    assert result["note"].startswith(f"the run's CLIP tokenizer ({tower_run[1]}) is not available: ")
    assert "Permission denied" in result["note"]
