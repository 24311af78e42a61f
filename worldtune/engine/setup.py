"""What a training run is built from: the data sets and loaders, the start weights (the text tower:
`worldtune.model.loading.build_text_model`)."""
import os
import warnings

from torch import nn

from worldtune.engine import dist


def resolve_image_cache(d, dataset, info: dist.DistInfo, workers: int, stage1_ahead: bool) -> tuple:
    """(cache_images, cache_dir, report) to build the training set with.

    No cache at all when no stage-1 epoch is left (a run resumed past the close-mosaic switch never
    reads it). `auto` is decided here rather than in `build_train_dataset` so that all ranks agree:
    each reads the free memory at its own moment, and a rank that looks while another fills its
    copy could decide otherwise; they settle it (any "no" wins) before any of them fills.
    """
    from worldtune.data.image_cache import auto_cache

    if not stage1_ahead:
        return "false", "", ""
    if d.cache_images != "auto" or d.cache_dir:
        return d.cache_images, d.cache_dir, ""
    # torchrun sets LOCAL_WORLD_SIZE; elsewhere assume every rank is on this machine (conservative)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    use, report = auto_cache(dataset, d.imgsz, int(d.cache_max_gb * 2**30), processes, workers)
    agreed = dist.all_true(use, info.device)
    if use and not agreed:
        report = "image cache off: another training process found too little free memory (data.cache_images=auto)"
    return ("true" if agreed else "false"), "", report


def check_val_categories(train_coco, val_coco, class_texts_file: str) -> None:
    """One class-text file serves both sets by position: entry k is the k-th category (by sorted id) of
    each. A validation file that lists other categories at a position would be scored with another
    class's texts: refused when it holds the training categories numbered otherwise (certainly
    wrong), warned about when its names differ (possibly the same classes spelt otherwise)."""
    train_names, val_names = train_coco.category_names, val_coco.category_names
    if not class_texts_file or val_names == train_names:
        return
    rows = [f"category id {cid} {v!r} gets {texts[0]!r} (the training file's {t!r})"
            for cid, v, t, texts in zip(val_coco.cat_ids, val_names, train_names, val_coco.class_texts) if v != t]
    listed = "; ".join(rows[:5]) + (f"; ... ({len(rows)} in all)" if len(rows) > 5 else "")
    if sorted(val_names) == sorted(train_names):
        from worldtune.data.coco import DataError
        raise DataError(f"{val_coco.ann_file} numbers the categories of {train_coco.ann_file} otherwise, so the "
                        f"class-text file {class_texts_file} (one entry per category in id order) would give "
                        f"validation classes the texts of others: {listed}; give both files the same category ids")
    warnings.warn(f"{val_coco.ann_file}: its categories differ from {train_coco.ann_file}'s, and the class-text "
                  f"file {class_texts_file} gives each the entry of its position: {listed}", stacklevel=2)


def build_datasets(cfg, info: dist.DistInfo, start_epoch: int = 0):
    """Train/val CocoDetection, the augmented TrainDataset and the loaders (`start_epoch`: 0-based
    epoch a resumed run starts in; see `resolve_image_cache`)."""
    from worldtune.data.coco import CocoDetection, warn_image_file_problems
    from worldtune.data.loader import build_eval_loader, build_train_loader
    from worldtune.data.presets import build_eval_dataset, build_train_dataset

    d, t = cfg.data, cfg.train
    for key in ("train_ann", "train_images"):
        if not getattr(d, key):
            raise ValueError(f"data.{key} is not set (use --data-root, or --train-ann and --train-images)")
    if bool(d.val_ann) != bool(d.val_images):  # image paths would be looked up in the current folder
        given, missing = ("val_ann", "val_images") if d.val_ann else ("val_images", "val_ann")
        raise ValueError(f"data.{given} is set but data.{missing} is not: give both --val-ann and --val-images "
                         f"(or neither, to train without validation)")
    texts = d.class_texts or None
    train_coco = CocoDetection(d.train_ann, d.train_images, texts, on_bad_data=d.on_bad_data, min_size=d.min_size)
    val_coco = None
    if d.val_ann:  # read before the training images are cached: its problems are told without that wait
        # the class texts were checked against the training categories; the val file's are compared with those
        val_coco = CocoDetection(d.val_ann, d.val_images, texts, on_bad_data=d.on_bad_data, min_size=d.min_size,
                                 check_text_order=False, texts_written_for=train_coco)
        check_val_categories(train_coco, val_coco, d.class_texts)
    close_mosaic_epoch = max(t.epochs - t.close_mosaic_epochs, 0)
    # More loader processes than cores only adds overhead; results do not depend on the count.
    workers = min(d.workers, os.cpu_count() or 1)
    cache_images, cache_dir, report = resolve_image_cache(d, train_coco, info, workers,
                                                          stage1_ahead=start_epoch < close_mosaic_epoch)
    train_set = build_train_dataset(
        train_coco, imgsz=d.imgsz, mask_refine=d.mask_refine, affine_scale=tuple(d.affine_scale),
        mixup_prob=d.mixup_prob, copypaste_prob=d.copypaste_prob,
        close_mosaic_epoch=close_mosaic_epoch, num_texts=d.num_texts, seed=t.seed,
        min_area_ratio=d.min_area_ratio, mosaic_pool=d.mosaic_pool, cache_images=cache_images,
        cache_max_gb=d.cache_max_gb, cache_dir=cache_dir)
    train_set.cache_report = report
    train_loader = build_train_loader(train_set, t.batch_size, workers, t.seed, info.rank, info.world_size,
                                      pin_memory=info.device.type == "cuda")
    val_loader = None
    if val_coco is not None:
        # A bad val image would otherwise surface only at the first validation, epochs later.
        if info.is_main:
            warn_image_file_problems(val_coco, "the first validation")
        # Every file was checked just now (by rank 0, which warned): a check at decode would read each
        # one again, in every process, and warn again about the same files.
        val_coco.check_ends_at_decode = False
        # Each process predicts its share of it (strided); rank 0 scores them all (engine.validate).
        val_loader = build_eval_loader(build_eval_dataset(val_coco, d.imgsz), d.val_batch_size, min(workers, 2),
                                       info.rank, info.world_size)
    return train_set, train_loader, val_coco, val_loader


def read_start_weights(weights, variant: str) -> tuple:
    """(path, state_dict, text-tower head count or None) of the start weights (zoo name, official
    .pth, worldtune checkpoint).

    Raises CheckpointMismatchError when they are of another model size than `variant`: loaded
    non-strictly, as the official `load_from` does, they would leave most of the model random."""
    from worldtune.engine.checkpoint import CheckpointMismatchError, extract_model_state, load_checkpoint_file
    from worldtune.model import VARIANTS
    from worldtune.model.loading import infer_variant
    from worldtune.zoo import resolve_weights

    def size(name):  # the efficient-neck L starts from the plain L's weights (official recipe)
        v = VARIANTS[name]
        return v.deepen_factor, v.widen_factor, v.last_stage_out_channels

    path = resolve_weights(weights)
    checkpoint = load_checkpoint_file(path, mmap=True)  # the optimizer state etc. are never read
    state = extract_model_state(checkpoint, source=path)
    heads = (checkpoint.get("text_tower") or {}).get("num_heads") if isinstance(checkpoint, dict) else None
    del checkpoint
    try:
        found = infer_variant(state)
    except ValueError:
        found = None  # not a detector's weights: the load report below says what fits
    if found is not None and variant in VARIANTS and size(found) != size(variant):
        raise CheckpointMismatchError(
            f"start weights {path} are a '{found}' model, the run builds '{variant}': pass --variant {found} "
            f"(or a recipe of that size), or --weights none to start from random weights")
    return path, state, heads


def load_start_weights(model: nn.Module, path, state: dict) -> str:
    """Load start weights non-strictly, as the official `load_from` does (missing or extra keys are
    reported), and return the report. Shape mismatches are an error: those tensors would stay random."""
    from worldtune.engine.checkpoint import CheckpointMismatchError, load_model_state
    from worldtune.model.loading import other_layout_note

    report = load_model_state(model, state, strict=False, path=path)
    note = other_layout_note(state)
    note = f"\n{note}" if note else ""
    # The head's class-embedding branch is max(C0, min(num_texts, 100)) wide: for the small `n` model
    # its width follows data.num_texts, so those tensors may differ and stay random (reported).
    if any(not key.startswith("bbox_head.head_module.cls_preds.") for key, _, _ in report.mismatched):
        raise CheckpointMismatchError(report.message(path) + note)
    if model.text_model is not None and hasattr(model.text_model, "clear_cache"):
        model.text_model.clear_cache()  # cached embeddings came from the old text weights
    if report.ok:
        return f"start weights: {path}"
    # not an error: as the official load_from, what the file lacks keeps its initial values
    header = (f"start weights: {path} ({report.loaded} tensors loaded; as the official load_from does, what "
              "does not fit is skipped and what the file lacks keeps its initial values):")
    return report.message(path, header) + note
