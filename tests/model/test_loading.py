"""Building ready-to-use models from checkpoints: variant recognition, official layout, mismatches."""
import numpy as np
import pytest
import torch

from worldtune.model import VARIANTS, build_model
from worldtune.model.loading import infer_variant


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_is_recognised_from_weights(variant):
    with torch.device("meta"):
        state = build_model(variant).state_dict()
    assert infer_variant(state) == variant


def test_unrecognisable_weights_are_refused():
    with pytest.raises(ValueError, match="variant"):
        infer_variant({"foo": torch.zeros(1)})


@pytest.fixture(scope="module")
def tiny_text_folder(tmp_path_factory):
    from tests.helpers.clip_factory import make_clip_text_folder

    # hidden 64 -> 1 head by CLIP's convention, so the tower shape can also be read off the weights
    return make_clip_text_folder(tmp_path_factory.mktemp("clip"), hidden=64, layers=1, heads=1, projection=512)


@pytest.fixture(scope="module")
def official_layout_checkpoint(tmp_path_factory, tiny_text_folder):
    from worldtune.model.text_encoder import CLIPTextEncoder

    torch.manual_seed(0)
    model = build_model("n", CLIPTextEncoder.from_pretrained(str(tiny_text_folder)))
    model.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        model(torch.rand(2, 3, 64, 64), torch.nn.functional.normalize(torch.randn(2, 3, 512), dim=-1))
    model.eval()
    state = model.state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "official.pth"
    # mmengine layout: EMA weights in state_dict, raw weights under module. in ema_state_dict
    torch.save({"meta": {"epoch": 80, "dataset_meta": {"classes": ("a", "b")}}, "state_dict": state,
                "ema_state_dict": {"module." + k: v for k, v in state.items()}, "optimizer": {"state": {}}}, path)
    return path, model


@pytest.mark.parametrize("tokenizer_only", [False, True])
def test_official_layout_checkpoint_loads_and_predicts_the_same(official_layout_checkpoint, tiny_text_folder,
                                                               tokenizer_only):
    from worldtune.model.loading import load_model

    path, reference = official_layout_checkpoint
    text_model = str(tiny_text_folder)
    if tokenizer_only:  # a folder with the tokenizer only: the tower is built from the checkpoint's shapes
        import shutil
        text_model = str(path.parent / "tok")
        shutil.copytree(tiny_text_folder, text_model, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("config.json", "*.safetensors", "*.bin"))
    model = load_model(path, text_model=text_model)
    assert model.variant == "n" and not model.training
    texts = [["cat", "coffee cup", ""]]
    images = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        expected = reference(images, reference.encode_text(texts))
        actual = model(images, model.encode_text(texts))
    for a, b in zip(actual.cls_logits + actual.box_dist_logits, expected.cls_logits + expected.box_dist_logits):
        torch.testing.assert_close(a, b)


def test_mismatched_checkpoint_names_the_differences(official_layout_checkpoint, tiny_text_folder):
    from worldtune.engine.checkpoint import CheckpointMismatchError
    from worldtune.model.loading import load_model

    path, _ = official_layout_checkpoint
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(path, variant="s", text_model=str(tiny_text_folder))
    message = str(err.value)
    assert str(path) in message and "shape" in message


@pytest.mark.parametrize("name,says", [("v1_l_dual_vlpan", "v1 weights"), ("v1_l_efficient_neck", "without BatchNorm"),
                                       ("s_rep_vlpan", "reparameterised"), ("s_bn", "reparameterised"),
                                       ("l", None), ("l_efficient_neck", None)])
def test_official_layouts_worldtune_does_not_build_are_named(spec_fixtures, name, says):
    import json

    from worldtune.model.loading import other_layout_note

    keys = json.loads((spec_fixtures / f"official_keys_{name}.json").read_text())["keys"]
    note = other_layout_note({k["name"]: None for k in keys})
    assert note is None if says is None else says in note


def test_a_mismatch_error_says_when_the_file_is_v1(official_layout_checkpoint, tiny_text_folder, tmp_path):
    from worldtune.engine.checkpoint import CheckpointMismatchError
    from worldtune.engine.setup import load_start_weights
    from worldtune.model.loading import load_model

    path, model = official_layout_checkpoint
    state = {**model.state_dict(), "neck.text_enhancer.query.0.weight": torch.zeros(4, 4)}
    v1 = tmp_path / "v1.pth"
    torch.save({"state_dict": state}, v1)
    with pytest.raises(CheckpointMismatchError, match=r"(?s)neck\.text_enhancer\.query.*YOLO-World v1 weights"):
        load_model(v1, text_model=str(tiny_text_folder))
    # as start weights (non-strict, as the official load_from) the report says it too
    assert "YOLO-World v1 weights" in load_start_weights(build_model("n"), v1, state)
    assert "YOLO-World v1" not in load_start_weights(build_model("n"), path, model.state_dict())


def test_predict_returns_boxes_in_original_image_coordinates(official_layout_checkpoint, tiny_text_folder):
    from skimage import data

    from worldtune.model.loading import load_model
    from worldtune.model.postprocess import PostprocessConfig

    model = load_model(official_layout_checkpoint[0], text_model=str(tiny_text_folder))
    model.set_vocabulary(["cat", "person"])
    image = data.chelsea()  # 300 x 451 RGB
    # random weights score far below the official 0.001 threshold, so keep every candidate
    (det,) = model.predict([image], imgsz=128, cfg=PostprocessConfig(score_thr=0.0, max_per_img=50))
    assert det["boxes_xyxy"].shape[0] == det["scores"].shape[0] == len(det["names"]) > 0
    assert set(det["names"]) <= {"cat", "person"}
    assert (det["boxes_xyxy"][:, [0, 2]] <= 451).all() and (det["boxes_xyxy"][:, [1, 3]] <= 300).all()
    assert (det["boxes_xyxy"] >= 0).all() and (det["scores"][:-1] >= det["scores"][1:]).all()
    # a box touching the right edge at 128 px maps to the right edge of the 451 px original
    assert det["boxes_xyxy"][:, 2].max() > 128
    # Exactly, by hand: long side 451 -> 128 gives 128 x int(300 * 128 / 451) = 85, letterboxed with
    # 21 rows above and 22 below; the network boxes map back with (top 21, left 0) and the per-axis
    # scales 128/451 and 85/300, then clamp to the 300 x 451 original.
    import cv2

    from worldtune.model.postprocess import decode_outputs, detect_one_image

    boxed = cv2.copyMakeBorder(cv2.resize(image, (128, 85), interpolation=cv2.INTER_AREA), 21, 22, 0, 0,
                               cv2.BORDER_CONSTANT, value=(114, 114, 114))
    with torch.no_grad():
        outputs = model(torch.from_numpy(boxed).permute(2, 0, 1)[None].float() / 255, None)
    boxes, scores = decode_outputs(outputs, model.strides)
    expected = detect_one_image(boxes[0], scores[0], PostprocessConfig(score_thr=0.0, max_per_img=50),
                                (128 / 451, 85 / 300), (21, 22, 0, 0), (300, 451))
    for key in ("boxes_xyxy", "scores", "labels"):
        torch.testing.assert_close(det[key], expected[key])


@pytest.mark.parametrize("name,variant", [("s", "s"), ("m", "m"), ("l", "l"), ("x", "x"), ("xl", "xl"),
                                          ("l_efficient_neck", "l_efficient_neck"), ("l_sgd_40e", "l")])
def test_variant_is_recognised_from_official_key_lists(spec_fixtures, name, variant):
    import json

    keys = json.loads((spec_fixtures / f"official_keys_{name}.json").read_text())["keys"]
    state = {k["name"]: torch.empty(k["shape"], device="meta") for k in keys}
    assert infer_variant(state) == variant


def test_text_model_random_and_a_recorded_head_count(official_layout_checkpoint, tiny_text_folder, tmp_path):
    """`--text-model random` works wherever a tower is built; a head count recorded in a worldtune
    checkpoint beats the 64-wide convention (a 2-head, 64-wide tower is read back exactly)."""
    from tests.helpers.clip_factory import make_clip_text_folder
    from worldtune.model.loading import load_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    assert load_model(None, variant="n", text_model="random").text_model.embed_dim == 512
    two_heads = CLIPTextEncoder.from_pretrained(str(make_clip_text_folder(tmp_path / "clip2", hidden=64, layers=1,
                                                                          heads=2, projection=512)))
    model = build_model("n", two_heads).eval()
    path = tmp_path / "run.pt"
    torch.save({"ema": model.state_dict(), "text_tower": {"num_heads": 2}}, path)
    loaded = load_model(path, text_model="random")
    assert loaded.text_model.model.config.num_attention_heads == 2
    torch.testing.assert_close(loaded.text_model.encode(["a red square"]), two_heads.encode(["a red square"]))


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory):
    """A worldtune-layout checkpoint of an `n` model (no text tower, 12 MiB) with 64 MiB of optimizer state."""
    torch.manual_seed(0)
    model = build_model("n", None, num_classes=5)
    path = tmp_path_factory.mktemp("train_ckpt") / "last.pt"
    torch.save({"format": "worldtune-train-1", "ema": model.state_dict(), "model": model.state_dict(),
                "optimizer": {"state": {0: {"exp_avg": torch.ones(2**24)}}}}, path)
    return path, model


def test_loading_a_training_checkpoint_leaves_its_optimizer_state_on_disk(training_checkpoint):
    """eval/predict/export take the EMA weights: the optimizer state (for L, 2 x 190 MB) and the raw
    weights of a training checkpoint are mapped, never read into memory."""
    from tests.helpers.memory import peak_since_reset, reset_peak
    from worldtune.model.loading import load_model

    path, saved = training_checkpoint
    start = reset_peak()
    model = load_model(path, text_model=None)
    grown = peak_since_reset() - start
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())
    assert grown < 48 * 2**20, f"loading grew the process by {grown / 2**20:.0f} MiB"  # the model is ~12 MiB


def test_start_weights_from_a_training_checkpoint_leave_its_optimizer_state_on_disk(training_checkpoint):
    from tests.helpers.memory import peak_since_reset, reset_peak
    from worldtune.engine.setup import read_start_weights

    path, saved = training_checkpoint
    start = reset_peak()
    _, state, _ = read_start_weights(str(path), "n")
    grown = peak_since_reset() - start
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in state.items())
    assert grown < 48 * 2**20, f"reading the start weights grew the process by {grown / 2**20:.0f} MiB"


def _meta_tower_weights(**sizes) -> dict:
    """A checkpoint's text tower weights of these sizes, as shapes only (meta tensors: no memory)."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from worldtune.model.loading import TEXT_PREFIX

    with torch.device("meta"):
        tower = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **sizes))
    return {TEXT_PREFIX + "model." + k: v for k, v in tower.state_dict().items()}


def test_a_tower_the_checkpoint_fills_is_not_initialised():
    """eval, predict, a resume or start weights fill the tower from the checkpoint right after it is
    built: a ViT-B/32 tower (242 MiB) is then allocated, not initialised (nothing of it written)."""
    from tests.helpers.memory import peak_since_reset, reset_peak
    from worldtune.model.loading import build_text_model

    weights = _meta_tower_weights(hidden_size=512, intermediate_size=2048, projection_dim=512,
                                  num_hidden_layers=12, num_attention_heads=8)
    start = reset_peak()
    tower = build_text_model("openai/clip-vit-base-patch32", weights=weights)
    grown = peak_since_reset() - start
    assert tower.embed_dim == 512
    assert grown < 64 * 2**20, f"building the tower grew the process by {grown / 2**20:.0f} MiB"
    ids = tower.model.text_model.embeddings.position_ids  # the one tensor no checkpoint fills
    assert torch.equal(ids, torch.arange(77).expand(1, -1))


def test_a_tower_narrower_than_one_clip_head_is_built_with_one_head():
    """Without a recorded head count the heads are CLIP's 64 wide; a narrower tower still has one."""
    from worldtune.model.loading import build_text_model

    weights = _meta_tower_weights(hidden_size=32, intermediate_size=64, projection_dim=32,
                                  num_hidden_layers=1, num_attention_heads=1)
    tower = build_text_model("random", weights=weights)
    assert (tower.model.config.num_attention_heads, tower.embed_dim) == (1, 32)


def test_a_tower_the_checkpoint_fills_in_part_is_initialised_and_refused(tmp_path):
    """Where the checkpoint lacks a tower weight, the tower is initialised as before (no weight is
    left as whatever the memory held), and loading it strictly names the missing weight."""
    from worldtune.engine.checkpoint import CheckpointMismatchError
    from worldtune.model.loading import TEXT_PREFIX, build_text_model, load_model

    weights = _meta_tower_weights(hidden_size=64, intermediate_size=256, projection_dim=512,
                                  num_hidden_layers=1, num_attention_heads=1)
    missing = TEXT_PREFIX + "model.text_model.final_layer_norm.weight"
    del weights[missing]
    tower = build_text_model("random", weights=weights)
    assert torch.equal(tower.model.text_model.final_layer_norm.weight, torch.ones(64))  # LayerNorm's init
    state = {k: v for k, v in build_model("n", tower).state_dict().items() if k != missing}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointMismatchError, match="final_layer_norm.weight"):
        load_model(tmp_path / "partial.pt", text_model="random")


def test_a_local_folder_gives_config_and_tokenizer_when_the_checkpoint_carries_the_tower(tiny_text_folder, tmp_path):
    """A local CLIP folder with config.json: its config (and tokenizer) build the tower, but its
    weights, which the checkpoint's replace, are not read (nor needed)."""
    import json
    import shutil

    from worldtune.model.loading import TEXT_PREFIX, build_text_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    folder = tmp_path / "clip"
    shutil.copytree(tiny_text_folder, folder)
    trained = CLIPTextEncoder.from_pretrained(str(folder))
    (folder / "model.safetensors").unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "eos_token_id": 49407}))  # read from the folder
    tower = build_text_model(str(folder), weights={TEXT_PREFIX + k: v for k, v in trained.state_dict().items()})
    assert tower.model.config.eos_token_id == 49407 and tower.name == str(folder)
    tower.load_state_dict(trained.state_dict())
    texts = ["person", "a red square", ""]
    assert torch.equal(tower.encode(texts, per_string=True), trained.encode(texts, per_string=True))


def test_a_tower_from_a_half_precision_folder_config_is_float32(tiny_text_folder, tmp_path):
    """A CLIP folder saved in half precision says so in config.json ("dtype": "float16"), which a tower
    built from that config takes on: the checkpoint's float32 weights would be rounded to float16 and
    encode otherwise than in training, where `from_pretrained` gives a float32 tower."""
    import json
    import shutil

    from worldtune.model.loading import TEXT_PREFIX, build_text_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    folder = tmp_path / "clip"
    shutil.copytree(tiny_text_folder, folder)
    trained = CLIPTextEncoder.from_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "dtype": "float16", "torch_dtype": "float16"}))
    tower = build_text_model(str(folder), weights={TEXT_PREFIX + k: v for k, v in trained.state_dict().items()})
    assert {p.dtype for p in tower.parameters()} == {torch.float32}
    tower.load_state_dict(trained.state_dict())
    texts = ["person", "a red square", ""]
    assert torch.equal(tower.encode(texts, per_string=True), trained.encode(texts, per_string=True))


@pytest.fixture(scope="module")
def run_files(tmp_path_factory, tiny_text_folder):
    """A worldtune run checkpoint (config, class texts, text tower) and its slim file."""
    from worldtune.cli.slim import slim_checkpoint
    from worldtune.model.text_encoder import CLIPTextEncoder

    torch.manual_seed(0)
    model = build_model("n", CLIPTextEncoder.from_pretrained(str(tiny_text_folder)), num_classes=2).eval()
    folder = tmp_path_factory.mktemp("run")
    torch.save({"format": "worldtune-train-1", "ema": model.state_dict(), "vocabulary": ["cat", "dog"],
                "config": {"model": {"variant": "n", "text_model": str(tiny_text_folder)}, "data": {"imgsz": 64}},
                "text_tower": {"num_heads": 1}}, folder / "best.pt")
    slim_checkpoint(folder / "best.pt", folder / "model.safetensors")
    return folder / "best.pt", folder / "model.safetensors"


@pytest.mark.parametrize("which", [0, 1], ids=["checkpoint", "slim"])
def test_a_run_file_loaded_without_text_tower_keeps_its_vocabulary(run_files, tiny_text_folder, which):
    """README: a model loaded from a run comes with the run's class texts as its vocabulary; with
    text_model=None too (they were dropped), where predicting says how to give their embeddings."""
    from worldtune.model.detector import YOLOWorld
    from worldtune.model.postprocess import PostprocessConfig

    path = run_files[which]
    model = YOLOWorld.from_pretrained(path, text_model=None)
    assert model.text_model is None and model.vocabulary == ["cat", "dog"]
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError, match=r"vocabulary \['cat', 'dog'\] has no text embedding.*"
                                           r"model.set_vocabulary\(model.vocabulary, text_feats\)"):
        model.predict(image)
    with_tower = YOLOWorld.from_pretrained(path, text_model=str(tiny_text_folder))
    assert with_tower.vocabulary == ["cat", "dog"]
    model.set_vocabulary(model.vocabulary, with_tower.text_model.encode_vocabulary(["cat", "dog"]))
    cfg = PostprocessConfig(score_thr=0.0, max_per_img=20)
    (expected,), (actual,) = with_tower.predict(image, cfg=cfg), model.predict(image, cfg=cfg)
    assert actual["names"] == expected["names"] and len(actual["names"]) == 20
    torch.testing.assert_close(actual["scores"], expected["scores"])


@pytest.mark.parametrize("device,says", [("gpu", "device='gpu' is not a device: use 'cpu', 'cuda'"),
                                         ("cuda", "device='cuda': CUDA is not available here"),
                                         (torch.device("cuda", 0), "CUDA is not available here")])
def test_a_device_that_is_not_there_is_refused_in_one_line(monkeypatch, device, says):
    # "cuda" without a GPU failed deep in .to() ("Found no NVIDIA driver"), "gpu" inside torch's parser
    from worldtune.model.loading import load_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=says):
        load_model(None, variant="n", text_model=None, device=device)


def test_a_cuda_index_past_the_last_gpu_or_a_device_that_is_no_name_is_refused_in_one_line(monkeypatch):
    from worldtune.model.loading import checked_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert checked_device("cuda:1") == torch.device("cuda", 1) and checked_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"^device='cuda:2': this machine has 2 CUDA device\(s\)$"):
        checked_device("cuda:2")
    with pytest.raises(ValueError, match=r"^device=None is not a device: use 'cpu', 'cuda' or 'cuda:N'$"):
        checked_device(None)  # torch's TypeError lists its overloads


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu")])
def test_cpu_device_spellings_load(device):
    from worldtune.model.loading import load_model

    model = load_model(None, variant="n", text_model=None, device=device)
    assert next(model.parameters()).device.type == "cpu" and not model.training


def test_text_model_random_for_a_file_without_its_tower_warns(run_files, tmp_path):
    # the tower was silently random: meaningless text embeddings, so meaningless detections
    import warnings

    from worldtune.cli.slim import slim_checkpoint
    from worldtune.model.loading import load_model

    slim_checkpoint(run_files[0], tmp_path / "image_side.safetensors", text_tower=False)
    with pytest.warns(UserWarning, match="image_side.safetensors carries no text tower, so text_model='random'"):
        load_model(tmp_path / "image_side.safetensors", text_model="random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file with its tower fills the random-shaped one: no warning
        load_model(run_files[1], text_model="random")


@pytest.mark.parametrize("text_model", [5, ""])
def test_a_text_model_that_is_no_name_is_refused_in_one_line(run_files, text_model):
    # 5 failed in pathlib; "" built no tower for random weights but a tower for a file's
    from worldtune.model.loading import load_model

    with pytest.raises(TypeError, match="text_model must be a CLIP hub id or local folder, 'random', or None"):
        load_model(run_files[1], text_model=text_model)


def test_a_text_model_folder_may_be_a_path(run_files, tiny_text_folder):
    from pathlib import Path

    from worldtune.model.loading import load_model

    model = load_model(run_files[1], text_model=Path(tiny_text_folder))
    assert model.text_model.name == str(tiny_text_folder)
