"""Task-aligned label assignment (TOOD / YOLOv8 style), batched over images with padded gts.

The rule, per image and over all pyramid levels at once (inputs carry no gradient):

1. overlap[g, p] = CIoU(pred_box[p], gt[g]) clamped at 0;
   alignment[g, p] = score[p, label[g]] ** alpha * overlap[g, p] ** beta.
2. Candidates are priors whose centre lies strictly inside the gt (all four gaps > eps).
   Each valid gt keeps its `topk` best candidates by alignment. When fewer than `topk`
   candidates have a non-zero alignment, the zero-valued ones that `torch.topk` happens
   to return are kept too if they lie inside the gt: they become foreground with a
   target score of 0, exactly as in the official code.
3. A prior picked by several gts goes to the gt with the largest overlap, the argmax being
   taken over *all* gts of the image (padded ones included), as the official code does.
4. Soft targets: one-hot(label) * alignment / (max alignment of that gt + eps)
   * (max overlap of that gt), the max taken over the gt's positives.

`pad_targets` turns the collated `bboxes_labels` [N, 6] into the padded per-image tensors.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from worldtune.ops.boxes import box_ciou


@dataclass
class AssignResult:
    """Per-prior targets. B images, A priors, K classes.

    labels: Tensor[B, A] int64, class index (meaningful where `fg_mask`).
    bboxes_xyxy: Tensor[B, A, 4] assigned gt box in input pixels.
    scores: Tensor[B, A, K] soft classification targets (zero on background priors).
    fg_mask: Tensor[B, A] bool, foreground priors.
    gt_index: Tensor[B, A] int64, index of the assigned gt within its image.
    """

    labels: Tensor
    bboxes_xyxy: Tensor
    scores: Tensor
    fg_mask: Tensor
    gt_index: Tensor


class TaskAlignedAssigner:
    """Official defaults: top-10, alpha 0.5, beta 6, eps 1e-9, CIoU eps 1e-7."""

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9,
                 iou_eps: float = 1e-7):
        self.topk = topk
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self.iou_eps = iou_eps

    @torch.no_grad()
    def __call__(self, pred_scores: Tensor, pred_bboxes_xyxy: Tensor, priors_xy: Tensor,
                 gt_labels: Tensor, gt_bboxes_xyxy: Tensor, gt_valid: Tensor) -> AssignResult:
        """Assign gts to priors.

        Args:
            pred_scores: Tensor[B, A, K] sigmoid class scores.
            pred_bboxes_xyxy: Tensor[B, A, 4] decoded predictions in input pixels.
            priors_xy: Tensor[A, 2] prior centres in input pixels.
            gt_labels: Tensor[B, M] int64 class index into each image's K texts (0 on padding).
            gt_bboxes_xyxy: Tensor[B, M, 4] gt boxes in input pixels (0 on padding).
            gt_valid: Tensor[B, M] bool, False for padding rows.
        Returns:
            AssignResult.
        """
        batch, num_priors, num_classes = pred_scores.shape
        num_gt = gt_bboxes_xyxy.shape[1]
        device = pred_scores.device
        if num_gt == 0:
            return AssignResult(
                labels=torch.zeros(batch, num_priors, dtype=torch.long, device=device),
                bboxes_xyxy=torch.zeros_like(pred_bboxes_xyxy),
                scores=torch.zeros_like(pred_scores),
                fg_mask=torch.zeros(batch, num_priors, dtype=torch.bool, device=device),
                gt_index=torch.zeros(batch, num_priors, dtype=torch.long, device=device),
            )
        valid = gt_valid.to(pred_scores.dtype).unsqueeze(-1)  # [B, M, 1]

        # Alignment metric, [B, M, A]. Padded gts read class 0, as upstream; they are masked below.
        scores_per_gt = pred_scores.gather(2, gt_labels.long().unsqueeze(1).expand(-1, num_priors, -1))
        scores_per_gt = scores_per_gt.permute(0, 2, 1)
        overlaps = box_ciou(pred_bboxes_xyxy.unsqueeze(1), gt_bboxes_xyxy.unsqueeze(2), eps=self.iou_eps)
        overlaps = overlaps.clamp(min=0)
        alignment = scores_per_gt.pow(self.alpha) * overlaps.pow(self.beta)

        # Centre strictly inside the gt, [B, M, A].
        px, py = priors_xy[:, 0], priors_xy[:, 1]
        x1, y1, x2, y2 = (gt_bboxes_xyxy[..., i].unsqueeze(-1) for i in range(4))
        gaps = torch.stack([px - x1, py - y1, x2 - px, y2 - py], dim=-1)
        inside = (gaps.amin(dim=-1) > self.eps).to(pred_scores.dtype)

        # Top-k per gt over the masked alignment. Counts > 1 cannot happen for valid gts
        # (distinct indices); padded gts are pointed k times at prior 0 and so count 0, as upstream.
        # scatter_add instead of a one-hot of shape [B, M, k, A] keeps memory at [B, M, A].
        k = min(self.topk, num_priors)
        topk_idx = torch.topk(alignment * inside, k, dim=-1, largest=True).indices  # [B, M, k]
        topk_idx = torch.where(valid.bool().expand(-1, -1, k), topk_idx, torch.zeros_like(topk_idx))
        in_topk = torch.zeros_like(alignment).scatter_add_(-1, topk_idx,
                                                           torch.ones_like(topk_idx, dtype=alignment.dtype))
        in_topk = torch.where(in_topk > 1, torch.zeros_like(in_topk), in_topk)
        pos_mask = in_topk * inside * valid  # [B, M, A]

        # One gt per prior: resolve conflicts by the largest overlap over all gts.
        # Applied unconditionally: testing "any prior with several gts?" first would cost a device sync.
        multi = (pos_mask.sum(dim=1, keepdim=True) > 1).expand(-1, num_gt, -1)  # [B, M, A]
        best_gt = F.one_hot(overlaps.argmax(dim=1), num_gt).permute(0, 2, 1).to(pos_mask.dtype)
        pos_mask = torch.where(multi, best_gt, pos_mask)
        fg_count = pos_mask.sum(dim=1)  # [B, A]
        gt_index = pos_mask.argmax(dim=1)  # [B, A]; 0 on background
        fg_mask = fg_count > 0

        labels = gt_labels.long().gather(1, gt_index).clamp(min=0)
        bboxes = gt_bboxes_xyxy.gather(1, gt_index.unsqueeze(-1).expand(-1, -1, 4))
        scores = F.one_hot(labels, num_classes).to(pred_scores.dtype) * fg_mask.unsqueeze(-1)

        # Normalise each gt's alignment so that its best positive gets the gt's best overlap.
        alignment = alignment * pos_mask
        max_alignment = alignment.amax(dim=-1, keepdim=True)  # [B, M, 1]
        max_overlap = (overlaps * pos_mask).amax(dim=-1, keepdim=True)
        norm = (alignment * max_overlap / (max_alignment + self.eps)).amax(dim=1)  # [B, A]
        scores = scores * norm.unsqueeze(-1)
        return AssignResult(labels=labels, bboxes_xyxy=bboxes, scores=scores, fg_mask=fg_mask,
                            gt_index=gt_index)


def pad_targets(bboxes_labels: Tensor, batch_size: int, num_classes: int,
                min_slots: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Collated gts [N, 6] (image index, label, x1, y1, x2, y2) -> per-image padded tensors.

    M is the largest gt count of an image, or `min_slots` if larger (fixed shapes for CUDA graphs;
    extra padding rows change no loss).

    Returns:
        gt_labels: Tensor[B, M] int64; gt_bboxes_xyxy: Tensor[B, M, 4]; gt_valid: Tensor[B, M] bool.
    """
    if bboxes_labels.dim() != 2 or bboxes_labels.shape[1] != 6:
        raise ValueError(f"bboxes_labels must be Tensor[N, 6] (image index, label, x1, y1, x2, y2), "
                         f"got shape {tuple(bboxes_labels.shape)}")
    image_idx = bboxes_labels[:, 0].long()
    labels = bboxes_labels[:, 1].long()
    if len(bboxes_labels) and (image_idx.min() < 0 or image_idx.max() >= batch_size):
        raise ValueError(f"bboxes_labels[:, 0] (image index) must lie in [0, {batch_size}), "
                         f"got range [{int(image_idx.min())}, {int(image_idx.max())}]")
    if len(bboxes_labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"bboxes_labels[:, 1] (label) must index the {num_classes} texts of its image, "
                         f"got range [{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(image_idx, minlength=batch_size)
    max_gt = max(int(counts.max()) if len(bboxes_labels) else 0, min_slots)
    device = bboxes_labels.device
    gt_labels = torch.zeros(batch_size, max_gt, dtype=torch.long, device=device)
    gt_bboxes = torch.zeros(batch_size, max_gt, 4, dtype=bboxes_labels.dtype, device=device)
    gt_valid = torch.zeros(batch_size, max_gt, dtype=torch.bool, device=device)
    # Stable sort keeps each image's gts in their collated order, as the official padding does.
    order = torch.sort(image_idx, stable=True).indices
    image_idx, rows = image_idx[order], bboxes_labels[order]
    slot = torch.arange(len(rows), device=device) - (torch.cumsum(counts, 0) - counts)[image_idx]
    gt_labels[image_idx, slot] = labels[order]
    gt_bboxes[image_idx, slot] = rows[:, 2:6]
    gt_valid[image_idx, slot] = True
    return gt_labels, gt_bboxes, gt_valid
