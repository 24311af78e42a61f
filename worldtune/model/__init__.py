"""Model variants and `build_model`.

The variant table holds the scaling of every published YOLO-World-v2 size. `n` is not published:
it is a YOLOv8-n-sized model for CPU tests and demos.
"""
from dataclasses import dataclass

from torch import nn

from worldtune.model.backbone import MultiModalBackbone, YOLOv8CSPDarknet
from worldtune.model.detector import YOLOWorld
from worldtune.model.head import YOLOWorldHead, YOLOWorldHeadModule
from worldtune.model.neck import YOLOWorldPAFPN


@dataclass(frozen=True)
class Variant:
    deepen_factor: float
    widen_factor: float
    last_stage_out_channels: int
    efficient_neck: bool = False
    published: bool = True


VARIANTS: dict[str, Variant] = {
    "n": Variant(0.33, 0.25, 1024, published=False),
    "s": Variant(0.33, 0.5, 1024),
    "m": Variant(0.67, 0.75, 768),
    "l": Variant(1.0, 1.0, 512),
    "x": Variant(1.0, 1.25, 512),
    "xl": Variant(1.0, 1.5, 512),
    "l_efficient_neck": Variant(1.0, 1.0, 512, efficient_neck=True),
}


def build_model(variant: str, text_model: nn.Module | None = None, num_classes: int = 80) -> YOLOWorld:
    """Build a randomly initialised YOLO-World-v2.

    Args:
        variant: a key of VARIANTS (n, s, m, l, x, xl, l_efficient_neck).
        text_model: a `CLIPTextEncoder` (or None for a model fed with precomputed text embeddings).
        num_classes: training vocabulary size; only sets the cls hidden width floor and the bias prior.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    image_model = YOLOv8CSPDarknet(v.deepen_factor, v.widen_factor, v.last_stage_out_channels)
    neck = YOLOWorldPAFPN(image_model.out_channels, v.deepen_factor, v.widen_factor,
                          v.last_stage_out_channels, efficient=v.efficient_neck)
    head = YOLOWorldHead(YOLOWorldHeadModule(neck.out_channels, num_classes, strides=image_model.strides))
    return YOLOWorld(MultiModalBackbone(image_model, text_model), neck, head, variant=variant)
