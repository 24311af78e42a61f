"""--threads sets torch's CPU threads in every command that runs a model."""
import pytest
import torch

from worldtune.cli import main


@pytest.mark.parametrize("argv", [
    ["train", "--train-ann", "missing.json", "--train-images", "nowhere", "--weights", "none", "--variant", "n"],
    ["eval", "--detections", "missing.json", "--ann", "missing.json"],
    ["predict", "--weights", "missing.pt", "--classes", "cat", "nowhere.jpg"],
])
def test_threads_option(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the inputs are missing: each command stops with an error after setting threads
    before = torch.get_num_threads()
    try:
        target = 2 if before == 1 else 1
        assert main(argv + ["--threads", str(target)]) == 2
        assert torch.get_num_threads() == target
    finally:
        torch.set_num_threads(before)
