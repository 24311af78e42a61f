"""Folding a vocabulary into the weights gives the official rep layout and the same outputs."""
import json

import pytest
import torch

from worldtune.model import build_model
from worldtune.model.reparameterize import reparameterize


def _parity_model(spec_fixtures):
    """(the official-parity fixture, the S model with its image-side weights in float32)."""
    fixture = torch.load(spec_fixtures / "parity_s.pt", weights_only=True)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in fixture["state_dict"].items()
             if not k.startswith("backbone.text_model.")}
    model = build_model("s").eval()
    model.load_state_dict(state)
    return fixture, model


def _assert_same_outputs(ref, out):
    for a, b in zip(ref.cls_logits + ref.box_dist_logits, out.cls_logits + out.box_dist_logits):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-5


def test_rep_keys_equal_official_rep_model(spec_fixtures):
    model = build_model("s").eval()
    texts = [f"class {i}" for i in range(80)]
    rep = reparameterize(model, texts, torch.nn.functional.normalize(torch.randn(80, 512), dim=-1))
    ref = json.loads((spec_fixtures / "official_keys_s_rep_vlpan.json").read_text())
    assert [(k, tuple(v.shape)) for k, v in rep.state_dict().items()] == \
        [(k["name"], tuple(k["shape"])) for k in ref["keys"]]


def test_rep_outputs_equal_unfolded_model(spec_fixtures):
    fixture, model = _parity_model(spec_fixtures)
    text_feats = fixture["text_feats"][0]  # the 5 texts of image 0, (5, 512)
    rep = reparameterize(model, fixture["texts"][0], text_feats)
    assert rep.backbone.text_model is None
    assert model.bbox_head.head_module.cls_contrasts[0].__class__.__name__ == "BNContrastiveHead"
    images = fixture["images"]
    with torch.no_grad():
        ref = model(images, text_feats.expand(2, -1, -1))
        out = rep(images)
    _assert_same_outputs(ref, out)
    assert rep.vocabulary == fixture["texts"][0]


def test_rep_equals_unfolded_with_attention_biases_and_unnormalised_embeddings(spec_fixtures):
    # The official weights' max-sigmoid biases are all zero, so the test above cannot see how the
    # bias enters; and embeddings passed by a caller need not be unit length. Both models must still
    # agree: the contrastive head normalises the text itself (normalise(text) * exp(logit_scale)),
    # folded or not, and the folded block adds the same per-head bias before the sigmoid.
    fixture, model = _parity_model(spec_fixtures)
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in [*model.neck.top_down_layers, *model.neck.bottom_up_layers]:
            layer.attn_block.bias.uniform_(-2.0, 2.0)
    text_feats = 3.0 * fixture["text_feats"][0]  # the 5 texts of image 0, 3x their unit length
    with pytest.warns(UserWarning, match="not L2-normalised"):  # allowed, but not what the tower gives
        rep = reparameterize(model, fixture["texts"][0], text_feats)
    images = fixture["images"][:1]
    with torch.no_grad():
        ref = model(images, text_feats.unsqueeze(0))
        out = rep(images)
    assert ref.cls_logits[0].std() > 0.1  # trained weights: the logits vary (random ones give the bias alone)
    _assert_same_outputs(ref, out)


def test_the_source_model_keeps_its_text_tower_and_dtype():
    """reparameterize returns a folded copy; the model passed in is unchanged (its tower stays on it)."""
    torch.manual_seed(0)
    model = build_model("n").eval()
    tower = torch.nn.Linear(2, 2)  # a stand-in: only its identity matters here
    model.backbone.text_model = tower
    model.to(torch.bfloat16)
    feats = torch.nn.functional.normalize(torch.randn(3, 512), dim=-1)
    rep = reparameterize(model, ["a", "b", "c"], feats)
    assert model.backbone.text_model is tower and rep.backbone.text_model is None
    assert next(model.parameters()).dtype == torch.bfloat16
    # the folded copy is float32 throughout (the folded convs are made from float32 embeddings)
    assert {p.dtype for p in rep.parameters()} == {torch.float32}
    with torch.no_grad():
        out = rep(torch.rand(1, 3, 64, 64))
    assert out.cls_logits[0].shape[1] == 3 and out.cls_logits[0].dtype == torch.float32


def test_a_model_without_text_tower_needs_embeddings_and_gets_a_one_line_error():
    model = build_model("n").eval()  # text_model=None
    with pytest.raises(RuntimeError, match="no text tower: pass text_feats"):
        reparameterize(model, ["a", "b"])
    feats = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    assert reparameterize(model, ["a", "b"], feats.numpy()).vocabulary == ["a", "b"]  # as set_vocabulary takes


def test_bad_texts_embeddings_or_a_folded_model_are_refused_before_folding():
    # a bare string was split into letters ('ab' -> ['a', 'b']), (2, 256) embeddings failed in a
    # matmul and folding a folded model with an AttributeError
    model = build_model("n").eval()
    feats = torch.nn.functional.normalize(torch.randn(2, 512), dim=-1)
    with pytest.raises(TypeError, match="texts must be a non-empty list of strings"):
        reparameterize(model, "ab", feats)
    with pytest.raises(ValueError, match=r"text_feats must have shape \(2, 512\) for 2 texts, got \(2, 256\)"):
        reparameterize(model, ["a", "b"], feats[:, :256])
    rep = reparameterize(model, ["a", "b"], feats)
    with pytest.raises(RuntimeError, match="reparameterized already: reparameterize the original model"):
        reparameterize(rep, ["a", "b"], feats)


def test_the_folded_model_stays_on_the_model_device(monkeypatch):
    # A GPU model got its folded convs on the CPU (its forward then failed), and CPU embeddings for
    # it failed in the first folded matmul. The meta device stands in for the GPU here: a model
    # there computes shapes only, so set_vocabulary's check of the rows' norms is left out.
    from worldtune.model.detector import YOLOWorld

    monkeypatch.setattr(YOLOWorld, "set_vocabulary", lambda self, texts, feats: setattr(self, "vocab_feats", feats))
    with torch.device("meta"):
        model = build_model("n").eval()
    rep = reparameterize(model, ["a", "b"], torch.nn.functional.normalize(torch.randn(2, 512), dim=-1))
    assert rep.vocab_feats.device.type == "meta"
    assert {p.device.type for p in rep.parameters()} == {"meta"}
