"""Decoded-image stores (data.cache_images, data.cache_dir) and mosaic pools (data.mosaic_pool)."""
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
import torch

from worldtune.data.coco import CocoDetection, DataError
from worldtune.data import image_cache
from worldtune.data.image_cache import MosaicImageStore, decode_for_mosaic, mosaic_size
from worldtune.data.packed_images import pack_in_file
from worldtune.data.loader import build_train_loader
from worldtune.data.presets import build_train_dataset

KW = dict(imgsz=64, num_texts=8, mixup_prob=0.5, close_mosaic_epoch=2, seed=2)


def _same(a, b):
    np.testing.assert_array_equal(a["img"], b["img"])
    np.testing.assert_array_equal(a["bboxes"], b["bboxes"])
    assert a["texts"] == b["texts"] and a["image_id"] == b["image_id"]


@pytest.mark.parametrize("where", ["ram", "file"])
def test_image_cache_changes_no_sample(tiny_dataset, tmp_path, where):
    plain = build_train_dataset(tiny_dataset, **KW, cache_images=False)
    assert plain.images is None
    cached = build_train_dataset(tiny_dataset, **KW, cache_images=True,
                                 cache_dir=str(tmp_path) if where == "file" else "")
    assert cached.images.cached_count == len(tiny_dataset)
    assert (cached.images.cached.path is not None) == (where == "file")
    for epoch in (0, 1, 2):  # stage 1 reads the cache, stage 2 decodes as usual
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            _same(plain[i], cached[i])
    assert cached.images.decodes == 0  # stage 1 never decoded: everything came from the cache
    img, shape = cached.images.get(0)
    assert shape == tiny_dataset.load_image(0).shape[:2] and img.shape[1::-1] == mosaic_size(*shape, 64)


def test_image_cache_stays_within_budget(tiny_dataset):
    budget = 2 * 64 * 64 * 3 + 10  # room for two images at most
    with pytest.warns(UserWarning, match="only 2 of 8 images fit"):
        store = MosaicImageStore(tiny_dataset, 64, cache_bytes=budget)
    assert 0 < store.cached_count <= 2 and store.cached.nbytes <= budget
    plain = build_train_dataset(tiny_dataset, **KW, cache_images=False)
    with pytest.warns(UserWarning, match="images fit"):
        partial = build_train_dataset(tiny_dataset, **KW, cache_images=True, cache_max_gb=budget / 2**30)
    for i in range(len(plain)):
        _same(plain[i], partial[i])


def _count_loads(dataset, monkeypatch) -> list:
    calls, load = [], dataset.load_image
    monkeypatch.setattr(dataset, "load_image", lambda i: calls.append(i) or load(i))
    return calls


def test_file_cache_is_built_once_and_shared(tiny_dataset, tmp_path, monkeypatch):
    calls = _count_loads(tiny_dataset, monkeypatch)
    first = MosaicImageStore(tiny_dataset, 64, cache_bytes=2**30, cache_dir=tmp_path)
    assert sorted(calls) == list(range(len(tiny_dataset)))  # the builder decoded each image once
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".npy", ".u8"]  # no lock or temp file left
    second = MosaicImageStore(tiny_dataset, 64, cache_bytes=2**30, cache_dir=tmp_path)
    assert len(calls) == len(tiny_dataset)  # a later process or run maps the file and decodes nothing
    for i in range(len(tiny_dataset)):
        a, b = first.get(i), second.get(i)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1] and not b[0].flags.writeable
    # Spawned workers get the file's path, not a copy of the pixels.
    blob = pickle.dumps(second.cached)
    assert len(blob) < 10_000 < second.cached.nbytes
    np.testing.assert_array_equal(pickle.loads(blob).get(3)[0], second.get(3)[0])
    MosaicImageStore(tiny_dataset, 64, cache_bytes=2**31, cache_dir=tmp_path)  # a larger budget, all fit already
    assert len(calls) == len(tiny_dataset) and len(list(tmp_path.glob("*.u8"))) == 1  # the same file
    with pytest.warns(UserWarning, match=r"also holds 1 other cache file\(s\)"):  # the first one, told
        MosaicImageStore(tiny_dataset, 32, cache_bytes=2**30, cache_dir=tmp_path)  # another size: another file
    assert len(list(tmp_path.glob("*.u8"))) == 2


def test_file_cache_follows_changed_images_and_skips_unreadable_ones(tiny_coco, tmp_path):
    root = tmp_path / "images"
    shutil.copytree(tiny_coco["image_dir"], root)
    dataset = CocoDetection(tiny_coco["ann_file"], root, on_bad_data="skip")
    cache = tmp_path / "cache"
    MosaicImageStore(dataset, 64, cache_bytes=2**30, cache_dir=cache)
    broken = dataset.image_path(2)
    broken.write_bytes(b"not a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = MosaicImageStore(dataset, 64, cache_bytes=2**30, cache_dir=cache)
    messages = [str(w.message) for w in caught]
    assert not any(broken.name in m for m in messages)  # the unreadable image is reported where it is used
    assert len(messages) == 1 and "also holds 1 other cache file(s)" in messages[0]  # the first, now stale
    assert store.cached_count == 7
    assert len(list(cache.glob("*.u8"))) == 2  # the changed file made a new cache instead of reusing the old
    assert store.cached.get(2) is None  # left to the normal path, which reports it
    with pytest.raises(DataError, match=str(broken.name)):
        store.get(2)


def test_file_cache_waits_for_a_live_builder_and_ignores_a_dead_ones_lock(tiny_dataset, tmp_path):
    import fcntl

    sizes = [mosaic_size(*tiny_dataset.image_size(i), 64) for i in range(len(tiny_dataset))]

    def decode(i):
        return decode_for_mosaic(tiny_dataset, i, 64)

    holder = open(tmp_path / "images-k1.lock", "a")  # a live builder: it holds the lock
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    result = []
    waiter = threading.Thread(target=lambda: result.append(pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k1",
                                                                        poll_s=0.02)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not result  # it waits while the lock is held
    fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    holder.close()
    waiter.join(30)
    assert result and result[0].count == len(tiny_dataset)
    assert not (tmp_path / "images-k1.lock").exists()  # removed once the cache is complete

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "images-k2.lock").write_text(f"{socket.gethostname()} {dead.pid}\n")  # its file, no lock held
    with pytest.warns(UserWarning, match=r"also holds 1 other cache file\(s\)"):  # k1's
        packed = pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k2", poll_s=0.02)  # would hang if it waited
    assert packed.count == len(tiny_dataset) and not (tmp_path / "images-k2.lock").exists()


def test_two_builders_never_build_at_once(tiny_dataset, tmp_path):
    """Processes that all find the cache missing (e.g. 8 ranks restarted after a killed build): one builds."""
    sizes = [mosaic_size(*tiny_dataset.image_size(i), 64) for i in range(len(tiny_dataset))]
    builds = []

    def slow_decode(i):
        builds.append(threading.get_ident())
        time.sleep(0.01)
        return decode_for_mosaic(tiny_dataset, i, 64)

    (tmp_path / "images-k.lock").write_text("elsewhere 1\n")  # left by a killed builder
    results = []
    threads = [threading.Thread(target=lambda: results.append(pack_in_file(sizes, slow_decode, 2**30, 1, tmp_path,
                                                                           "k", poll_s=0.01))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(r.count == len(tiny_dataset) for r in results)
    assert len(builds) == len(tiny_dataset)  # every image decoded once: a single builder


def test_interrupted_file_cache_build_leaves_nothing_behind(tiny_dataset, tmp_path):
    sizes = [mosaic_size(*tiny_dataset.image_size(i), 64) for i in range(len(tiny_dataset))]

    def interrupted(i):
        if i == 5:
            raise KeyboardInterrupt
        return decode_for_mosaic(tiny_dataset, i, 64)

    with pytest.raises(KeyboardInterrupt):
        pack_in_file(sizes, interrupted, 2**30, 1, tmp_path, "k")
    # no temp file, no index that would claim a complete cache; the lock file stays, no longer locked
    assert [p.name for p in tmp_path.iterdir()] == ["images-k.lock"]
    packed = pack_in_file(sizes, lambda i: decode_for_mosaic(tiny_dataset, i, 64), 2**30, 1, tmp_path, "k")
    assert packed.count == len(tiny_dataset) and not (tmp_path / "images-k.lock").exists()


def test_file_cache_cleans_a_killed_builders_leftovers_and_reports_a_full_disk(tiny_dataset, tmp_path, monkeypatch):
    sizes = [mosaic_size(*tiny_dataset.image_size(i), 64) for i in range(len(tiny_dataset))]

    def decode(i):
        return decode_for_mosaic(tiny_dataset, i, 64)

    leftovers = [tmp_path / "images-k.u8.tmp99999", tmp_path / "images-k.idx.npy.tmp99999"]
    for f in leftovers:
        f.write_bytes(b"x" * 100)  # what a SIGKILLed builder leaves
    pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k")
    assert not any(f.exists() for f in leftovers)

    def no_space(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(DataError, match=rf"cannot write .* to {tmp_path}.*No space left.*data.cache_max_gb"):
        pack_in_file(sizes, decode, 2**30, 1, tmp_path, "other")
    # no temp file; the failed build's lock file stays, unlocked
    assert sorted(f.name for f in tmp_path.iterdir()) == ["images-k.idx.npy", "images-k.u8", "images-other.lock"]


def test_a_cache_cut_short_by_disk_space_says_so_when_reused(tiny_dataset, tmp_path, monkeypatch):
    sizes = [mosaic_size(*tiny_dataset.image_size(i), 64) for i in range(len(tiny_dataset))]
    one_image = sizes[0][0] * sizes[0][1] * 3

    def decode(i):
        return decode_for_mosaic(tiny_dataset, i, 64)

    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=int(one_image * 1.5 / 0.9)))
    with pytest.warns(UserWarning, match="GiB free; caching at most"):
        short = pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k")
    assert 0 < short.count < len(sizes)
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    reused = rf"holds only {short.count} of {len(sizes)} images: .*short of space.*images-k"
    with pytest.warns(UserWarning, match=reused):
        again = pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k")
    assert again.count == short.count  # reused as it is: another run may still be reading it
    for f in tmp_path.glob("images-k.*"):  # what the message asks for
        f.unlink()
    # a budget far above the free space that still holds every image is no cut, and not warned about
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=one_image * len(sizes) * 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pack_in_file(sizes, decode, 2**40, 1, tmp_path, "k")
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    assert not (tmp_path / "images-k.cut").exists()
    for f in tmp_path.glob("images-k.*"):
        f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k").count == len(sizes)
        assert pack_in_file(sizes, decode, 2**30, 1, tmp_path, "k").count == len(sizes)  # complete: no warning


def test_file_cache_matches_the_uncached_pipeline_in_worker_processes(tiny_dataset, tmp_path):
    plain = build_train_loader(build_train_dataset(tiny_dataset, **KW, cache_images=False), batch_size=4, workers=0,
                               seed=1)
    cached = build_train_loader(build_train_dataset(tiny_dataset, **KW, cache_dir=str(tmp_path)),
                                batch_size=4, workers=2, seed=1)
    for loader in (plain, cached):
        loader.set_epoch(0)
    for a, b in zip(plain, cached):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["bboxes_labels"], b["bboxes_labels"])


def test_recent_images_are_bounded_and_reused(tiny_dataset):
    store = MosaicImageStore(tiny_dataset, 64, recent=3)
    for i in [0, 1, 0, 2, 3, 4, 4, 5, 6, 7, 1]:
        store.get(i)
        assert len(store._lru) <= 3
    assert store.decodes == 9  # the repeated 0 and 4 came from the buffer; 1 had been evicted
    assert MosaicImageStore(tiny_dataset, 64).get(5)[0].shape == store.get(5)[0].shape


def test_recent_images_evict_the_least_recently_used_and_hold_exactly_recent(tiny_dataset):
    # capacity 2: 0 and 1 decoded, 0 read again (a hit: now 1 is the least recently used), 2 evicts 1
    store = MosaicImageStore(tiny_dataset, 64, recent=2)
    for i in [0, 1, 0, 2]:
        store.get(i)
    assert list(store._lru) == [0, 2] and store.decodes == 3
    store.get(0)  # still held: no decode
    assert store.decodes == 3
    store.get(1)  # evicted: decoded again
    assert store.decodes == 4


def test_pool_partners_come_from_the_pool(tiny_dataset):
    train = build_train_dataset(tiny_dataset, **KW, mosaic_pool=4, cache_images=False)
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    train.set_epoch(0)
    train.set_order(order)
    rng = np.random.default_rng(0)
    for position, index in enumerate(order):
        pool = set(order[position // 4 * 4:position // 4 * 4 + 4])
        assert set(train._partners(index, rng, 50)) <= pool
    train.set_epoch(1)  # a new epoch forgets the order: pools follow a permutation seeded by (seed, epoch)
    assert train._order is None
    first = train._pool(3).tolist()
    train.set_epoch(1)
    assert train._pool(3).tolist() == first and len(first) == 4 and 3 in first


def test_pool_is_deterministic_for_any_worker_count_and_cache_state(tiny_dataset):
    train = build_train_dataset(tiny_dataset, **KW, mosaic_pool=4, cache_images=False)
    serial = build_train_loader(train, batch_size=4, workers=0, seed=3)
    serial.set_epoch(0)
    assert train._order.tolist() == list(serial.sampler)  # the loader hands its order to the pools
    run = list(serial)
    assert train.images.decodes <= len(tiny_dataset)  # pool = batch: each image decoded about once
    parallel = build_train_loader(train, batch_size=4, workers=2, seed=3)
    parallel.set_epoch(0)
    uncached = build_train_dataset(tiny_dataset, **KW, mosaic_pool=4, cache_images=False)
    uncached.images = None  # decode every time: the buffer only saves time, it never changes a sample
    again = build_train_loader(uncached, batch_size=4, workers=0, seed=3)
    again.set_epoch(0)
    for other in (list(parallel), list(again)):
        for a, b in zip(run, other):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["bboxes_labels"], b["bboxes_labels"])
            assert a["texts"] == b["texts"]
    default = build_train_loader(build_train_dataset(tiny_dataset, **KW), batch_size=4, workers=0, seed=3)
    default.set_epoch(0)
    assert not all(torch.equal(a["images"], b["images"]) for a, b in zip(run, default))  # pools: other partners


def test_auto_caches_a_set_that_fits_in_memory(tiny_dataset, monkeypatch):
    need = sum(3 * w * h for w, h in (mosaic_size(*tiny_dataset.image_size(i), 64) for i in range(len(tiny_dataset))))
    monkeypatch.setattr(image_cache, "available_memory", lambda: 2 * need)
    monkeypatch.setattr(image_cache, "worker_start_method", lambda: "fork")  # Linux before Python 3.14
    auto = build_train_dataset(tiny_dataset, **KW)  # cache_images="auto" is the default
    assert auto.images.cached_count == len(tiny_dataset) and auto.images.cached.path is None
    assert auto.cache_report.startswith(f"image cache: the {len(tiny_dataset)} training images")
    assert "auto" in auto.cache_report
    plain = build_train_dataset(tiny_dataset, **KW, cache_images="false")
    for i in range(len(plain)):
        _same(plain[i], auto[i])
    # one copy per training process on the machine must fit in half the available memory
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    two = build_train_dataset(tiny_dataset, **KW)
    assert two.images is None and "x 2 processes more than half the available memory" in two.cache_report
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(image_cache, "worker_start_method", lambda: "spawn")  # each worker would get a copy
    spawned = build_train_dataset(tiny_dataset, **KW)
    assert spawned.images is None and "start by 'spawn'" in spawned.cache_report
    assert "data.cache_dir" in spawned.cache_report  # a file is shared however workers start
    assert image_cache.auto_cache(tiny_dataset, 64, 2**30, workers=0)[0]  # no workers: nothing is copied
    monkeypatch.setattr(image_cache, "worker_start_method", lambda: "fork")
    monkeypatch.setattr(image_cache, "available_memory", lambda: None)
    assert build_train_dataset(tiny_dataset, **KW).images is None


def test_auto_leaves_big_sets_and_stage_2_alone(tiny_dataset, monkeypatch):
    monkeypatch.setattr(image_cache, "available_memory", lambda: 2**40)
    big = build_train_dataset(tiny_dataset, **KW, cache_max_gb=1000 / 2**30)  # no partial cache under auto
    assert big.images is None
    assert "image cache off" in big.cache_report and "data.cache_max_gb=" in big.cache_report
    assert "data.cache_dir" in big.cache_report  # says how to cache anyway
    stage2 = build_train_dataset(tiny_dataset, **dict(KW, close_mosaic_epoch=0))  # only stage 2 runs
    assert stage2.images is None and stage2.cache_report == ""
    assert build_train_dataset(tiny_dataset, **KW, cache_images="true").images.cached_count == len(tiny_dataset)
    with pytest.raises(ValueError, match="cache_images must be"):
        build_train_dataset(tiny_dataset, **KW, cache_images="ram")


def test_available_memory_reads_the_kernel_figure():
    available = image_cache.available_memory()
    if os.path.exists("/proc/meminfo"):
        assert available is not None and 2**20 < available < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize("rank,shown", [(0, True), (1, False)])
def test_only_rank_0_shows_the_in_ram_cache_bar(rank, shown, monkeypatch, capsys):
    """Under torchrun every rank fills its own RAM copy at once: one bar, not one per process."""
    from worldtune.data.packed_images import pack_in_ram

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: rank)
    decode = lambda i: (np.zeros((4, 4, 3), np.uint8), (8, 8))  # noqa: E731
    packed = pack_in_ram([(4, 4)] * 3, decode, budget=1 << 20, threads=1)
    assert packed.count == 3
    assert ("caching images" in capsys.readouterr().err) == shown
