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
    # Built on the host and sent without waiting: `torch.tensor(..., device=cuda)` is a blocking copy,
    # which makes the CPU wait for the previous step's optimizer and EMA kernels before it can queue
    # this step's forward (a second host sync per step besides the logging one).
    index = torch.tensor([[position[t] for t in image_texts] for image_texts in texts])
    return feats[index.to(feats.device, non_blocking=True)].to(device)
