import math

import pytest
import torch

from worldtune.ops.boxes import bbox_to_distance, box_ciou, distance_to_bbox, xywh_to_xyxy, xyxy_to_xywh


def _ciou_terms(b1, b2, eps=1e-7):
    """Plain-Python CIoU parts written from the spec (REFERENCE.md section 4): iou, centre term, v, alpha."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = b1, b2
    w1, h1, w2, h2 = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw, ch = max(ax2, bx2) - min(ax1, bx1), max(ay2, by2) - min(ay1, by1)
    centre = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4 / (cw**2 + ch**2 + eps)
    v = 4 / math.pi**2 * (math.atan(w2 / (h2 + eps)) - math.atan(w1 / (h1 + eps))) ** 2
    alpha = v / (v - iou + 1 + eps)
    return iou, centre, v, alpha


def _ciou_reference(b1, b2, eps=1e-7):
    iou, centre, v, alpha = _ciou_terms(b1, b2, eps)
    return min(max(iou - centre - alpha * v, -1.0), 1.0)


def test_xywh_round_trip():
    xywh = torch.tensor([[10.0, 20.0, 30.0, 5.0]])
    assert xywh_to_xyxy(xywh).tolist() == [[10.0, 20.0, 40.0, 25.0]]
    assert torch.equal(xyxy_to_xywh(xywh_to_xyxy(xywh)), xywh)


def test_distance_round_trip_and_clamp():
    points = torch.tensor([[10.0, 10.0], [50.0, 20.0]])
    boxes = torch.tensor([[0.0, 5.0, 30.0, 12.0], [40.0, 0.0, 70.0, 60.0]])
    dist = bbox_to_distance(points, boxes)
    assert dist[0].tolist() == [10.0, 5.0, 20.0, 2.0]
    assert torch.equal(distance_to_bbox(points, dist), boxes)
    assert bbox_to_distance(points, boxes, max_distance=14.99)[1].tolist() == pytest.approx([10.0, 14.99, 14.99, 14.99])


def test_ciou_matches_spec_formula_on_random_boxes():
    torch.manual_seed(0)
    xy = torch.rand(200, 2, 2, dtype=torch.float64) * 50
    wh = torch.rand(200, 2, 2, dtype=torch.float64) * 30 + 0.5
    boxes = torch.cat([xy, xy + wh], dim=-1)  # [200, 2, 4]
    ours = box_ciou(boxes[:, 0], boxes[:, 1])
    ref = torch.tensor([_ciou_reference(a.tolist(), b.tolist()) for a, b in boxes], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_ciou_special_cases_and_broadcast():
    box = torch.tensor([10.0, 10.0, 30.0, 40.0])
    assert box_ciou(box, box).item() == pytest.approx(1.0, abs=1e-6)
    far = torch.tensor([500.0, 500.0, 520.0, 530.0])
    assert -1.0 <= box_ciou(box, far).item() < -0.9
    # Same IoU, different centre distance: the farther one scores lower.
    near_shift, far_shift = box + torch.tensor([2.0, 0, 2.0, 0]), box + torch.tensor([0, 2.0, 0, 2.0])
    assert box_ciou(box, near_shift) != box_ciou(box, far_shift)
    assert box_ciou(torch.zeros(3, 1, 4) + box, torch.zeros(1, 5, 4) + box).shape == (3, 5)
    # Zero-height boxes stay finite.
    flat = torch.tensor([0.0, 0.0, 10.0, 0.0])
    assert torch.isfinite(box_ciou(flat, box))


def test_ciou_alpha_carries_no_gradient():
    # Very different aspect ratios, so that a gradient through alpha would be visible.
    a0, b = [10.0, 10.0, 60.0, 20.0], [12.0, 5.0, 30.0, 45.0]
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    box_ciou(a, torch.tensor(b, dtype=torch.float64)).backward()
    alpha0 = _ciou_terms(a0, b)[3]

    def frozen_alpha(x):
        iou, centre, v, _ = _ciou_terms(x, b)
        return iou - centre - alpha0 * v

    numeric = []
    for i in range(4):
        hi, lo = list(a0), list(a0)
        hi[i] += 1e-6
        lo[i] -= 1e-6
        numeric.append((frozen_alpha(hi) - frozen_alpha(lo)) / 2e-6)
    torch.testing.assert_close(a.grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-5, atol=1e-8)
