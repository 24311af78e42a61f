"""ONNX export: onnxruntime vs PyTorch in every mode, NMS-in-graph vs the official post-processing,
determinism, side-car files and clear errors. Variant `n` at 128 px, no text tower (embeddings given)."""
import hashlib
import json

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from tests.helpers.calibrated_model import make_calibrated_model
from worldtune.export.check import compare_outputs, run_onnx
from worldtune.export.onnx import build_export_module, export_onnx
from worldtune.model.postprocess import PostprocessConfig, decode_outputs, detect_one_image

IMGSZ = 128
TEXTS = ["person", "cup", "cat"]


def square_photos(imgsz: int) -> torch.Tensor:
    """(2, 3, imgsz, imgsz) centre crops of two photographs: no flat letterbox padding, whose identical
    features would give exactly tied scores that NMS implementations may break differently."""
    from skimage import data

    crops = []
    for img in (data.astronaut(), data.coffee()):
        side = min(img.shape[:2])
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        crops.append(cv2.resize(img[top:top + side, left:left + side], (imgsz, imgsz), interpolation=cv2.INTER_AREA))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255


def assert_same_detections(got: dict, ref: dict, truncated: bool) -> None:
    """Same detections up to the order of exactly tied scores: a random network gives identical
    scores to neighbouring anchors of flat regions, and implementations order such ties freely
    (when the list was cut at max_det, which of the tied last rows made it is free as well)."""
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-6, rtol=0)
    keep = got["scores"] > got["scores"][-1] if truncated else np.ones(len(got["scores"]), bool)
    rows = []
    for boxes, scores, labels in ((got["boxes"], got["scores"], got["labels"]),
                                  (ref["boxes_xyxy"], ref["scores"], ref["labels"])):
        table = np.concatenate([scores[:, None], labels[:, None], boxes], axis=1)[keep]
        rows.append(table[np.lexsort(table.T[::-1])])
    assert len(rows[0]) > 0
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(len(TEXTS), 512), dim=-1)
    images = square_photos(IMGSZ)
    model = make_calibrated_model(images, feats.expand(2, -1, -1))
    return model, feats, images


@pytest.fixture(scope="module")
def folded(setup, tmp_path_factory):
    model, feats, _ = setup
    path = tmp_path_factory.mktemp("folded") / "model.onnx"
    info = export_onnx(model, TEXTS, path, text_feats=feats, imgsz=IMGSZ, dynamic_batch=True)
    return path, info


def test_folded_round_trip_matches_pytorch_and_the_unfolded_model(setup, folded):
    model, feats, images = setup
    path, info = folded
    got = run_onnx(path, images.numpy())  # batch 2 through a graph traced at batch 1
    assert list(got) == ["boxes", "scores"]
    n = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert got["boxes"].shape == (2, n, 4) and got["scores"].shape == (2, n, len(TEXTS))
    with torch.no_grad():
        boxes, scores = decode_outputs(model(images, feats.expand(2, -1, -1)), model.strides)
    # The folded graph reproduces the text-conditioned model, label k <-> TEXTS[k].
    np.testing.assert_allclose(got["scores"], scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["boxes"], boxes.numpy(), atol=1e-4, rtol=1e-5)
    assert (scores > 0.25).any(), "the test model should produce real detections"
    module, _ = build_export_module(model, TEXTS, feats)
    assert max(compare_outputs(module, path, images).values()) < 1e-4
    # No text tower and no text input in the graph.
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]


def test_side_car_files_and_metadata(folded):
    path, info = folded
    saved = json.loads(path.with_suffix(".vocab.json").read_text())
    assert saved == info and saved["texts"] == TEXTS and saved["nms"] is False
    assert saved["text_feats_file"] is None and not path.with_suffix(".vocab.npy").exists()
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["worldtune.texts"]) == TEXTS and meta["worldtune.imgsz"] == str(IMGSZ)
    # the shapes written for people match what the graph gives: N = sum((IMGSZ / s)^2) priors, strides 8, 16, 32
    got = run_onnx(path, np.zeros((1, 3, IMGSZ, IMGSZ), np.float32))
    n = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert got["boxes"].shape == (1, n, 4) and got["scores"].shape == (1, n, len(TEXTS))
    assert saved["outputs"] == {"boxes": f"(batch, {n}, 4) float32 xyxy input pixels",
                                "scores": f"(batch, {n}, K) float32 sigmoid"}


def test_dynamic_vocab_export_module_leaves_the_model_its_text_tower():
    from worldtune.model import build_model

    model = build_model("n").eval()
    tower = torch.nn.Linear(2, 2)  # a stand-in: only its identity matters here
    model.backbone.text_model = tower
    feats = F.normalize(torch.randn(2, 512), dim=-1)
    for dynamic_vocab in (True, False):
        module, _ = build_export_module(model, ["a", "b"], feats, dynamic_vocab=dynamic_vocab)
        assert model.backbone.text_model is tower, dynamic_vocab
        assert module.model.backbone.text_model is None  # the graph carries no tower


def test_export_is_deterministic(setup, folded, tmp_path):
    model, feats, _ = setup
    path, _ = folded
    again = tmp_path / "model.onnx"
    export_onnx(model, TEXTS, again, text_feats=feats, imgsz=IMGSZ, dynamic_batch=True)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_a_full_disk_leaves_no_cut_short_model_and_names_the_file(setup, folded, tmp_path, monkeypatch):
    """Export writes the graph beside `out` and renames it last: an earlier model there stays whole."""
    import errno

    from worldtune.outputs import OutputWriteError

    model, feats, _ = setup
    out = tmp_path / "model.onnx"
    out.write_bytes(folded[0].read_bytes())  # an earlier export

    def full(proto, path, *args, **kwargs):  # the metadata pass rewrites the graph: the disk fills up
        with open(path, "wb") as f:
            f.write(b"\x08\x07")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save", full)
    with pytest.raises(OutputWriteError, match=rf"^cannot write {out}: No space left on device$"):
        export_onnx(model, TEXTS, out, text_feats=feats, imgsz=IMGSZ, dynamic_batch=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no partial file left
    assert out.read_bytes() == folded[0].read_bytes()


def test_a_full_disk_at_the_vocab_file_leaves_the_earlier_export_whole_and_names_it(setup, folded, tmp_path,
                                                                                     monkeypatch):
    import os

    from tests.helpers.full_disk import FullDisk
    from worldtune.outputs import OutputWriteError

    model, feats, _ = setup
    out = tmp_path / "model.onnx"
    earlier = {path.name: path.read_bytes() for path in (folded[0], folded[0].with_suffix(".vocab.json"))}
    for name, data in earlier.items():
        (tmp_path / name).write_bytes(data)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), keep=10))
    vocab = out.with_suffix(".vocab.json")
    with pytest.raises(OutputWriteError, match=rf"^cannot write {vocab}: No space left on device$"):
        export_onnx(model, ["person", "cup", "dog"], out, text_feats=feats, imgsz=IMGSZ, dynamic_batch=True)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == earlier  # no partial or temporary file


def test_a_full_disk_at_the_text_embeddings_leaves_no_file_and_names_it(setup, tmp_path, monkeypatch):
    import os

    from tests.helpers.full_disk import FullDisk
    from worldtune.outputs import OutputWriteError

    model, feats, _ = setup
    out = tmp_path / "open.onnx"
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), keep=10))
    npy = out.with_suffix(".vocab.npy")
    with pytest.raises(OutputWriteError, match=rf"^cannot write {npy}: No space left on device$"):
        export_onnx(model, TEXTS, out, text_feats=feats, imgsz=IMGSZ, dynamic_vocab=True)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # neither a cut-short .npy, nor a model without it, nor a temporary file


def test_dynamic_vocab_round_trip_with_a_new_vocabulary(setup, tmp_path):
    model, feats, images = setup
    path = tmp_path / "open.onnx"
    info = export_onnx(model, TEXTS, path, text_feats=feats, imgsz=IMGSZ, dynamic_vocab=True, dynamic_batch=True)
    saved = np.load(tmp_path / info["text_feats_file"])
    np.testing.assert_allclose(saved, feats.numpy(), atol=1e-6)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images", "text_feats"]
    # the declared scores shape leaves K open too (a fixed 3 would contradict any other vocabulary's output)
    scores_dims = [d.dim_param or d.dim_value for d in next(o for o in graph.output if o.name == "scores")
                   .type.tensor_type.shape.dim]
    assert scores_dims[0] == "batch" and scores_dims[2] == "num_classes"
    # Five texts where three were exported: the vocabulary really is an input.
    new = F.normalize(torch.randn(2, 5, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    got = run_onnx(path, images.numpy(), new.numpy())
    with torch.no_grad():
        boxes, scores = decode_outputs(model(images, new), model.strides)
    assert got["scores"].shape == (2, boxes.shape[1], 5)
    np.testing.assert_allclose(got["scores"], scores.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["boxes"], boxes.numpy(), atol=1e-4, rtol=1e-5)


def test_nms_module_matches_official_postprocessing_in_pytorch(setup):
    model, feats, images = setup
    cfg = PostprocessConfig(score_thr=0.25, iou_thr=0.7, max_per_img=20)
    module, _ = build_export_module(model, TEXTS, feats, nms=True, max_det=20)
    with torch.no_grad():
        num_dets, boxes, scores, labels = module(images)
        ref_boxes, ref_scores = module.detector(images)
    for i in range(2):
        ref = detect_one_image(ref_boxes[i], ref_scores[i], cfg)
        n = int(num_dets[i])
        assert n == len(ref["scores"]) > 0
        assert torch.equal(labels[i, :n], ref["labels"]) and torch.equal(scores[i, :n], ref["scores"])
        assert torch.equal(boxes[i, :n], ref["boxes_xyxy"])


@pytest.mark.parametrize("max_det", [20, 400])  # truncating, and padding past every candidate
def test_nms_in_graph_matches_official_postprocessing(setup, folded, tmp_path, max_det):
    model, feats, images = setup
    path = tmp_path / "nms.onnx"
    cfg = PostprocessConfig(score_thr=0.25, iou_thr=0.7, max_per_img=max_det)
    export_onnx(model, TEXTS, path, text_feats=feats, imgsz=IMGSZ, dynamic_batch=True, nms=True,
                score_thr=cfg.score_thr, iou_thr=cfg.iou_thr, max_det=max_det)
    got = run_onnx(path, images.numpy())
    assert list(got) == ["num_dets", "boxes", "scores", "labels"]
    assert got["boxes"].shape == (2, max_det, 4) and got["labels"].dtype == np.int64
    # The official post-processing on the same inputs: the decoded boxes and scores of the graph
    # without NMS (same weights, same kernels), so near-tied scores rank the same on both sides.
    raw = run_onnx(folded[0], images.numpy())
    for i in range(2):
        ref = detect_one_image(torch.from_numpy(raw["boxes"][i]), torch.from_numpy(raw["scores"][i]), cfg)
        n = int(got["num_dets"][i])
        assert n == len(ref["scores"]) > 0
        rows = {k: v[i, :n] for k, v in got.items() if k != "num_dets"}
        assert_same_detections(rows, {k: v.numpy() for k, v in ref.items()}, truncated=n == max_det)
        assert (got["labels"][i, n:] == -1).all() and (got["scores"][i, n:] == 0).all()
        assert (got["boxes"][i, n:] == 0).all()
    assert (got["num_dets"] == max_det).any() == (max_det == 20)


def test_bad_arguments_get_clear_errors(setup, tmp_path):
    model, feats, _ = setup
    with pytest.raises(ValueError, match="empty vocabulary"):
        export_onnx(model, [], tmp_path / "a.onnx", text_feats=feats[:0], imgsz=IMGSZ)
    with pytest.raises(ValueError, match=r"2 class texts but embeddings of shape \(3, 512\)"):
        export_onnx(model, ["a", "b"], tmp_path / "a.onnx", text_feats=feats, imgsz=IMGSZ)
    with pytest.raises(ValueError, match="no text tower"):
        export_onnx(model, TEXTS, tmp_path / "a.onnx", imgsz=IMGSZ)
    with pytest.raises(ValueError, match="opset 11"):
        export_onnx(model, TEXTS, tmp_path / "a.onnx", text_feats=feats, opset=11)
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(model, TEXTS, tmp_path / "a.onnx", text_feats=feats, imgsz=100)
    assert not (tmp_path / "a.onnx").exists()


def test_missing_onnx_and_repeated_texts_are_explained(setup, tmp_path, monkeypatch):
    import importlib.util

    model, feats, _ = setup
    with pytest.warns(UserWarning, match=r"repeats \['cat'\]"):
        build_export_module(model, ["cat", "cat"], torch.cat([feats[:1], feats[:1]]))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install onnx"):
        export_onnx(model, TEXTS, tmp_path / "m.onnx", text_feats=feats, imgsz=IMGSZ)


def test_export_module_normalises_given_embeddings(setup):
    # The model is trained on unit-length CLIP embeddings (its neck's guide_fc sees them as they are),
    # so embeddings handed in at any length are L2-normalised first: a scaled copy exports the same model.
    model, feats, images = setup
    for dynamic_vocab in (False, True):
        module, unit = build_export_module(model, TEXTS, 4.0 * feats, dynamic_vocab=dynamic_vocab)
        ref, _ = build_export_module(model, TEXTS, feats, dynamic_vocab=dynamic_vocab)
        torch.testing.assert_close(unit, feats)
        extra = (unit.expand(2, -1, -1),) if dynamic_vocab else ()
        with torch.no_grad():
            for a, b in zip(module(images, *extra), ref(images, *extra)):
                torch.testing.assert_close(a, b)


def test_nms_boxes_are_compared_by_label_and_score_not_by_row():
    from worldtune.export.check import matched_box_difference

    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60], [5, 5, 9, 9], [0, 0, 0, 0]]], np.float32)
    ref = [np.array([3]), boxes, np.array([[0.9, 0.5, 0.5, 0.0]], np.float32), np.array([[1, 2, 2, -1]])]
    got = {"num_dets": ref[0].copy(), "boxes": boxes[:, [0, 2, 1, 3]].copy(),  # the tied two swapped
           "scores": ref[2].copy(), "labels": ref[3].copy()}
    assert matched_box_difference(got, ref) == (0.0, 3)
    got["boxes"][0, 1] += [0, 0, 0, 0.5]  # a real difference in one box is still seen
    assert matched_box_difference(got, ref) == (pytest.approx(0.5 / 9), 3)
    got["labels"][0, 2] = 5  # of two tied detections, ONNX kept another one: not paired, not an error
    assert matched_box_difference(got, ref) == (pytest.approx(0.5 / 9), 2)
    got["labels"][0, 0] = 7  # a detection with a score of its own has no partner
    assert matched_box_difference(got, ref)[0] == float("inf")
    got = {**got, "labels": ref[3].copy(), "num_dets": np.array([2])}
    assert matched_box_difference(got, ref)[0] == float("inf")


def test_verification_feeds_a_fixed_batch_graph_its_batch(setup, tmp_path):
    """A graph exported for batch 2 (not dynamic) is checked on 2 images: one image would not fit its input."""
    from worldtune.export.check import verify_onnx

    model, feats, _ = setup
    path = tmp_path / "batch2.onnx"
    info = export_onnx(model, TEXTS, path, text_feats=feats, imgsz=IMGSZ, batch=2)
    diffs, detections = verify_onnx(model, TEXTS, path, info, text_feats=feats)
    assert detections is None and max(diffs.values()) < 1e-3


def test_readme_recipe_maps_onnx_boxes_to_original_pixels(setup, folded):
    # README "Using an exported model": letterbox_for_test, feed (1, 3, S, S) float in [0, 1], then
    # (boxes - [left, top, left, top]) / [sx, sy, sx, sy] clipped to the image = what model.predict returns
    from skimage import data

    from worldtune.model.predict import letterbox_for_test

    model, feats, _ = setup
    model.set_vocabulary(TEXTS, feats)
    img = data.chelsea()  # 300 x 451: padding above and below
    boxed, (sx, sy), (top, _, left, _) = letterbox_for_test(img, IMGSZ)
    assert top > 0
    out = run_onnx(folded[0], boxed.transpose(2, 0, 1)[None].astype("float32") / 255)
    boxes, scores = out["boxes"], out["scores"]
    h, w = img.shape[:2]
    boxes = np.clip((boxes[0] - [left, top, left, top]) / [sx, sy, sx, sy], 0, [w, h, w, h])
    (det,) = model.predict([img], imgsz=IMGSZ, cfg=PostprocessConfig(score_thr=0.0, iou_thr=1.0, max_per_img=30))
    assert len(det["scores"]) == 30
    for box, score, label in zip(det["boxes_xyxy"].numpy(), det["scores"].numpy(), det["labels"].numpy()):
        same = (np.abs(scores[0][:, label] - score) < 1e-5) & (np.abs(boxes - box).max(1) < 1e-2)
        assert same.any(), (box, score, label)
