"""Opt-in decoded-image stores (data.cache_images) and mosaic pools (data.mosaic_pool)."""
import numpy as np
import pytest
import torch

from worldtune.data.image_cache import MosaicImageStore, mosaic_size
from worldtune.data.loader import build_train_loader
from worldtune.data.presets import build_train_dataset

KW = dict(imgsz=64, num_texts=8, mixup_prob=0.5, close_mosaic_epoch=2, seed=2)


def _same(a, b):
    np.testing.assert_array_equal(a["img"], b["img"])
    np.testing.assert_array_equal(a["bboxes"], b["bboxes"])
    assert a["texts"] == b["texts"] and a["image_id"] == b["image_id"]


def test_ram_cache_changes_no_sample(tiny_dataset):
    plain = build_train_dataset(tiny_dataset, **KW)
    cached = build_train_dataset(tiny_dataset, **KW, cache_images=True)
    assert cached.images.ram_count == len(tiny_dataset)
    for epoch in (0, 1, 2):  # stage 1 reads the cache, stage 2 decodes as usual
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            _same(plain[i], cached[i])
    assert cached.images.decodes == 0  # stage 1 never decoded: everything came from RAM
    img, shape = cached.images.get(0)
    assert shape == tiny_dataset.load_image(0).shape[:2] and img.shape[1::-1] == mosaic_size(*shape, 64)


def test_ram_cache_stays_within_budget(tiny_dataset):
    budget = 2 * 64 * 64 * 3 + 10  # room for two images at most
    with pytest.warns(UserWarning, match="of 8 images fit"):
        store = MosaicImageStore(tiny_dataset, 64, ram_bytes=budget)
    assert 0 < store.ram_count <= 2 and store.ram_bytes_used <= budget
    plain = build_train_dataset(tiny_dataset, **KW)
    with pytest.warns(UserWarning, match="fit"):
        partial = build_train_dataset(tiny_dataset, **KW, cache_images=True, cache_max_gb=budget / 2**30)
    for i in range(len(plain)):
        _same(plain[i], partial[i])


def test_recent_images_are_bounded_and_reused(tiny_dataset):
    store = MosaicImageStore(tiny_dataset, 64, recent=3)
    for i in [0, 1, 0, 2, 3, 4, 4, 5, 6, 7, 1]:
        store.get(i)
        assert len(store._lru) <= 3
    assert store.decodes == 9  # the repeated 0 and 4 came from the buffer; 1 had been evicted
    assert MosaicImageStore(tiny_dataset, 64).get(5)[0].shape == store.get(5)[0].shape


def test_pool_partners_come_from_the_pool(tiny_dataset):
    train = build_train_dataset(tiny_dataset, **KW, mosaic_pool=4)
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
    train = build_train_dataset(tiny_dataset, **KW, mosaic_pool=4)
    serial = build_train_loader(train, batch_size=4, workers=0, seed=3)
    serial.set_epoch(0)
    assert train._order.tolist() == list(serial.sampler)  # the loader hands its order to the pools
    run = list(serial)
    assert train.images.decodes <= len(tiny_dataset)  # pool = batch: each image decoded about once
    parallel = build_train_loader(train, batch_size=4, workers=2, seed=3)
    parallel.set_epoch(0)
    uncached = build_train_dataset(tiny_dataset, **KW, mosaic_pool=4)
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
