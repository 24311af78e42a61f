"""The image backbone's declared strides, which decoding and the head's prior bias rely on."""
import torch

from worldtune.model.backbone import YOLOv8CSPDarknet


def test_strides_are_the_downsampling_of_each_output():
    backbone = YOLOv8CSPDarknet(deepen_factor=0.33, widen_factor=0.25).eval()
    with torch.no_grad():
        feats = backbone(torch.zeros(1, 3, 64, 96))
    assert [(64 // f.shape[2], 96 // f.shape[3]) for f in feats] == [(s, s) for s in backbone.strides]
    assert tuple(f.shape[1] for f in feats) == backbone.out_channels
