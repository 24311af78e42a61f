"""How a training run starts: from whose weights, into which folder, and what it says first."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers.tiny_run import tiny_config
from worldtune.engine import train as T
from worldtune.engine.checkpoint import CheckpointMismatchError
from worldtune.engine.run_state import read_resume
from worldtune.engine.schedule import batch_note, short_run_notes, vocabulary_note

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch run of the `n` model on the tiny set (its last.pt carries the text tower)."""
    cfg = tiny_config(tmp_path_factory.mktemp("first"), epochs=1)
    assert T.fit(cfg)["status"] == "finished"
    return cfg


def test_a_worldtune_checkpoint_starts_a_run_offline_with_the_hub_text_model_id(finished_run, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # no network, no cached CLIP: the tower is built in the checkpoint's shape, the tokenizer ships
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.model.weights = finished_run.out + "/last.pt"
    cfg.model.text_model = "openai/clip-vit-base-patch32"
    assert T.fit(cfg)["status"] == "finished"
    # the tower so built computes the trained tower's embeddings (its head count comes from the file)
    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model.loading import build_text_model
    from worldtune.model.loading import TEXT_PREFIX
    from worldtune.model.text_encoder import CLIPTextEncoder

    saved = load_checkpoint_file(finished_run.out + "/last.pt")
    assert saved["text_tower"] == {"num_heads": 2}
    text = {k[len(TEXT_PREFIX):]: v for k, v in saved["ema"].items() if k.startswith(TEXT_PREFIX)}
    rebuilt = build_text_model(cfg.model.text_model, weights=saved["ema"], num_heads=2)
    rebuilt.load_state_dict(text)
    original = CLIPTextEncoder.from_pretrained(finished_run.model.text_model)
    original.load_state_dict(text)
    torch.testing.assert_close(rebuilt.encode(["red square"]), original.encode(["red square"]))


def test_a_runs_checkpoints_record_the_category_id_of_each_class_text(finished_run):
    """The vocabulary is in sorted-id order; the ids beside it let `predict` give the dataset's own ids."""
    import json

    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model.loading import load_model

    categories = json.loads(Path(finished_run.data.train_ann).read_text())["categories"]
    by_id = sorted(categories, key=lambda c: c["id"])
    texts = [entry[0] for entry in json.loads(Path(finished_run.data.class_texts).read_text())]
    for name in ("last.pt", "best.pt"):
        checkpoint = load_checkpoint_file(Path(finished_run.out) / name)
        assert checkpoint["category_ids"] == [c["id"] for c in by_id] and checkpoint["vocabulary"] == texts
    model = load_model(Path(finished_run.out) / "last.pt", text_model="random")
    assert model.trained_category_ids == [c["id"] for c in by_id]


def test_start_weights_of_another_size_stop_before_the_run_folder_exists(finished_run, tmp_path, capsys):
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.model.weights, cfg.model.variant = finished_run.out + "/last.pt", "s"
    with pytest.raises(CheckpointMismatchError, match=r"last.pt are a 'n' model, the run builds 's': pass --variant n"):
        T.fit(cfg)
    assert not (tmp_path / "run").exists()


def test_a_folder_holding_a_run_is_not_trained_into_again(finished_run):
    with pytest.raises(ValueError, match="already holds a run: continue it with --resume"):
        T.fit(finished_run)


def test_resuming_a_finished_run_says_so(finished_run, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in Path(finished_run.out).rglob("*")}
    result = T.fit(finished_run, resume=finished_run.out)
    assert result["status"] == "finished" and result["epochs"] == 1
    out = capsys.readouterr().out
    assert "already finished its 1 epochs; nothing is left to train" in out and "training n" not in out
    assert {p.name: p.stat().st_mtime_ns for p in Path(finished_run.out).rglob("*")} == before  # nothing rewritten


def test_resuming_a_stopped_last_validation_says_so(finished_run, tmp_path):
    # Ctrl-C during the validation after the last epoch: last.pt has epoch = epochs and val_pending;
    # the resume runs that validation only, so "epoch 2" of a 1-epoch run would be wrong
    from worldtune.engine.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(finished_run.out + "/last.pt")
    ckpt["val_pending"] = True
    torch.save(ckpt, tmp_path / "last.pt")
    said = []
    _, _, finished = read_resume(tmp_path / "last.pt", finished_run, 1, say=said.append)
    assert not finished
    assert said == [f"resuming {tmp_path / 'last.pt'}: the validation after epoch 1 (the run's last)"]


@pytest.mark.parametrize("step", [0, 1])
def test_a_resume_with_another_process_count_says_what_changes(finished_run, tmp_path, step):
    from worldtune.engine.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(finished_run.out + "/last.pt")
    ckpt.update(epoch=0, step_in_epoch=step, world_size=2)
    torch.save(ckpt, tmp_path / "last.pt")
    said = []
    T.read_resume(tmp_path / "last.pt", finished_run, 1, say=said.append)
    assert said[-1] == ("warning: the run was trained with 2 process(es), resumed with 1: the total batch, so the "
                        "weight-decay rule and the iterations per epoch, change"
                        + (", and the rest of this epoch skips a different set of images" if step else ""))


def test_a_resume_gives_the_tower_the_checkpoints_own_tensors(finished_run, tmp_path, monkeypatch):
    """A resume holds the whole checkpoint while it builds the model: the frozen tower takes the
    checkpoint's tensors instead of a second copy of them (242 MiB for ViT-B/32)."""
    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model.loading import TEXT_PREFIX

    ckpt = load_checkpoint_file(finished_run.out + "/last.pt")
    ckpt["epoch"] = 0  # one epoch left to train
    torch.save(ckpt, tmp_path / "last.pt")
    seen = {}

    class Restored(Exception):
        pass

    def restore(ckpt, model, *args):
        seen["file"] = {k: v.data_ptr() for k, v in ckpt["ema"].items() if k.startswith(TEXT_PREFIX)}
        seen["tower"] = {TEXT_PREFIX + k: v.data_ptr() for k, v in model.text_model.state_dict().items()}
        raise Restored

    monkeypatch.setattr(T, "restore_checkpoint", restore)
    with pytest.raises(Restored):
        T.fit(finished_run, resume=tmp_path / "last.pt")
    assert seen["file"] and seen["tower"] == seen["file"]


def test_the_saved_config_names_local_files_by_absolute_paths(tmp_path, monkeypatch):
    """So a run resumed from another working directory finds its data, text model and weights."""
    import os

    import yaml

    from worldtune.config import absolute_paths
    from worldtune.engine.checkpoint import load_checkpoint_file
    from worldtune.model import build_model

    cfg = tiny_config(tmp_path / "first", epochs=1)
    monkeypatch.chdir(tmp_path)
    for section, key in (("data", "train_ann"), ("data", "train_images"), ("data", "val_ann"),
                         ("data", "val_images"), ("data", "class_texts")):
        setattr(getattr(cfg, section), key, os.path.relpath(getattr(getattr(cfg, section), key)))
    cfg.model.weights = os.path.relpath(Path(cfg.out).parent / "start.pt")
    torch.save({"ema": build_model("n").state_dict()}, cfg.model.weights)  # image side only
    cfg.out = "runs/relative"
    assert not Path(cfg.data.train_ann).is_absolute()
    assert T.fit(cfg)["status"] == "finished"
    for saved in (yaml.safe_load(Path("runs/relative/config.yaml").read_text()),
                  load_checkpoint_file("runs/relative/last.pt")["config"]):
        paths = [saved["data"][k] for k in ("train_ann", "train_images", "val_ann", "val_images", "class_texts")]
        paths += [saved["model"]["weights"], saved["model"]["text_model"]]
        assert all(Path(p).is_absolute() and Path(p).exists() for p in paths), paths
    cfg.model.text_model = "openai/clip-vit-base-patch32"  # a hub id is no path here: left as it is
    assert absolute_paths(cfg).model.text_model == "openai/clip-vit-base-patch32"


def test_short_runs_are_told_what_the_recipe_schedule_does():
    recipe_like = SimpleNamespace(epochs=5, warmup_epochs=3, min_warmup_iters=1000, lr=2e-4, close_mosaic_epochs=10)
    warm, mosaic = short_run_notes(recipe_like, iters_per_epoch=20, warmup=1000)
    assert "warm-up lasts 1000 iterations" in warm and "whole run 100" in warm
    assert warm.endswith("lower train.min_warmup_iters")  # 3 epochs = 60 iterations: the minimum sets it
    by_epochs = SimpleNamespace(**{**vars(recipe_like), "min_warmup_iters": 20, "warmup_epochs": 5})
    (warm, _), = [short_run_notes(by_epochs, iters_per_epoch=20, warmup=100)]
    assert "5 epochs = 100" in warm and warm.endswith("lower train.warmup_epochs")
    assert "close_mosaic_epochs=10 covers all 5 epochs" in mosaic
    long_run = SimpleNamespace(**{**vars(recipe_like), "epochs": 80})
    assert short_run_notes(long_run, iters_per_epoch=20, warmup=1000) == []
    # close_mosaic_epochs equal to the run's epochs already leaves no mosaic epoch; one fewer leaves one
    (note,) = short_run_notes(SimpleNamespace(**{**vars(long_run), "close_mosaic_epochs": 80}), 20, 1000)
    assert "close_mosaic_epochs=80 covers all 80 epochs" in note
    assert short_run_notes(SimpleNamespace(**{**vars(long_run), "close_mosaic_epochs": 79}), 20, 1000) == []


def test_a_dataset_with_fewer_classes_than_texts_per_image_is_told_the_padding():
    note = vocabulary_note(num_classes=5, num_texts=80)
    assert "padded with 75 empty ones" in note and note.endswith("--set data.num_texts=5")
    assert vocabulary_note(num_classes=80, num_texts=80) == ""  # COCO with its recipe: nothing to say
    assert vocabulary_note(num_classes=1203, num_texts=80) == ""  # a large vocabulary is subsampled, not padded


def test_a_batch_larger_than_the_training_set_is_told_it_is_one_step():
    """The loader keeps the last, short batch (drop_last=False, as the official one): with fewer images
    than train.batch_size an epoch is a single step of those images, and the weight-decay rule still
    counts the configured batch. Said once at the start; a full batch says nothing."""
    note = batch_note(batch_size=16, images_per_process=6, world_size=1)
    assert note.startswith("train.batch_size=16 is more than the 6 training images: each epoch is one step of 6 images")
    assert "weight-decay rule still counts 16" in note and "\n" not in note
    assert "per process" in batch_note(batch_size=16, images_per_process=3, world_size=2)
    assert batch_note(batch_size=6, images_per_process=6, world_size=1) == ""


def test_the_efficient_neck_recipe_may_start_from_plain_l_weights(tmp_path):
    """The official L efficient-neck fine-tune starts from the plain L pre-trained file: same size,
    its attention weights (guide_fc) are simply not used."""
    import torch

    from worldtune.engine.setup import load_start_weights, read_start_weights
    from worldtune.model import build_model

    plain = tmp_path / "l.pth"
    torch.save({"state_dict": build_model("l", None).state_dict()}, plain)
    path, state, _ = read_start_weights(str(plain), "l_efficient_neck")
    report = load_start_weights(build_model("l_efficient_neck", None), path, state)
    assert "unexpected keys (12)" in report and "guide_fc" in report
    assert "as the official load_from does, what does not fit is skipped" in report and "does not match" not in report
    with pytest.raises(CheckpointMismatchError, match="are a 'l' model, the run builds 'm'"):
        read_start_weights(str(plain), "m")


def test_only_the_class_branch_may_differ_in_shape(tmp_path):
    """For `n` the class-embedding width follows the vocabulary size: weights saved with 80 texts
    start a 5-text run (that branch stays random, reported); any other shape mismatch stops."""
    import torch

    from worldtune.engine.setup import load_start_weights, read_start_weights
    from worldtune.model import build_model

    wide = tmp_path / "n80.pth"
    torch.save({"state_dict": build_model("n", None, num_classes=80).state_dict()}, wide)
    path, state, _ = read_start_weights(str(wide), "n")
    report = load_start_weights(build_model("n", None, num_classes=5), path, state)
    assert "shape mismatches" in report and "cls_preds" in report
    state["backbone.image_model.stem.conv.weight"] = torch.zeros(16, 3, 5, 5)
    with pytest.raises(CheckpointMismatchError, match="stem.conv.weight"):
        load_start_weights(build_model("n", None, num_classes=80), path, state)


def test_a_start_that_failed_before_any_checkpoint_can_be_retried(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, epochs=1)

    def fails(*args, **kwargs):
        raise T.NonFiniteLossError("non-finite loss (nan) at epoch 1, step 1")

    monkeypatch.setattr(T, "train_one_epoch", fails)
    with pytest.raises(T.NonFiniteLossError):
        T.fit(cfg)
    out = tmp_path / "run"
    assert (out / "config.yaml").is_file() and not (out / "last.pt").exists()
    (out / "metrics.jsonl").write_text('{"kind": "train", "note": "from the failed attempt"}\n')
    monkeypatch.undo()
    assert T.fit(cfg)["status"] == "finished"  # not "already holds a run", which --resume could not continue
    assert "failed attempt" not in (out / "metrics.jsonl").read_text()


def test_bad_validation_files_are_warned_about_at_start(tmp_path, monkeypatch):
    """Without this, a non-picture would stop the first validation epochs later, and a JPEG cut short
    would quietly score its objects as misses."""
    import shutil

    from worldtune.data.coco import CocoDetection
    from worldtune.engine import dist
    from worldtune.engine.setup import build_datasets

    cfg = tiny_config(tmp_path, epochs=1)
    val_images = tmp_path / "val_images"
    shutil.copytree(cfg.data.val_images, val_images)
    cfg.data.val_images = str(val_images)
    val = CocoDetection(cfg.data.val_ann, val_images)
    jpegs = [val.image_path(i) for i in range(len(val)) if val.image_path(i).suffix == ".jpg"]
    jpegs[0].write_text("<html>404</html>")
    jpegs[1].write_bytes(jpegs[1].read_bytes()[:-2])  # its end marker lost: OpenCV still decodes it
    with pytest.warns(UserWarning) as caught:
        _, _, val_coco, _ = build_datasets(cfg, dist.init_distributed("cpu"))
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"1 validation image file(s) do not look like pictures, e.g. {jpegs[0]}")
               for m in messages)
    assert any(m.startswith(f"1 validation JPEG file(s) are cut short (no end marker), e.g. {jpegs[1]}")
               for m in messages)
    # Checked once: validation decodes it without reading its end again or warning a second time.
    import warnings

    import worldtune.data.coco as coco

    def read_again(path):
        raise AssertionError(f"{path} checked again")

    monkeypatch.setattr(coco, "jpeg_cut_short", read_again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert val_coco.load_image([val_coco.image_path(i) for i in range(len(val_coco))].index(jpegs[1])) is not None


@pytest.mark.parametrize("val_names", ["permuted", "renamed"])
def test_a_validation_file_with_other_categories_than_the_class_texts_is_caught(tmp_path, val_names):
    """Class-text entry k goes to the k-th category of each file: a validation file numbering the same
    categories otherwise would score every class with another's texts, silently."""
    import json

    from worldtune.data.coco import DataError
    from worldtune.engine import dist
    from worldtune.engine.setup import build_datasets

    cfg = tiny_config(tmp_path, epochs=1)
    data = json.loads(Path(cfg.data.val_ann).read_text())
    names = [c["name"] for c in data["categories"]]
    for c, name in zip(data["categories"], names[1:] + names[:1]):  # each id now names the next class
        c["name"] = name if val_names == "permuted" else name.upper()
    val_ann = tmp_path / "val.json"
    val_ann.write_text(json.dumps(data))
    cfg.data.val_ann = str(val_ann)
    if val_names == "permuted":
        with pytest.raises(DataError, match=rf"{val_ann} numbers the categories of .* otherwise.*"
                                            rf"category id 1 '{names[1]}' gets '{names[0]}'"):
            build_datasets(cfg, dist.init_distributed("cpu"))
    else:
        with pytest.warns(UserWarning, match=rf"{val_ann}: its categories differ .*category id 1 "
                                             rf"'{names[1].upper()}' gets '{names[0]}'"):
            build_datasets(cfg, dist.init_distributed("cpu"))
    cfg.data.class_texts = ""  # the category names themselves: each class keeps its own text
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        build_datasets(cfg, dist.init_distributed("cpu"))


@pytest.mark.parametrize("change", ["extra", "fewer"])
def test_a_validation_file_with_more_or_fewer_categories_names_the_categories_not_shared(tmp_path, change):
    """A val export that lists a category the training file lacks (or lacks one) cannot take the training
    file's class texts by position: the refusal names both files and the categories they do not share,
    not an entry count of the class-text file with an 'unmatched' category that is in both files."""
    import json

    from worldtune.data.coco import DataError
    from worldtune.engine import dist
    from worldtune.engine.setup import build_datasets

    cfg = tiny_config(tmp_path, epochs=1)
    data = json.loads(Path(cfg.data.val_ann).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    if change == "extra":  # a category listed first, with an id between the training ones
        data["categories"].insert(0, {"id": 2, "name": "pallet jack", "supercategory": "vehicle"})
        expected = rf"only {tmp_path / 'val.json'} has category id\(s\) 2 'pallet jack'"
    else:
        last = max(names)
        data["categories"] = [c for c in data["categories"] if c["id"] != last]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] != last]
        expected = rf"only {cfg.data.train_ann} has {last} '{names[last]}'"
    val_ann = tmp_path / "val.json"
    val_ann.write_text(json.dumps(data))
    cfg.data.val_ann = str(val_ann)
    with pytest.raises(DataError, match=rf"{val_ann} has {len(data['categories'])} categories and "
                                        rf"{cfg.data.train_ann} {len(names)}, but {cfg.data.class_texts} holds one "
                                        rf"entry per category of .*: {expected}\. Give both files the same "
                                        r"categories, or leave out the class texts \(--class-texts\)"):
        build_datasets(cfg, dist.init_distributed("cpu"))
    cfg.data.class_texts = ""  # as the message says: each file's categories named by their names
    _, _, val_coco, _ = build_datasets(cfg, dist.init_distributed("cpu"))
    assert ("pallet jack" in val_coco.class_names) == (change == "extra")


def test_a_wrong_weights_path_is_told_before_the_data_is_read(tmp_path, monkeypatch):
    from worldtune.zoo import UnknownWeightsError

    def read_data(*args, **kwargs):
        raise AssertionError("the data was read before the weights name was checked")

    monkeypatch.setattr(T, "build_datasets", read_data)
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.model.weights = str(tmp_path / "no_such_weights.pth")
    with pytest.raises(UnknownWeightsError, match="no_such_weights.pth: no such file, and not a zoo name"):
        T.fit(cfg)
    assert not (tmp_path / "run").exists()
