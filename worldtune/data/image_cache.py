"""Stores of decoded training images for stage 1, so that each image is decoded less often.

Every stored image is already resized to its mosaic size (r = min(s/h, s/w), bilinear, to
(int(w·r), int(h·r))): exactly the resize `mosaic` does, which then has nothing left to do.
Using a store therefore changes no pixel of any sample; it only saves JPEG decoding (about
5 ms per 640 px image, four to eight times per stage-1 sample) and resizing.

- Image cache (`data.cache_images`): every image, decoded once (`packed_images`), at most
  `cache_bytes` of them, in index order. By default (`auto`) it is used when the whole training
  set fits (`auto_cache`). Without `cache_dir` it is filled at start-up in this
  process's RAM, before the DataLoader forks its workers, which then read the same pages
  (copy-on-write: nothing writes them, so nothing is copied); each DDP rank fills its own.
  With `cache_dir` it is one file that the first process builds and every process, rank and
  later run maps (`data.cache_dir`, e.g. /dev/shm for one copy in RAM per machine).
- Recent images (`recent` > 0, used with `data.mosaic_pool`): a per-process LRU of the last
  `recent` images decoded. Each worker has its own; nothing is shared or locked.

Stage 2 and evaluation resize differently (area interpolation) and do not use the stores.
"""
import hashlib
import math
import multiprocessing
import os
import warnings
from collections import OrderedDict

import cv2

from worldtune.data.packed_images import PackedImages, cache_key, pack_in_file, pack_in_ram, plan_table


def mosaic_size(height: int, width: int, img_scale: int) -> tuple:
    """(w, h) of an image of `height` x `width` resized for a mosaic of `img_scale`."""
    r = min(img_scale / height, img_scale / width)
    return max(int(width * r), 1), max(int(height * r), 1)  # as mix.mosaic_layout


def available_memory() -> int | None:
    """Bytes of memory new allocations can get without swapping (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def worker_start_method() -> str:
    """How DataLoader workers start here by default ("fork" on Linux before Python 3.14), without
    fixing the start method as `multiprocessing.get_context()` would."""
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def auto_cache(dataset, img_scale: int, max_bytes: int, processes: int = 1, workers: int = 1) -> tuple[bool, str]:
    """The `data.cache_images=auto` decision: cache in RAM when every image fits in `max_bytes` and
    the `processes` copies (one per training process on this machine) in half the available memory,
    and, with DataLoader `workers`, only where they are forked (any other start method hands every
    worker a copy).

    Returns:
        (cache or not, a line for the user saying what was decided and how to change it).
    """
    sizes = [mosaic_size(*dataset.image_size(i), img_scale) for i in range(len(dataset))]
    need = sum(w * h * 3 for w, h in sizes)
    available = available_memory()
    copies = f"x {processes} processes " if processes > 1 else ""
    method = worker_start_method() if workers > 0 else "fork"
    fits = need <= max_bytes and available is not None and need * processes <= available // 2
    if fits and method == "fork":
        return True, (f"image cache: the {len(sizes)} training images, decoded once and resized for the mosaic, "
                      f"take {need / 2**30:.2f} GiB {copies}of RAM (data.cache_images=auto; false turns it off)")
    if need > max_bytes:
        why = f"more than data.cache_max_gb={max_bytes / 2**30:g}"
    elif available is None:
        why = "and the available memory is unknown"
    elif not fits:
        why = f"{copies}more than half the available memory ({available / 2**30:.1f} GiB)"
    else:
        why = f"and DataLoader workers start by {method!r} here, which would give each worker its own copy"
    return False, (f"image cache off: the {len(sizes)} training images need {need / 2**30:.1f} GiB resized for "
                   f"the mosaic, {why}; every image is decoded each time it is used. To cache them, set "
                   f"data.cache_dir (e.g. /dev/shm/worldtune: one copy per machine, or a local-disk folder) "
                   f"and data.cache_max_gb={math.ceil(need / 2**30)}")


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

        fitting = int((plan_table(sizes, budget)[:, 0] >= 0).sum())
        if fitting < len(sizes):  # (unreadable images are reported where they are used, by on_bad_data)
            warnings.warn(f"image cache: only {fitting} of {len(sizes)} images fit in the "
                          f"{budget / 2**30:.2f} GiB budget (data.cache_max_gb); the others are decoded each time",
                          stacklevel=3)
        if cache_dir:
            # The key names how many images fit, not the budget: raising data.cache_max_gb past what
            # the data needs reuses the file instead of building a second copy.
            key = cache_key({"img_scale": self.img_scale, "images": self._identity(), "fitting": fitting})
            return pack_in_file(sizes, decode, budget, threads, cache_dir, key)
        return pack_in_ram(sizes, decode, budget, threads)

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
