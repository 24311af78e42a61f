"""What a run's checkpoint gives its users: the training classes and image size travel with it,
also in the slim safetensors file `worldtune slim` writes."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tiny_run import tiny_config
from worldtune.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from worldtune.engine import train as T

    root = tmp_path_factory.mktemp("run_use")
    cfg = tiny_config(root, epochs=1, imgsz=96)
    T.fit(cfg)
    names = [texts[0] for texts in json.loads(Path(cfg.data.class_texts).read_text())]
    return cfg, root, names


def _outputs(model, seed=0):
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(images)
    return torch.cat([c.flatten() for c in out.cls_logits] + [r.flatten() for r in out.box_dist_logits])


def test_checkpoint_carries_the_training_vocabulary_and_image_size(run, capsys, monkeypatch):
    import worldtune.model.predict as predict_module
    from worldtune.model.loading import load_model

    cfg, root, names = run
    model = load_model(root / "run" / "last.pt", text_model=cfg.model.text_model)
    assert model.vocabulary == names and model.trained_imgsz == 96
    assert model.vocab_feats.numel() == 0  # encoded at first use, not at load (another may be set first)

    seen = []
    real_predict = predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: seen.append(k["imgsz"]) or real_predict(*a, **k))
    model.predict([np.zeros((50, 70, 3), np.uint8)])
    model.predict([np.zeros((50, 70, 3), np.uint8)], imgsz=64)
    assert seen == [96, 64]  # the training size unless told otherwise
    assert model.vocab_feats.shape == (len(names), 512)

    capsys.readouterr()
    first = sorted((root / "data" / "images").iterdir())[0]
    out = root / "preds"
    assert main(["predict", "--weights", str(root / "run" / "last.pt"), "--text-model", cfg.model.text_model,
                 "--device", "cpu", str(first), "--out", str(out)]) == 0
    assert f"vocabulary: the checkpoint's {len(names)} training classes ({names[0]}" in capsys.readouterr().err
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["classes"] == names and summary["imgsz"] == 96


@pytest.mark.parametrize("tower", [True, False])
def test_slim_file_loads_as_the_checkpoint_does(run, tower, capsys):
    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model.loading import load_model

    cfg, root, names = run
    last, slim = root / "run" / "last.pt", root / f"slim_{tower}.safetensors"
    assert main(["slim", str(last), "--out", str(slim)] + ([] if tower else ["--no-text-tower"])) == 0
    assert f"wrote {slim}" in capsys.readouterr().out
    assert slim.stat().st_size < last.stat().st_size / 2  # no optimizer, raw weights or RNG states
    content = load_checkpoint_file(slim)
    assert any(k.startswith("backbone.text_model.") for k in content["ema"]) == tower
    full = load_model(last, text_model=cfg.model.text_model)
    # without its tower, the file is completed from --text-model: the same folder the run used
    light = load_model(slim, text_model=cfg.model.text_model)
    assert light.vocabulary == full.vocabulary == names and light.trained_imgsz == 96
    assert torch.equal(_outputs(light), _outputs(full))
    # with no --text-model given, the run's own local CLIP folder (saved in its config) is used
    assert torch.equal(_outputs(load_model(slim)), _outputs(full))


def test_slim_file_is_not_resumable_and_wants_safetensors(run, capsys):
    from worldtune.engine import train as T

    cfg, root, _ = run
    slim = root / "slim_True.safetensors"
    if not slim.exists():
        assert main(["slim", str(root / "run" / "last.pt"), "--out", str(slim)]) == 0
    with pytest.raises(ValueError, match="not a worldtune training checkpoint"):
        T.fit(cfg, resume=slim)
    assert main(["slim", str(root / "run" / "last.pt"), "--out", str(root / "x.pt")]) == 2
    assert "name a .safetensors file" in capsys.readouterr().err
    new = copy.deepcopy(cfg)
    new.out, new.model.weights = str(root / "from_slim"), str(slim)  # but a new run can start from it
    capsys.readouterr()
    assert T.fit(new)["status"] == "finished"
    assert f"text tower: the frozen weights in {slim} (model.text_model=" in capsys.readouterr().out


def test_slim_of_an_official_file_keeps_the_weights_only(tmp_path):
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model import build_model

    state = build_model("n", None).state_dict()
    # an mmengine-style file whose extra entries are not JSON (numpy and tensor values)
    torch.save({"state_dict": state, "meta": {"epoch": np.int64(80)}, "epoch": torch.tensor(80)}, tmp_path / "o.pth")
    slim_checkpoint(tmp_path / "o.pth", tmp_path / "o.safetensors")
    content = load_checkpoint_file(tmp_path / "o.safetensors")
    assert content["format"] == "worldtune-weights-1" and "epoch" not in content and "config" not in content
    assert content["ema"].keys() == state.keys()
    assert all(torch.equal(content["ema"][k], v) for k, v in state.items())


def test_export_of_a_run_checkpoint_takes_its_classes_and_size(run, tmp_path):
    cfg, root, names = run
    out = tmp_path / "run.onnx"
    assert main(["export", "--weights", str(root / "run" / "last.pt"), "--text-model", cfg.model.text_model,
                 "--out", str(out), "--no-verify"]) == 0
    info = json.loads((tmp_path / "run.vocab.json").read_text())
    assert info["texts"] == names and info["imgsz"] == 96
