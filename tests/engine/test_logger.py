"""engine.logger: only the main process writes, and tensor values are stored as plain numbers."""
import json

import torch

from worldtune.engine.logger import RunLogger


def test_a_disabled_logger_writes_nothing_even_with_a_folder(tmp_path):
    # every DDP process gets the run folder; only the main one may append to metrics.jsonl
    log = RunLogger(tmp_path / "run", enabled=False, tensorboard=False)
    log.log("train", 1, loss=1.0)
    assert not log.enabled and not (tmp_path / "run").exists()
    assert log.progress([1, 2], total=2, desc="x") == [1, 2]  # the bare iterable, no bar


def test_tensor_values_are_written_as_numbers_and_non_finite_ones_as_null(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    log.log("train", torch.tensor(3), loss=torch.tensor(2.5), lr=torch.tensor(float("inf")), n=torch.tensor(4))
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record == {"kind": "train", "step": 3, "loss": 2.5, "lr": None, "n": 4}
