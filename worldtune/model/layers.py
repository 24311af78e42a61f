"""Convolution building blocks shared by the backbone and the neck.

Attribute names (`conv`, `bn`, `main_conv`, `final_conv`, `blocks`, `conv1`, `conv2`) follow the
official implementation so that its state_dict loads without a rename table.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Every image-side BatchNorm of YOLO-World uses these (mmyolo's YOLOv8 defaults).
BN_MOMENTUM = 0.03
BN_EPS = 0.001


def make_divisible(channels: float, widen_factor: float, divisor: int = 8) -> int:
    """Scale a channel count by `widen_factor` and round *up* to a multiple of `divisor`."""
    return int(math.ceil(channels * widen_factor / divisor) * divisor)


def make_round(num: float, factor: float) -> int:
    """Scale a block (or head) count and round to the nearest integer, at least 1."""
    return max(round(num * factor), 1) if num > 1 else int(num)


class ConvBNAct(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU (or no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        if not self.act:
            return x
        # In place only when autograd records nothing: in training, silu_ would first clone its input
        # for the backward, which costs more than writing a fresh output (~10 % of a CPU step for L).
        return F.silu(x, inplace=not (torch.is_grad_enabled() and x.requires_grad))


class DarknetBottleneck(nn.Module):
    """Two 3x3 ConvBNAct at constant width, with an optional residual (backbone only)."""

    def __init__(self, channels: int, add_identity: bool):
        super().__init__()
        self.conv1 = ConvBNAct(channels, channels, 3)
        self.conv2 = ConvBNAct(channels, channels, 3)
        self.add_identity = add_identity

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return x + out if self.add_identity else out


class CSPLayerWithTwoConv(nn.Module):
    """YOLOv8's C2f block: split, chain `num_blocks` bottlenecks, concatenate every partial output.

    Input (B, in_channels, H, W) -> (B, out_channels, H, W). `extra_branches` widens the final 1x1
    conv for subclasses that append more branches (the text-guided neck blocks append one).
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, add_identity: bool,
                 extra_branches: int = 0):
        super().__init__()
        self.mid_channels = out_channels // 2
        self.main_conv = ConvBNAct(in_channels, 2 * self.mid_channels, 1)
        self.final_conv = ConvBNAct((2 + num_blocks + extra_branches) * self.mid_channels, out_channels, 1)
        self.blocks = nn.ModuleList(DarknetBottleneck(self.mid_channels, add_identity) for _ in range(num_blocks))

    def split_and_run_blocks(self, x: Tensor) -> list[Tensor]:
        parts = list(self.main_conv(x).split((self.mid_channels, self.mid_channels), dim=1))
        for block in self.blocks:
            parts.append(block(parts[-1]))
        return parts

    def forward(self, x: Tensor) -> Tensor:
        return self.final_conv(torch.cat(self.split_and_run_blocks(x), dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated with the input."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5):
        super().__init__()
        mid = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, mid, 1)
        self.pool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)
        self.conv2 = ConvBNAct(4 * mid, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        p1 = self.pool(x)
        p2 = self.pool(p1)
        p3 = self.pool(p2)
        return self.conv2(torch.cat([x, p1, p2, p3], dim=1))
