import math

import pytest
import torch

from worldtune.ops.boxes import bbox_to_distance, box_ciou, distance_to_bbox, xywh_to_xyxy, xyxy_to_xywh


def _ciou_reference(b1, b2, eps=1e-7):
    """Plain-Python CIoU written from the spec (REFERENCE.md section 4), float64."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = b1, b2
    w1, h1, w2, h2 = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
    inter = max(min(ax2, bx2) - max(ax1, bx1), 0) * max(min(ay2, by2) - max(ay1, by1), 0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw, ch = max(ax2, bx2) - min(ax1, bx1), max(ay2, by2) - min(ay1, by1)
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / (h2 + eps)) - math.atan(w1 / (h1 + eps))) ** 2
    alpha = v / (v - iou + 1 + eps)
    return min(max(iou - rho2 / (cw**2 + ch**2 + eps) - alpha * v, -1.0), 1.0)


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
    a = torch.tensor([10.0, 10.0, 30.0, 40.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([12.0, 8.0, 35.0, 45.0], dtype=torch.float64)
    box_ciou(a, b).backward()
    # Numerical gradient with alpha frozen at its value for `a`.
    def ciou_fixed_alpha(x, alpha):
        w1, h1, w2, h2 = x[2] - x[0], x[3] - x[1], b[2] - b[0], b[3] - b[1]
        inter = (torch.minimum(x[2], b[2]) - torch.maximum(x[0], b[0])) * (torch.minimum(x[3], b[3]) - torch.maximum(x[1], b[1]))
        iou = inter / (w1 * h1 + w2 * h2 - inter + 1e-7)
        cw, ch = torch.maximum(x[2], b[2]) - torch.minimum(x[0], b[0]), torch.maximum(x[3], b[3]) - torch.minimum(x[1], b[1])
        rho2 = ((b[0] + b[2] - x[0] - x[2]) ** 2 + (b[1] + b[3] - x[1] - x[3]) ** 2) / 4
        v = 4 / math.pi**2 * (torch.atan(w2 / (h2 + 1e-7)) - torch.atan(w1 / (h1 + 1e-7))) ** 2
        return iou - rho2 / (cw**2 + ch**2 + 1e-7) - alpha * v
    with torch.no_grad():
        x = a.detach()
        w1, h1, w2, h2 = x[2] - x[0], x[3] - x[1], b[2] - b[0], b[3] - b[1]
        v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
        alpha = v / (v - _ciou_iou(x, b) + 1)
    numeric = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        step = torch.zeros(4, dtype=torch.float64)
        step[i] = 1e-6
        numeric[i] = (ciou_fixed_alpha(x + step, alpha) - ciou_fixed_alpha(x - step, alpha)) / 2e-6
    torch.testing.assert_close(a.grad, numeric, rtol=1e-5, atol=1e-7)


def _ciou_iou(x, b):
    inter = (min(x[2], b[2]) - max(x[0], b[0])) * (min(x[3], b[3]) - max(x[1], b[1]))
    union = (x[2] - x[0]) * (x[3] - x[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)
