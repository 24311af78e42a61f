"""Opt-in stores of decoded training images for stage 1, so that each image is decoded less often.

Every stored image is already resized to its mosaic size (r = min(s/h, s/w), bilinear, to
(int(w·r), int(h·r))): exactly the resize `mosaic` does, which then has nothing left to do.
Using a store therefore changes no pixel of any sample; it only saves JPEG decoding (about
5 ms per 640 px image, four to eight times per stage-1 sample) and resizing.

- Image cache (`data.cache_images`): every image, decoded once (`packed_images`), at most
  `cache_bytes` of them, in index order. Without `cache_dir` it is filled at start-up in this
  process's RAM, before the DataLoader forks its workers, which then read the same pages
  (copy-on-write: nothing writes them, so nothing is copied); each DDP rank fills its own.
  With `cache_dir` it is one file that the first process builds and every process, rank and
  later run maps (`data.cache_dir`, e.g. /dev/shm for one copy in RAM per machine).
- Recent images (`recent` > 0, used with `data.mosaic_pool`): a per-process LRU of the last
  `recent` images decoded. Each worker has its own; nothing is shared or locked.

Stage 2 and evaluation resize differently (area interpolation) and do not use the stores.
"""
import hashlib
import os
import warnings
from collections import OrderedDict

import cv2

from worldtune.data.packed_images import PackedImages, cache_key, pack_in_file, pack_in_ram, plan_table


def mosaic_size(height: int, width: int, img_scale: int) -> tuple:
    """(w, h) of an image of `height` x `width` resized for a mosaic of `img_scale`."""
    r = min(img_scale / height, img_scale / width)
    return int(width * r), int(height * r)


def decode_for_mosaic(dataset, index: int, img_scale: int):
    """Decode image `index` and resize it as `mosaic` would.

    Returns:
        (uint8 [h, w, 3] BGR resized, (H, W) of the decoded original). Raises DataError like `load_image`.
    """
    img = dataset.load_image(index)
    shape = img.shape[:2]
    size = mosaic_size(*shape, img_scale)
    if size != (shape[1], shape[0]):
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
    return img, shape


class MosaicImageStore:
    """Resized images for mosaics: the image cache first, then the recent-images LRU, then decode.

    Args:
        dataset: a CocoDetection.
        img_scale: the mosaic scale s (the training image size).
        cache_bytes: image-cache budget in bytes (0: no image cache).
        recent: LRU capacity in images (0: none).
        cache_dir: folder for a shared file-backed image cache ("" or None: this process's RAM).
        threads: decoding threads while filling the cache (default: CPU count).

    Attributes: cached (PackedImages or None), decodes (images decoded by this process since).
    """

    def __init__(self, dataset, img_scale: int, cache_bytes: int = 0, recent: int = 0, cache_dir=None,
                 threads: int | None = None):
        self.dataset, self.img_scale, self.recent = dataset, int(img_scale), int(recent)
        self.cached = None
        self._lru: OrderedDict = OrderedDict()
        self.decodes = 0
        if cache_bytes > 0:
            self.cached = self._build_cache(int(cache_bytes), cache_dir, threads or os.cpu_count() or 1)

    @property
    def cached_count(self) -> int:
        return self.cached.count if self.cached is not None else 0

    def _build_cache(self, budget: int, cache_dir, threads: int) -> PackedImages:
        # Sizes come from the annotation file; an image that decodes to another size is left out.
        sizes = [mosaic_size(*self.dataset.image_size(i), self.img_scale) for i in range(len(self.dataset))]

        def decode(index):
            return decode_for_mosaic(self.dataset, index, self.img_scale)

        if cache_dir:
            # The key names how many images fit, not the budget: raising data.cache_max_gb past what
            # the data needs reuses the file instead of building a second copy.
            fitting = int((plan_table(sizes, budget)[:, 0] >= 0).sum())
            key = cache_key({"img_scale": self.img_scale, "images": self._identity(), "fitting": fitting})
            cached = pack_in_file(sizes, decode, budget, threads, cache_dir, key)
        else:
            cached = pack_in_ram(sizes, decode, budget, threads)
        if cached.count < len(self.dataset):
            warnings.warn(f"image cache: {cached.count} of {len(self.dataset)} images cached "
                          f"({budget / 2**30:.2f} GiB budget, data.cache_max_gb); the others, and any the "
                          "cache could not read, are decoded each time", stacklevel=3)
        return cached

    def _identity(self) -> str:
        """Hash of everything that decides the cached pixels: files, their sizes and modification times."""
        h = hashlib.sha1()
        for index in range(len(self.dataset)):
            path = self.dataset.image_path(index)
            try:
                stat = os.stat(path)
                h.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{path}|missing\n".encode())
        return h.hexdigest()

    def get(self, index: int):
        """(resized uint8 [h, w, 3] BGR, (H, W) of the original) of dataset image `index`; do not modify it."""
        item = self.cached.get(index) if self.cached is not None else None
        if item is not None:
            return item
        item = self._lru.get(index)
        if item is not None:
            self._lru.move_to_end(index)
            return item
        item = decode_for_mosaic(self.dataset, index, self.img_scale)
        self.decodes += 1
        if self.recent:
            self._lru[index] = item
            if len(self._lru) > self.recent:
                self._lru.popitem(last=False)
        return item
