import math

import pytest
import torch

from worldtune.loss.assigner import pad_targets
from worldtune.loss.criterion import YOLOWorldCriterion, distribution_focal_loss
from worldtune.model.postprocess import flatten_levels, make_priors
from worldtune.ops.boxes import bbox_to_distance, box_ciou, distance_to_bbox

STRIDES = (8, 16, 32)
SIZES = [(8, 8), (4, 4), (2, 2)]  # 64-px input


def _dist_logits_for(distances: torch.Tensor, reg_max: int = 16) -> torch.Tensor:
    """Bin logits whose softmax puts mass (n + 1 - t, t - n) on bins n, n + 1: expectation t.

    distances: Tensor[A, 4] in stride units -> Tensor[A, 4, reg_max].
    """
    t = distances.clamp(0, reg_max - 1 - 0.01)
    left = t.floor().long()
    probs = torch.zeros(*t.shape, reg_max)
    probs.scatter_(-1, left.unsqueeze(-1), (left + 1 - t).unsqueeze(-1))
    probs.scatter_add_(-1, (left + 1).unsqueeze(-1), (t - left).unsqueeze(-1))
    return probs.clamp(min=1e-30).log()


def _to_levels(flat: torch.Tensor, channels: int) -> list[torch.Tensor]:
    """Tensor[B, A, C] in prior order -> per-level Tensor[B, C, H, W]."""
    out, start = [], 0
    for h, w in SIZES:
        out.append(flat[:, start:start + h * w].reshape(flat.shape[0], h, w, channels).permute(0, 3, 1, 2))
        start += h * w
    return out


def _perfect_case(num_classes: int = 3):
    """One gt aligned with the stride-8 centres; every prior predicts it exactly."""
    priors, strides = make_priors(SIZES, STRIDES)
    gt = torch.tensor([4.0, 4.0, 52.0, 52.0])
    dist = bbox_to_distance(priors, gt.expand_as(priors.repeat(1, 2))) / strides[:, None]
    reg = _dist_logits_for(dist).reshape(1, -1, 64)
    cls = torch.full((1, len(priors), num_classes), -4.0)
    cls[0, :64, 1] = 2.0  # stride-8 priors are the confident ones, so all positives are stride 8
    bboxes_labels = torch.tensor([[0, 1, *gt.tolist()]])
    return _to_levels(cls, num_classes), _to_levels(reg, 64), bboxes_labels


def test_levels_flatten_in_prior_order():
    maps = [torch.arange(2 * 3 * h * w, dtype=torch.float32).reshape(2, 3, h, w) for h, w in SIZES]
    flat = flatten_levels(maps)
    assert flat.shape == (2, 84, 3)
    # Row-major inside a level, y outer: prior 1 is (row 0, col 1), prior 8 is (row 1, col 0).
    assert torch.equal(flat[1, 8], maps[0][1, :, 1, 0])
    assert torch.equal(flat[0, 64 + 5], maps[1][0, :, 1, 1])
    priors, strides = make_priors(SIZES, STRIDES)
    assert priors[1].tolist() == [12.0, 4.0] and priors[8].tolist() == [4.0, 12.0]
    assert priors[64].tolist() == [8.0, 8.0] and strides[64] == 16


def test_perfect_prediction_has_zero_box_and_dfl_loss():
    cls, reg, bl = _perfect_case()
    losses = YOLOWorldCriterion()(cls, reg, bl)
    assert losses["loss_bbox"].item() < 1e-5
    # All positives are stride-8 priors whose distances are whole numbers of strides:
    # a one-hot distribution at the target bin has zero DFL.
    assert losses["loss_dfl"].item() < 1e-5
    assert losses["loss_cls"].item() > 0
    torch.testing.assert_close(losses["loss"], losses["loss_cls"] + losses["loss_bbox"] + losses["loss_dfl"])


def test_worse_prediction_gives_positive_box_loss_and_gradients():
    cls, reg, bl = _perfect_case()
    torch.manual_seed(0)
    reg = [(r.clamp(min=-4) + torch.randn_like(r)).requires_grad_() for r in reg]
    losses = YOLOWorldCriterion()(cls, reg, bl)
    assert losses["loss_bbox"].item() > 0.1 and losses["loss_dfl"].item() > 0.1
    losses["loss"].backward()
    assert reg[0].grad.abs().sum() > 0


def test_no_positives_gives_zero_box_losses_with_gradient():
    cls, reg, _ = _perfect_case()
    cls = [c.clone().requires_grad_() for c in cls]
    reg = [r.clone().requires_grad_() for r in reg]
    crit = YOLOWorldCriterion()
    for bl in (torch.zeros(0, 6), torch.tensor([[0, 1, 13.0, 13.0, 19.0, 19.0]])):  # no centre inside
        losses = crit(cls, reg, bl)
        assert losses["loss_bbox"].item() == 0.0 and losses["loss_dfl"].item() == 0.0
        assert losses["loss_bbox"].requires_grad and losses["loss_dfl"].requires_grad
        for t in cls + reg:
            t.grad = None
        losses["loss"].backward()
        assert all(r.grad is not None for r in reg)
        # Every logit is a negative: the cls gradient is 0.5 * sigmoid(x) * scale / max(S, 1) with S = 0.
        torch.testing.assert_close(cls[0].grad, 0.5 * cls[0].detach().sigmoid())


def test_box_loss_uses_the_official_iou_loss_eps():
    """mmyolo 0.6.0's IoULoss has eps 1e-7 and no config sets another (REFERENCE.md section 4).

    The eps sits in the union, so only boxes of a few hundredths of a grid cell show it: here a
    0.2-px gt and predictions of +-0.02 stride around each prior (float64, so 1e-6 vs 1e-7 shows).
    """
    priors, strides = make_priors(SIZES, STRIDES, dtype=torch.float64)
    distances = torch.full((1, len(priors), 4), 0.02, dtype=torch.float64)
    cls = torch.full((1, len(priors), 2), -4.0, dtype=torch.float64)
    cls[0, :, 1] = 2.0
    bboxes_labels = torch.tensor([[0, 1, 3.9, 3.9, 4.1, 4.1]], dtype=torch.float64)
    losses, assign = YOLOWorldCriterion().compute(cls, distances, None, priors, strides, bboxes_labels)
    fg = assign.fg_mask[0]
    assert int(fg.sum()) == 1  # only the prior at (4, 4) has its centre inside the gt
    stride = strides[fg].unsqueeze(-1)
    pred = distance_to_bbox(priors[fg], distances[0, fg] * stride) / stride
    target = assign.bboxes_xyxy[0, fg] / stride
    weight = assign.scores[0, fg].sum(-1)
    expected = 7.5 * ((1 - box_ciou(pred, target, eps=1e-7)) * weight).sum() / assign.scores.sum().clamp(min=1)
    torch.testing.assert_close(losses["loss_bbox"], expected, rtol=1e-9, atol=0)


def test_dfl_is_averaged_like_mmdet_avg_factor():
    """mmdet's weight_reduce_loss divides by (avg_factor + float32 eps), the box loss and the cls loss by
    the clamped sum alone; float64 shows the eps when the clamped target-score sum is exactly 1."""
    torch.manual_seed(0)
    priors, strides = make_priors(SIZES, STRIDES, dtype=torch.float64)
    dist_logits = torch.randn(1, len(priors), 4, 16, dtype=torch.float64)
    distances = dist_logits.softmax(-1) @ torch.arange(16, dtype=torch.float64)
    cls = torch.full((1, len(priors), 2), -4.0, dtype=torch.float64)  # low scores: target sum < 1
    bboxes_labels = torch.tensor([[0, 1, 6.0, 6.0, 40.0, 30.0]], dtype=torch.float64)
    losses, assign = YOLOWorldCriterion().compute(cls, distances, dist_logits, priors, strides, bboxes_labels)
    fg = assign.fg_mask[0]
    assert 0 < assign.scores.sum() < 1 and int(fg.sum()) > 0
    stride = strides[fg].unsqueeze(-1)
    target = bbox_to_distance(priors[fg] / stride, assign.bboxes_xyxy[0, fg] / stride, max_distance=16 - 1 - 0.01)
    dfl = distribution_focal_loss(dist_logits[0, fg].reshape(-1, 16), target.reshape(-1)).reshape(-1, 4)
    weighted = (dfl * assign.scores[0, fg].sum(-1, keepdim=True)).sum()
    torch.testing.assert_close(losses["loss_dfl"], 0.375 * weighted / (1 + torch.finfo(torch.float32).eps),
                               rtol=1e-12, atol=0)


def test_dfl_known_values():
    logits = torch.full((3, 16), -1e4)
    logits[0, 4] = 0.0
    assert distribution_focal_loss(logits[:1], torch.tensor([4.0])).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(2, 16)
    torch.testing.assert_close(distribution_focal_loss(uniform, torch.tensor([2.5, 7.0])),
                               torch.full((2,), math.log(16)))
    # Two bins at 0.5 each around t = 2.5: loss = 0.5 * ln 2 + 0.5 * ln 2.
    two = torch.full((1, 16), -1e4)
    two[0, 2:4] = 0.0
    assert distribution_focal_loss(two, torch.tensor([2.5])).item() == pytest.approx(math.log(2), rel=1e-6)


def test_batch_and_world_size_scaling():
    cls, reg, bl = _perfect_case()
    torch.manual_seed(0)
    reg = [r.clamp(min=-4) + torch.randn_like(r) for r in reg]
    single = YOLOWorldCriterion()(cls, reg, bl)
    # The check needs sum(targets) > 1 on one image, or the max(., 1) clamp hides the averaging.
    distances = flatten_levels(reg).reshape(1, -1, 4, 16).softmax(-1) @ torch.arange(16.0)
    _, assign = YOLOWorldCriterion().compute(flatten_levels(cls), distances, None, *make_priors(SIZES, STRIDES), bl)
    assert assign.scores.sum() > 1
    doubled = YOLOWorldCriterion(world_size=4)([c.repeat(2, 1, 1, 1) for c in cls],
                                               [r.repeat(2, 1, 1, 1) for r in reg],
                                               torch.cat([bl, bl.clone().index_fill_(1, torch.tensor([0]), 1)]))
    # Two identical images: the per-device normalisation averages them (same value as one image),
    # then the official factor multiplies by batch (2) x world size (4).
    for key in ("loss_cls", "loss_bbox", "loss_dfl"):
        torch.testing.assert_close(doubled[key], single[key] * 8, rtol=1e-5, atol=1e-5)


def test_bad_targets_raise_clear_errors():
    with pytest.raises(ValueError, match="bboxes_labels must be"):
        pad_targets(torch.zeros(3, 5), 2, 4)
    with pytest.raises(ValueError, match=r"bboxes_labels\[:, 0\]"):
        pad_targets(torch.tensor([[2, 0, 0, 0, 1, 1.0]]), 2, 4)
    with pytest.raises(ValueError, match=r"bboxes_labels\[:, 1\]"):
        pad_targets(torch.tensor([[0, 4, 0, 0, 1, 1.0]]), 2, 4)
    cls, reg, bl = _perfect_case()
    with pytest.raises(ValueError, match="level 1"):
        YOLOWorldCriterion()(cls, [reg[0], reg[1][:, :32], reg[2]], bl)


def test_pad_targets_keeps_per_image_order():
    bl = torch.tensor([[1, 2, 0, 0, 5, 5.0], [0, 1, 1, 1, 4, 4.0], [1, 0, 2, 2, 6, 6.0]])
    labels, boxes, valid = pad_targets(bl, 3, 4)
    assert labels.tolist() == [[1, 0], [2, 0], [0, 0]]
    assert valid.tolist() == [[True, False], [True, True], [False, False]]
    assert boxes[1, 1].tolist() == [2, 2, 6, 6]


def test_matches_official_cls_and_bbox_loss(loss_fixture):
    lf = loss_fixture
    priors, strides = make_priors([tuple(c.shape[2:]) for c in lf["head_cls"]], STRIDES)
    # The fixture holds DFL expectations (stride units), not the raw bin logits, so DFL is skipped.
    losses, assign = YOLOWorldCriterion(world_size=1).compute(
        flatten_levels(lf["head_cls"]), flatten_levels(lf["head_reg"]), None, priors, strides,
        lf["bboxes_labels"])
    assert "loss_dfl" not in losses
    assert int(assign.fg_mask.sum()) == 50
    torch.testing.assert_close(losses["loss_cls"], lf["loss_cls"], rtol=1e-4, atol=0)
    torch.testing.assert_close(losses["loss_bbox"], lf["loss_bbox"], rtol=1e-4, atol=0)


def test_end_to_end_train_mode_matches_official_losses(parity_s):
    """Train-mode forward of the official weights (batch-stat BN) -> all three official losses."""
    from worldtune.model import build_model

    lf = parity_s["loss"]
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in parity_s["state_dict"].items()
             if not k.startswith("backbone.text_model.")}  # the loss fixture gives text_feats directly
    model = build_model("s")
    model.load_state_dict(state, strict=True)
    model.train()
    out = model(parity_s["images"], lf["text_feats"])
    losses = YOLOWorldCriterion(world_size=1)(out.cls_logits, out.box_dist_logits, lf["bboxes_labels"])
    for key in ("loss_cls", "loss_bbox", "loss_dfl"):
        torch.testing.assert_close(losses[key], lf[key], rtol=1e-4, atol=0, msg=key)
    assert losses["loss"].requires_grad


def test_padded_targets_to_a_fixed_size_give_the_same_losses():
    """call_padded with extra empty gt slots (fixed shapes for CUDA graphs) equals __call__."""
    torch.manual_seed(1)
    cls = [torch.randn(2, 3, h, w) for h, w in SIZES]
    reg = [torch.randn(2, 64, h, w) for h, w in SIZES]
    bl = torch.tensor([[0, 1, 4.0, 4.0, 40.0, 30.0], [1, 2, 10.0, 12.0, 60.0, 50.0],
                       [1, 0, 20.0, 2.0, 44.0, 62.0], [0, 2, 30.0, 30.0, 50.0, 60.0]])
    criterion = YOLOWorldCriterion()
    expected = criterion(cls, reg, bl)
    padded = pad_targets(bl, 2, 3, min_slots=16)
    assert padded[0].shape == (2, 16) and int(padded[2].sum()) == 4
    got = criterion.call_padded(cls, reg, *padded)
    assert expected["loss_bbox"] > 0
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_predictions_give_a_non_finite_loss_not_an_error(bad):
    """A diverged model (NaN/inf box logits) must reach the training loop's non-finite-loss check
    (NonFiniteLossError, every rank together), not fail inside DFL with a NaN bin index."""
    cls, reg, bboxes_labels = _perfect_case()
    reg = [torch.full_like(r, bad) for r in reg]
    losses = YOLOWorldCriterion()(cls, reg, bboxes_labels)
    assert not math.isfinite(losses["loss"].item())


def test_forward_loss_and_backward_create_no_tensor_on_the_default_device(one_thread):
    """On a GPU a tensor made without device= (torch.zeros, arange, tensor...) lands on the CPU and
    fails against the CUDA ones. Here such tensors land on 'meta' and fail against the CPU ones: the
    same mistake, found without a GPU. The targets stay on the host, as the loop hands them over."""
    from worldtune.model import build_model

    torch.manual_seed(0)
    model = build_model("n", num_classes=3).train()
    images, texts = torch.rand(2, 3, 64, 64), torch.nn.functional.normalize(torch.randn(2, 3, 512), dim=-1)
    targets = torch.tensor([[0, 1, 8.0, 8, 40, 40], [1, 2, 20, 10, 60, 50]])
    with torch.device("meta"):
        out = model(images, texts)
        losses = YOLOWorldCriterion()(list(out.cls_logits), list(out.box_dist_logits), targets)
        losses["loss"].backward()
    assert losses["loss"].device.type == "cpu" and torch.isfinite(losses["loss"])
