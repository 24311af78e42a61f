"""Anchor points, box decoding and the official test-time post-processing (multi-label + class-aware NMS)."""
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor

from worldtune.jsonfile import is_finite_number, is_int
from worldtune.model.head import HeadOutputs, dfl_expectation
from worldtune.ops.boxes import distance_to_bbox


@dataclass
class PostprocessConfig:
    """Official `test_cfg` of every YOLO-World COCO recipe."""

    score_thr: float = 0.001
    nms_pre: int = 30000
    iou_thr: float = 0.7
    max_per_img: int = 300

    def __post_init__(self):
        # Refused here, in one line: a score_thr of 25 (meant as %) kept nothing, and a negative
        # count slices from the end ([:-1] silently drops the last box).
        for name in ("score_thr", "iou_thr"):
            value = getattr(self, name)
            if not (is_finite_number(value) and 0 <= value <= 1):
                raise ValueError(f"PostprocessConfig.{name} must be a number in [0, 1], got {value!r}"
                                 + (" (1.0 suppresses no box)" if name == "iou_thr" else ""))
        for name in ("nms_pre", "max_per_img"):
            value = getattr(self, name)
            if not (is_int(value) and value >= 1):
                raise ValueError(f"PostprocessConfig.{name} must be a positive int, got {value!r}")


def make_priors(feature_sizes: list[tuple[int, int]], strides: tuple[int, ...], device=None,
                dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Anchor centres ((col + 0.5) * s, (row + 0.5) * s), level by level, row-major within a level.

    Returns:
        points: (N, 2) in input pixels; strides: (N,) the stride of each point.
    """
    points, point_strides = [], []
    for (h, w), s in zip(feature_sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1))
        point_strides.append(torch.full((h * w,), float(s), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(point_strides)


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """[(B, C, H, W) per level] -> (B, sum(H*W), C), the same order as `make_priors`."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


def decode_outputs(outputs: HeadOutputs, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[Tensor, Tensor]:
    """Boxes and scores for every prior.

    Returns:
        boxes_xyxy: (B, N, 4) in input pixels, not clamped; scores: (B, N, K) sigmoid scores.
    """
    sizes = [tuple(m.shape[-2:]) for m in outputs.cls_logits]
    ref = outputs.cls_logits[0]
    points, point_strides = make_priors(sizes, strides, ref.device, ref.dtype)
    distances = flatten_levels([dfl_expectation(d) for d in outputs.box_dist_logits])
    boxes = distance_to_bbox(points, distances * point_strides[:, None])
    scores = flatten_levels(outputs.cls_logits).sigmoid()
    return boxes, scores


def detect_one_image(boxes_xyxy: Tensor, scores: Tensor, cfg: PostprocessConfig,
                     scale_factor: tuple[float, float] = (1.0, 1.0),
                     pad_param: tuple[float, float, float, float] = (0, 0, 0, 0),
                     ori_shape: tuple[int, int] | None = None) -> dict[str, Tensor]:
    """Official multi-label post-processing for one image.

    Args:
        boxes_xyxy: (N, 4) decoded boxes in network-input pixels; scores: (N, K).
        scale_factor: (w_scale, h_scale) from original to network input (before padding).
        pad_param: (top, bottom, left, right) letterbox padding.
        ori_shape: (h, w) of the original image, for the final clamp.
    Returns:
        dict(boxes_xyxy (M, 4) in original pixels, scores (M,), labels (M,) int64), sorted by score.
    """
    # Every (prior, class) pair above the threshold is a candidate; keep the best nms_pre.
    valid = scores > cfg.score_thr
    cand_scores = scores[valid]
    cand_idx = valid.nonzero()
    order = cand_scores.argsort(descending=True)[: cfg.nms_pre]
    cand_scores, cand_idx = cand_scores[order], cand_idx[order]
    prior_idx, labels = cand_idx.unbind(dim=1)
    boxes = boxes_xyxy[prior_idx]
    # Map back to the original image before NMS, as the official predict path does.
    top, _, left, _ = pad_param
    boxes = boxes - boxes.new_tensor([left, top, left, top])
    boxes = boxes / boxes.new_tensor([scale_factor[0], scale_factor[1], scale_factor[0], scale_factor[1]])
    keep = torchvision.ops.batched_nms(boxes, cand_scores, labels, cfg.iou_thr)[: cfg.max_per_img]
    boxes, cand_scores, labels = boxes[keep], cand_scores[keep], labels[keep]
    if ori_shape is not None:
        h, w = ori_shape
        boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                             boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
    return {"boxes_xyxy": boxes, "scores": cand_scores, "labels": labels}
