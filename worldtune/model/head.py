"""YOLO-World detection head: per-level class embeddings scored against text, plus DFL box bins."""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldtune.model.layers import BN_EPS, BN_MOMENTUM, ConvBNAct

REG_MAX = 16  # DFL bins per box side


@dataclass
class HeadOutputs:
    """Raw per-level head outputs (strides 8, 16, 32).

    cls_logits: list of (B, K, H, W) class logits (before sigmoid), K = number of texts.
    box_dist_logits: list of (B, 4 * REG_MAX, H, W); channel = side * REG_MAX + bin,
        sides ordered (left, top, right, bottom).
    """

    cls_logits: list[Tensor]
    box_dist_logits: list[Tensor]


class BNContrastiveHead(nn.Module):
    """logit = exp(logit_scale) * <BN(embedding), normalise(text)> + bias (YOLO-World-v2)."""

    def __init__(self, embed_dims: int = 512, bias_init: float = 0.0):
        super().__init__()
        # Own parameters first, in the official order (bias, logit_scale), then `norm`.
        self.bias = nn.Parameter(torch.tensor(bias_init))
        self.logit_scale = nn.Parameter(torch.tensor(-1.0))
        self.norm = nn.BatchNorm2d(embed_dims, eps=BN_EPS, momentum=BN_MOMENTUM)

    def forward(self, x: Tensor, text_feats: Tensor) -> Tensor:
        """x: (B, C, H, W); text_feats: (B, K, C). Returns (B, K, H, W)."""
        x = self.norm(x)
        text = F.normalize(text_feats, dim=-1, p=2)
        return torch.einsum("bchw,bkc->bkhw", x, text) * self.logit_scale.exp() + self.bias


class YOLOWorldHeadModule(nn.Module):
    """Unshared per-level branches: cls (-> 512-d embedding -> contrastive logits) and reg (-> 64 DFL logits)."""

    def __init__(self, in_channels: tuple[int, int, int], num_classes: int = 80, embed_dims: int = 512,
                 strides: tuple[int, int, int] = (8, 16, 32)):
        super().__init__()
        cls_hidden = max(in_channels[0], num_classes)
        reg_hidden = max(16, in_channels[0] // 4, 4 * REG_MAX)
        self.cls_preds = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, cls_hidden, 3), ConvBNAct(cls_hidden, cls_hidden, 3),
                          nn.Conv2d(cls_hidden, embed_dims, 1))
            for c in in_channels)
        self.reg_preds = nn.ModuleList(
            nn.Sequential(ConvBNAct(c, reg_hidden, 3), ConvBNAct(reg_hidden, reg_hidden, 3),
                          nn.Conv2d(reg_hidden, 4 * REG_MAX, 1))
            for c in in_channels)
        # Prior bias: about 5 objects per 640x640 image spread over num_classes (YOLOv8 convention).
        self.cls_contrasts = nn.ModuleList(
            BNContrastiveHead(embed_dims, math.log(5 / num_classes / (640 / s) ** 2)) for s in strides)
        self._init_weights()

    def _init_weights(self) -> None:
        for cls_pred, reg_pred in zip(self.cls_preds, self.reg_preds):
            nn.init.zeros_(cls_pred[-1].bias)
            nn.init.constant_(reg_pred[-1].bias, 1.0)

    def forward(self, feats: list[Tensor], text_feats: Tensor) -> HeadOutputs:
        cls_logits, box_dist_logits = [], []
        for x, cls_pred, reg_pred, contrast in zip(feats, self.cls_preds, self.reg_preds, self.cls_contrasts):
            cls_logits.append(contrast(cls_pred(x), text_feats))
            box_dist_logits.append(reg_pred(x))
        return HeadOutputs(cls_logits, box_dist_logits)


class YOLOWorldHead(nn.Module):
    """Wrapper that keeps the official `bbox_head.head_module.*` key names."""

    def __init__(self, head_module: YOLOWorldHeadModule):
        super().__init__()
        self.head_module = head_module

    def forward(self, feats: list[Tensor], text_feats: Tensor) -> HeadOutputs:
        return self.head_module(feats, text_feats)


def dfl_expectation(box_dist_logits: Tensor) -> Tensor:
    """Expected distance per side from DFL bin logits.

    Args:
        box_dist_logits: (B, 4 * REG_MAX, H, W).
    Returns:
        (B, 4, H, W) distances (left, top, right, bottom) in stride units.
    """
    b, _, h, w = box_dist_logits.shape
    probs = box_dist_logits.reshape(b, 4, REG_MAX, h, w).softmax(dim=2)
    bins = torch.arange(REG_MAX, dtype=probs.dtype, device=probs.device).view(1, 1, REG_MAX, 1, 1)
    return (probs * bins).sum(dim=2)
