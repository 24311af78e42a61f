"""`worldtune train` argument handling (the training itself is covered in tests/engine)."""
import pytest

from worldtune.cli import build_parser, main
from worldtune.cli.train import build_config
from worldtune.config import ConfigError, to_yaml


def _args(*argv):
    return build_parser().parse_args(["train", *argv])


def test_precedence_recipe_config_flags_set(tmp_path):
    (tmp_path / "over.yaml").write_text("train:\n  lr: 5.0e-4\n  epochs: 7\ndata:\n  imgsz: 320\n")
    root = tmp_path / "coco"
    root.mkdir()
    args = _args("--recipe", "v2-s", "--config", str(tmp_path / "over.yaml"), "--data-root", str(root),
                 "--epochs", "9", "--batch-size", "4", "--weights", "none", "--out", str(tmp_path / "run"),
                 "--set", "train.lr=1e-4", "--set", "data.workers=1")
    cfg = build_config(args)
    assert cfg.recipe == "yolo_world_v2_s_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"
    assert cfg.data.affine_scale == [0.5, 1.5]  # from the recipe
    assert cfg.data.imgsz == 320  # --config
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.weights) == (9, 4, "none")  # flags beat --config
    assert (cfg.train.lr, cfg.data.workers) == (1e-4, 1)  # --set beats everything
    assert cfg.data.train_ann == str(root / "annotations" / "instances_train2017.json")
    assert cfg.data.val_images == str(root / "val2017")
    assert cfg.data.on_bad_data == "error"
    assert build_config(_args("--on-bad-data", "skip", "--out", str(tmp_path / "r2"))).data.on_bad_data == "skip"


def test_a_recipe_named_in_the_config_file_or_set_is_the_base(tmp_path, monkeypatch):
    """`recipe: v2-s` in a --config file (or --set recipe=v2-s) once only relabelled the run: it trained
    with the default v2-l recipe's model and values under the v2-s name."""
    monkeypatch.chdir(tmp_path)
    v2s = "yolo_world_v2_s_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"
    (tmp_path / "over.yaml").write_text("recipe: v2-s\ntrain:\n  lr: 1.0e-4\n")
    for argv in (["--config", "over.yaml"], ["--set", "recipe=v2-s"], ["--recipe", "v2-s", "--set", f"recipe={v2s}"]):
        cfg = build_config(_args(*argv))
        assert (cfg.recipe, cfg.model.variant, cfg.data.affine_scale) == (v2s, "s", [0.5, 1.5]), argv
    assert build_config(_args("--config", "over.yaml")).train.lr == 1e-4  # the file still overrides its recipe
    # a run's saved config.yaml, given as --config, rebuilds that run's config
    saved = build_config(_args("--recipe", "v2-l-sgd", "--out", "a"))
    (tmp_path / "saved.yaml").write_text(to_yaml(saved))
    assert build_config(_args("--config", "saved.yaml")) == saved
    with pytest.raises(ConfigError, match=r"--set recipe=v2-s names another recipe than --recipe v2-l"):
        build_config(_args("--recipe", "v2-l", "--set", "recipe=v2-s"))
    with pytest.raises(ConfigError, match=r"over.yaml: recipe=v2-s names another recipe than --recipe v2-m"):
        build_config(_args("--recipe", "v2-m", "--config", "over.yaml"))
    (tmp_path / "typo.yaml").write_text("recipe: v2-ss\n")
    with pytest.raises(ConfigError, match=r"^typo.yaml: recipe=v2-ss: unknown recipe 'v2-ss'"):
        build_config(_args("--config", "typo.yaml"))
    # --set comes after the --config file: it names the recipe the file's name is held against
    with pytest.raises(ConfigError, match=r"^over.yaml: recipe=v2-s names another recipe than --set recipe=v2-m$"):
        build_config(_args("--config", "over.yaml", "--set", "recipe=v2-m"))
    with pytest.raises(ConfigError, match=r"^unknown recipe 'v2-ss'"):  # the flag's own value: said once
        build_config(_args("--recipe", "v2-ss"))


def test_default_run_folder_is_numbered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = build_config(_args("--recipe", "v2-l-sgd"))
    assert first.out == "runs/train/v2-l-sgd"
    (tmp_path / first.out).mkdir(parents=True)
    (tmp_path / first.out / "config.yaml").write_text("{}")
    assert build_config(_args("--recipe", "v2-l-sgd")).out == "runs/train/v2-l-sgd-2"


def test_out_from_config_or_set_is_the_run_folder(tmp_path, monkeypatch):
    # the default run folder once replaced any out given by --config or --set, silently
    monkeypatch.chdir(tmp_path)
    (tmp_path / "over.yaml").write_text("out: from_yaml\n")
    assert build_config(_args("--config", "over.yaml")).out == "from_yaml"
    assert build_config(_args("--config", "over.yaml", "--set", "out=from_set")).out == "from_set"
    assert build_config(_args("--set", "out=from_set", "--out", "flag")).out == "from_set"  # --set is last
    assert build_config(_args("--out", "flag")).out == "flag"


@pytest.mark.parametrize("argv,message", [
    (["--weights", "none"], "data.train_ann is not set"),
    (["--set", "train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["--set", "train.epochs=many"], "train.epochs: expected int"),
    (["--data-root", "/nonexistent/coco"], "--data-root /nonexistent/coco: no such folder"),
    (["--data-root", ".", "--train-ann", "a.json", "--val-images", "v"],
     "give either --data-root (the COCO 2017 layout) or --train-ann, --train-images, --val-ann and --val-images, "
     "not both (--train-ann, --val-images with --data-root)"),
    (["--recipe", "v7-z"], "unknown recipe 'v7-z'"),
    (["--resume", "/nonexistent/run"], "no checkpoint at /nonexistent/run"),
    (["--imgsz", "100", "--weights", "none"], "data.imgsz must be a positive multiple of 32"),
    # refused before the data are read, with the value and its range
    (["--weights", "none", "--set", "train.optimizer=sgd", "--set", "train.momentum=0"],
     "train.momentum=0.0: must be in (0, 1) with train.optimizer=sgd"),
    (["--weights", "none", "--variant", "L"], "model.variant='L': choose one of n, s, m, l, x"),
    (["--weights", "none", "--train-ann", "a.json", "--train-images", ".", "--val-ann", "b.json"],
     "data.val_ann is set but data.val_images is not"),
])
def test_bad_input_gives_a_clear_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldtune train: error:") and message in err
    assert "Traceback" not in err


def test_missing_annotation_file_is_named(tmp_path, capsys):
    code = main(["train", "--device", "cpu", "--weights", "none", "--train-ann", str(tmp_path / "nope.json"),
                 "--train-images", str(tmp_path), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "nope.json does not exist" in capsys.readouterr().err


def test_resume_names_ignored_flags_and_unreadable_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--device", "cpu", "--resume", str(run), "--epochs", "5", "--set", "train.lr=1"]) == 2
    err = capsys.readouterr().err
    assert "--epochs, --set train.lr ignored" in err and "no checkpoint at" in err
    # a recipe, --config or --data-root on a resume were ignored without a word
    (tmp_path / "over.yaml").write_text("train:\n  lr: 1.0e-3\n")
    assert main(["train", "--resume", str(run), "--recipe", "v2-x", "--config", str(tmp_path / "over.yaml"),
                 "--data-root", str(tmp_path)]) == 2
    assert "--recipe, --config, --data-root ignored" in capsys.readouterr().err
    run.mkdir()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--device", "cpu", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("worldtune train: error:") and "last.pt" in err and "Traceback" not in err


def test_print_config_shows_the_resolved_keys_and_builds_nothing(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--recipe", "v2-l-sgd", "--epochs", "3", "--set", "train.lr=0.002", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["optimizer"] == "sgd" and printed["train"]["lr"] == 0.002  # the recipe, then --set
    assert printed["train"]["epochs"] == 3 and printed["data"]["mask_refine"] is False
    assert not (tmp_path / "runs").exists()  # no run folder, no data read
    assert main(["train", "--print-config", "--set", "train.amp=fp8"]) == 2  # checked as a run would be
    assert "train.amp='fp8'" in capsys.readouterr().err


def test_print_config_of_a_resume_shows_the_runs_saved_config(tmp_path, capsys, monkeypatch):
    import yaml

    from tests.helpers.tiny_run import tiny_config
    from worldtune.engine import train as T
    from worldtune.engine.run_state import read_resume

    cfg = tiny_config(tmp_path, epochs=1)
    T.fit(cfg)
    monkeypatch.setattr(T, "fit", lambda *a, **k: pytest.fail("--print-config must not train"))
    capsys.readouterr()
    assert main(["train", "--resume", cfg.out, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["variant"] == "n" and printed["data"]["imgsz"] == cfg.data.imgsz
    assert printed["out"] == cfg.out
    # the validation batch may change (what the out-of-memory hint suggests); what is trained may not
    assert printed["data"]["val_batch_size"] != 2
    assert main(["train", "--resume", cfg.out, "--print-config", "--set", "data.val_batch_size=2",
                 "--set", "train.lr=1"]) == 0
    out, err = capsys.readouterr()
    printed = yaml.safe_load(out)
    assert printed["data"]["val_batch_size"] == 2 and printed["train"]["lr"] == cfg.train.lr
    assert "--set train.lr ignored" in err
    with pytest.raises(ValueError, match="train.lr cannot change in a resumed run"):
        read_resume(cfg.out, cfg, 1, say=print, changes={"train.lr": 1.0})


def test_help_names_the_defaults_a_user_gets_without_the_flag(capsys):
    # `worldtune train --data-root data/coco` trains the L recipe for 80 epochs: --help must say so
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "YAML (default: v2-l)" in out and "training epochs (recipe: 80, SGD 40)" in out


@pytest.mark.parametrize("rank,said", [("0", True), ("1", False)])
def test_a_non_finite_loss_is_reported_by_rank_0_only(tmp_path, monkeypatch, capsys, rank, said):
    """Under torchrun every rank raises the same NonFiniteLossError at the same step (the loss is
    all-reduced): one message, not one per process; every rank still exits with status 1."""
    from worldtune.engine import train as T

    def diverge(cfg, resume=None):
        raise T.NonFiniteLossError("non-finite loss (nan) at epoch 1, step 2")

    monkeypatch.setattr(T, "fit", diverge)
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "--recipe", "v2-s", "--weights", "none", "--out", str(tmp_path / "run")]) == 1
    assert ("non-finite loss (nan)" in capsys.readouterr().err) == said
