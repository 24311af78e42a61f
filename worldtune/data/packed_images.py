"""Decoded training images, resized for the mosaic, packed into one flat uint8 buffer.

The buffer lives either in this process's RAM or in a file (`cache_dir`). A file is built
once, under a lock, by whichever process gets there first. Every other process opens it
with `np.memmap`: all DDP ranks, all DataLoader workers and later runs on the same data.
The operating system's page cache then holds a single copy for all of them. On a RAM disk
(`/dev/shm`) that is one copy in memory per machine. On a local disk it is a read per image
(a few hundred KB), much cheaper than a JPEG decode.

table: int64 [N, 5], one row per dataset index: (offset, h, w, H, W). The image's bytes are
buffer[offset : offset + h·w·3] as [h, w, 3] BGR, already resized from the original (H, W).
offset -1 means not stored (past the budget, unreadable, or not the size the annotation file
announced): the caller decodes it as usual, and that path reports or skips bad files.
"""
import hashlib
import json
import os
import shutil
import socket
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from worldtune.data.coco import DataError
from worldtune.engine.dist import is_main_process
from worldtune.progress import progress_bar

try:
    import fcntl
except ImportError:  # not POSIX: no file cache (see pack_in_file)
    fcntl = None

FORMAT_VERSION = 1


def plan_table(sizes: list, budget: int) -> np.ndarray:
    """Rows (offset, h, w, 0, 0) for resized sizes [(w, h), ...] in index order, until `budget` bytes are spent."""
    table = np.full((len(sizes), 5), -1, dtype=np.int64)
    offset = 0
    for index, (w, h) in enumerate(sizes):
        if offset + w * h * 3 > budget:
            break
        table[index] = (offset, h, w, 0, 0)
        offset += w * h * 3
    return table


def stored_bytes(table: np.ndarray) -> int:
    """Bytes the buffer needs: the end of the last planned image."""
    rows = table[table[:, 0] >= 0]
    return int((rows[:, 0] + rows[:, 1] * rows[:, 2] * 3).max()) if len(rows) else 0


def fill(buffer: np.ndarray, table: np.ndarray, decode, threads: int, desc: str, bar: bool = True) -> None:
    """Decode every planned image into its slot of `buffer`; rows that fail become -1.

    `decode(index)` returns (uint8 [h, w, 3] resized, (H, W)) or raises DataError. `bar`: show a
    progress bar.
    """
    planned = np.flatnonzero(table[:, 0] >= 0).tolist()

    def one(index):
        try:
            img, shape = decode(index)
        except DataError:
            return index, None
        offset, h, w = table[index, :3]
        if img.shape != (h, w, 3):  # e.g. an EXIF rotation the annotation size does not show
            return index, None
        buffer[offset:offset + img.size] = img.reshape(-1)
        return index, shape

    with ThreadPoolExecutor(threads) as pool:  # cv2 releases the GIL while decoding and resizing
        for index, shape in progress_bar(pool.map(one, planned), total=len(planned), desc=desc, unit="img",
                                         leave=False, mininterval=2.0, disable=not bar):
            if shape is None:
                table[index, 0] = -1
            else:
                table[index, 3:] = shape


class PackedImages:
    """Read access to a packed buffer. `get(index)` -> (uint8 [h, w, 3] read-only view, (H, W)) or None.

    Attributes: table (int64 [N, 5]), count (images stored), nbytes (buffer bytes), path (file or None).
    """

    def __init__(self, table: np.ndarray, buffer: np.ndarray | None, path: Path | None = None):
        self.table, self.path = table, path
        self.buffer = buffer if buffer is not None else _open_readonly(path, stored_bytes(table))
        self.count = int((table[:, 0] >= 0).sum())
        self.nbytes = int(self.buffer.size)

    def get(self, index: int):
        offset, h, w, height, width = self.table[index].tolist()
        if offset < 0:
            return None
        img = np.asarray(self.buffer[offset:offset + h * w * 3]).reshape(h, w, 3)
        return img, (height, width)

    # A file-backed buffer travels to spawned workers as its path, not as a copy of the pixels.
    def __getstate__(self):
        state = dict(self.__dict__)
        if self.path is not None:
            state["buffer"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.buffer is None:
            self.buffer = _open_readonly(self.path, stored_bytes(self.table))


def _open_readonly(path: Path, nbytes: int) -> np.ndarray:
    if nbytes == 0:
        return np.zeros(0, dtype=np.uint8)
    if not path.is_file() or path.stat().st_size != nbytes:
        raise DataError(f"image cache {path} is missing or has the wrong size; delete its files and rerun")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(nbytes,))


def pack_in_ram(sizes: list, decode, budget: int, threads: int) -> PackedImages:
    """Plan within `budget` bytes and decode into a buffer of this process (shared with forked workers)."""
    table = plan_table(sizes, budget)
    buffer = np.empty(stored_bytes(table), dtype=np.uint8)
    # Under torchrun every rank fills its own copy at the same time: rank 0's bar stands for all.
    fill(buffer, table, decode, threads, "caching images", bar=is_main_process())
    return PackedImages(table, buffer)


def cache_key(description: dict) -> str:
    """Short hash naming a cache file: it changes whenever what the file would hold changes."""
    text = json.dumps({"format": FORMAT_VERSION, **description}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def pack_in_file(sizes: list, decode, budget: int, threads: int, cache_dir, key: str,
                 poll_s: float = 1.0) -> PackedImages:
    """Open `cache_dir/images-KEY.*`, building it first if no process has.

    The builder holds an exclusive `flock` on `images-KEY.lock`; the others wait for it. The kernel
    (and an NFS server) releases the lock when its holder dies, so a killed builder never blocks the
    next run, and two processes can never both build. The index file is renamed into place last,
    so a reader never sees a half-written cache; the lock file is removed once the cache is complete.
    """
    if fcntl is None:
        raise DataError("data.cache_dir needs POSIX file locks (fcntl), which this platform lacks; "
                        "use data.cache_images without a cache_dir")
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data_path, index_path = folder / f"images-{key}.u8", folder / f"images-{key}.idx.npy"
    lock_path = folder / f"images-{key}.lock"
    said_waiting, built_here = False, False
    while not index_path.is_file():
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said_waiting:
                    print(f"image cache: waiting for the process that holds {lock_path} to finish building it",
                          flush=True)
                    said_waiting = True
                time.sleep(poll_s)
                continue
            try:
                if not index_path.is_file():  # another process may have finished between our checks
                    lock.truncate(0)
                    lock.write(f"{socket.gethostname()} {os.getpid()}\n")  # who builds, for a curious reader
                    lock.flush()
                    _build_file(sizes, decode, budget, threads, data_path, index_path)
                    built_here = True
                    _remove(lock_path)  # complete: a process still waiting on it finds the index
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    others = [f for f in folder.glob("images-*.u8") if f != data_path]
    if others:  # caches of earlier image sets or sizes: nothing removes them (on /dev/shm they hold RAM)
        warnings.warn(f"image cache: {folder} also holds {len(others)} other cache file(s), "
                      f"{sum(f.stat().st_size for f in others) / 2**30:.2f} GiB, from other images or sizes; "
                      "delete them if no run needs them", stacklevel=3)
    table = np.load(index_path, allow_pickle=False)
    if table.shape != (len(sizes), 5):
        raise DataError(f"image cache {index_path} does not match the dataset ({table.shape[0]} rows for "
                        f"{len(sizes)} images); delete its files and rerun")
    if _cut_marker(data_path).is_file() and not built_here:  # its builder said so already
        warnings.warn(f"image cache {data_path} holds only {int((table[:, 0] >= 0).sum())} of {len(sizes)} "
                      f"images: it was built when the disk was short of space. The others are decoded each "
                      f"time; delete {folder}/images-{key}.* (once no run uses it) to rebuild it", stacklevel=3)
    return PackedImages(table, None, data_path)


def _build_file(sizes, decode, budget, threads, data_path: Path, index_path: Path) -> None:
    # We hold the lock, so temp files of this cache are leftovers of a killed builder: free their space.
    for leftover in data_path.parent.glob(f"{data_path.stem}.*.tmp*"):
        _remove(leftover)
    free = shutil.disk_usage(data_path.parent).free
    wanted = int((plan_table(sizes, budget)[:, 0] >= 0).sum())
    table = plan_table(sizes, min(budget, int(0.9 * free)))
    cut = int((table[:, 0] >= 0).sum()) < wanted  # fewer images than the key promises
    if cut:  # only then: a budget above the free space that still holds every image changes nothing
        warnings.warn(f"image cache: {data_path.parent} has {free / 2**30:.1f} GiB free; caching at most "
                      f"{0.9 * free / 2**30:.1f} GiB instead of data.cache_max_gb", stacklevel=4)
    nbytes = stored_bytes(table)
    tmp = data_path.with_name(f"{data_path.name}.tmp{os.getpid()}")
    tmp_index = index_path.with_name(f"{index_path.name}.tmp{os.getpid()}")
    try:
        if nbytes:
            with open(tmp, "wb") as f:
                # Reserve the space now: a memory-mapped write to a full disk kills the process (SIGBUS).
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, nbytes)
                else:
                    f.truncate(nbytes)
            buffer = np.memmap(tmp, dtype=np.uint8, mode="r+", shape=(nbytes,))
            fill(buffer, table, decode, threads, f"caching images in {data_path.parent}")
            buffer.flush()
            del buffer
            os.replace(tmp, data_path)
        if cut:  # the key names the images that fit the budget, so a later run must learn it got fewer
            _cut_marker(data_path).write_text(f"built with {free} bytes free\n")
        else:
            _remove(_cut_marker(data_path))
        with open(tmp_index, "wb") as f:
            np.save(f, table)
        os.replace(tmp_index, index_path)  # last: its presence says the cache is complete
    except OSError as e:
        raise DataError(f"image cache: cannot write {nbytes / 2**30:.1f} GiB to {data_path.parent} ({e}); free "
                        "space there, lower data.cache_max_gb or choose another data.cache_dir") from e
    finally:  # interrupted: leave no half-written file behind
        _remove(tmp)
        _remove(tmp_index)


def _cut_marker(data_path: Path) -> Path:
    """`images-KEY.cut`: present when the cache holds fewer images than its key says (disk space)."""
    return data_path.with_suffix(".cut")


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
