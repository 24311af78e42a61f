"""Parameter counts and FLOPs of each variant, computed on the meta device (no memory, no weights)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from worldtune.model import VARIANTS, build_model

CLIP_TEXT_PARAMS = 63_428_096  # CLIP ViT-B/32 text tower incl. projection (REFERENCE §1.1)


def variant_summary(variant: str, imgsz: int = 640, num_texts: int = 80) -> dict:
    """Image-side parameters and GFLOPs of one forward at `imgsz` with `num_texts` texts (batch 1).

    GFLOPs count a multiply-add as 2 FLOPs (torch's flop counter); the text tower is not included
    because class embeddings are computed once per vocabulary.
    """
    with torch.device("meta"):
        model = build_model(variant).eval()
        images = torch.empty(1, 3, imgsz, imgsz)
        text_feats = torch.empty(1, num_texts, 512)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images, text_feats)
    params = sum(p.numel() for p in model.parameters())
    return {"variant": variant, "published": VARIANTS[variant].published, "params": params,
            "params_with_text": params + CLIP_TEXT_PARAMS, "gflops": counter.get_total_flops() / 1e9,
            "imgsz": imgsz}
