"""Per-image class-text embeddings of a training batch, from the frozen (cached) CLIP tower."""
import torch
from torch import Tensor, nn


def batch_text_feats(text_model: nn.Module, texts: list[list[str]], device: torch.device) -> Tensor:
    """Embeddings of each image's text list: (B, K, 512).

    The distinct strings of the batch are embedded one at a time and cached by the encoder (for
    COCO: 80 names, shuffled per image, so the frozen tower runs 80 times per run, not once per
    batch), with one cache lookup per step. One string at a time because a batched tower call pads
    to the longest string, and the padded matmuls change the last bits: per-string calls make a step
    independent of what else was in the batch, which keeps resumed runs bit-identical.
    """
    if not texts or len({len(t) for t in texts}) != 1:
        raise ValueError(f"every image needs the same number of texts, got {[len(t) for t in texts]}")
    vocab = sorted({t for image_texts in texts for t in image_texts})
    if hasattr(text_model, "encode"):
        feats = text_model.encode(vocab, per_string=True)  # (V, 512)
    else:
        feats = torch.cat([text_model([[t]])[0] for t in vocab])
    position = {t: i for i, t in enumerate(vocab)}
    index = torch.tensor([[position[t] for t in image_texts] for image_texts in texts], device=feats.device)
    return feats[index].to(device)
