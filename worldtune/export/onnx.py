"""ONNX export: a small wrapper with named inputs and outputs around a YOLO-World detector.

Graph input `images`: (B, 3, H, W) float32 RGB in [0, 1]. Pre-processing is the caller's: the
official test pipeline resizes the long side to `imgsz` (keeping the ratio, no upscaling), pads to
(imgsz, imgsz) centred with value 114 and divides by 255 (`worldtune.model.predict.letterbox_for_test`
does it in numpy). Boxes come out in these input pixels: subtract the (left, top) padding and
divide by the scale to get back to the original image.

Modes:
- default: the vocabulary is folded into the weights (`reparameterize`), so the graph holds no
  text tower and no text input; outputs `boxes` (B, N, 4) xyxy and `scores` (B, N, K) sigmoid.
- `dynamic_vocab`: the L2-normalised text embeddings are a second input `text_feats` (B, K, 512),
  K free, so the vocabulary can change after export (embeddings from CLIP or the `.npy` written
  beside the model).
- `nms`: post-processing in the graph (score threshold, class-aware ONNX NonMaxSuppression, best
  `max_det`); outputs `num_dets` (B,) int64, `boxes` (B, max_det, 4), `scores` (B, max_det),
  `labels` (B, max_det) int64, padded with zeros (labels -1) after the first num_dets rows.

We use the TorchScript-based exporter (`dynamo=False`): it needs no `onnxscript`, is deterministic
(same bytes for the same weights) and maps our one custom op (NMS) through a `symbolic`.
"""
import copy
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from worldtune.export.nms import DetectorWithNMS
from worldtune.model.detector import warn_repeated_texts
from worldtune.model.postprocess import decode_outputs
from worldtune.model.reparameterize import reparameterize
from worldtune.outputs import atomic_file, write_text, writing

MIN_OPSET = 12  # Einsum (dynamic vocabulary) needs 12; NonMaxSuppression and TopK need 10/11
DEFAULT_OPSET = 17


class DecodedDetector(nn.Module):
    """images (B, 3, H, W) RGB in [0, 1] [, text_feats (B, K, 512)] -> boxes (B, N, 4), scores (B, N, K).

    Boxes are xyxy in input pixels (not clamped), N = sum of H*W/stride^2 over strides 8, 16, 32.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.strides = tuple(model.strides)

    def forward(self, images: Tensor, text_feats: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return decode_outputs(self.model(images, text_feats), self.strides)


def build_export_module(model: nn.Module, texts: list[str], text_feats: Tensor | None = None, *,
                        dynamic_vocab: bool = False, nms: bool = False, score_thr: float = 0.25,
                        iou_thr: float = 0.7, max_det: int = 300) -> tuple[nn.Module, Tensor]:
    """The module that gets exported, in eval mode, float32, on the CPU; `model` is unchanged.

    Args:
        model: a `YOLOWorld` (with a text tower unless `text_feats` is given).
        texts: the K class texts (label k <-> texts[k]).
        text_feats: (K, 512) embeddings of `texts`; computed with the model's tower when omitted.
    Returns:
        (module, text_feats (K, 512) float32 L2-normalised as the model expects them).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("empty vocabulary: give at least one class text (e.g. --classes 'person,car')")
    if text_feats is None:
        if model.text_model is None:
            raise ValueError("the model has no text tower: pass the vocabulary's embeddings (text_feats)")
        text_feats = model.text_model.encode_vocabulary(texts)
    text_feats = torch.as_tensor(text_feats).detach().float().cpu()
    if text_feats.ndim != 2 or text_feats.shape[0] != len(texts):
        raise ValueError(f"{len(texts)} class texts but embeddings of shape {tuple(text_feats.shape)} "
                         f"(expected ({len(texts)}, 512))")
    text_feats = nn.functional.normalize(text_feats, dim=-1)
    if dynamic_vocab:
        tower = model.backbone.text_model
        model.backbone.text_model = None  # the tower stays out of the copy and of the graph
        try:
            net = copy.deepcopy(model)
        finally:
            model.backbone.text_model = tower
        net.set_vocabulary(texts, text_feats)
    else:
        warn_repeated_texts(texts)  # (set_vocabulary warns on the other branch)
        device = next(model.parameters()).device
        net = reparameterize(model, texts, text_feats.to(device))
        net.backbone.text_model = None
    module = DecodedDetector(net.float().cpu())
    if nms:
        module = DetectorWithNMS(module, score_thr, iou_thr, max_det)
    return module.eval(), text_feats


def export_onnx(model: nn.Module, texts: list[str], out: str | Path, *, text_feats: Tensor | None = None,
                imgsz: int = 640, batch: int = 1, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                dynamic_vocab: bool = False, nms: bool = False, score_thr: float = 0.25, iou_thr: float = 0.7,
                max_det: int = 300, simplify: bool = False) -> dict:
    """Write `out` (.onnx) and `<stem>.vocab.json` (plus `<stem>.vocab.npy` with `dynamic_vocab`).

    The graph is written beside `out` and renamed to it last, so a failed export (a full disk) leaves
    no cut-short model there, and the vocab files are written whole or not at all; the error (an
    OutputWriteError) names the file that could not be written.

    Returns:
        the vocab.json content: paths, texts, input/output names and shapes, options.
    """
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the onnx package: pip install onnx onnxruntime "
                          "(or pip install -e '.[export]' in a worldtune checkout)")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the graph needs opset >= {MIN_OPSET}")
    if imgsz % 32:
        raise ValueError(f"imgsz must be a multiple of 32 (the largest stride), got {imgsz}")
    module, feats = build_export_module(model, texts, text_feats, dynamic_vocab=dynamic_vocab, nms=nms,
                                       score_thr=score_thr, iou_thr=iou_thr, max_det=max_det)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = torch.linspace(0, 1, batch * 3 * imgsz * imgsz).reshape(batch, 3, imgsz, imgsz)
    args, input_names = (images,), ["images"]
    dynamic_axes = {"images": {0: "batch"}} if dynamic_batch else {}
    if dynamic_vocab:
        args += (feats.unsqueeze(0).expand(batch, -1, -1).contiguous(),)
        input_names.append("text_feats")
        dynamic_axes["text_feats"] = {0: "batch", 1: "num_classes"} if dynamic_batch else {1: "num_classes"}
    output_names = ["num_dets", "boxes", "scores", "labels"] if nms else ["boxes", "scores"]
    for name in output_names:
        axes = {0: "batch"} if dynamic_batch else {}
        if dynamic_vocab and name == "scores" and not nms:
            axes[2] = "num_classes"
        if axes:
            dynamic_axes[name] = axes
    info = {
        "model": out.name, "vocab_file": out.with_suffix(".vocab.json").name, "texts": list(texts),
        "num_classes": len(texts), "imgsz": imgsz, "batch": batch, "opset": opset,
        "dynamic_batch": dynamic_batch, "dynamic_vocab": dynamic_vocab, "nms": nms,
        "nms_config": {"score_thr": score_thr, "iou_thr": iou_thr, "max_det": max_det} if nms else None,
        "text_feats_file": out.with_suffix(".vocab.npy").name if dynamic_vocab else None,
        **_io_shapes("batch" if dynamic_batch else batch, imgsz, dynamic_vocab, nms, max_det),
    }
    partial = out.with_name(f".{out.stem}.partial.onnx")
    try:
        with writing(out):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
                torch.onnx.export(module, args, str(partial), dynamo=False, opset_version=opset,
                                  input_names=input_names, output_names=output_names,
                                  dynamic_axes=dynamic_axes or None, do_constant_folding=True)
            if simplify:
                simplify_onnx(partial)
            _add_metadata(partial, info)
            if dynamic_vocab:
                with atomic_file(out.with_suffix(".vocab.npy")) as f:  # whole or not at all
                    np.save(f, feats.numpy().astype(np.float32))
            write_text(out.with_suffix(".vocab.json"), json.dumps(info, indent=2))  # whole or not at all
            os.replace(partial, out)  # last: a model at `out` comes with its vocab files
    finally:
        partial.unlink(missing_ok=True)
    return info


def _io_shapes(b, imgsz: int, dynamic_vocab: bool, nms: bool, max_det: int) -> dict:
    """Human-readable input/output shapes for the vocab.json."""
    inputs = {"images": f"({b}, 3, {imgsz}, {imgsz}) float32 RGB in [0, 1], letterboxed (pad 114/255)"}
    if dynamic_vocab:
        inputs["text_feats"] = f"({b}, K, 512) float32 L2-normalised CLIP text embeddings"
    if nms:
        outputs = {"num_dets": f"({b},) int64", "boxes": f"({b}, {max_det}, 4) float32 xyxy input pixels",
                   "scores": f"({b}, {max_det}) float32", "labels": f"({b}, {max_det}) int64, -1 = padding"}
    else:
        n = sum((imgsz // s) ** 2 for s in (8, 16, 32))
        outputs = {"boxes": f"({b}, {n}, 4) float32 xyxy input pixels", "scores": f"({b}, {n}, K) float32 sigmoid"}
    return {"inputs": inputs, "outputs": outputs}


def _add_metadata(path: Path, info: dict) -> None:
    """Store the vocabulary in the model file too, so it survives without the side-car JSON."""
    import onnx

    proto = onnx.load(str(path))
    for key, value in (("worldtune.texts", json.dumps(info["texts"])), ("worldtune.imgsz", str(info["imgsz"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def simplify_onnx(path: Path) -> bool:
    """Run onnxsim in place when it is installed; returns whether it ran (it is optional)."""
    try:
        import onnx
        import onnxsim
    except ImportError:
        warnings.warn("--simplify skipped: onnxsim is not installed (pip install onnxsim)")
        return False
    simplified, ok = onnxsim.simplify(onnx.load(str(path)))
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified {path}")
    onnx.save(simplified, str(path))
    return True
