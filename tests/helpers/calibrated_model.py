"""Random-weight models whose detections depend on the image, for tests that need real detections.

With PyTorch's default init (conv weight std ~ 1/sqrt(3 * fan_in)) the image signal shrinks
layer after layer: the class scores of a fresh model barely depend on the image, neighbouring
anchors get exactly tied scores and NMS results depend on how ties are broken. Re-drawing the
conv weights with std = gain / sqrt(fan_in), gain 1.4, keeps the signal alive through the ~40
layers without making the network chaotic (PyTorch and onnxruntime stay within ~1e-5). The
contrastive heads' scale and bias are then set from the test's own inputs.
"""
import torch
from torch import nn

from worldtune.model import build_model

CONV_GAIN = 1.4  # 1.0 still vanishes; 1.7 explodes (1e-2 PyTorch/onnxruntime gaps on boxes)


@torch.no_grad()
def make_calibrated_model(images: torch.Tensor, text_feats: torch.Tensor, variant: str = "n",
                          text_model: nn.Module | None = None, seed: int = 0, logit_mean: float = -3.0,
                          logit_std: float = 1.5) -> nn.Module:
    """`build_model(variant, text_model)` in eval mode, with image-dependent scores on these inputs.

    Args:
        images: (B, 3, H, W) RGB in [0, 1]; text_feats: (B, K, 512) L2-normalised.
        logit_mean, logit_std: target statistics of every level's class logits on these inputs;
            the defaults put a few dozen (box, class) pairs per image above a 0.25 score.
    """
    torch.manual_seed(seed)
    model = build_model(variant, text_model).eval()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, std=CONV_GAIN / module.weight[0].numel() ** 0.5)
    heads = model.bbox_head.head_module.cls_contrasts
    for head, logits in zip(heads, model(images, text_feats).cls_logits):
        raw = (logits - head.bias) / head.logit_scale.exp()  # the scale-free similarity
        head.logit_scale.fill_(float(torch.log(logit_std / raw.std())))
        head.bias.fill_(float(logit_mean - raw.mean() * logit_std / raw.std()))
    return model
