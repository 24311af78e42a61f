"""Run an exported model with onnxruntime and compare it with the PyTorch module it came from."""
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn


def run_onnx(path: str | Path, images: np.ndarray, text_feats: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run an exported model on the CPU with onnxruntime.

    Args:
        images: (B, 3, H, W) float32 RGB in [0, 1], letterboxed.
        text_feats: (B, K, 512), only for graphs exported with `dynamic_vocab`.
    Returns:
        {output name: array}, in the graph's output order.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"images": np.ascontiguousarray(images, dtype=np.float32)}
    if text_feats is not None:
        feed["text_feats"] = np.ascontiguousarray(text_feats, dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def sample_images(imgsz: int, batch: int = 1) -> Tensor:
    """(batch, 3, imgsz, imgsz) letterboxed real photographs (scikit-image's astronaut, coffee, ...)."""
    from skimage import data

    from worldtune.model.predict import letterbox_for_test

    photos = [data.astronaut, data.coffee, data.chelsea, data.rocket]
    boxed = [letterbox_for_test(photos[i % len(photos)](), imgsz)[0] for i in range(batch)]
    return torch.from_numpy(np.stack(boxed)).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def compare_outputs(module: nn.Module, path: str | Path, images: Tensor,
                    text_feats: Tensor | None = None, ref: tuple | None = None) -> dict[str, float]:
    """Largest |onnxruntime - PyTorch| per output, relative to max(1, |PyTorch|).

    Args:
        module: the module that was exported (`build_export_module`), eval mode.
        images: (B, 3, H, W) as the graph expects; text_feats: (B, K, 512) for dynamic-vocab graphs.
        ref: the module's outputs on these inputs, if already computed.
    """
    got = run_onnx(path, images.numpy(), None if text_feats is None else text_feats.numpy())
    if ref is None:
        ref = module(images) if text_feats is None else module(images, text_feats)
    diffs = {}
    for name, r in zip(got, ref):
        r = r.numpy()
        if got[name].shape != r.shape:
            diffs[name] = float("inf")
            continue
        err = np.abs(got[name].astype(np.float64) - r) / np.maximum(1.0, np.abs(r))
        diffs[name] = float(err.max()) if err.size else 0.0
    return diffs


@torch.no_grad()
def verify_onnx(model: nn.Module, texts: list[str], path: str | Path, info: dict,
                text_feats: Tensor | None = None) -> tuple[dict[str, float], int | None]:
    """Rebuild the exported module from `model` with the options in `info` (the vocab.json content)
    and compare it with the file on letterboxed photographs; see `compare_outputs`.

    Returns:
        (the differences, and for a graph with NMS the number of PyTorch detections they cover:
        with none, only the counts were compared; None for a graph without NMS).
    """
    from worldtune.export.onnx import build_export_module

    cfg = info["nms_config"] or {}
    module, feats = build_export_module(model, texts, text_feats, dynamic_vocab=info["dynamic_vocab"],
                                        nms=info["nms"], **cfg)
    batch = 2 if info["dynamic_batch"] else int(info.get("batch", 1))
    images = sample_images(info["imgsz"], batch)
    feats_in = feats.unsqueeze(0).expand(batch, -1, -1).contiguous() if info["dynamic_vocab"] else None
    ref = module(images) if feats_in is None else module(images, feats_in)
    diffs = compare_outputs(module, path, images, feats_in, ref)
    return diffs, int(ref[0].sum()) if info["nms"] else None  # with NMS, output 0 is num_dets
