import shutil

import pytest
import torch

from worldtune.data.coco import CocoDetection, DataError
from worldtune.data.loader import build_eval_loader, build_train_loader
from worldtune.data.presets import build_eval_dataset, build_train_dataset

from tests.helpers.index_dataset import IndexDataset


def _epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["bboxes_labels"], b["bboxes_labels"])
        assert a["texts"] == b["texts"] and a["image_ids"] == b["image_ids"]


def test_reproducible_across_workers_and_resume(tiny_dataset):
    train = build_train_dataset(tiny_dataset, imgsz=64, num_texts=8, close_mosaic_epoch=2, seed=1)
    serial = build_train_loader(train, batch_size=3, workers=0, seed=5)
    run = [_epoch_batches(serial, e) for e in range(3)]
    assert run[0][0]["images"].shape == (3, 3, 64, 64) and len(run[0]) == 3
    assert not torch.equal(run[0][0]["images"], run[1][0]["images"])  # new epoch, new order/augmentation
    parallel = build_train_loader(train, batch_size=3, workers=2, seed=5)
    _assert_same(_epoch_batches(parallel, 1), run[1])
    resumed = build_train_loader(train, batch_size=3, workers=0, seed=5)  # a fresh process resuming at epoch 2
    _assert_same(_epoch_batches(resumed, 2), run[2])
    assert train.stage == 2


def test_ranks_split_the_epoch(tiny_dataset):
    train = build_train_dataset(tiny_dataset, imgsz=64, num_texts=8)
    ids = []
    for rank in range(2):
        loader = build_train_loader(train, batch_size=2, workers=0, seed=0, rank=rank, world_size=2)
        loader.set_epoch(0)
        ids.append([i for batch in loader for i in batch["image_ids"]])
    assert len(ids[0]) == len(ids[1]) == 4 and sorted(ids[0] + ids[1]) == sorted(tiny_dataset.image_ids)


def test_eval_loader(tiny_dataset):
    batches = list(build_eval_loader(build_eval_dataset(tiny_dataset, imgsz=64), batch_size=4))
    assert [b["images"].shape[0] for b in batches] == [4, 4]
    assert [i for b in batches for i in b["image_ids"]] == tiny_dataset.image_ids
    assert batches[0]["texts"][0] == tiny_dataset.class_names


def test_corrupt_image_in_worker(tiny_coco, tmp_path):
    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    (tmp_path / "images" / "img_005.png").write_bytes(b"not a png")
    strict = CocoDetection(tiny_coco["ann_file"], tmp_path / "images")
    loader = build_train_loader(build_train_dataset(strict, imgsz=64, num_texts=8), 8, workers=2, seed=0)
    loader.set_epoch(0)
    with pytest.raises(DataError, match="img_005.png"):
        list(loader)
    lenient = CocoDetection(tiny_coco["ann_file"], tmp_path / "images", on_bad_data="skip")
    train = build_train_dataset(lenient, imgsz=64, num_texts=8, mixup_prob=0.0)
    with pytest.warns(UserWarning, match="img_005.png"):
        sample = train[5]
    assert sample["image_id"] != tiny_dataset_id(lenient, "img_005.png")


def tiny_dataset_id(ds, name):
    return next(i for k, i in enumerate(ds.image_ids) if ds.image_path(k).name == name)


class _SigintHandler(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        import signal
        return [int(signal.getsignal(signal.SIGINT) == signal.SIG_IGN),
                int(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)]


def test_workers_leave_ctrl_c_to_the_main_process_and_end_on_sigterm():
    """Workers ignore Ctrl-C, and a SIGTERM ends them even where the training loop's stop handler
    (which only sets a flag) was copied into them by fork: the DataLoader ends its workers by SIGTERM."""
    import signal

    from worldtune.data.loader import _worker_init
    from worldtune.engine.stopping import StopFlag

    loader = torch.utils.data.DataLoader(_SigintHandler(), batch_size=2, num_workers=1, worker_init_fn=_worker_init,
                                         multiprocessing_context="fork", collate_fn=lambda batch: batch)
    with StopFlag():
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        assert next(iter(loader)) == [[1, 1], [1, 1]]


class _GlobalDraws(torch.utils.data.Dataset):
    """Index -> what numpy's and Python's global generators give in the worker that loads it (as a
    third-party augmentation drawing from them would)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        import random

        import numpy as np
        return (torch.utils.data.get_worker_info().id, int(np.random.randint(2**31)), random.random())

    def set_epoch(self, epoch):
        pass


def _worker_draws(seed):
    loader = build_train_loader(_GlobalDraws(), batch_size=1, workers=2, seed=seed)
    loader.loader.collate_fn = lambda batch: batch[0]
    loader.set_epoch(0)
    return sorted(loader)


def test_workers_seed_the_global_generators_from_the_run_seed():
    """Each worker's numpy / random streams differ from the other worker's, and follow the run's
    seed, not whatever the global torch generator of the main process holds."""
    torch.manual_seed(1)
    first = _worker_draws(seed=3)
    torch.manual_seed(2)
    assert _worker_draws(seed=3) == first
    (_, np_0, py_0), (_, np_1, py_1) = [next(d for d in first if d[0] == w) for w in (0, 1)]
    assert np_0 != np_1 and py_0 != py_1
    assert _worker_draws(seed=4) != first


def test_eval_shards_cover_every_image_once():
    from worldtune.data.loader import StridedSampler
    for length, world in ((7, 2), (5, 3), (2, 4)):
        shards = [list(StridedSampler(length, rank, world)) for rank in range(world)]
        assert sorted(i for shard in shards for i in shard) == list(range(length))
        assert [len(StridedSampler(length, rank, world)) for rank in range(world)] == [len(s) for s in shards]


@pytest.mark.parametrize("drop_last,per_rank,distinct", [(True, 3, 6), (False, 4, 7)])
def test_train_shards_drop_or_pad_the_tail_as_asked(drop_last, per_rank, distinct):
    """7 images on 2 ranks: drop_last leaves one out (3 each, all different); without it a rank
    repeats one to keep the ranks in step (4 each)."""
    shards = []
    for rank in range(2):
        loader = build_train_loader(IndexDataset(7), batch_size=1, seed=0, rank=rank, world_size=2, drop_last=drop_last)
        loader.set_epoch(0)
        shards.append(list(loader.sampler))
    assert [len(s) for s in shards] == [per_rank, per_rank] and len(set(shards[0] + shards[1])) == distinct


class _PooledIndexDataset(IndexDataset):
    """Records the loading order that a `mosaic_pool` training set is given."""
    mosaic_pool = 2

    def set_order(self, order):
        self.order = list(order)


def test_a_pooled_set_is_given_each_epochs_loading_order_on_its_rank():
    """data.mosaic_pool draws partners among the images loaded next to a sample: the set must know
    this rank's order of each epoch, not a permutation of its own."""
    dataset = _PooledIndexDataset(9)
    loader = build_train_loader(dataset, batch_size=2, seed=0, rank=1, world_size=2)
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        assert dataset.order == list(loader.sampler)  # the indices the loader loads, in its order
        orders.append(dataset.order)
    assert orders[0] != orders[1]


def _with_bad_images(tiny_coco, tmp_path):
    """The tiny set with one JPEG cut short and one image of another size than the annotation's."""
    import cv2
    import numpy as np

    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    dataset = CocoDetection(tiny_coco["ann_file"], tmp_path / "images")
    jpeg = next(i for i in range(len(dataset)) if dataset.image_path(i).suffix == ".jpg")
    data = dataset.image_path(jpeg).read_bytes()
    dataset.image_path(jpeg).write_bytes(data[: len(data) * 2 // 3])
    other = next(i for i in range(len(dataset)) if i != jpeg)
    h, w = dataset.image_size(other)
    cv2.imwrite(str(dataset.image_path(other)), np.zeros((w + 8, h + 8, 3), np.uint8))
    return dataset


def _show_into(path, monkeypatch):
    """Make every process (main, or a worker forked from it) append the warnings it shows to `path`:
    `record=True` would miss one that a worker shows by itself."""
    import warnings

    def show(message, *args, **kwargs):
        with open(path, "a") as f:
            f.write(f"{message}\n")

    warnings.simplefilter("always")  # Python's own "once per place" must not hide a repeat
    monkeypatch.setattr(warnings, "showwarning", show)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_training_image_is_warned_about_once_per_run(tiny_coco, tmp_path, workers, monkeypatch):
    """A JPEG cut short and an image of another size than the annotation's: one warning each over
    two epochs, though the (forked) workers are re-created every epoch, and counted."""
    import warnings

    dataset = _with_bad_images(tiny_coco, tmp_path)
    train = build_train_dataset(dataset, imgsz=64, num_texts=8, cache_images=False)  # no decoding before the loader
    loader = build_train_loader(train, 4, workers=workers, seed=0)
    shown = tmp_path / "shown.txt"
    with warnings.catch_warnings():
        _show_into(shown, monkeypatch)
        for epoch in range(2):
            loader.set_epoch(epoch)
            assert all("warnings" not in batch for batch in loader)
    messages = shown.read_text().splitlines()
    assert sum("is cut short" in m for m in messages) == 1 and sum("decoded" in m for m in messages) == 1, messages
    assert len(loader.warnings_seen) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_validation_image_is_warned_about_once_per_loader(tiny_coco, tmp_path, workers, monkeypatch):
    """Two validations with the run's one eval loader: one warning per bad file, though the workers
    are new at each."""
    import warnings

    shown = tmp_path / "shown.txt"
    loader = build_eval_loader(build_eval_dataset(_with_bad_images(tiny_coco, tmp_path), imgsz=64), 2, workers)
    with warnings.catch_warnings():
        _show_into(shown, monkeypatch)
        for _ in range(2):
            assert sum(len(batch["image_ids"]) for batch in loader if "warnings" not in batch) == len(loader.dataset)
    messages = shown.read_text().splitlines()
    assert sum("is cut short" in m for m in messages) == 1 and sum("decoded" in m for m in messages) == 1, messages
    assert len(loader.warnings_seen) == 2


@pytest.mark.parametrize("workers", [0, 2])
def test_many_bad_validation_images_are_listed_up_to_the_loaders_limit_whatever_the_workers(
        tiny_coco, tmp_path, workers, monkeypatch):
    """Every image mis-sized, the JPEGs also cut short, two unreadable: the main process lists the
    first 10 warnings and counts them all. The dataset's own limit (3 per problem) must not apply in
    each worker, which let 2 workers show twice as many as 0."""
    import warnings

    import cv2
    import numpy as np

    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    dataset = CocoDetection(tiny_coco["ann_file"], tmp_path / "images", on_bad_data="skip")
    for index in range(len(dataset)):
        h, w = dataset.image_size(index)
        path = dataset.image_path(index)
        if index in (1, 2):
            path.write_text("not a picture")
            continue
        cv2.imwrite(str(path), np.zeros((h + 8, w + 8, 3), np.uint8))
        if path.suffix == ".jpg":
            path.write_bytes(path.read_bytes()[:-200])
    shown = tmp_path / "shown.txt"
    loader = build_eval_loader(build_eval_dataset(dataset, imgsz=64), 2, workers)
    with warnings.catch_warnings():
        _show_into(shown, monkeypatch)
        for _ in range(2):
            list(loader)
    messages = shown.read_text().splitlines()
    jpegs = sum(dataset.image_path(i).suffix == ".jpg" for i in range(len(dataset)) if i not in (1, 2))
    assert len(loader.warnings_seen) == (len(dataset) - 2) + jpegs + 2 > 10
    assert len(messages) == 10 and len(set(messages)) == 10, messages
    assert [m.endswith("(further warnings about the evaluation images are not listed)") for m in messages] == \
        [False] * 9 + [True]
    assert not any("further such images are not listed" in m for m in messages)


def test_an_exif_frame_note_is_shown_once_though_each_worker_meets_such_a_file(tiny_coco, tmp_path, monkeypatch):
    """Two JPEGs turned by half (EXIF orientation 3), one per worker (batches of 2 alternate between
    the workers): the note names no file, so the main process shows it once."""
    import warnings

    from PIL import Image

    shutil.copytree(tiny_coco["image_dir"], tmp_path / "images")
    dataset = CocoDetection(tiny_coco["ann_file"], tmp_path / "images")
    for index in (0, 3):
        path = dataset.image_path(index)
        assert path.suffix == ".jpg"
        with Image.open(path) as im:
            im.load()
        exif = im.getexif()
        exif[0x0112] = 3
        im.save(path, exif=exif.tobytes())
    shown = tmp_path / "shown.txt"
    loader = build_eval_loader(build_eval_dataset(dataset, imgsz=64), 2, workers=2)
    with warnings.catch_warnings():
        _show_into(shown, monkeypatch)
        list(loader)
    messages = shown.read_text().splitlines()
    assert len(messages) == 1 and "EXIF orientation" in messages[0], messages


class _WarnsOnOne(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, index):
        import warnings
        if index == 1:
            warnings.warn("bad file")
        return {"index": index}


def test_sample_warnings_travel_with_the_sample_and_leave_other_warnings_once_only():
    """Recording a sample's warnings must not reset Python's "shown once" memory: without workers the
    training loop's own once-only warnings would then repeat every sample."""
    import warnings

    from worldtune.data.loader import WarningsWithSample

    data = WarningsWithSample(_WarnsOnOne())
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        samples = []
        for index in range(3):
            samples.append(data[index])
            warnings.warn("the loop's own warning")
    assert [str(w.message) for w in shown] == ["the loop's own warning"]
    assert [s.get("warnings") for s in samples] == [None, [(UserWarning, "bad file")], None]


def test_sample_warnings_of_a_non_dict_sample_are_shown_where_raised():
    """A sample that cannot carry them (not a dict) leaves its warnings shown, not dropped."""
    import warnings

    from worldtune.data.loader import WarningsWithSample

    class Tuples(_WarnsOnOne):
        def __getitem__(self, index):
            return tuple(super().__getitem__(index).values())

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert WarningsWithSample(Tuples())[1] == (1,)
    assert [(w.category, str(w.message)) for w in shown] == [(UserWarning, "bad file")]


def test_the_reporter_shows_the_first_warnings_then_only_counts():
    """The training loader lists the first `limit` distinct warnings, the last of them with the note
    that no more are listed, and counts the rest (the run's end says how many)."""
    import warnings

    from worldtune.data.loader import WarningsReporter

    reporter = WarningsReporter(limit=2, note=" (no more listed)")
    batches = [{"warnings": [(UserWarning, "a"), (UserWarning, "a")], "i": 0},
               {"warnings": [(RuntimeWarning, "b")], "i": 1}, {"warnings": [(UserWarning, "c")], "i": 2}, {"i": 3}]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        assert list(reporter.reported(batches)) == [{"i": i} for i in range(4)]
    assert [(w.category, str(w.message)) for w in shown] == [(UserWarning, "a"), (RuntimeWarning, "b (no more listed)")]
    assert reporter.seen == {"a", "b", "c"}


def _loader_worker(main_pid, ready):
    import time

    from worldtune.data.loader import _worker_init
    _worker_init(0, main_pid)
    ready.set()
    time.sleep(60)


def test_workers_end_on_the_main_process_sigterm_only():
    """SIGTERM sent to every process of a job (scancel, `kill -TERM -<pgid>`) leaves a worker to the
    main process, which stops after its step and ends the workers itself; the main process's own
    SIGTERM (DataLoader shutdown, Python at exit) ends it."""
    import multiprocessing
    import os
    import signal
    import subprocess

    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_loader_worker, args=(os.getpid(), ready), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # from another process
        worker.join(1.0)
        assert worker.is_alive()
        worker.terminate()  # SIGTERM from this, its main process
        worker.join(5.0)
        assert worker.exitcode == -signal.SIGTERM
    finally:
        if worker.is_alive():
            worker.kill()
