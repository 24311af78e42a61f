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
    """Largest |onnxruntime - PyTorch| per output, relative to max(1, |PyTorch|). For a graph with
    NMS, boxes and labels are compared by pairing detections (`matched_box_difference`), and
    "boxes_paired" says how many detections that covers.

    Args:
        module: the module that was exported (`build_export_module`), eval mode.
        images: (B, 3, H, W) as the graph expects; text_feats: (B, K, 512) for dynamic-vocab graphs.
        ref: the module's outputs on these inputs, if already computed.
    """
    got = run_onnx(path, images.numpy(), None if text_feats is None else text_feats.numpy())
    if ref is None:
        ref = module(images) if text_feats is None else module(images, text_feats)
    diffs = {}
    if list(got) == ["num_dets", "boxes", "scores", "labels"]:  # a graph with NMS: boxes paired, see there
        diffs["boxes"], diffs["boxes_paired"] = matched_box_difference(got, [r.numpy() for r in ref])
        diffs["labels"] = 0.0 if np.isfinite(diffs["boxes"]) else float("inf")  # paired by label too
    for name, r in zip(got, ref):
        if name in diffs:
            continue
        r = r.numpy()
        if got[name].shape != r.shape:
            diffs[name] = float("inf")
            continue
        err = np.abs(got[name].astype(np.float64) - r) / np.maximum(1.0, np.abs(r))
        diffs[name] = float(err.max()) if err.size else 0.0
    return diffs


def matched_box_difference(got: dict[str, np.ndarray], ref: list[np.ndarray],
                           score_tol: float = 1e-4) -> tuple[float, int]:
    """Largest box difference (relative to max(1, |coordinate|)) between the detections of an NMS
    graph and PyTorch's, and how many detections it covers. PyTorch and ONNX detections of the same
    label and score are paired, closest boxes first, not compared row by row: detections whose
    scores tie may come out of the two in either order, and which of them NMS or the `max_det` cut
    keeps may differ too. So a detection without a partner is an error (inf) only when no other
    detection ties with its score; one that ties is left out of the count."""
    counts, boxes, scores, labels = ref
    if not np.array_equal(got["num_dets"], counts):
        return float("inf"), 0
    worst, paired = 0.0, 0
    for b, n in enumerate(np.asarray(counts).reshape(-1)):
        n, kept = int(n), scores[b, :int(n)]
        # every (PyTorch i, ONNX j) of the same label and score, closest boxes paired first
        err = (np.abs(boxes[b, :n, None].astype(np.float64) - got["boxes"][b, None, :n])
               / np.maximum(1.0, np.abs(boxes[b, :n, None]))).max(-1)
        allowed = (labels[b, :n, None] == got["labels"][b, None, :n]) \
            & (np.abs(kept[:, None] - got["scores"][b, None, :n]) <= score_tol)
        free_i, free_j = np.ones(n, bool), np.ones(n, bool)
        for i, j in zip(*np.unravel_index(np.argsort(np.where(allowed, err, np.inf), axis=None), err.shape)):
            if allowed[i, j] and free_i[i] and free_j[j]:
                free_i[i] = free_j[j] = False
                worst, paired = max(worst, float(err[i, j])), paired + 1
        for i in np.flatnonzero(free_i):
            if (np.abs(kept - kept[i]) <= score_tol).sum() < 2:  # no tie could explain a missing partner
                return float("inf"), paired
    return worst, paired


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
