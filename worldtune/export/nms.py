"""Post-processing inside the ONNX graph: score threshold, class-aware NMS, best `max_det`.

The one custom op is ONNX NonMaxSuppression (per batch and class), mapped with a `symbolic` for
the TorchScript exporter; its eager forward makes the same selection with torchvision, so the
PyTorch module and the exported graph can be compared.
"""
import torch
import torchvision
from torch import Tensor, nn


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression (per batch and class); eager forward gives the same selection.

    boxes (B, N, 4) xyxy, scores (B, K, N) -> selected (M, 3) int64 rows (batch, class, box).
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: Tensor, iou_thr: Tensor,
                score_thr: Tensor) -> Tensor:
        rows = []
        for b in range(scores.shape[0]):
            cls, idx = (scores[b] > score_thr).nonzero().unbind(1)
            keep = torchvision.ops.batched_nms(boxes[b, idx], scores[b, cls, idx], cls, float(iou_thr))
            for k in cls[keep].unique().tolist():
                kept = keep[cls[keep] == k][: int(max_per_class)]  # already sorted by score
                rows.append(torch.stack([torch.full_like(kept, b), cls[kept], idx[kept]], dim=1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_thr, score_thr):
        # center_point_box=0: corners; IoU does not care whether they are (x, y) or (y, x) ordered.
        return g.op("NonMaxSuppression", boxes, scores, max_per_class, iou_thr, score_thr, center_point_box_i=0)


class DetectorWithNMS(nn.Module):
    """`DecodedDetector` followed by multi-label class-aware NMS, fixed-size padded outputs.

    As the official test_cfg, every (box, class) pair above `score_thr` is a candidate; unlike it,
    there is no `nms_pre` cap (30000 candidates) and NMS runs in input pixels, which is the same
    as original pixels because IoU is unchanged by the letterbox's shift and uniform scale.
    """

    def __init__(self, detector: nn.Module, score_thr: float = 0.25, iou_thr: float = 0.7,
                 max_det: int = 300):
        super().__init__()
        self.detector = detector
        self.score_thr, self.iou_thr, self.max_det = float(score_thr), float(iou_thr), int(max_det)

    def forward(self, images: Tensor, text_feats: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns num_dets (B,), boxes (B, max_det, 4), scores (B, max_det), labels (B, max_det)."""
        boxes, scores = self.detector(images, text_feats)
        scores = scores.transpose(1, 2).contiguous()  # (B, K, N) as NonMaxSuppression wants
        b, k, n = scores.shape
        selected = _NonMaxSuppression.apply(boxes, scores, torch.tensor([self.max_det]),
                                            torch.tensor([self.iou_thr]), torch.tensor([self.score_thr]))
        # Scatter the kept scores into an all-zero (B, K*N) map, then take the best max_det per image:
        # this gives a per-image top-k without a loop over images inside the graph.
        flat = (selected[:, 0] * k + selected[:, 1]) * n + selected[:, 2]
        kept = torch.zeros_like(scores).reshape(-1).scatter(0, flat, scores.reshape(-1).gather(0, flat))
        kept = kept.reshape(b, -1)
        # Padding columns make top-k valid even when K*N < max_det.
        kept = torch.cat([kept, kept.new_zeros(b, self.max_det)], dim=1)
        top_scores, top_idx = kept.topk(self.max_det, dim=1)
        valid = top_scores > 0  # kept scores exceed score_thr >= 0; zeros are padding
        prior = top_idx % n
        labels = torch.where(valid, top_idx // n, torch.full_like(top_idx, -1))
        top_boxes = boxes.gather(1, prior.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1).to(boxes.dtype)
        return valid.sum(dim=1), top_boxes, top_scores, labels
