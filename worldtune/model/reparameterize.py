"""Fold a fixed vocabulary into the weights (the official re-parameterisation).

After folding, the model needs no text tower and no text input:
- neck: each max-sigmoid block's guide (text -> guide_fc) becomes per-head 1x1 convs
  `attn_block.guide_convs.{m}` of shape (K, head_channels, 1, 1);
- head: each contrastive head becomes BN followed by a 1x1 conv `cls_contrasts.{i}.conv` with
  weight = normalise(text) * exp(logit_scale) (K, 512, 1, 1) and bias = the level's scalar bias.
The key layout equals the official re-parameterised ("rep") models.
"""
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldtune.model.detector import YOLOWorld, check_texts
from worldtune.model.head import BNContrastiveHead
from worldtune.model.neck import MaxSigmoidAttnBlock


class RepMaxSigmoidAttnBlock(nn.Module):
    """MaxSigmoidAttnBlock with its K guide vectors stored as per-head 1x1 convs."""

    def __init__(self, block: MaxSigmoidAttnBlock, text_feats: Tensor):
        super().__init__()
        self.num_heads, self.head_channels = block.num_heads, block.head_channels
        self.bias = nn.Parameter(block.bias.detach().clone())
        self.embed_conv = block.embed_conv
        with torch.no_grad():
            guide = block.guide_fc(text_feats).reshape(-1, self.num_heads, self.head_channels)  # (K, M, c)
        self.guide_convs = nn.ModuleList()
        for m in range(self.num_heads):
            # on the block's device: a folded GPU model must not get CPU convs
            conv = nn.Conv2d(self.head_channels, guide.shape[0], 1, bias=False, device=guide.device)
            conv.weight.data.copy_(guide[:, m, :, None, None])
            self.guide_convs.append(conv)
        self.project_conv = block.project_conv

    def forward(self, x: Tensor, text_feats: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        embed = x if self.embed_conv is None else self.embed_conv(x)
        chunks = embed.split(self.head_channels, dim=1)
        scores = torch.stack([conv(e) for conv, e in zip(self.guide_convs, chunks)], dim=1)  # (B, M, K, H, W)
        weights = torch.sigmoid(scores.amax(dim=2) / self.head_channels**0.5 + self.bias.view(1, -1, 1, 1))
        out = self.project_conv(x).reshape(b, self.num_heads, c // self.num_heads, h, w)
        return (out * weights.unsqueeze(2)).reshape(b, c, h, w)


class RepBNContrastiveHead(nn.Module):
    """BN then a 1x1 conv holding the scaled, normalised text embeddings."""

    def __init__(self, head: BNContrastiveHead, text_feats: Tensor):
        super().__init__()
        self.norm = head.norm
        k, dims = text_feats.shape
        self.conv = nn.Conv2d(dims, k, 1, device=text_feats.device)
        with torch.no_grad():
            weight = F.normalize(text_feats, dim=-1, p=2) * head.logit_scale.exp()
            self.conv.weight.copy_(weight[:, :, None, None])
            self.conv.bias.fill_(head.bias.detach())

    def forward(self, x: Tensor, text_feats: Tensor | None = None) -> Tensor:
        return self.conv(self.norm(x))


def reparameterize(model: YOLOWorld, texts: list[str], text_feats: Tensor | None = None) -> YOLOWorld:
    """Return a copy of `model` with `texts` folded in (label k <-> texts[k]); `model` is unchanged.

    Args:
        texts: the K class texts.
        text_feats: (K, 512) L2-normalised embeddings (as `set_vocabulary` takes them); computed with
            the model's text tower when omitted.
    """
    if model.reparameterized:  # its blocks are folded ones already, which cannot be folded again
        raise RuntimeError("this model is reparameterized already: reparameterize the original model with the texts")
    check_texts(texts)
    if text_feats is None:
        if model.text_model is None:
            raise RuntimeError("this model has no text tower: pass text_feats of shape (K, 512)")
        text_feats = model.text_model.encode_vocabulary(list(texts))
    # on the model's device: folding multiplies them with its weights (CPU rows for a GPU model failed there)
    text_feats = torch.as_tensor(text_feats).detach().float().to(next(model.parameters()).device)
    if text_feats.shape != (len(texts), 512):  # checked before folding, which would fail deep in a matmul
        raise ValueError(f"text_feats must have shape ({len(texts)}, 512) for {len(texts)} texts, "
                         f"got {tuple(text_feats.shape)}")
    text_model = model.backbone.text_model
    model.backbone.text_model = None  # keep the tower out of the deep copy
    try:
        rep = copy.deepcopy(model)
    finally:
        model.backbone.text_model = text_model
    rep.float()
    for layer in [*rep.neck.top_down_layers, *rep.neck.bottom_up_layers]:
        if isinstance(layer.attn_block, MaxSigmoidAttnBlock):
            layer.attn_block = RepMaxSigmoidAttnBlock(layer.attn_block, text_feats)
    head = rep.bbox_head.head_module
    head.cls_contrasts = nn.ModuleList(RepBNContrastiveHead(h, text_feats) for h in head.cls_contrasts)
    rep.set_vocabulary(list(texts), text_feats)
    rep.reparameterized = True
    return rep
