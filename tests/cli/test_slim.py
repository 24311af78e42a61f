"""`worldtune slim` refuses weights that no model of their variant could load."""
import pytest
import torch

from worldtune.cli import main
from worldtune.model import build_model


@pytest.fixture(scope="module")
def n_weights():
    return build_model("n", None).state_dict()


def _run_file(path, state, variant="n"):
    torch.save({"format": "worldtune-train-1", "ema": state, "config": {"model": {"variant": variant}}}, path)
    return path


def test_a_hand_edited_tensor_is_refused_in_one_line(n_weights, tmp_path, capsys):
    key = "neck.top_down_layers.0.main_conv.conv.weight"
    good = _run_file(tmp_path / "good.pt", n_weights)
    assert main(["slim", str(good), "--out", str(tmp_path / "good.safetensors")]) == 0
    capsys.readouterr()
    bad = _run_file(tmp_path / "bad.pt", {**n_weights, key: torch.zeros(3, 3)})
    out = tmp_path / "bad.safetensors"
    assert main(["slim", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err
    assert f"{key}: file (3, 3) vs model {tuple(n_weights[key].shape)}" in err
    assert not out.exists()


def test_weights_of_another_variant_than_the_config_names_are_refused(n_weights, tmp_path, capsys):
    other = _run_file(tmp_path / "s_run.pt", n_weights, variant="s")
    assert main(["slim", str(other), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(other) in err and "do not fit a 's' model" in err
    assert "backbone.image_model.stem.conv.weight: file (16, 3, 3, 3) vs model (32, 3, 3, 3)" in err
    not_a_detector = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, not_a_detector)
    assert main(["slim", str(not_a_detector), "--out", str(tmp_path / "y.safetensors")]) == 2
    assert f"{not_a_detector}: not the weights of a YOLO-World model" in capsys.readouterr().err
