"""Text-guided path aggregation neck (YOLO-World-v2 "VL-PAN", no image-pooling attention)."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldtune.model.layers import ConvBNAct, CSPLayerWithTwoConv, make_divisible, make_round


class MaxSigmoidAttnBlock(nn.Module):
    """Scale image channels by how well each location matches its best text, per attention head.

    For head m: s = max_k <x_m(h, w), g_m(text_k)> / sqrt(c); out_m = project_conv(x)_m * sigmoid(s + bias_m).
    """

    def __init__(self, in_channels: int, embed_channels: int, num_heads: int, guide_channels: int = 512):
        super().__init__()
        self.num_heads = num_heads
        self.head_channels = embed_channels // num_heads
        # Own parameter first: keeps the official state_dict order (bias, guide_fc, project_conv).
        self.bias = nn.Parameter(torch.zeros(num_heads))
        # Only needed when the block width differs from the attention width (never for v2 S/M/L/X).
        self.embed_conv = (ConvBNAct(in_channels, embed_channels, 1, act=False)
                           if embed_channels != in_channels else None)
        self.guide_fc = nn.Linear(guide_channels, embed_channels)
        self.project_conv = ConvBNAct(in_channels, in_channels, 3, act=False)

    def attention(self, x: Tensor, text_feats: Tensor) -> Tensor:
        """x: (B, C, H, W), text_feats: (B, K, 512) -> sigmoid weights (B, M, H, W)."""
        b, _, h, w = x.shape
        guide = self.guide_fc(text_feats).reshape(b, -1, self.num_heads, self.head_channels)
        embed = x if self.embed_conv is None else self.embed_conv(x)
        embed = embed.reshape(b, self.num_heads, self.head_channels, h, w)
        scores = torch.einsum("bmchw,bkmc->bmhwk", embed, guide).amax(dim=-1)
        return torch.sigmoid(scores / self.head_channels**0.5 + self.bias.view(1, -1, 1, 1))

    def forward(self, x: Tensor, text_feats: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weights = self.attention(x, text_feats)
        out = self.project_conv(x).reshape(b, self.num_heads, c // self.num_heads, h, w)
        return (out * weights.unsqueeze(2)).reshape(b, c, h, w)


class ProjectOnlyBlock(nn.Module):
    """The "efficient neck" branch: the 3x3 projection alone; the text is ignored."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.project_conv = ConvBNAct(in_channels, in_channels, 3, act=False)

    def forward(self, x: Tensor, text_feats: Tensor) -> Tensor:
        return self.project_conv(x)


class TextGuidedCSPLayer(CSPLayerWithTwoConv):
    """C2f whose last bottleneck output also goes through a text-guided branch (`attn_block`).

    Neck blocks have no residual. The final 1x1 conv sees (3 + num_blocks) * mid channels.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, embed_channels: int,
                 num_heads: int, guide_channels: int = 512, efficient: bool = False):
        super().__init__(in_channels, out_channels, num_blocks, add_identity=False, extra_branches=1)
        if efficient:
            self.attn_block = ProjectOnlyBlock(self.mid_channels)
        else:
            self.attn_block = MaxSigmoidAttnBlock(self.mid_channels, embed_channels, num_heads, guide_channels)

    def forward(self, x: Tensor, text_feats: Tensor) -> Tensor:
        parts = self.split_and_run_blocks(x)
        parts.append(self.attn_block(parts[-1], text_feats))
        return self.final_conv(torch.cat(parts, dim=1))


class YOLOWorldPAFPN(nn.Module):
    """Top-down then bottom-up fusion of (C3, C4, C5) with text-guided CSP blocks.

    Attributes:
        out_channels: channels of the (P3, P4, P5) outputs (the head's inputs).
    """

    def __init__(self, in_channels: tuple[int, int, int], deepen_factor: float, widen_factor: float,
                 last_stage_out_channels: int, guide_channels: int = 512, efficient: bool = False):
        super().__init__()
        base_out = (256, 512, last_stage_out_channels)
        embed = (128, 256, last_stage_out_channels // 2)
        heads = (4, 8, last_stage_out_channels // 64)
        out_channels = tuple(make_divisible(c, widen_factor) for c in base_out)
        num_blocks = make_round(3, deepen_factor)

        def block(c_in: int, c_out: int, level: int) -> TextGuidedCSPLayer:
            return TextGuidedCSPLayer(c_in, c_out, num_blocks, make_round(embed[level], widen_factor),
                                      make_round(heads[level], widen_factor), guide_channels, efficient)

        c3, c4, c5 = in_channels
        # top_down_layers.0 fuses up(C5) with C4, .1 fuses up(P4') with C3 (resampled tensor first).
        self.top_down_layers = nn.ModuleList([
            block(c5 + c4, out_channels[1], 1),
            block(out_channels[1] + c3, out_channels[0], 0),
        ])
        self.downsample_layers = nn.ModuleList([
            ConvBNAct(out_channels[0], out_channels[0], 3, stride=2),
            ConvBNAct(out_channels[1], out_channels[1], 3, stride=2),
        ])
        self.bottom_up_layers = nn.ModuleList([
            block(out_channels[0] + out_channels[1], out_channels[1], 1),
            block(out_channels[1] + c5, out_channels[2], 2),
        ])
        self.out_channels = out_channels

    def forward(self, feats: list[Tensor], text_feats: Tensor) -> list[Tensor]:
        """feats: [C3, C4, C5]; text_feats: (B, K, 512) L2-normalised. Returns [P3, P4, P5]."""
        c3, c4, c5 = feats
        up5 = F.interpolate(c5, scale_factor=2.0, mode="nearest")
        p4_inner = self.top_down_layers[0](torch.cat([up5, c4], 1), text_feats)
        up4 = F.interpolate(p4_inner, scale_factor=2.0, mode="nearest")
        p3 = self.top_down_layers[1](torch.cat([up4, c3], 1), text_feats)
        p4 = self.bottom_up_layers[0](torch.cat([self.downsample_layers[0](p3), p4_inner], 1), text_feats)
        p5 = self.bottom_up_layers[1](torch.cat([self.downsample_layers[1](p4), c5], 1), text_feats)
        return [p3, p4, p5]
