"""The YOLO-World detector: image backbone + text tower -> text-guided neck -> contrastive head."""
import warnings

import torch
from torch import Tensor, nn

from worldtune.model.backbone import MultiModalBackbone
from worldtune.model.head import HeadOutputs, YOLOWorldHead
from worldtune.model.neck import YOLOWorldPAFPN


class YOLOWorld(nn.Module):
    """YOLO-World-v2 with the official module names (`backbone.image_model`, `backbone.text_model`,
    `neck`, `bbox_head.head_module`), so official state_dicts load with strict=True.

    `forward(images, text_feats)` only computes raw head outputs; losses live in `worldtune.loss`
    and box decoding/NMS in `worldtune.model.postprocess`.
    """

    def __init__(self, backbone: MultiModalBackbone, neck: YOLOWorldPAFPN, bbox_head: YOLOWorldHead,
                 variant: str = ""):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head
        self.variant = variant
        self.strides = backbone.image_model.strides
        self.vocabulary: list[str] = []
        # True once `reparameterize` folded the vocabulary into the weights: no text input then.
        self.reparameterized = False
        # Cached (K, 512) embeddings of `vocabulary`; not saved with the weights.
        self.register_buffer("vocab_feats", torch.zeros(0, 512), persistent=False)

    @property
    def text_model(self) -> nn.Module | None:
        return self.backbone.text_model

    def encode_text(self, texts: list[list[str]]) -> Tensor:
        """texts: B lists of K strings -> (B, K, 512) L2-normalised embeddings (frozen tower, no grad)."""
        if self.text_model is None:
            raise RuntimeError("this model has no text tower: pass text embeddings or call set_vocabulary first")
        return self.text_model(texts)

    def set_vocabulary(self, texts: list[str], text_feats: Tensor | None = None) -> None:
        """Fix the class vocabulary used by `predict`-style calls: label k <-> texts[k].

        texts: a non-empty list of K strings (a bare string is refused, not split into letters).
        text_feats: (K, 512) L2-normalised embeddings of the K texts (tensor or array); when omitted
        they are computed with the model's text tower (an error for a model built without one).
        Raises a one-line ValueError/TypeError for another shape; warns for rows whose norm is not 1
        (the text tower's are; the contrastive head normalises anyway, but the neck's max-sigmoid
        guide takes the rows as given, so their scale changes the detections).
        """
        if self.reparameterized:  # the folded weights would go on scoring the old texts under the new names
            raise RuntimeError(f"this model's vocabulary ({len(self.vocabulary)} texts) is folded into its weights "
                               "(reparameterize): to detect other texts, reparameterize the original model with them")
        check_texts(texts)
        warn_repeated_texts(texts)
        if text_feats is None:
            if self.text_model is None:
                raise RuntimeError("this model has no text tower: pass text_feats of shape (K, 512)")
            text_feats = self.text_model.encode_vocabulary(list(texts))
        text_feats = torch.as_tensor(text_feats)
        dim = self.vocab_feats.shape[1]
        if text_feats.shape != (len(texts), dim):
            raise ValueError(f"text_feats must have shape ({len(texts)}, {dim}) for {len(texts)} texts, "
                             f"got {tuple(text_feats.shape)}")
        norms = text_feats.float().norm(dim=-1)
        if norms.numel() and not torch.allclose(norms, torch.ones_like(norms), atol=1e-2):
            warnings.warn(f"text_feats rows are not L2-normalised (norms {norms.min():.3g}..{norms.max():.3g}) "
                          "as the text tower's are, which changes the neck's attention; if they should "
                          "be, pass torch.nn.functional.normalize(text_feats, dim=-1)", stacklevel=2)
        feats = text_feats.detach().to(self.vocab_feats.device, self.vocab_feats.dtype)
        if feats.is_inference():
            # made under torch.inference_mode (or encoded while predicting in it): a later training
            # forward could not save it for backward
            with torch.inference_mode(False):
                feats = feats.clone()
        self.vocabulary = list(texts)
        self.vocab_feats = feats

    def vocabulary_feats(self) -> Tensor:
        """(K, 512) embeddings of `vocabulary`. A checkpoint's vocabulary comes as names only: it is
        encoded here at first use, with the text tower (a one-line error for a model without one)."""
        if self.vocab_feats.numel() == 0 and self.vocabulary:
            if self.text_model is None:
                shown = ", ".join(repr(t) for t in self.vocabulary[:3]) + (", ..." if len(self.vocabulary) > 3 else "")
                raise RuntimeError(
                    f"the vocabulary [{shown}] has no text embeddings, and this model has no text tower to compute "
                    "them (loaded with text_model=None): load it with one (text_model='openai/clip-vit-base-patch32' "
                    "or a local CLIP folder), or pass them: model.set_vocabulary(model.vocabulary, text_feats) "
                    "with (K, 512) L2-normalised rows")
            self.set_vocabulary(self.vocabulary)
        if self.vocab_feats.numel() == 0:
            raise RuntimeError("no text features given and no vocabulary set (call set_vocabulary)")
        return self.vocab_feats

    def forward(self, images: Tensor, text_feats: Tensor | None = None) -> HeadOutputs:
        """images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 32.
        text_feats: (B, K, 512) L2-normalised; defaults to the vocabulary set by `set_vocabulary`."""
        if text_feats is None and not self.reparameterized:
            text_feats = self.vocabulary_feats().unsqueeze(0).expand(images.shape[0], -1, -1)
        feats = self.backbone.image_model(images)
        feats = self.neck(feats, text_feats)
        return self.bbox_head(feats, text_feats)

    @classmethod
    def from_pretrained(cls, weights, variant: str | None = None,
                        text_model: str | None = "openai/clip-vit-base-patch32",
                        device="cpu", **kwargs) -> "YOLOWorld":
        """Load weights, or build a randomly initialised model.

        `weights`: an official `.pth`, a worldtune checkpoint or slim `.safetensors` file (which bring
        the run's class texts as `vocabulary` and its image size as `trained_imgsz`), a zoo name or
        alias (`worldtune zoo`); or a variant name ("s") or "none" with `variant` for random weights.
        `text_model=None` builds no text tower (then `set_vocabulary(texts, text_feats)`; a run's
        class texts stay as `vocabulary`, without embeddings).
        See `worldtune.model.loading.load_model` for the other arguments.
        """
        from worldtune.model import VARIANTS
        from worldtune.model.loading import load_model

        if weights in VARIANTS:
            if variant is not None and variant != weights:
                raise ValueError(f"from_pretrained({weights!r}, variant={variant!r}): {weights!r} names a variant "
                                 f"(random weights), and variant another; pass one: from_pretrained({variant!r}) for "
                                 "random weights, or a weights file or zoo name with variant=")
            return load_model(None, variant=weights, text_model=text_model, device=device, **kwargs)
        return load_model(weights, variant=variant, text_model=text_model, device=device, **kwargs)

    def predict(self, images, imgsz: int | None = None, **kwargs) -> list[dict]:
        """Detect the vocabulary (`set_vocabulary`) in images; see `worldtune.model.predict.predict`.

        `imgsz` defaults to the training size a worldtune checkpoint records (`trained_imgsz`), else 640.
        """
        from worldtune.model.predict import predict

        if imgsz is None:  # not `imgsz or ...`: imgsz=0 is refused by `predict`, not replaced
            imgsz = getattr(self, "trained_imgsz", None) or 640
        return predict(self, images, imgsz=imgsz, **kwargs)


def check_texts(texts) -> None:
    """Refuse anything but a non-empty list of strings (a bare string is not split into letters)."""
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a non-empty list of strings, e.g. ['person', 'bus'], got {texts!r:.80}")


def warn_repeated_texts(texts) -> None:
    """Warn when a vocabulary repeats a text: the copies get identical embeddings, so identical
    scores, and every such object is reported once per copy."""
    repeated = sorted({t for t in texts if list(texts).count(t) > 1})
    if repeated:
        warnings.warn(f"the vocabulary repeats {repeated[:10]}: each copy scores the same, so every such "
                      "object is reported once per copy; give each class its own text", stacklevel=3)
