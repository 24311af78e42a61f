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


@pytest.fixture(scope="module")
def tower_run(tmp_path_factory):
    """A run checkpoint with a tiny random CLIP tower (its local folder named in the config) and 3 classes."""
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.model.text_encoder import CLIPTextEncoder

    folder = tmp_path_factory.mktemp("tower_run")
    clip = make_clip_text_folder(folder / "clip", hidden=64, layers=1, heads=1, projection=512)
    torch.manual_seed(0)
    model = build_model("n", CLIPTextEncoder.from_pretrained(str(clip)), num_classes=3).eval()
    torch.save({"format": "worldtune-train-1", "ema": model.state_dict(), "vocabulary": ["cat", "red car", "dog"],
                "config": {"model": {"variant": "n", "text_model": str(clip)}, "data": {"imgsz": 64}},
                "text_tower": {"num_heads": 1}}, folder / "best.pt")
    return folder / "best.pt", clip


@pytest.fixture(scope="module")
def light(tower_run):
    """`tower_run` slimmed without its tower: (file, slim_checkpoint's result, the checkpoint's model
    with its tower)."""
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.model.loading import load_model

    checkpoint, clip = tower_run
    out = checkpoint.with_name("light.safetensors")
    return out, slim_checkpoint(checkpoint, out, text_tower=False), load_model(checkpoint, text_model=str(clip))


def test_a_file_without_its_tower_stores_the_embeddings_its_tower_gives(light, tmp_path):
    from safetensors import safe_open

    from worldtune.cli.slim import slim_checkpoint
    from worldtune.engine.checkpoint import VOCAB_FEATS_KEY, load_checkpoint_file

    out, result, full = light
    assert result["vocabulary_feats"] == 3 and result["note"] == ""
    with safe_open(str(out), framework="pt") as f:
        stored = f.get_tensor(VOCAB_FEATS_KEY)
    expected = full.vocabulary_feats()  # what predicting with the checkpoint encodes
    assert stored.shape == (3, 512) and torch.equal(stored, expected)
    torch.testing.assert_close(stored.norm(dim=-1), torch.ones(3))
    # reading the file: a run entry, not a weight (a strict load reports no unexpected key)
    content = load_checkpoint_file(out)
    assert VOCAB_FEATS_KEY not in content["ema"] and torch.equal(content["vocabulary_feats"], stored)
    assert result["tensors"] == len(content["ema"])
    # slimmed again, the file keeps them (there is no tower left to encode with)
    again = tmp_path / "again.safetensors"
    assert slim_checkpoint(out, again)["vocabulary_feats"] == 3
    assert torch.equal(load_checkpoint_file(again)["vocabulary_feats"], stored)


def test_a_file_with_its_tower_stores_no_embeddings(tower_run, tmp_path):
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.engine.checkpoint import load_checkpoint_file, stored_vocabulary

    out = tmp_path / "full.safetensors"
    assert slim_checkpoint(tower_run[0], out)["vocabulary_feats"] == 0  # the tower encodes them afresh
    assert "vocabulary_feats" not in load_checkpoint_file(out) and stored_vocabulary(out) is None


def test_a_file_without_its_tower_predicts_its_vocabulary_without_clip(tower_run, light):
    import numpy as np

    from worldtune.engine.checkpoint import stored_vocabulary
    from worldtune.model.detector import YOLOWorld
    from worldtune.model.postprocess import PostprocessConfig

    out, _, full = light
    assert stored_vocabulary(out) == ["cat", "red car", "dog"] and stored_vocabulary(tower_run[0]) is None
    model = YOLOWorld.from_pretrained(out, text_model=None)
    assert model.text_model is None and model.vocabulary == ["cat", "red car", "dog"]
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    cfg = PostprocessConfig(score_thr=0.0, max_per_img=20)
    (expected,), (actual,) = full.predict(image, imgsz=64, cfg=cfg), model.predict(image, imgsz=64, cfg=cfg)
    assert actual["names"] == expected["names"] and len(actual["names"]) == 20
    torch.testing.assert_close(actual["scores"], expected["scores"])
    with pytest.raises(RuntimeError, match="no text tower"):  # other texts need one
        model.set_vocabulary(["bird"])


def test_a_file_without_its_tower_loaded_with_one_encodes_its_texts_afresh(tower_run, light):
    from worldtune.model.loading import load_model

    out, _, full = light
    with_tower = load_model(out, text_model=str(tower_run[1]))
    assert with_tower.vocab_feats.numel() == 0  # names only, as from the checkpoint
    assert torch.equal(with_tower.vocabulary_feats(), full.vocabulary_feats())


def test_a_run_whose_tokenizer_is_gone_is_slimmed_without_embeddings(tower_run, tmp_path, capsys):
    checkpoint, _ = tower_run
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"]["model"]["text_model"] = str(tmp_path / "deleted_clip")
    torch.save(ckpt, tmp_path / "moved.pt")
    out = tmp_path / "light.safetensors"
    assert main(["slim", str(tmp_path / "moved.pt"), "--out", str(out), "--no-text-tower"]) == 0
    captured = capsys.readouterr()
    assert "text tower left out" in captured.out and "embeddings" not in captured.out
    assert "its class texts' embeddings are not stored" in captured.err and "deleted_clip" in captured.err
    assert out.exists()


def test_stored_embeddings_of_another_count_than_the_vocabulary_are_refused(light, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from worldtune.engine.checkpoint import VOCAB_FEATS_KEY, CheckpointLoadError, load_checkpoint_file

    out = light[0]
    with safe_open(str(out), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(out))
    tensors[VOCAB_FEATS_KEY] = tensors[VOCAB_FEATS_KEY][:2].clone()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointLoadError, match=r"bad.safetensors: its 'vocabulary_feats' entry must be float "
                                                  r"embeddings of shape \(3, D\).*got \(2, 512\)"):
        load_checkpoint_file(tmp_path / "bad.safetensors")
