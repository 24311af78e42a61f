"""Config dataclasses, recipes, overrides and the batch rule."""
import os
from pathlib import Path

import pytest

from worldtune import config as C

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_official_recipe():
    cfg = C.Config()
    t, d = cfg.train, cfg.data
    assert (t.epochs, t.batch_size, t.optimizer, t.lr, t.weight_decay) == (80, 16, "adamw", 2e-4, 0.05)
    assert (t.warmup_epochs, t.min_warmup_iters, t.lr_factor, t.close_mosaic_epochs) == (3.0, 1000, 0.01, 10)
    assert (t.grad_clip, t.ema_momentum, t.val_interval, t.checkpoint_interval) == (10.0, 1e-4, 5, 5)
    assert (t.merge_param_groups, t.bias_warmup, t.precise_bn_batches) == (True, "group2", 0)
    assert (d.imgsz, d.mask_refine, d.min_area_ratio, d.num_texts) == (640, True, 0.01, 80)


@pytest.mark.parametrize("alias,variant,weights,affine,mixup,copypaste", [
    ("v2-s", "s", "v2-s-pretrain", [0.5, 1.5], 0.15, 0.3),
    ("v2-m", "m", "v2-m-pretrain", [0.1, 1.9], 0.10, 0.1),
    ("v2-l", "l", "v2-l-pretrain", [0.1, 1.9], 0.15, 0.3),
    ("v2-x", "x", "v2-x-pretrain", [0.1, 1.9], 0.15, 0.3),
    ("v2-l-efficient", "l_efficient_neck", "v2-l-pretrain", [0.1, 1.9], 0.15, 0.3),
])
def test_adamw_recipes(alias, variant, weights, affine, mixup, copypaste):
    cfg = C.load_recipe(alias)
    assert cfg.recipe == C.RECIPE_ALIASES[alias]
    assert (cfg.model.variant, cfg.model.weights) == (variant, weights)
    assert cfg.data.affine_scale == affine
    assert (cfg.data.mixup_prob, cfg.data.copypaste_prob) == (mixup, copypaste)
    assert (cfg.data.mask_refine, cfg.data.min_area_ratio) == (True, 0.01)
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay, cfg.train.epochs) == ("adamw", 2e-4, 0.05, 80)


def test_sgd_recipe():
    cfg = C.load_recipe("yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay) == ("sgd", 1e-3, 0.937, 5e-4)
    assert (cfg.train.epochs, cfg.train.close_mosaic_epochs) == (40, 30)
    assert (cfg.data.mask_refine, cfg.data.min_area_ratio, cfg.data.copypaste_prob) == (False, 0.1, 0.0)


def test_a_users_recipe_file_is_named_by_its_path_not_as_the_official_v2_l(tmp_path):
    mine = tmp_path / "my_recipe.yaml"
    mine.write_text("model:\n  variant: s\ntrain:\n  lr: 1.0e-4\n")
    cfg = C.load_recipe(str(mine))
    assert cfg.recipe == str(mine.resolve()) and cfg.model.variant == "s"
    assert C.load_recipe(cfg.recipe).train.lr == 1e-4  # the saved label leads back to the file
    named = tmp_path / "named.yaml"
    named.write_text("recipe: my-experiment\n")
    assert C.load_recipe(str(named)).recipe == "my-experiment"


def test_recipe_weights_are_zoo_names():
    from worldtune.zoo import names
    for alias in C.RECIPE_ALIASES:
        assert C.load_recipe(alias).model.weights in names()


def test_configs_folder_points_at_the_packaged_recipes():
    for name in C.RECIPE_ALIASES.values():
        link = REPO / "configs" / f"{name}.yaml"
        assert link.is_file(), link
        assert os.path.realpath(link) == os.path.realpath(C.RECIPE_DIR / f"{name}.yaml")


def test_set_overrides_parse_by_field_type():
    cfg = C.Config()
    C.merge(cfg, C.parse_set(["train.lr=1e-3", "train.epochs=3", "data.affine_scale=[0.5, 1.5]",
                              "train.amp=off", "model.weights=none", "data.mask_refine=false"]))
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.data.affine_scale == [0.5, 1.5]
    assert (cfg.train.amp, cfg.model.weights, cfg.data.mask_refine) == ("off", "none", False)
    # a text choice that YAML would read as a boolean, from --set or from a YAML file
    assert C.merge(C.Config(), C.parse_set(["data.cache_images=true"])).data.cache_images == "true"
    assert C.merge(C.Config(), {"data": {"cache_images": False}}).data.cache_images == "false"
    # --set reads a boolean as a --config file does (True was refused: "choose one of auto, true, false")
    assert C.merge(C.Config(), C.parse_set(["data.cache_images=True"])).data.cache_images == "true"
    assert C.merge(C.Config(), C.parse_set(["data.cache_images=off"])).data.cache_images == "false"
    with pytest.raises(C.ConfigError, match="data.cache_dir: expected str"):  # only for true/false choices
        C.merge(C.Config(), {"data": {"cache_dir": False}})
    cfg = C.Config()
    cfg.data.cache_images = True  # set from Python
    assert C.validate(cfg).data.cache_images == "true"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(C.ConfigError, match=r"unknown config key 'learning_rate'; valid keys: .*train\.lr,"):
        C.merge(C.Config(), C.parse_set(["learning_rate=1"]), "--set")


@pytest.mark.parametrize("key,guess", [
    ("train.lrr", "'train.lr'?"),                    # a typo
    ("lr", "'train.lr'?"),                           # the section left out
    ("train.imgsz", "'data.imgsz'?"),                # the wrong section
    ("data.num_text", "'data.num_texts'?"),
    ("train.batch-size", "'train.batch_size'?"),     # the flag's spelling
    ("batch-size", "'train.batch_size'?"),           # the flag's spelling, its section left out
    ("train.l", "'train.lr'?"),                      # under 3 letters: not every train key with an 'l'
    ("data.cache", "one of 'data.cache_images', 'data.cache_max_gb', 'data.cache_dir'?"),
    ("model", "one of 'model.variant', 'model.text_model', 'model.weights'?"),  # a section
    ("data", "one of 'data.train_ann', 'data.train_images', 'data.val_ann', 'data.val_images', "
             "'data.class_texts', ...?"),  # more than five: the first five
])
def test_a_mistyped_key_names_the_keys_it_is_close_to(key, guess):
    with pytest.raises(C.ConfigError) as info:
        C.merge(C.Config(), C.parse_set([f"{key}=1"]), "--set")
    assert str(info.value) == (f"--set: unknown config key {key!r}; did you mean {guess} "
                               "(`worldtune train --print-config` lists every key)")


@pytest.mark.parametrize("item,match", [
    ("train.epochs=abc", "train.epochs: expected int"),
    ("train.epochs=1.5", "train.epochs: expected int"),
    ("data.mask_refine=3", "data.mask_refine: expected true/false"),
    ("data.affine_scale=[a, 1]", r"data.affine_scale\[0\]: expected float"),
    ("train.lr", "expected key=value"),
    ("train.lr=true", "train.lr: expected float"),  # YAML's true is no number, not 1.0
    ("data.affine_scale=[yes, 1]", r"data.affine_scale\[0\]: expected float"),
])
def test_bad_values_are_refused(item, match):
    with pytest.raises(C.ConfigError, match=match):
        C.merge(C.Config(), C.parse_set([item]), "--set")


def test_dump_and_load_round_trip(tmp_path):
    cfg = C.load_recipe("v2-s")
    C.merge(cfg, {"train": {"lr": 3e-4}, "data.imgsz": 320})
    C.dump(cfg, tmp_path / "config.yaml")
    assert C.load(tmp_path / "config.yaml") == cfg


def test_a_dump_that_fills_the_disk_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    from tests.helpers.full_disk import FullDisk
    from worldtune.outputs import OutputWriteError

    path = tmp_path / "config.yaml"
    C.dump(C.Config(), path)
    before = path.read_text()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), keep=10))
    with pytest.raises(OutputWriteError, match=rf"^cannot write {path}: No space left on device$"):
        C.dump(C.load_recipe("v2-s"), path)
    monkeypatch.undo()
    assert path.read_text() == before and os.listdir(tmp_path) == ["config.yaml"]  # no temporary file left


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "my.yaml"
    bad.write_text("train:\n  lr: [1, \n")
    with pytest.raises(C.ConfigError, match="my.yaml: not valid YAML"):
        C.load_recipe(str(bad))
    bad.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(C.ConfigError, match=r"my.yaml: unknown config key 'train.learning_rate'"):
        C.load_recipe(str(bad))
    with pytest.raises(C.ConfigError, match="unknown recipe 'v9-q'"):
        C.load_recipe("v9-q")


@pytest.mark.parametrize("world,batch,factor", [(8, 16, 2.0), (1, 16, 1.0), (2, 16, 1.0), (4, 16, 1.0),
                                                (3, 16, 0.75), (1, 2, 1.0)])
def test_batch_rule(world, batch, factor):
    got, message = C.batch_rule(world, batch)
    assert got == factor
    assert f"x{factor:g}" in message and "lr not scaled" in message


@pytest.mark.parametrize("world,batch,wd,factor_text,value", [
    (1, 5, 0.05, "x1.015625", "0.05 -> 0.0507812"),    # 5 x round(64 / 5) = 65 -> 65 / 64, shown exactly
    (1, 3, 5e-4, "x0.984375", "0.0005 -> 0.000492188"),  # the SGD recipe at 1 x 3
    (8, 16, 0.05, "x2", "0.05 -> 0.1"),                 # the published 8 x 16: REFERENCE.md's 0.1
])
def test_batch_rule_states_the_weight_decay_and_lr_the_optimizer_gets(world, batch, wd, factor_text, value):
    _, message = C.batch_rule(world, batch, weight_decay=wd, lr=2e-4)
    assert f"weight decay {factor_text}: {value} " in message
    assert "lr 0.0002 not scaled" in message


@pytest.mark.parametrize("item,match", [
    ("train.optimizer=adam", "train.optimizer='adam': choose one of adamw, sgd"),
    ("train.amp=off", "train.amp='off'"),
    ("data.imgsz=100", "multiple of 32"),
    ("data.affine_scale=[1.5, 0.5]", "affine_scale"),
    ("train.close_mosaic_epochs=-1", "close_mosaic_epochs"),
    ("data.cache_images=ram", "data.cache_images='ram': choose one of auto, true, false"),
    ("train.lr=nan", r"train.lr must be a positive number, got nan"),
    ("train.lr=-1", r"train.lr must be a positive number"),
    ("train.weight_decay=-1", r"train.weight_decay must be >= 0"),
    ("data.mixup_prob=2", r"data.mixup_prob is a probability, it must be in \[0, 1\], got 2.0"),
    ("data.copypaste_prob=nan", r"data.copypaste_prob is a probability"),
    ("train.val_interval=-1", r"train.val_interval must be >= 0 \(0 = off\), got -1"),
    ("train.checkpoint_interval=-5", r"train.checkpoint_interval must be >= 0"),
    ("train.log_interval=0", r"train.log_interval must be >= 1"),
    ("train.grad_clip=0", r"train.grad_clip must be > 0 \(the max gradient norm; .inf turns clipping off\), got 0.0"),
    ("train.grad_clip=-10", r"train.grad_clip must be > 0"),
    ("train.grad_clip=nan", r"train.grad_clip must be > 0"),
    ("train.ema_momentum=2", r"train.ema_momentum must be in \(0, 1\]"),
    ("train.ema_momentum=0", r"train.ema_momentum must be in \(0, 1\]"),
    ("train.ema_gamma=0", r"train.ema_gamma > 0"),
    ("train.lr_factor=-0.5", r"train.lr_factor must be >= 0, got -0.5"),
    ("data.val_batch_size=0", r"data.val_batch_size must be >= 1, got 0"),
    ("train.dynamic_interval_epoch=-5", r"train.dynamic_interval_epoch must be >= 0, or -1 for epochs - "
                                         r"close_mosaic_epochs - 1, got -5"),
    # SGD momentum: Nesterov needs one > 0 (torch's error named no key); at 1 or more it never decays
    ("train.momentum=1.5", r"train.momentum=1.5: must be in \[0, 1\)"),
    ("train.momentum=nan", r"train.momentum=nan: must be in \[0, 1\)"),
    ("train.warmup_momentum=-0.1", r"train.warmup_momentum=-0.1: must be in \[0, 1\)"),
    ("train.warmup_momentum=nan", r"train.warmup_momentum=nan: must be in \[0, 1\)"),
    ("train.warmup_momentum=1", r"train.warmup_momentum=1.0: must be in \[0, 1\)"),
    # a box's kept area fraction: 1 or more drops every box, NaN too (silently: images without labels)
    ("data.min_area_ratio=1.5", r"data.min_area_ratio=1.5: must be in \[0, 1\)"),
    ("data.min_area_ratio=1", r"data.min_area_ratio=1.0: must be in \[0, 1\)"),
    ("data.min_area_ratio=-0.1", r"data.min_area_ratio=-0.1: must be in \[0, 1\)"),
    ("data.min_area_ratio=nan", r"data.min_area_ratio=nan: must be in \[0, 1\)"),
    # a negative warm-up acted as 0; NaN and inf crashed in round() after the data had loaded
    ("train.warmup_epochs=-1", r"train.warmup_epochs=-1.0: must be a finite number >= 0"),
    ("train.warmup_epochs=nan", r"train.warmup_epochs=nan: must be a finite number >= 0"),
    ("train.warmup_epochs=inf", r"train.warmup_epochs=inf: must be a finite number >= 0"),
    ("train.min_warmup_iters=-1", r"train.min_warmup_iters=-1: must be >= 0"),
    # the bias groups' warm-up start lr: negative steps uphill, NaN ended the run at its first step
    ("train.warmup_bias_lr=-0.1", r"train.warmup_bias_lr=-0.1: must be a finite number >= 0"),
    ("train.warmup_bias_lr=nan", r"train.warmup_bias_lr=nan: must be a finite number >= 0"),
    ("train.warmup_bias_lr=inf", r"train.warmup_bias_lr=inf: must be a finite number >= 0"),
    # torch's "num_workers option should be non-negative" named no key
    ("data.workers=-1", r"data.workers=-1: must be >= 0 \(0 = load in the training process\)"),
    ("data.min_size=-1", r"data.min_size=-1: must be >= 0"),  # acted as 0
    # int(nan * 2**30) and numpy's uniform(0.5, inf) crashed with a traceback once the data had loaded
    ("data.cache_max_gb=nan", r"data.cache_max_gb=nan: must be a finite number >= 0"),
    ("data.cache_max_gb=inf", r"data.cache_max_gb=inf: must be a finite number >= 0"),
    ("data.affine_scale=[0.5, .inf]", r"data.affine_scale must be \[low, high\] with 0 < low <= high, finite, "
                                      r"got \[0.5, inf\]"),
    # numpy refused a negative seed ("expected non-negative integer") after the data had loaded; torch
    # one past 64 bits ("Overflow when unpacking long long")
    ("train.seed=-1", r"train.seed=-1: must be in \[0, 2\*\*63\)"),
    ("train.seed=9223372036854775808", r"train.seed=9223372036854775808: must be in \[0, 2\*\*63\)"),
    # an empty run folder trained into the current one, among the user's own files
    ("out=", r"out is empty: name the run folder \(\. for the current one\)"),
    # told by build_model only after the data were read (and the image cache filled: minutes on COCO)
    ("model.variant=L", r"model.variant='L': choose one of n, s, m, l, x, xl, l_efficient_neck"),
    # an empty name was read as the current folder: "checkpoint . is a folder", "Could not load the CLIP
    # text model ''", neither naming the key
    ("model.weights=", r"model.weights is empty: name a zoo model, a weights file, or none"),
    ("model.text_model=", r"model.text_model is empty: name a Hugging Face hub id or a local CLIP folder"),
])
def test_validate_refuses_bad_values(item, match):
    cfg = C.merge(C.Config(), C.parse_set([item]))
    with pytest.raises(C.ConfigError, match=match):
        C.validate(cfg)
    C.validate(C.load_recipe("v2-l-sgd"))


@pytest.mark.parametrize("key,says", [("weights", "model.weights is empty"),
                                      ("text_model", "model.text_model is empty")])
def test_a_model_name_of_blanks_is_refused_as_empty(key, says):
    cfg = C.Config()
    setattr(cfg.model, key, "  ")  # a recipe's `text_model: "  "` (--set strips its value)
    with pytest.raises(C.ConfigError, match=says):
        C.validate(cfg)


def test_set_value_keeps_every_equals_sign_after_the_key():
    # key=value splits at the first '=': a path or hub id may itself hold one (the value is verbatim
    # for string fields), and a value cut at its second '=' would name another file.
    cfg = C.merge(C.Config(), C.parse_set(["model.weights=runs/lr=1e-3/best.pt", "data.class_texts=a=b.json"]))
    assert (cfg.model.weights, cfg.data.class_texts) == ("runs/lr=1e-3/best.pt", "a=b.json")


def test_bad_yaml_is_told_in_one_line(tmp_path):
    # Before: PyYAML's multi-line message (source line and caret) broke the CLI's one-line error.
    bad = tmp_path / "my.yaml"
    bad.write_text('[["a"], \n')
    with pytest.raises(C.ConfigError, match=r"my.yaml: not valid YAML \(.* at line \d+, column \d+\)$") as info:
        C.load_yaml(bad)
    assert "\n" not in str(info.value)
    with pytest.raises(C.ConfigError) as info:
        C.merge(C.Config(), C.parse_set(["data.affine_scale=[1, "]))
    assert "\n" not in str(info.value)


def test_a_cache_folder_the_run_will_make_is_saved_absolute(tmp_path, monkeypatch):
    """data.cache_dir is made by the run: it does not exist when the config is saved, and a resume
    from another working directory must map the same cache, not build a second one."""
    monkeypatch.chdir(tmp_path)
    cfg = C.Config()
    cfg.data.cache_dir = "cache"
    assert C.absolute_paths(cfg).data.cache_dir == str(tmp_path / "cache")


def test_a_fixed_affine_scale_is_valid():
    """low == high (no random zoom) is allowed; only low > high is refused."""
    cfg = C.merge(C.Config(), C.parse_set(["data.affine_scale=[1, 1]"]))
    assert C.validate(cfg).data.affine_scale == [1.0, 1.0]


def test_an_infinite_grad_clip_is_valid_and_never_clips():
    """.inf is the way to turn clipping off (clip_grad_norm_ then leaves the gradients as they are)."""
    import torch

    cfg = C.validate(C.merge(C.Config(), C.parse_set(["train.grad_clip=.inf"])))
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 100.0)
    torch.nn.utils.clip_grad_norm_([p], cfg.train.grad_clip)
    assert torch.equal(p.grad, torch.full((3,), 100.0))


def test_sgd_momentum_must_be_positive():
    """Nesterov SGD needs a momentum > 0 (torch refused it later, naming no key); AdamW has none."""
    cfg = C.merge(C.Config(), C.parse_set(["train.optimizer=sgd", "train.momentum=0"]))
    with pytest.raises(C.ConfigError, match=r"train.momentum=0.0: must be in \(0, 1\) with train.optimizer=sgd"):
        C.validate(cfg)
    C.validate(C.merge(C.Config(), C.parse_set(["train.momentum=0"])))  # unused by AdamW


@pytest.mark.parametrize("item", ["train.warmup_epochs=0", "train.min_warmup_iters=0", "train.warmup_bias_lr=0",
                                  "train.warmup_momentum=0", "data.min_area_ratio=0", "data.min_area_ratio=0.99"])
def test_zero_turns_warmup_and_box_filtering_off(item):
    """0 is a real choice for these (no warm-up, bias groups start at 0 like the others, keep every box)."""
    C.validate(C.merge(C.Config(), C.parse_set([item])))


def test_copy_paste_without_mask_refinement_is_told_it_does_nothing():
    """Copy-paste fills the objects' polygons; without mask refinement samples carry none, so the
    probability is ignored (as in the official non-mask-refine pipeline, which has no copy-paste)."""
    cfg = C.merge(C.load_recipe("v2-l"), C.parse_set(["data.mask_refine=false"]))
    (note,) = C.unused_value_notes(cfg)
    assert note.startswith("data.copypaste_prob=0.3 has no effect with data.mask_refine=false")
    assert C.unused_value_notes(C.load_recipe("v2-l")) == []
    assert C.unused_value_notes(C.load_recipe("v2-l-sgd")) == []  # no mask refinement, copy-paste 0


def test_a_cache_dir_that_is_a_file_is_refused(tmp_path):
    """The run made its cache file inside data.cache_dir: a file there failed late with a bare
    "[Errno 17] File exists", naming no key."""
    (tmp_path / "cache").write_text("")
    cfg = C.merge(C.Config(), C.parse_set([f"data.cache_dir={tmp_path / 'cache'}"]))
    with pytest.raises(C.ConfigError, match=r"data.cache_dir=.*cache: a file, not a folder"):
        C.validate(cfg)
    C.validate(C.merge(C.Config(), C.parse_set([f"data.cache_dir={tmp_path / 'new'}"])))  # made by the run


def test_a_changed_sgd_momentum_under_adamw_is_told_it_does_nothing():
    """AdamW has no momentum (its betas are fixed, as in the official configs): a train.momentum or
    train.warmup_momentum set for it was ignored silently."""
    cfg = C.merge(C.load_recipe("v2-l"), C.parse_set(["train.momentum=0.9", "train.warmup_momentum=0.5"]))
    (note,) = C.unused_value_notes(cfg)
    assert note == ("train.momentum=0.9 and train.warmup_momentum=0.5 have no effect with train.optimizer=adamw "
                    "(SGD only)")
    cfg.train.optimizer = "sgd"
    assert C.unused_value_notes(cfg) == []
