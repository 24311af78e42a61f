"""Opt-in stores of decoded training images for stage 1, so that each image is decoded less often.

Every stored image is already resized to its mosaic size (r = min(s/h, s/w), bilinear, to
(int(w·r), int(h·r))): exactly the resize `mosaic` does, which then has nothing left to do.
Using a store therefore changes no pixel of any sample; it only saves JPEG decoding (about
5 ms per 640 px image, four to eight times per stage-1 sample) and resizing.

- RAM cache (`data.cache_images`): the images are decoded once, at start-up, in the main
  process (a thread pool), before the DataLoader forks its workers, which then read the same
  memory pages (copy-on-write: the pixel buffers are never written, so never copied). At most
  `ram_bytes` per training process (planned from the annotated image sizes); images past the
  budget are decoded as usual.
- Recent images (`recent` > 0, used with `data.mosaic_pool`): a per-process LRU of the last
  `recent` images decoded. Each worker has its own; nothing is shared or locked.

Stage 2 and evaluation resize differently (area interpolation) and do not use the stores.
"""
import os
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import cv2

from worldtune.data.coco import DataError


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
    """Resized images for mosaics: RAM cache first, then the recent-images LRU, then decode.

    Args:
        dataset: a CocoDetection.
        img_scale: the mosaic scale s (the training image size).
        ram_bytes: RAM-cache budget in bytes (0: no RAM cache).
        recent: LRU capacity in images (0: none).
        threads: decoding threads for the RAM cache (default: CPU count).

    Attributes: ram_count (images in the RAM cache), ram_bytes_used, decodes (this process).
    """

    def __init__(self, dataset, img_scale: int, ram_bytes: int = 0, recent: int = 0, threads: int | None = None):
        self.dataset, self.img_scale, self.recent = dataset, int(img_scale), int(recent)
        self._ram: dict = {}
        self._lru: OrderedDict = OrderedDict()
        self.decodes = 0
        self.ram_bytes_used = 0
        if ram_bytes > 0:
            self._fill_ram(int(ram_bytes), threads or os.cpu_count() or 1)

    @property
    def ram_count(self) -> int:
        return len(self._ram)

    def _fill_ram(self, budget: int, threads: int) -> None:
        # Choose by the sizes in the annotation file, in index order, until the budget is spent.
        chosen, planned = [], 0
        for index in range(len(self.dataset)):
            w, h = mosaic_size(*self.dataset.image_size(index), self.img_scale)
            if planned + w * h * 3 > budget:
                break
            chosen.append(index)
            planned += w * h * 3

        def decode(index):
            try:
                return index, decode_for_mosaic(self.dataset, index, self.img_scale)
            except DataError:
                return index, None  # left to the normal path, which reports or skips it

        with ThreadPoolExecutor(threads) as pool:  # cv2 releases the GIL while decoding
            for index, item in pool.map(decode, chosen):
                if item is not None:
                    self._ram[index] = item
                    self.ram_bytes_used += item[0].nbytes
        if len(chosen) < len(self.dataset):
            warnings.warn(f"image cache: {len(self._ram)} of {len(self.dataset)} images fit in "
                          f"{budget / 2**30:.1f} GiB (data.cache_max_gb); the others are decoded each time",
                          stacklevel=3)

    def get(self, index: int):
        """(resized uint8 [h, w, 3] BGR, (H, W) of the original) of dataset image `index`; do not modify it."""
        item = self._ram.get(index)
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
