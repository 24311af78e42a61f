"""Run a detector over an evaluation loader, collect COCO-results detections and score them.

The model side is reached through one function, `predict_fn(model, images_uint8_rgb (B,3,H,W),
scale_factors, pad_params, ori_shapes) -> [dict(boxes_xyxy [N,4] in original pixels, scores [N],
labels [N] int64)]` (default: `worldtune.model.predict.predict_batch`, which undoes the letterbox).
Labels index the vocabulary = the dataset's class names, so label k maps to `dataset.cat_ids[k]`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from worldtune.eval.coco_eval import coco_evaluate
from worldtune.outputs import write_text


def detections_to_coco(dets: list[dict], image_ids: list[int], cat_ids: list[int]) -> list[dict]:
    """Per-image model outputs -> COCO results entries.

    Args:
        dets: B dicts with boxes_xyxy Tensor[N, 4] (original image pixels), scores Tensor[N],
            labels Tensor[N] int64 (vocabulary index).
        image_ids: B COCO image ids. cat_ids: vocabulary index -> COCO category id.
    Returns:
        list of {image_id, category_id, bbox [x, y, w, h], score}.
    """
    out = []
    for det, image_id in zip(dets, image_ids):
        boxes = det["boxes_xyxy"].detach().float().cpu()
        labels = det["labels"].detach().cpu().long()
        outside = labels[(labels < 0) | (labels >= len(cat_ids))]
        if outside.numel():
            raise ValueError(f"image {image_id}: label {int(outside[0])} outside the vocabulary of "
                             f"{len(cat_ids)} classes")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, det["scores"].detach().float().cpu().tolist(), labels.tolist()):
            out.append({"image_id": int(image_id), "category_id": int(cat_ids[label]),
                        "bbox": box, "score": score})  # unrounded, as the official metric: rounded
                        # scores tie and reorder the low-score detections that AP sorts
    return out


def _default_predict_fn():
    from worldtune.model.predict import predict_batch
    return predict_batch


def no_tower_for_texts(vocabulary: list[str], texts: list[str]) -> str:
    """Why a model without a text tower cannot be evaluated with the dataset's class `texts`: it has
    embeddings for its `vocabulary` only (a slim file's stored ones, or those set by the caller)."""
    def shown(items):
        return ", ".join(map(repr, items[:3])) + (", ..." if len(items) > 3 else "")

    holds = (f"holds the embeddings of its own {len(vocabulary)} class texts [{shown(vocabulary)}] only: evaluate "
             "with exactly those, in their order (the category names, or class_texts), or" if vocabulary else
             "holds no class-text embeddings:")
    return (f"the dataset's {len(texts)} class texts [{shown(texts)}] need a CLIP text tower to embed them, and "
            f"this model has none (loaded with text_model=None); it {holds} load it with the text tower the run "
            "was trained with (text_model='openai/clip-vit-base-patch32' or a local CLIP folder)")


@torch.no_grad()
def collect_detections(model, loader, cat_ids: list[int], texts: list[str],
                       predict_fn: Callable | None = None, progress: bool = False,
                       skipped_ids: list | None = None) -> list[dict]:
    """Run `model` over `loader` (eval batches, see `worldtune.data.collate.collate_eval`).

    Images the loader marks as skipped (unreadable, on_bad_data="skip") get no detections; their
    ids are appended to `skipped_ids` when given, for `coco_evaluate(exclude_image_ids=...)`.
    A model without a text tower (a slim file loaded with text_model=None) is scored with its own
    vocabulary's embeddings, so `texts` must be that vocabulary, in its order (else a ValueError).
    """
    predict_fn = predict_fn or _default_predict_fn()
    vocabulary = list(getattr(model, "vocabulary", []))
    if vocabulary != list(texts):
        # a slim file's model: embeddings of its own texts only (set_vocabulary's error would not say so)
        if hasattr(model, "text_model") and model.text_model is None and not getattr(model, "reparameterized", False):
            raise ValueError(no_tower_for_texts(vocabulary, list(texts)))
        model.set_vocabulary(list(texts))
    was_training = model.training
    model.eval()
    results = []
    batches = loader
    if progress:
        from worldtune.progress import progress_bar
        batches = progress_bar(loader, desc="eval", unit="batch", leave=False)  # the metrics follow it
    try:
        for batch in batches:
            if batch["texts"] and list(batch["texts"][0]) != list(texts):
                raise ValueError(f"the loader's texts {batch['texts'][0][:5]}... differ from the dataset's "
                                 f"class names {list(texts)[:5]}...; build the loader from the same dataset")
            dets = predict_fn(model, batch["images"], batch["scale_factors"], batch["pad_params"],
                              batch["ori_shapes"])
            skipped = batch.get("skipped") or [False] * len(batch["image_ids"])
            kept = [i for i, skip in enumerate(skipped) if not skip]
            if skipped_ids is not None:
                skipped_ids += [image_id for image_id, skip in zip(batch["image_ids"], skipped) if skip]
            results += detections_to_coco([dets[i] for i in kept], [batch["image_ids"][i] for i in kept], cat_ids)
    finally:
        model.train(was_training)
    return results


def score_detections(dataset, ann, dets: list, skipped: list, backend: str = "faster") -> dict:
    """`coco_evaluate` of `dets` against `ann`, leaving out what was not predicted: the images the
    loader could not read (`skipped`) and, when `ann` is `dataset`'s own file, what the dataset
    dropped under on_bad_data="skip" (missing image files would count their objects as misses,
    bad annotations would be scored, or fail). Adds `skipped_images` and `dropped_annotations`."""
    dropped_images, dropped_annotations = [], []
    if not isinstance(ann, dict) and Path(ann).resolve() == Path(dataset.ann_file).resolve():
        dropped_images, dropped_annotations = dataset.dropped_image_ids, dataset.dropped_annotations
    skipped = list(skipped) + list(dropped_images)
    metrics = coco_evaluate(ann, dets, backend=backend, exclude_image_ids=skipped,
                            drop_annotations=dropped_annotations)
    return {**metrics, "skipped_images": skipped, "dropped_annotations": len(dropped_annotations)}


def evaluate_model(model, loader, dataset, *, ann: str | Path | dict | None = None, backend: str = "faster",
                   predict_fn: Callable | None = None, out_detections: str | Path | None = None,
                   progress: bool = False) -> dict:
    """COCO box metrics of `model` on the images of `loader`.

    Args:
        model: a detector with `set_vocabulary(texts)` (e.g. `worldtune.model.YOLOWorld`).
        loader: eval loader (`worldtune.data.loader.build_eval_loader`).
        dataset: the `worldtune.data.coco.CocoDetection` behind the loader (or its EvalDataset
            wrapper): gives `class_names` (vocabulary), `cat_ids` and `ann_file`.
        ann: GT annotations; defaults to `dataset.ann_file`.
        backend: "faster" or "pycocotools". predict_fn: see the module docstring.
        out_detections: also write the COCO-results JSON there.
    Returns:
        the dict of `coco_evaluate` plus `seconds` (inference) and `images_per_second`.
    """
    base = dataset if hasattr(dataset, "cat_ids") else getattr(dataset, "dataset", dataset)
    for attr in ("cat_ids", "class_names"):
        if not hasattr(base, attr):
            raise TypeError(f"evaluate_model: dataset must be a CocoDetection (needs .{attr})")
    ann = ann if ann is not None else base.ann_file
    sampler = getattr(loader, "sampler", None)
    if getattr(sampler, "num_replicas", 1) > 1:
        # COCO AP of one shard against the full GT would be silently wrong: evaluate the whole set
        # in one process, or gather the shards first as training's validation does (engine.validate).
        raise ValueError("evaluate_model needs an unsharded loader (build_eval_loader with world_size=1), "
                         f"got a sampler split over {sampler.num_replicas} processes")
    start = time.perf_counter()
    skipped: list[int] = []
    dets = collect_detections(model, loader, list(base.cat_ids), list(base.class_names), predict_fn, progress,
                              skipped)
    seconds = time.perf_counter() - start
    if out_detections is not None:
        write_text(out_detections, json.dumps(dets))
    metrics = score_detections(base, ann, dets, skipped, backend)
    num_images = len(loader.dataset) if hasattr(loader, "dataset") else None
    metrics["seconds"] = round(seconds, 3)
    metrics["images_per_second"] = round(num_images / seconds, 2) if num_images and seconds > 0 else None
    return metrics
