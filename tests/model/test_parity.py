"""Numerical parity with the official implementation (fixture made by running the official code)."""
import pytest
import torch

from worldtune.model import build_model
from worldtune.model.head import dfl_expectation
from worldtune.model.postprocess import PostprocessConfig, decode_outputs, detect_one_image, make_priors

RTOL = 1e-4


def assert_close(actual, expected, what):
    err = ((actual - expected).abs().max() / expected.abs().max().clamp(min=1e-12)).item()
    assert err < RTOL, f"{what}: relative error {err:.2e}"


def assert_same_detections(det, ref, what):
    """`det` are the official detections `ref`: the same scores in the same (descending) order, and each
    detection an official one with its label, box and score. Two whose scores differ by float rounding
    only (within RTOL) may come in either order: another CPU's kernels round differently, and NMS
    keeps the order of the scores."""
    assert det["boxes_xyxy"].shape == ref["bboxes"].shape
    assert_close(det["scores"], ref["scores"], f"{what} scores")
    same_label = det["labels"][:, None] == ref["labels"][None, :]
    close_score = (det["scores"][:, None] - ref["scores"][None, :]).abs() <= RTOL * ref["scores"].abs().max()
    close_box = (det["boxes_xyxy"][:, None] - ref["bboxes"][None, :]).abs().amax(-1) <= RTOL * ref["bboxes"].abs().max()
    candidates = (same_label & close_score & close_box).tolist()
    unmatched = set(range(len(ref["labels"])))
    for j, row in enumerate(candidates):
        near = [k for k in unmatched if row[k]]
        assert near, (f"{what}: detection {j} (label {det['labels'][j].item()}, score {det['scores'][j].item():.6f}, "
                      f"box {det['boxes_xyxy'][j].tolist()}) is none of the official ones left")
        unmatched.remove(min(near, key=lambda k: abs(k - j)))  # of near-ties, the official one at its place


@pytest.fixture(scope="module")
def fixture(spec_fixtures):
    return torch.load(spec_fixtures / "parity_s.pt", weights_only=True)


@pytest.fixture(scope="module")
def model_s(fixture):
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in fixture["state_dict"].items()
             if not k.startswith("backbone.text_model.")}
    model = build_model("s").eval()
    model.load_state_dict(state, strict=True)
    return model


def test_image_backbone_neck_head_match_official(fixture, model_s):
    text_feats = fixture["text_feats"]
    with torch.no_grad():
        feats = model_s.backbone.image_model(fixture["images"])
        neck = model_s.neck(feats, text_feats)
        out = model_s.bbox_head(neck, text_feats)
    for i in range(3):
        assert_close(feats[i], fixture["img_feats"][i], f"backbone level {i}")
        assert_close(neck[i], fixture["neck_outs"][i], f"neck level {i}")
        assert_close(out.cls_logits[i], fixture["head_cls"][i], f"cls logits level {i}")
        assert_close(out.box_dist_logits[i], fixture["head_reg_dist_logits"][i], f"dist logits level {i}")
        assert_close(dfl_expectation(out.box_dist_logits[i]), fixture["head_reg"][i], f"DFL expectation level {i}")


def test_priors_match_official(fixture):
    points, strides = make_priors([(40, 40), (20, 20), (10, 10)], (8, 16, 32))
    assert torch.equal(points, fixture["priors"])
    assert torch.equal(strides, fixture["prior_strides"])


def test_decoding_and_detections_match_official(fixture, model_s):
    images = fixture["images_raw_bgr_uint8"][:, [2, 1, 0]].float() / 255
    assert torch.equal(images, fixture["images"])
    with torch.no_grad():
        boxes, scores = decode_outputs(model_s(images, fixture["text_feats"]))
    assert_close(boxes, fixture["decoded_bboxes"], "decoded boxes")
    assert_close(scores, fixture["cls_scores_sigmoid"], "sigmoid scores")
    for i, ref in enumerate(fixture["detections"]):
        det = detect_one_image(boxes[i], scores[i], PostprocessConfig(), ori_shape=(320, 320))
        assert det["boxes_xyxy"].shape == ref["bboxes"].shape == (300, 4)
        assert_same_detections(det, ref, f"detections of image {i}")


def test_full_official_state_dict_texts_to_detections(fixture):
    """All 608 official keys (text tower included) load strictly; texts in, official detections out."""
    from pathlib import Path

    import worldtune
    from worldtune.model.text_encoder import CLIPTextEncoder

    tokenizer_dir = Path(worldtune.__file__).parent / "assets" / "clip_tokenizer"
    model = build_model("s", CLIPTextEncoder.from_config(tokenizer_dir=str(tokenizer_dir))).eval()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in fixture["state_dict"].items()}
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        text_feats = model.encode_text(fixture["texts"])
        assert_close(text_feats, fixture["text_feats"], "text features")
        boxes, scores = decode_outputs(model(fixture["images"], text_feats))
    for i, ref in enumerate(fixture["detections"]):
        det = detect_one_image(boxes[i], scores[i], PostprocessConfig(), ori_shape=(320, 320))
        assert_same_detections(det, ref, f"detections of image {i}")


def test_detection_comparison_allows_only_near_tie_swaps(fixture):
    """The check above accepts the official detections with two near-tied neighbours swapped, and
    rejects a changed label, a moved box, or two swapped detections whose scores differ."""
    ref = fixture["detections"][1]
    det = {"labels": ref["labels"].clone(), "scores": ref["scores"].clone(), "boxes_xyxy": ref["bboxes"].clone()}
    assert_same_detections(det, ref, "unchanged")
    gaps = (ref["scores"][:-1] - ref["scores"][1:]).tolist()
    tie = next(j for j, g in enumerate(gaps) if g <= RTOL * ref["scores"].max() and
               ref["labels"][j] != ref["labels"][j + 1])
    swapped = {k: v.clone() for k, v in det.items()}
    for v in (swapped["labels"], swapped["boxes_xyxy"]):
        v[[tie, tie + 1]] = v[[tie + 1, tie]]
    assert_same_detections(swapped, ref, "near tie swapped")
    far = next(j for j, g in enumerate(gaps) if g > 10 * RTOL * ref["scores"].max() and
               ref["labels"][j] != ref["labels"][j + 1])
    for change in ("label", "box", "swap"):
        bad = {k: v.clone() for k, v in det.items()}
        if change == "label":
            bad["labels"][5] = (bad["labels"][5] + 1) % 5
        elif change == "box":
            bad["boxes_xyxy"][5, 0] += 1.0
        else:
            for v in (bad["labels"], bad["boxes_xyxy"]):
                v[[far, far + 1]] = v[[far + 1, far]]
        with pytest.raises(AssertionError, match="none of the official ones"):
            assert_same_detections(bad, ref, change)
