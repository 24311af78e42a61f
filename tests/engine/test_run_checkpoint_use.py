"""What a run's checkpoint gives its users: the training classes and image size travel with it."""
import json

import numpy as np

from tests.helpers.tiny_run import tiny_config


def test_checkpoint_carries_the_training_vocabulary_and_image_size(tmp_path, capsys, monkeypatch):
    import worldtune.model.predict as predict_module
    from worldtune.cli import main
    from worldtune.engine import train as T
    from worldtune.model.loading import load_model

    cfg = tiny_config(tmp_path, epochs=1, imgsz=96)
    T.fit(cfg)
    names = [texts[0] for texts in json.loads(open(cfg.data.class_texts).read())]
    model = load_model(tmp_path / "run" / "last.pt", text_model=cfg.model.text_model)
    assert model.vocabulary == names and model.trained_imgsz == 96

    seen = []
    real_predict = predict_module.predict
    monkeypatch.setattr(predict_module, "predict", lambda *a, **k: seen.append(k["imgsz"]) or real_predict(*a, **k))
    model.predict([np.zeros((50, 70, 3), np.uint8)])
    model.predict([np.zeros((50, 70, 3), np.uint8)], imgsz=64)
    assert seen == [96, 64]  # the training size unless told otherwise

    capsys.readouterr()
    image = tmp_path / "data" / "images"
    first = sorted(image.iterdir())[0]
    assert main(["predict", "--weights", str(tmp_path / "run" / "last.pt"), "--text-model", cfg.model.text_model,
                 "--device", "cpu", str(first), "--out", str(tmp_path / "preds")]) == 0
    assert f"vocabulary: the checkpoint's {len(names)} training classes ({names[0]}" in capsys.readouterr().err
    summary = json.loads((tmp_path / "preds" / "predictions.json").read_text())
    assert summary["classes"] == names and summary["imgsz"] == 96
