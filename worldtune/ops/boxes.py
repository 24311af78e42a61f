"""Box utilities. Internal box format is (x1, y1, x2, y2) in pixels unless a name says otherwise."""
import math

import torch
from torch import Tensor


def xywh_to_xyxy(boxes_xywh: Tensor) -> Tensor:
    """(x, y, w, h) top-left + size -> (x1, y1, x2, y2). boxes: Tensor[..., 4]."""
    x, y, w, h = boxes_xywh.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(boxes_xyxy: Tensor) -> Tensor:
    """(x1, y1, x2, y2) -> (x, y, w, h) top-left + size (COCO results format)."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack([x1, y1, x2 - x1, y2 - y1], dim=-1)


def distance_to_bbox(points: Tensor, distance_ltrb: Tensor) -> Tensor:
    """Decode (left, top, right, bottom) distances from anchor points.

    Args:
        points: Tensor[..., 2] anchor centres (x, y).
        distance_ltrb: Tensor[..., 4] distances in the same units as `points`.
    Returns:
        Tensor[..., 4] boxes_xyxy, not clamped.
    """
    x, y = points.unbind(-1)
    left, top, right, bottom = distance_ltrb.unbind(-1)
    return torch.stack([x - left, y - top, x + right, y + bottom], dim=-1)


def bbox_to_distance(points: Tensor, boxes_xyxy: Tensor, max_distance: float | None = None) -> Tensor:
    """Inverse of `distance_to_bbox`: (left, top, right, bottom) from points to box sides."""
    x, y = points.unbind(-1)
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    dist = torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)
    if max_distance is not None:
        dist = dist.clamp(min=0, max=max_distance)
    return dist


def box_ciou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor, eps: float = 1e-7) -> Tensor:
    """Element-wise complete IoU of two broadcastable box tensors, clamped to [-1, 1].

    Follows the YOLOv5/mmyolo formulation so that losses match the official numbers:
    the union is formed from the raw widths and heights plus `eps`; `eps` is added to
    both heights only inside the aspect-ratio term, and to the squared enclosing
    diagonal; the aspect weight alpha carries no gradient (it is treated as a constant).

    Args:
        boxes1_xyxy, boxes2_xyxy: Tensor[..., 4], broadcastable against each other.
        eps: numerical guard (official: 1e-7, in the assigner and in the box loss).
    Returns:
        Tensor[...] CIoU values in [-1, 1].
    """
    b1_x1, b1_y1, b1_x2, b1_y2 = boxes1_xyxy.unbind(-1)
    b2_x1, b2_y1, b2_x2, b2_y2 = boxes2_xyxy.unbind(-1)
    w1, h1 = b1_x2 - b1_x1, b1_y2 - b1_y1
    w2, h2 = b2_x2 - b2_x1, b2_y2 - b2_y1

    inter_w = (torch.minimum(b1_x2, b2_x2) - torch.maximum(b1_x1, b2_x1)).clamp(min=0)
    inter_h = (torch.minimum(b1_y2, b2_y2) - torch.maximum(b1_y1, b2_y1)).clamp(min=0)
    overlap = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - overlap + eps
    iou = overlap / union

    enclose_w = (torch.maximum(b1_x2, b2_x2) - torch.minimum(b1_x1, b2_x1)).clamp(min=0)
    enclose_h = (torch.maximum(b1_y2, b2_y2) - torch.minimum(b1_y1, b2_y1)).clamp(min=0)
    enclose_diag2 = enclose_w**2 + enclose_h**2 + eps
    centre_dist2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4

    # eps on the heights keeps atan(w / h) finite for zero-height boxes.
    aspect = (4 / math.pi**2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = aspect / (aspect - iou + (1 + eps))
    ciou = iou - (centre_dist2 / enclose_diag2 + alpha * aspect)
    return ciou.clamp(min=-1.0, max=1.0)
