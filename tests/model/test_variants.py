"""Every variant's state_dict equals the official key list (names, order, shapes)."""
import json

import pytest
import torch

from worldtune.model import VARIANTS, build_model

# variant -> official key-list fixture name
OFFICIAL = {"s": "s", "m": "m", "l": "l", "x": "x", "xl": "xl", "l_efficient_neck": "l_efficient_neck"}
# image-side parameter counts in millions, REFERENCE.md §1.1 (derived from the official modules)
PUBLISHED_PARAMS_M = {"s": 12.76, "m": 28.38, "l": 46.83, "x": 72.89, "l_efficient_neck": 46.37}


def official_image_keys(spec_fixtures, name):
    ref = json.loads((spec_fixtures / f"official_keys_{name}.json").read_text())
    return [(k["name"], tuple(k["shape"])) for k in ref["keys"] if not k["name"].startswith("backbone.text_model.")]


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_image_side_keys_and_shapes_equal_official(variant, spec_fixtures):
    model = build_model(variant)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == official_image_keys(spec_fixtures, OFFICIAL[variant])


@pytest.mark.parametrize("variant", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_reference(variant):
    n = sum(p.numel() for p in build_model(variant).parameters())
    assert n / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[variant], abs=0.005)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_shapes_small_input(variant):
    if variant in ("x", "xl"):
        pytest.skip("same code path as l with wider channels; kept out for speed")
    model = build_model(variant).eval()
    images = torch.rand(1, 3, 64, 96)
    text = torch.nn.functional.normalize(torch.randn(1, 3, 512), dim=-1)
    with torch.no_grad():
        out = model(images, text)
    assert [tuple(t.shape) for t in out.cls_logits] == [(1, 3, 8, 12), (1, 3, 4, 6), (1, 3, 2, 3)]
    assert [tuple(t.shape) for t in out.box_dist_logits] == [(1, 64, 8, 12), (1, 64, 4, 6), (1, 64, 2, 3)]


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        build_model("q")


def test_efficient_neck_ignores_text_and_max_sigmoid_neck_uses_it():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    t1, t2 = torch.nn.functional.normalize(torch.randn(2, 2, 4, 512), dim=-1).unbind(0)
    for variant, depends_on_text in (("l_efficient_neck", False), ("n", True)):
        # Train-mode BN (batch statistics) keeps activations at unit scale with random weights.
        model = build_model(variant).train()
        with torch.no_grad():
            feats = model.backbone.image_model(images)
            n1, n2 = model.neck(feats, t1), model.neck(feats, t2)
        assert (not torch.allclose(n1[0], n2[0], atol=1e-3)) == depends_on_text, variant
    # The efficient block has no text parameters at all.
    assert not any("guide_fc" in k for k in build_model("l_efficient_neck").state_dict())


def test_max_sigmoid_attention_is_sigmoid_of_best_text_score_plus_head_bias():
    # Official MaxSigmoidAttnBlock: per head m, w = sigmoid(max_k <x_m, guide_fc(t_k)_m> / sqrt(c) + bias_m),
    # and the projected features of head m are scaled by w. Computed here by hand, head by head.
    from worldtune.model.neck import MaxSigmoidAttnBlock

    torch.manual_seed(0)
    block = MaxSigmoidAttnBlock(in_channels=8, embed_channels=8, num_heads=2, guide_channels=6).eval()
    with torch.no_grad():
        block.bias.copy_(torch.tensor([1.5, -0.7]))  # non-zero and of both signs
    x, text = torch.randn(1, 8, 3, 3), torch.randn(1, 5, 6)
    with torch.no_grad():
        weights, out = block.attention(x, text), block(x, text)
        guide = block.guide_fc(text)[0]  # (5, 8)
        projected = block.project_conv(x)
    for m in range(2):
        c = slice(4 * m, 4 * m + 4)
        scores = torch.einsum("chw,kc->khw", x[0, c], guide[:, c])  # (5 texts, 3, 3)
        expected = torch.sigmoid(scores.max(dim=0).values / 2.0 + block.bias[m])  # sqrt(4 channels) = 2
        torch.testing.assert_close(weights[0, m], expected)
        torch.testing.assert_close(out[0, c], projected[0, c] * expected)


def test_contrastive_head_normalises_the_text_embeddings_itself():
    # Official BNContrastiveHead: logit = <BN(x), normalise(t)> * exp(logit_scale) + bias, so the
    # logits do not depend on the length of a text embedding.
    from worldtune.model.head import BNContrastiveHead

    torch.manual_seed(0)
    head = BNContrastiveHead(embed_dims=16, bias_init=-2.0).eval()
    x, text = torch.randn(1, 16, 2, 2), torch.randn(1, 3, 16)
    with torch.no_grad():
        unit = torch.nn.functional.normalize(text, dim=-1)
        logits = head(x, 5.0 * text)
        expected = torch.einsum("bchw,bkc->bkhw", head.norm(x), unit) * head.logit_scale.exp() + head.bias
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(head(x, unit), logits)
