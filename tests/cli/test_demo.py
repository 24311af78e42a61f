"""`worldtune demo`: offline end to end (a shortened run; the full demo is tuned to ~5 minutes)."""
import argparse
from pathlib import Path

import pytest

from worldtune.cli import main
from worldtune.cli.demo import demo_config


pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_config_keeps_the_recipe_and_shrinks_sizes(tmp_path):
    data = {"train_ann": "t.json", "train_images": "t", "val_ann": "v.json", "val_images": "v",
            "class_texts": "c.json", "class_names": ["a", "b", "c"]}
    args = argparse.Namespace(epochs=30, imgsz=256, batch_size=8, lr=2e-3, device="cpu", workers=0, seed=0,
                              threads=0, cpu_amp=False)
    cfg = demo_config(data, tmp_path, args)
    assert not cfg.train.cpu_amp  # fp32 on CPU unless asked (--cpu-amp)
    assert demo_config(data, tmp_path, argparse.Namespace(**dict(vars(args), cpu_amp=True))).train.cpu_amp
    assert (cfg.model.variant, cfg.model.text_model, cfg.model.weights) == ("n", "random", "none")
    assert (cfg.data.imgsz, cfg.data.num_texts, cfg.train.epochs, cfg.train.close_mosaic_epochs) == (256, 3, 30, 10)
    assert cfg.data.mask_refine and cfg.data.affine_scale == [0.5, 1.5]  # the v2-S recipe's augmentation
    assert (cfg.train.optimizer, cfg.train.grad_clip, cfg.train.ema_momentum) == ("adamw", 10.0, 1e-4)


def test_demo_runs_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    code = main(["demo", "--out", str(tmp_path), "--epochs", "1", "--num-train", "4", "--imgsz", "64",
                 "--batch-size", "2", "--device", "cpu", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "untrained model: AP" in out
    rows = [line.split() for line in out.splitlines()
            if line.startswith(("untrained ", "fine-tuned ")) and ":" not in line]
    assert [r[0] for r in rows] == ["untrained", "fine-tuned"]
    assert all(0.0 <= float(v) <= 100.0 for r in rows for v in r[-3:])  # AP, AP50, AP75
    assert "predictions on a val image (best.pt, epoch 1, AP" in out
    assert (tmp_path / "demo_predictions.jpg").stat().st_size > 1000
    runs = list(tmp_path.glob("run-*"))
    assert len(runs) == 1 and (runs[0] / "last.pt").is_file() and (runs[0] / "config.yaml").is_file()
    assert (Path(tmp_path) / "data" / "annotations" / "train.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--num-train", "0"], "--num-train: must be at least 1"),
    (["--imgsz", "100"], "--imgsz: must be a multiple of 32"),
    (["--epochs", "0"], "--epochs: must be at least 1"),
    (["--seed", "-1"], "--seed: must be 0 or more"),
])
def test_demo_refuses_bad_arguments_before_building_anything(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path / "d"), *extra])
    assert message in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_demo_refuses_a_missing_gpu_or_a_file_as_folder(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["demo", "--out", str(tmp_path / "d"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "d").exists()
    (tmp_path / "f").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_the_drawn_val_image_is_the_one_with_the_most_objects(tmp_path):
    import json

    from worldtune.cli.demo import busiest_image

    ann = {"images": [{"id": i, "file_name": f"{i}.jpg"} for i in (1, 2, 3)],
           "annotations": [{"image_id": i} for i in (1, 2, 2, 3, 3)]}
    (tmp_path / "val.json").write_text(json.dumps(ann))
    assert busiest_image(tmp_path / "val.json", tmp_path) == tmp_path / "2.jpg"  # a tie goes to the lower id


def test_the_picture_draws_only_the_detections_at_or_above_the_score_threshold(tmp_path, monkeypatch):
    """No trained model: the detections are given, three boxes far apart with scores around 0.3."""
    from types import SimpleNamespace

    import cv2
    import numpy as np
    import torch

    import worldtune.model.loading
    import worldtune.model.predict
    from worldtune.cli.demo import draw_predictions

    boxes = [[10, 20, 50, 60], [110, 20, 150, 60], [210, 20, 250, 60]]
    scores = [0.9, 0.29, 0.3]  # the middle one is under the threshold (0.3 itself is drawn)
    det = {"boxes_xyxy": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
           "labels": torch.tensor([0, 1, 0])}
    vocab = []
    monkeypatch.setattr(worldtune.model.loading, "load_model",
                        lambda checkpoint, text_model: SimpleNamespace(set_vocabulary=vocab.extend))
    monkeypatch.setattr(worldtune.model.predict, "predict", lambda model, images, imgsz: [det])
    image = tmp_path / "val.png"
    cv2.imwrite(str(image), np.full((100, 280, 3), 128, np.uint8))
    cfg = SimpleNamespace(model=SimpleNamespace(text_model="random"), data=SimpleNamespace(imgsz=64))
    out = draw_predictions(tmp_path / "model.pt", cfg, image, ["cat", "cup"], tmp_path / "pred.png")
    drawn = cv2.imread(str(out)).astype(int)
    assert vocab == ["cat", "cup"]
    for (x1, y1, x2, y2), score in zip(boxes, scores):
        changed = (np.abs(drawn[y1:y2 + 1, x1:x2 + 1] - 128).max(-1) > 30).any(0)  # per column
        if score >= 0.3:
            assert changed.all(), score  # the top and bottom edges cross every column
        else:
            assert not changed.any(), score
