import torch

from worldtune.loss.assigner import TaskAlignedAssigner
from worldtune.loss.assigner import pad_targets
from worldtune.model.postprocess import flatten_levels, make_priors
from worldtune.ops.boxes import box_ciou, distance_to_bbox


def _grid_priors():
    # A single 8x8 level with stride 8 (64-px image): centres 4, 12, ..., 60.
    return make_priors([(8, 8)], strides=(8,))


def _assign(pred_scores, pred_boxes, priors, gts, labels, topk=10):
    gt_bboxes = torch.tensor(gts, dtype=torch.float32).unsqueeze(0)
    gt_labels = torch.tensor(labels).unsqueeze(0)
    gt_valid = torch.ones_like(gt_labels, dtype=torch.bool)
    return TaskAlignedAssigner(topk=topk)(pred_scores, pred_boxes, priors, gt_labels, gt_bboxes, gt_valid)


def test_positives_are_inside_topk_and_targets_normalised():
    priors, _ = _grid_priors()
    torch.manual_seed(0)
    # Every prior predicts a box of its own around its centre; scores random.
    pred_boxes = distance_to_bbox(priors, torch.full((64, 4), 12.0)).unsqueeze(0)
    pred_scores = torch.rand(1, 64, 3)
    gt = [10.0, 10.0, 50.0, 42.0]
    res = _assign(pred_scores, pred_boxes, priors, [gt], [2], topk=5)
    fg = res.fg_mask[0]
    assert int(fg.sum()) == 5
    # Positives lie strictly inside the gt and carry its box and label.
    inside = (priors[:, 0] > 10) & (priors[:, 0] < 50) & (priors[:, 1] > 10) & (priors[:, 1] < 42)
    assert bool(inside[fg].all())
    assert torch.equal(res.bboxes_xyxy[0, fg], torch.tensor(gt).expand(5, 4))
    assert bool((res.labels[0, fg] == 2).all())
    # They are the 5 best inside priors by score^0.5 * ciou^6.
    ciou = box_ciou(pred_boxes[0], torch.tensor(gt)).clamp(min=0)
    align = pred_scores[0, :, 2].sqrt() * ciou.pow(6) * inside
    assert set(torch.topk(align, 5).indices.tolist()) == set(fg.nonzero().flatten().tolist())
    # Soft targets: only the gt class, and the best positive gets the gt's best positive overlap.
    assert float(res.scores[0, :, :2].abs().sum()) == 0.0
    assert float(res.scores[0, ~fg].abs().sum()) == 0.0
    target = res.scores[0, fg, 2]
    expected = align[fg] / (align[fg].max() + 1e-9) * ciou[fg].max()
    torch.testing.assert_close(target, expected)


def test_prior_claimed_by_two_gts_goes_to_larger_overlap():
    priors, _ = _grid_priors()
    # Two heavily overlapping gts; all predictions equal gt B, so B has the larger CIoU everywhere.
    gt_a, gt_b = [8.0, 8.0, 40.0, 40.0], [9.0, 9.0, 41.0, 41.0]
    pred_boxes = torch.tensor(gt_b).expand(1, 64, 4).clone()
    pred_scores = torch.full((1, 64, 2), 0.5)
    res = _assign(pred_scores, pred_boxes, priors, [gt_a, gt_b], [0, 1], topk=10)
    fg = res.fg_mask[0]
    assert int(fg.sum()) > 0
    assert bool((res.gt_index[0, fg] == 1).all())
    assert bool((res.labels[0, fg] == 1).all())


def test_contested_prior_goes_to_larger_overlap_even_when_alignment_prefers_the_other_gt():
    priors, _ = _grid_priors()
    # Same two gts as above, predictions equal gt B (CIoU 1 with B, about 0.88 with A). Class 0 (gt A)
    # scores 1 and class 1 (gt B) 0.01, so alignment = score^0.5 * ciou^6 is about 0.47 for A and
    # 0.1 for B: alignment prefers A, overlap prefers B, and the rule says overlap decides.
    gt_a, gt_b = [8.0, 8.0, 40.0, 40.0], [9.0, 9.0, 41.0, 41.0]
    pred_boxes = torch.tensor(gt_b).expand(1, 64, 4).clone()
    pred_scores = torch.tensor([1.0, 0.01]).expand(1, 64, 2).clone()
    ciou = box_ciou(torch.tensor(gt_b), torch.tensor([gt_a, gt_b]))
    align = torch.tensor([1.0, 0.01]).sqrt() * ciou.pow(6)
    assert ciou[1] > ciou[0] and align[0] > align[1]  # the premise of the test
    # Both gts hold the same 16 inside centres (12, 20, 28, 36 squared); topk=16 makes both claim all.
    res = _assign(pred_scores, pred_boxes, priors, [gt_a, gt_b], [0, 1], topk=16)
    fg = res.fg_mask[0]
    assert int(fg.sum()) == 16
    assert bool((res.gt_index[0, fg] == 1).all())
    assert bool((res.labels[0, fg] == 1).all())


def test_padded_gts_are_ignored_and_no_gt_gives_background():
    priors, _ = _grid_priors()
    pred_boxes = distance_to_bbox(priors, torch.full((64, 4), 12.0)).unsqueeze(0).repeat(2, 1, 1)
    pred_scores = torch.full((2, 64, 4), 0.3)
    # Image 0 has one gt, image 1 none: padding row for image 1.
    bl = torch.tensor([[0, 3, 4.0, 4.0, 36.0, 36.0]])
    gt_labels, gt_bboxes, gt_valid = pad_targets(bl, 2, 4)
    assert gt_valid.tolist() == [[True], [False]]
    res = TaskAlignedAssigner()(pred_scores, pred_boxes, priors, gt_labels, gt_bboxes, gt_valid)
    # Only 3x3 centres (12, 20, 28) lie strictly inside; the top-10 also returns outside
    # priors, which must not become positives.
    assert int(res.fg_mask[0].sum()) == 9
    assert not bool(res.fg_mask[1].any())
    assert float(res.scores[1].abs().sum()) == 0.0

    empty = TaskAlignedAssigner()(pred_scores, pred_boxes, priors, *pad_targets(torch.zeros(0, 6), 2, 4))
    assert not bool(empty.fg_mask.any())
    assert empty.scores.shape == (2, 64, 4)


def test_matches_official_assigner_fixture(loss_fixture):
    lf = loss_fixture
    priors, prior_strides = make_priors([tuple(c.shape[2:]) for c in lf["head_cls"]], (8, 16, 32))
    cls = flatten_levels(lf["head_cls"])
    dist = flatten_levels(lf["head_reg"])
    pred_boxes = distance_to_bbox(priors, dist * prior_strides[:, None])
    gt_labels, gt_bboxes, gt_valid = pad_targets(lf["bboxes_labels"], 2, cls.shape[-1])
    res = TaskAlignedAssigner()(cls.sigmoid(), pred_boxes, priors, gt_labels, gt_bboxes, gt_valid)
    ref = lf["assigner"]
    assert torch.equal(res.fg_mask, ref["fg_mask"])
    fg = res.fg_mask
    # The fixture stores the assigned boxes already divided by the prior stride (grid units).
    grid_boxes = (res.bboxes_xyxy / prior_strides[None, :, None])[fg]
    torch.testing.assert_close(grid_boxes, ref["fg_assigned_bboxes"], rtol=0, atol=1e-5)
    assert torch.equal(res.labels[fg], ref["fg_assigned_labels"])
    torch.testing.assert_close(res.scores[fg], ref["fg_assigned_scores"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.scores.sum(), ref["assigned_scores_sum"], rtol=1e-5, atol=0)
