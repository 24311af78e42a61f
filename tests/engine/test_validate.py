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


def test_two_process_validation_scores_every_shard_with_rank_0_bn_statistics(tmp_path):
    """On CPU (no SyncBatchNorm) each rank's EMA ends with its own BatchNorm statistics; the AP must
    still be that of rank 0's EMA, the weights saved in best.pt, evaluated by one process."""
    data = make_tiny_coco(tmp_path / "coco", num_images=7)
    text = str(tiny_text_model())
    whole = sharded_eval.evaluate(*sharded_eval.setup(data, text))
    out = tmp_path / "metrics.pt"
    mp.spawn(sharded_eval.worker, args=(2, _free_port(), data, text, str(out), True), nprocs=2, join=True)
    split = torch.load(out, weights_only=False)
    assert split["num_detections"] == whole["num_detections"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert split[key] == pytest.approx(whole[key], abs=1e-12), key


def test_precise_bn_copy_averages_batch_statistics_and_shares_the_text_tower():
    from worldtune.engine.validate import precise_bn_copy
    from worldtune.model import build_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    tower = CLIPTextEncoder.from_pretrained(str(tiny_text_model()))
    torch.manual_seed(0)
    model = build_model("n", tower, num_classes=2).train()
    tower.eval()  # as a frozen tower may be while the detector trains
    stem = model.backbone.image_model.stem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = [["cat", "dog"], ["dog", "cat"]]
    batches = [{"images": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), "texts": texts}
               for _ in range(3)]
    copy = precise_bn_copy(model, tower, batches, torch.device("cpu"))

    assert copy.text_model is tower and not tower.training  # shared, its mode untouched
    assert copy.backbone.image_model is not model.backbone.image_model and not copy.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the trained model is unchanged
    # the stem BN's running mean is the plain average of the three batch means of its conv output
    conv = stem.conv
    means = [conv(b["images"].float() / 255).mean((0, 2, 3)) for b in batches]
    torch.testing.assert_close(copy.backbone.image_model.stem.bn.running_mean, torch.stack(means).mean(0),
                               rtol=1e-5, atol=1e-6)


def test_stop_checked_ranks_agree_before_each_batch_that_every_rank_reaches(monkeypatch):
    """Across machines a Ctrl-C reaches some ranks only: every rank votes before each of the first
    `common` batches and all stop together; a vote past the shortest shard would wait forever."""
    from types import SimpleNamespace

    from worldtune.engine import dist
    from worldtune.engine.validate import StopChecked

    votes = []
    monkeypatch.setattr(dist, "all_true", lambda flag, device: votes.append(flag) or True)
    stop = SimpleNamespace(requested=False)
    assert list(StopChecked(range(5), stop, torch.device("cpu"), common=3)) == [0, 1, 2, 3, 4]
    assert votes == [True, True, True]
    answers = iter([True, True, False])  # another rank was stopped before the third batch
    monkeypatch.setattr(dist, "all_true", lambda flag, device: next(answers))
    seen = []
    with pytest.raises(KeyboardInterrupt):
        for batch in StopChecked(range(5), stop, torch.device("cpu"), common=3):
            seen.append(batch)
    assert seen == [0, 1]
    stop.requested, votes = True, []
    monkeypatch.setattr(dist, "all_true", lambda flag, device: votes.append(flag) or flag)
    with pytest.raises(KeyboardInterrupt):
        list(StopChecked(range(5), stop, torch.device("cpu"), common=3))
    assert votes == [False]  # this rank's own request is its vote


@pytest.mark.parametrize("images, world_size, batch_size", [(7, 2, 2), (7, 3, 2), (9, 2, 4), (8, 4, 1)])
def test_common_batches_is_the_shortest_shards_batch_count(monkeypatch, images, world_size, batch_size):
    from worldtune.engine import dist
    from worldtune.engine.validate import common_batches
    from tests.helpers.index_dataset import IndexDataset

    loaders = [build_eval_loader(IndexDataset(images), batch_size, rank=r, world_size=world_size)
               for r in range(world_size)]
    monkeypatch.setattr(dist, "get_world_size", lambda: world_size)
    assert common_batches(loaders[0]) == min(len(loader) for loader in loaders)
