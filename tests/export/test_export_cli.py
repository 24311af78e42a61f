"""`worldtune export`: files written, built-in onnxruntime check, clear vocabulary errors.

Runs without a text tower (`--text-model none --text-feats EMB.npy`) to stay fast; the predict
tests cover the text tower path of `load_model`.
"""
import json

import numpy as np
import pytest
import torch

from worldtune.cli import main
from worldtune.model import build_model

CLASSES = ["person", "red car", "dog"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_cli")
    torch.manual_seed(0)
    ckpt = root / "model.pth"
    torch.save({"state_dict": build_model("n", None).state_dict()}, ckpt)  # official layout, no text keys
    feats = np.random.default_rng(0).standard_normal((len(CLASSES), 512)).astype(np.float32)
    np.save(root / "feats.npy", feats)
    (root / "classes.txt").write_text("\n".join(CLASSES))
    return root


def _export(root, out, *extra) -> int:
    return main(["export", "--weights", str(root / "model.pth"), "--text-model", "none",
                 "--text-feats", str(root / "feats.npy"), "--imgsz", "64", "--out", str(out), *extra])


def test_export_nms_dynamic_vocab(files, tmp_path, capsys):
    out = tmp_path / "onnx" / "det.onnx"
    assert _export(files, out, "--class-texts", str(files / "classes.txt"), "--nms", "--dynamic-vocab",
                   "--dynamic-batch", "--max-det", "10") == 0
    stdout = capsys.readouterr().out
    assert "onnxruntime vs PyTorch" in stdout and "num_dets" in stdout
    info = json.loads((tmp_path / "onnx" / "det.vocab.json").read_text())
    assert info["texts"] == CLASSES and info["nms"] and info["dynamic_vocab"] and info["dynamic_batch"]
    assert info["nms_config"] == {"score_thr": 0.25, "iou_thr": 0.7, "max_det": 10}
    emb = np.load(tmp_path / "onnx" / info["text_feats_file"])
    raw = np.load(files / "feats.npy")
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_export_mismatched_or_empty_vocabulary(files, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert _export(files, out, "--classes", "person,car") == 2
    err = capsys.readouterr().err
    assert "feats.npy" in err and "(3, 512)" in err and "2 classes" in err
    narrow = tmp_path / "narrow.npy"  # the right count, the wrong width
    np.save(narrow, np.zeros((2, 256), np.float32))
    assert main(["export", "--weights", str(files / "model.pth"), "--text-model", "none", "--text-feats",
                 str(narrow), "--imgsz", "64", "--out", str(out), "--classes", "person,car"]) == 2
    assert "shape (2, 256), expected (2, 512)" in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    assert _export(files, out, "--class-texts", str(empty)) == 2
    assert f"class-text file {empty} holds no class text" in capsys.readouterr().err
    # No classes at all and a checkpoint without a vocabulary.
    assert _export(files, out) == 2
    err = capsys.readouterr().err
    assert "empty vocabulary" in err and "still needed with --text-feats" in err
    assert not out.exists()


def test_export_check_says_how_many_detections_it_compared(files, tmp_path, capsys):
    # Random weights score about 0.01 (the head's prior): nothing passes 0.25, everything passes 0.
    assert _export(files, tmp_path / "a.onnx", "--classes", ",".join(CLASSES), "--nms") == 0
    stdout = capsys.readouterr().out
    assert "(0 detections compared)" in stdout and "only the counts were compared" in stdout
    assert _export(files, tmp_path / "b.onnx", "--classes", ",".join(CLASSES), "--nms", "--score-thr", "0",
                   "--max-det", "7") == 0
    stdout = capsys.readouterr().out
    assert "(7 detections compared, boxes and labels by pairing" in stdout and "only the counts" not in stdout
    # random weights score nearly alike: tied detections may be kept in another order, yet the boxes
    # of the others are judged, and a real box difference is not hidden (test_onnx.py)
    assert "boxes inf" not in stdout and "WARNING" not in capsys.readouterr().err


def test_a_slim_file_with_its_class_text_embeddings_exports_them_with_no_clip(files, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import worldtune.model.loading as loading
    from worldtune.engine.checkpoint import VOCAB_FEATS_KEY, WEIGHTS_METADATA_KEY

    # what `worldtune slim --no-text-tower` writes: image-side weights, the class texts' embeddings
    feats = torch.nn.functional.normalize(torch.from_numpy(np.load(files / "feats.npy")), dim=-1)
    state = {k: v.contiguous() for k, v in torch.load(files / "model.pth")["state_dict"].items()}
    meta = {"format": "worldtune-weights-1", "vocabulary": CLASSES, "config": {"data": {"imgsz": 64}}}
    save_file({**state, VOCAB_FEATS_KEY: feats}, str(tmp_path / "light.safetensors"),
              metadata={WEIGHTS_METADATA_KEY: json.dumps(meta)})
    monkeypatch.setattr(loading, "build_text_model", lambda *a, **k: pytest.fail("a CLIP text model was built"))
    out = tmp_path / "light.onnx"
    assert main(["export", "--weights", str(tmp_path / "light.safetensors"), "--dynamic-vocab", "--no-verify",
                 "--out", str(out)]) == 0
    info = json.loads((tmp_path / "light.vocab.json").read_text())
    assert info["texts"] == CLASSES and info["imgsz"] == 64
    # the stored rows (normalised once more by the export, which changes their last bits at most)
    np.testing.assert_allclose(np.load(tmp_path / info["text_feats_file"]), feats.numpy(), atol=1e-6)
