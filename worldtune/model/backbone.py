"""YOLOv8 CSPDarknet (P5) image backbone and the image+text backbone wrapper."""
from torch import Tensor, nn

from worldtune.model.layers import SPPF, ConvBNAct, CSPLayerWithTwoConv, make_divisible, make_round

# (in, out, num_blocks) per stage before scaling; the last stage's out is replaced per variant.
P5_STAGES = ((64, 128, 3), (128, 256, 6), (256, 512, 6), (512, 1024, 3))


class YOLOv8CSPDarknet(nn.Module):
    """Stem + 4 stages (stride 2 each); returns the stride 8, 16 and 32 feature maps.

    Attributes:
        out_channels: channels of the three returned maps.
        strides: (8, 16, 32).
    """

    def __init__(self, deepen_factor: float, widen_factor: float, last_stage_out_channels: int = 1024):
        super().__init__()
        stages = [list(s) for s in P5_STAGES]
        stages[-1][1] = last_stage_out_channels
        self.stem = ConvBNAct(3, make_divisible(stages[0][0], widen_factor), 3, stride=2)
        out_channels = []
        for i, (c_in, c_out, n) in enumerate(stages):
            c_in, c_out = make_divisible(c_in, widen_factor), make_divisible(c_out, widen_factor)
            layers = [
                ConvBNAct(c_in, c_out, 3, stride=2),
                CSPLayerWithTwoConv(c_out, c_out, make_round(n, deepen_factor), add_identity=True),
            ]
            if i == len(stages) - 1:
                layers.append(SPPF(c_out, c_out, kernel_size=5))
            # Named stage1..stage4 with Sequential indices, as in the official checkpoints.
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            out_channels.append(c_out)
        self.out_channels = tuple(out_channels[1:])
        self.strides = (8, 16, 32)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images: (B, 3, H, W) RGB in [0, 1]. Returns [(B, C3, H/8, W/8), (B, C4, H/16, W/16), (B, C5, H/32, W/32)]."""
        x = self.stem(images)
        x = self.stage1(x)
        c3 = self.stage2(x)
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return [c3, c4, c5]


class MultiModalBackbone(nn.Module):
    """Holds the image backbone and the (frozen) text tower under the official names.

    `text_model` may be None for a model whose vocabulary is fed as precomputed embeddings only
    (for example after re-parameterisation).
    """

    def __init__(self, image_model: YOLOv8CSPDarknet, text_model: nn.Module | None):
        super().__init__()
        self.image_model = image_model
        self.text_model = text_model
