"""YOLOWorld.set_vocabulary: what it accepts, and one-line errors for what would break later."""
import pytest
import torch

from worldtune.model import build_model


def _feats(k: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(k, 512), dim=-1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("n", num_classes=2).eval()


@pytest.mark.parametrize("texts", ["cat", [], ["cat", 3]])
def test_texts_must_be_a_non_empty_list_of_strings(model, texts):
    # a bare string used to become the vocabulary ['c', 'a', 't']
    with pytest.raises(TypeError, match="non-empty list of strings"):
        model.set_vocabulary(texts, _feats(max(len(texts), 1)))


@pytest.mark.parametrize("shape", [(2, 256), (1, 2, 512), (3, 512)])
def test_text_feats_of_another_shape_are_refused_in_one_line(model, shape):
    # (2, 256) used to pass and fail deep in the neck with a matmul error
    with pytest.raises(ValueError, match=r"text_feats must have shape \(2, 512\)"):
        model.set_vocabulary(["cat", "dog"], torch.nn.functional.normalize(torch.randn(shape), dim=-1))


def test_unnormalised_text_feats_warn(model):
    # allowed (the forward takes any scale) but not what the text tower gives: say so
    with pytest.warns(UserWarning, match="not L2-normalised"):
        model.set_vocabulary(["cat", "dog"], 5 * _feats(2))


def test_numpy_text_feats_are_accepted(model):
    # `worldtune export` writes det.vocab.npy; its rows can be passed back as they are
    feats = _feats(2)
    model.set_vocabulary(["cat", "dog"], feats.numpy())
    assert model.vocabulary == ["cat", "dog"]
    torch.testing.assert_close(model.vocab_feats, feats)


def test_repeated_texts_warn(model):
    with pytest.warns(UserWarning, match="repeats"):
        model.set_vocabulary(["cat", "cat"], _feats(2))


def test_from_pretrained_with_a_variant_name_builds_that_variant_or_says_what_clashes():
    # "s" with variant="s" used to be looked up as a weights file ("s: no such file, and not a zoo name")
    from worldtune.model.detector import YOLOWorld

    assert YOLOWorld.from_pretrained("n", variant="n", text_model=None).variant == "n"
    assert YOLOWorld.from_pretrained("none", variant="n", text_model=None).variant == "n"
    with pytest.raises(ValueError, match=r"from_pretrained\('s', variant='l'\): 's' names a variant.*"
                                         r"from_pretrained\('l'\)"):
        YOLOWorld.from_pretrained("s", variant="l", text_model=None)


def test_a_reparameterized_model_refuses_a_new_vocabulary():
    # its folded weights kept scoring the old 2 texts: a 1-text vocabulary then failed with an
    # IndexError in predict, a 2-text one silently put the new names on the old classes
    from worldtune.model.reparameterize import reparameterize

    torch.manual_seed(0)
    rep = reparameterize(build_model("n", num_classes=2).eval(), ["cat", "dog"], _feats(2))
    assert rep.vocabulary == ["cat", "dog"]
    with pytest.raises(RuntimeError, match="folded into its weights.*reparameterize the original model"):
        rep.set_vocabulary(["bus", "car"], _feats(2))
    assert rep.vocabulary == ["cat", "dog"]


@pytest.mark.parametrize("inside", [False, True], ids=["feats-made-in-inference-mode", "set-in-inference-mode"])
def test_a_vocabulary_set_under_inference_mode_still_trains(inside):
    # its embeddings were inference tensors: a later training forward failed in the neck with
    # "Inference tensors cannot be saved for backward" (e.g. after predicting under inference_mode)
    torch.manual_seed(0)
    model = build_model("n", num_classes=2).train()
    with torch.inference_mode():
        feats = _feats(2)
        if inside:
            model.set_vocabulary(["cat", "dog"], feats)
    if not inside:
        model.set_vocabulary(["cat", "dog"], feats)
    out = model(torch.rand(1, 3, 64, 64))
    sum(o.sum() for o in out.cls_logits).backward()
    assert model.neck.top_down_layers[0].attn_block.guide_fc.weight.grad is not None
    torch.testing.assert_close(model.vocab_feats, feats.clone())
