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
        assert torch.equal(det["labels"], ref["labels"])
        assert_close(det["boxes_xyxy"], ref["bboxes"], f"detection boxes image {i}")
        assert_close(det["scores"], ref["scores"], f"detection scores image {i}")


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
        assert torch.equal(det["labels"], ref["labels"])
        assert_close(det["boxes_xyxy"], ref["bboxes"], f"detection boxes image {i}")
        assert_close(det["scores"], ref["scores"], f"detection scores image {i}")
