"""The official training and evaluation pipelines as two torch Datasets.

Training (REFERENCE §5.2/§5.3), for a 0-based `epoch`:
  stage 1 (epoch < close_mosaic_epoch): load -> Mosaic(4) -> [CopyPaste] -> RandomAffine
          (border -imgsz/2) -> [MixUp with an independently built second sample]
  stage 2 (epoch >= close_mosaic_epoch): load -> KeepRatioResize -> LetterBox (bars BGR 114, 0, 0)
          -> RandomAffine (border 0)
  then both: Blur/MedianBlur/ToGray/CLAHE (p 0.01 each) -> HSV -> HorizontalFlip(0.5)
          -> RandomLoadText (shuffled vocabulary of `num_texts`, padded with '').
The stage is a pure function of the epoch set with `set_epoch`, so a run resumed after
the switch gets stage 2 (the official exact-epoch hook does not). Every random number
comes from numpy's Generator seeded with (seed, epoch, index): the same sample is
produced whatever the worker count, the order or a resume. With the opt-in `mosaic_pool`
the partners also depend on the epoch's loading order on the rank (so on the world size),
still not on the worker count; `cache_images` changes no sample.
"""
import os
import warnings

import numpy as np
import torch

from worldtune.data.coco import CocoDetection, DataError
from worldtune.data.image_cache import MosaicImageStore, auto_cache
from worldtune.data.mix import load_sample, mixup
from worldtune.data.stage1 import mosaic_copypaste_affine
from worldtune.data.texts import sample_texts
from worldtune.data.transforms import (hsv_augment, letterbox_for_test, light_albu, random_affine, random_hflip,
                                       resize_and_letterbox)

_warned_bad_images = set()


class TrainDataset(torch.utils.data.Dataset):
    """Augmented training samples. Build it with `build_train_dataset`.

    `__getitem__` returns dict(img uint8 [S, S, 3] BGR, bboxes float32 [N, 4] xyxy,
    labels int64 [N] indexing `texts`, texts list of `num_texts` str, polygons (list of N
    lists of [P, 2] parts, or None; for visualisation only), image_id, index).
    """

    def __init__(self, dataset: CocoDetection, imgsz: int, mask_refine: bool, affine_scale: tuple,
                 mixup_prob: float, copypaste_prob: float, close_mosaic_epoch: int, num_texts: int, seed: int,
                 min_area_ratio: float, hsv_gains: tuple, albu_prob: float, flip_prob: float,
                 mosaic_pool: int = 0, images: MosaicImageStore | None = None):
        self.dataset = dataset
        self.mosaic_pool, self.images = int(mosaic_pool), images
        self._order = None  # this epoch's loading order (see set_order), or None
        self.imgsz, self.mask_refine, self.affine_scale = imgsz, mask_refine, tuple(affine_scale)
        self.mixup_prob, self.copypaste_prob = mixup_prob, copypaste_prob
        self.close_mosaic_epoch, self.num_texts, self.seed = close_mosaic_epoch, num_texts, seed
        self.min_area_ratio, self.hsv_gains = min_area_ratio, tuple(hsv_gains)
        self.albu_prob, self.flip_prob = albu_prob, flip_prob
        self.epoch = 0
        self.cache_report = ""  # what data.cache_images=auto decided, for the user

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (0-based): it seeds the augmentations and decides the stage."""
        self.epoch = int(epoch)
        self._order = None

    def set_order(self, order) -> None:
        """This epoch's loading order on this rank (the sampler's indices; `TrainLoader.set_epoch`
        passes it after `set_epoch`). Only `mosaic_pool` uses it; without it, the pools follow a
        permutation seeded by (seed, epoch)."""
        self._order = np.asarray(list(order), dtype=np.int64)

    def _pool(self, index: int):
        """Dataset indices of `index`'s pool: its `mosaic_pool` consecutive positions of the order."""
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        order = self._order
        where = np.flatnonzero(order == index)
        if len(where) == 0:  # not loaded on this rank (a replacement for a bad image): whole dataset
            return np.arange(len(self.dataset))
        start = int(where[0]) // self.mosaic_pool * self.mosaic_pool
        return order[start:start + self.mosaic_pool]

    def _partners(self, index: int, rng: np.random.Generator, count: int) -> list:
        """Indices of `count` images to mix with `index`: uniform over the dataset (official),
        or over its pool with `mosaic_pool`."""
        if not self.mosaic_pool:
            return rng.integers(0, len(self.dataset), count).tolist()
        pool = self._pool(index)
        return pool[rng.integers(0, len(pool), count)].tolist()

    def _load(self, index: int) -> dict:
        image = self.images.get(index) if self.images is not None else None
        return load_sample(self.dataset, index, self.mask_refine, image)

    @property
    def stage(self) -> int:
        return 1 if self.epoch < self.close_mosaic_epoch else 2

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        for _ in range(10):
            try:
                return self._build(int(index), rng)
            except DataError as e:
                if self.dataset.on_bad_data != "skip":
                    raise
                if str(e) not in _warned_bad_images:  # report each bad file once per process
                    _warned_bad_images.add(str(e))
                    warnings.warn(f"{e}; replaced by another sample (on_bad_data='skip')")
                index = int(rng.integers(len(self.dataset)))
        raise DataError(f"{self.dataset.ann_file}: 10 consecutive unreadable images near index {index}")

    def _mosaic_affine(self, index: int, rng: np.random.Generator) -> dict:
        samples = [self._load(i) for i in [index, *self._partners(index, rng, 3)]]
        # = random_affine(copy_paste(mosaic(samples))), rendering only the canvas part the warp reads
        return mosaic_copypaste_affine(samples, rng, self.imgsz, self.copypaste_prob if self.mask_refine else 0.0,
                                       self.affine_scale, border=-self.imgsz // 2, min_area_ratio=self.min_area_ratio)

    def _build(self, index: int, rng: np.random.Generator) -> dict:
        if self.stage == 1:
            sample = self._mosaic_affine(index, rng)
            if rng.random() < self.mixup_prob:
                partner = int(rng.integers(len(self.dataset))) if not self.mosaic_pool else \
                    self._partners(index, rng, 1)[0]
                other = self._mosaic_affine(partner, rng)
                sample = mixup(sample, other, rng)
        else:
            sample = resize_and_letterbox(load_sample(self.dataset, index, self.mask_refine), self.imgsz)
            sample = random_affine(sample, rng, self.affine_scale, border=0, min_area_ratio=self.min_area_ratio)
        sample["img"] = hsv_augment(light_albu(sample["img"], rng, self.albu_prob), rng, self.hsv_gains)
        sample = random_hflip(sample, rng, self.flip_prob)
        texts, labels, keep = sample_texts(sample["labels"], self.dataset.class_texts, rng, self.num_texts)
        polygons = sample["polygons"]
        return {"img": sample["img"], "bboxes": sample["bboxes"][keep], "labels": labels, "texts": texts,
                "polygons": None if polygons is None else [p for p, k in zip(polygons, keep) if k],
                "image_id": sample["image_id"], "index": index}


def build_train_dataset(dataset: CocoDetection, imgsz: int = 640, mask_refine: bool = True,
                        affine_scale=(0.5, 1.5), mixup_prob: float = 0.15, copypaste_prob: float = 0.3,
                        close_mosaic_epoch: int = 70, num_texts: int = 80, seed: int = 0,
                        min_area_ratio: float | None = None, hsv_gains=(0.015, 0.7, 0.4),
                        albu_prob: float = 0.01, flip_prob: float = 0.5, mosaic_pool: int = 0,
                        cache_images: bool | str = "auto", cache_max_gb: float = 8.0,
                        cache_dir: str = "") -> TrainDataset:
    """Training pipeline with the official defaults of the v2-S mask-refine recipe.

    M: affine_scale (0.1, 1.9), mixup 0.1, copypaste 0.1; L/X: (0.1, 1.9), 0.15, 0.3;
    SGD 40e: mask_refine False, affine_scale (0.1, 1.9), close_mosaic_epoch 10 (copy-paste is off
    without masks).
    `min_area_ratio` defaults to 0.01 with mask refinement and 0.1 without.

    Speed options (see `image_cache`; none changes a sample): `cache_images` keeps up to
    `cache_max_gb` GiB of decoded, mosaic-resized images: in this process's RAM, or with `cache_dir`
    (which turns the cache on) in one file there that every process and later run shares. "auto"
    (default) caches in RAM only when stage 1 runs and every image fits in `cache_max_gb` and, once
    per training process on the machine (LOCAL_WORLD_SIZE), in half the available memory, with
    forked DataLoader workers (`image_cache.auto_cache`); True or "true" always; False or "false"
    only with `cache_dir` empty. The decision, in words, is the dataset's `cache_report`.
    `mosaic_pool` N > 0 is not official: the mosaic and MixUp partners of a sample come
    from the N images around it in the epoch's loading order (Ultralytics-like), so a worker
    decodes about one image per sample; use the per-process batch size or a divisor of it.
    """
    if mosaic_pool < 0 or cache_max_gb < 0:
        raise ValueError(f"mosaic_pool and cache_max_gb must be >= 0, got {mosaic_pool}, {cache_max_gb}")
    if dataset.num_annotations == 0:  # an image list without labels (e.g. a test-set export): say so
        raise DataError(f"{dataset.ann_file}: no trainable instance: none of its {len(dataset)} images has an "
                        "annotation (its 'annotations' list is missing, empty or names only images left out), "
                        "so training would learn nothing")
    if dataset.num_trainable == 0:
        raise DataError(f"{dataset.ann_file}: no trainable instance: every annotation of the {len(dataset)} images "
                        "is crowd, flagged 'ignore', degenerate (w or h < 1, area <= 0) or outside its image, "
                        "so training would learn nothing")
    if mask_refine and dataset.num_without_polygons:
        shown = ", ".join(map(str, dataset.ids_without_polygons))
        more = ", ..." if dataset.num_without_polygons > len(dataset.ids_without_polygons) else ""
        warnings.warn(f"{dataset.ann_file}: {dataset.num_without_polygons} instance(s) have no usable "
                      f"segmentation (annotation ids {shown}{more}: no polygon of 3 or more points, nor an RLE); "
                      "mask-refine uses their annotation box as a 4-corner polygon (the official pipeline drops "
                      "them)", stacklevel=2)
    if min_area_ratio is None:
        min_area_ratio = 0.01 if mask_refine else 0.1
    if cache_images not in (True, False, "auto", "true", "false"):
        raise ValueError(f"cache_images must be true, false or 'auto', got {cache_images!r}")
    images, report = None, ""
    if cache_dir:  # naming a cache folder asks for the cache
        cache_images = True
    elif cache_images == "auto":
        cache_images = False
        if close_mosaic_epoch > 0:  # only stage 1 reads the cache
            processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            cache_images, report = auto_cache(dataset, imgsz, int(cache_max_gb * 2**30), processes)
    else:
        cache_images = cache_images in (True, "true")
    if cache_images or mosaic_pool:
        # recent: two pools' worth covers pools that straddle batches
        images = MosaicImageStore(dataset, imgsz, cache_bytes=int(cache_max_gb * 2**30) if cache_images else 0,
                                  recent=2 * mosaic_pool, cache_dir=cache_dir or None)
    train = TrainDataset(dataset, imgsz, mask_refine, affine_scale, mixup_prob, copypaste_prob,
                         close_mosaic_epoch, num_texts, seed, min_area_ratio, hsv_gains, albu_prob, flip_prob,
                         mosaic_pool, images)
    train.cache_report = report
    return train


class EvalDataset(torch.utils.data.Dataset):
    """Keep-ratio resize (area when shrinking) + centred letterbox without upscaling, pad 114.

    `__getitem__` returns dict(img uint8 [S, S, 3] BGR, image_id, ori_shape (h, w),
    scale_factor (sx, sy), pad_param [top, bottom, left, right], texts = first synonyms, skipped:
    True when the image could not be read and the dataset's on_bad_data is "skip").
    A box maps back to the original image as (box - [left, top, left, top]) / [sx, sy, sx, sy].
    """

    def __init__(self, dataset: CocoDetection, imgsz: int = 640):
        self.dataset, self.imgsz = dataset, imgsz

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            img = self.dataset.load_image(index)
            skipped = False
        except DataError as e:
            if self.dataset.on_bad_data != "skip":
                raise
            # A stand-in keeps the batch shape; the evaluation leaves this image out of the scoring.
            warnings.warn(f"{e}; left out of the evaluation (on_bad_data='skip')")
            img, skipped = np.full((self.imgsz, self.imgsz, 3), 114, np.uint8), True
        h, w = img.shape[:2]
        img, scale_factor, pad = letterbox_for_test(img, self.imgsz)
        return {"img": img, "image_id": self.dataset.image_ids[index], "ori_shape": (h, w),
                "scale_factor": scale_factor, "pad_param": pad, "texts": list(self.dataset.class_names),
                "skipped": skipped}


def build_eval_dataset(dataset: CocoDetection, imgsz: int = 640) -> EvalDataset:
    return EvalDataset(dataset, imgsz)
