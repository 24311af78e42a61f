"""The head's initial values, which a run from random weights starts with (parity tests load weights)."""
import math

import torch

from worldtune.model.head import YOLOWorldHeadModule


def test_initial_biases_and_logit_scale_are_the_official_ones():
    """REFERENCE.md §2.5: tau = -1, beta = ln(5 / num_classes / (640 / stride)^2), i.e. about 5
    objects per 640x640 image, cls 1x1 bias 0, reg 1x1 bias 1.0."""
    head = YOLOWorldHeadModule((16, 32, 64), num_classes=80, embed_dims=32)
    betas = [c.bias.item() for c in head.cls_contrasts]
    assert betas == [torch.tensor(math.log(5 / 80 / (640 / s) ** 2)).item() for s in (8, 16, 32)]  # float32
    assert [round(b, 3) for b in betas] == [-11.537, -10.150, -8.764]
    assert all(c.logit_scale.item() == -1.0 for c in head.cls_contrasts)
    assert all(torch.equal(p[-1].bias, torch.zeros(32)) for p in head.cls_preds)
    assert all(torch.equal(p[-1].bias, torch.ones(64)) for p in head.reg_preds)
