"""Validation split over processes gives the metrics of one process evaluating everything."""
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import sharded_eval
from tests.helpers.coco_factory import make_tiny_coco
from tests.helpers.tiny_run import tiny_text_model
from worldtune.data.loader import build_eval_loader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shards_are_strided_and_cover_every_image_once(tmp_path):
    data = make_tiny_coco(tmp_path / "coco", num_images=7)
    coco, loader, _ = sharded_eval.setup(data, str(tiny_text_model()))
    ids = [[i for b in build_eval_loader(loader.dataset, 2, rank=r, world_size=3) for i in b["image_ids"]]
           for r in range(3)]
    assert [len(x) for x in ids] == [3, 2, 2]  # no padding repeats, unlike a DistributedSampler
    assert sorted(i for x in ids for i in x) == sorted(coco.image_ids)
    assert ids[1] == [coco.image_ids[1], coco.image_ids[4]]


def test_two_process_validation_equals_one_process(tmp_path):
    data = make_tiny_coco(tmp_path / "coco", num_images=7)
    text = str(tiny_text_model())
    whole = sharded_eval.evaluate(*sharded_eval.setup(data, text))
    assert whole["num_detections"] > 20  # image-dependent detections, so the comparison means something
    out = tmp_path / "metrics.pt"
    mp.spawn(sharded_eval.worker, args=(2, _free_port(), data, text, str(out)), nprocs=2, join=True)
    split = torch.load(out, weights_only=False)
    assert split["num_detections"] == whole["num_detections"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert split[key] == pytest.approx(whole[key], abs=1e-12), key
