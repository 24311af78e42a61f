"""Run configuration: dataclasses whose defaults are the official COCO fine-tuning recipe.

The defaults reproduce `yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco`
(REFERENCE.md §1.2-§1.6). A recipe YAML (worldtune/recipes/) holds only what differs from
them; the CLI applies `--set section.key=value` last. Order: defaults -> recipe -> user YAML
-> CLI flags -> --set. The resolved config is written to the run folder as `config.yaml`.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from worldtune.outputs import write_text

RECIPE_DIR = Path(__file__).parent / "recipes"
# Short alias -> official config name; the YAML file is RECIPE_DIR / f"{name}.yaml".
RECIPE_ALIASES = {
    "v2-s": "yolo_world_v2_s_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco",
    "v2-m": "yolo_world_v2_m_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco",
    "v2-l": "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco",
    "v2-x": "yolo_world_v2_x_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco",
    "v2-l-efficient": "yolo_world_v2_l_efficient_neck_2e-4_80e_8gpus_mask-refine_finetune_coco",
    "v2-l-sgd": "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco",
}
# The official configs are named after 8 GPUs x 16 images; the weight-decay rule is relative to 64.
OFFICIAL_TOTAL_BATCH = 8 * 16


class ConfigError(ValueError):
    """A bad key, value or file in a configuration; the message names it."""


@dataclass
class ModelConfig:
    variant: str = "l"                                   # worldtune.model.VARIANTS key
    text_model: str = "openai/clip-vit-base-patch32"     # hub id or local folder (HF CLIP text tower)
    # Start weights: zoo name/alias, path to an official .pth or a worldtune checkpoint, or "none".
    weights: str = "v2-l-pretrain"


@dataclass
class DataConfig:
    train_ann: str = ""          # COCO instances JSON (set by --data-root or --train-ann)
    train_images: str = ""
    val_ann: str = ""
    val_images: str = ""
    class_texts: str = ""        # JSON list of synonym lists; "" = category names
    imgsz: int = 640
    workers: int = 8
    val_batch_size: int = 1
    num_texts: int = 80          # RandomLoadText: texts per training image (padded with '')
    mask_refine: bool = True
    affine_scale: list[float] = field(default_factory=lambda: [0.1, 1.9])  # scale ~ U(lo, hi)
    mixup_prob: float = 0.15
    copypaste_prob: float = 0.3
    min_area_ratio: float = 0.01  # 0.1 without mask refinement
    on_bad_data: str = "error"    # or "skip"
    min_size: int = 32
    # Speed options (README "Faster data loading"). cache_images: keep the decoded training images,
    # resized for the mosaic (same samples), at most cache_max_gb GiB: in each training process's
    # RAM, or with cache_dir in one file there shared by all processes and runs; "auto" caches in
    # RAM when every image fits (half the free memory holding a copy per process; workers forked),
    # "true" / "false".
    # mosaic_pool N > 0 (not official): mosaic/MixUp partners come from the N images around the
    # sample in the epoch's loading order; use the batch size or a divisor.
    cache_images: str = "auto"
    cache_max_gb: float = 8.0
    cache_dir: str = ""
    mosaic_pool: int = 0


@dataclass
class TrainConfig:
    epochs: int = 80
    batch_size: int = 16           # per GPU (process)
    optimizer: str = "adamw"       # or "sgd"
    lr: float = 2e-4
    weight_decay: float = 0.05     # before the batch-size rule (x2 at 8x16)
    momentum: float = 0.937        # SGD momentum (Nesterov)
    warmup_epochs: float = 3.0
    min_warmup_iters: int = 1000   # warm-up = max(round(warmup_epochs x iters/epoch), this)
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    bias_warmup: str = "group2"    # official: group index 2 starts at warmup_bias_lr; "biases": all biases
    lr_factor: float = 0.01        # final lr = lr * lr_factor (linear per-epoch decay)
    close_mosaic_epochs: int = 10  # last N epochs use the stage-2 pipeline
    grad_clip: float = 10.0        # max L2 norm of all gradients
    # Optimizer layout: true merges the official one-group-per-parameter groups into a few groups with
    # the same per-parameter updates (engine.optim.merge_param_groups), which makes steps much faster.
    merge_param_groups: bool = True
    ema_momentum: float = 1e-4
    ema_gamma: float = 2000.0
    val_interval: int = 5          # validate every N epochs (0 = off; the last epoch always validates)
    val_interval_stage2: int = 1   # the same from dynamic_interval_epoch on (0 = off)
    # Completed-epoch count from which val_interval_stage2 applies; -1 = epochs - close_mosaic_epochs - 1
    # (69 for 80e, 9 for the SGD 40e recipe, as REFERENCE.md §1.2 records).
    dynamic_interval_epoch: int = -1
    checkpoint_interval: int = 5   # also keep epoch_N.pt every N epochs (0 = only last/best)
    save_every_steps: int = 0      # also rewrite last.pt every N steps (0 = end of epoch only)
    amp: str = "bf16"              # bf16, fp16 (with GradScaler) or none, on GPU; CPU runs fp32, unless:
    # Not official: train.amp=bf16 on a CPU that computes bf16 natively (AVX512-BF16 or AMX), about 2x
    # faster training steps there; elsewhere (or with amp fp16/none) the CPU runs fp32 and a note says so.
    cpu_amp: bool = False
    channels_last: bool = True     # NHWC memory layout on GPU (faster convolutions); ignored on CPU
    # Not official (0 = off): before each validation, recompute the BatchNorm statistics of a copy of
    # the EMA model over this many training batches (detectron2's PreciseBN). Only useful for short
    # runs from random weights (demo, tests), whose running statistics still reflect the first steps.
    precise_bn_batches: int = 0
    seed: int = 0
    device: str = "auto"           # auto, cpu, cuda, cuda:1
    log_interval: int = 50


@dataclass
class Config:
    recipe: str = "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"
    out: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def valid_keys(cfg: Config | None = None) -> list[str]:
    """Every settable dotted key, e.g. 'train.lr'."""
    cfg = cfg or Config()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            keys.append(f.name)
    return keys


def _coerce(value, hint, key: str):
    """Check `value` against the type hint of `key`; ints are accepted for floats."""
    if isinstance(value, RawValue):
        if hint is str and key in BOOL_LIKE_CHOICES and value.lower() in _YAML_BOOLS:
            return _YAML_BOOLS[value.lower()]  # True, yes, off: as a --config file reads them
        if hint is str:
            return str(value)
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{key}: {str(value)!r} is not valid YAML ({_one_line(e)})") from None
    if hint is str and isinstance(value, bool) and key in BOOL_LIKE_CHOICES:
        return "true" if value else "false"  # YAML reads true/false as booleans
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "2e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value


# Config values that may name a local file or folder (the text model and weights may also be a hub
# id or zoo name, which are left alone unless such a path exists here).
PATH_KEYS = ("data.train_ann", "data.train_images", "data.val_ann", "data.val_images", "data.class_texts",
             "data.cache_dir", "model.text_model", "model.weights")


def absolute_paths(cfg: Config) -> Config:
    """Make the existing local paths of `cfg` absolute, in place: a run's saved config then finds
    the same files when it is resumed from another working directory."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        target = getattr(cfg, section)
        value = getattr(target, name)
        # the cache folder is always local, and is often made by the run itself (not there yet)
        if value and (os.path.exists(value) or key == "data.cache_dir"):
            setattr(target, name, os.path.abspath(value))
    return cfg


def close_keys(key: str, keys: list[str]) -> list[str]:
    """The valid keys a mistyped `key` most likely meant: the same name in another section ('lr',
    'train.imgsz' -> 'data.imgsz'), else the names of its section that contain it ('data.mixup' ->
    'data.mixup_prob'), else the nearest spellings ('train.lrr' -> 'train.lr'); for a section name,
    its keys. Empty: no guess."""
    key = key.replace("-", "_")  # a flag's spelling: train.batch-size
    section, _, name = key.rpartition(".")
    same_name = [k for k in keys if k.rpartition(".")[2] == name]
    if same_name:
        return same_name
    if any(k.startswith(key + ".") for k in keys):  # a section: 'model' -> its keys
        return [k for k in keys if k.startswith(key + ".")]
    in_section = [k for k in keys if not section or k.startswith(section + ".")]
    containing = [k for k in in_section if len(name) >= 3 and name in k.rpartition(".")[2]]
    return containing or difflib.get_close_matches(key, keys, n=3, cutoff=0.8)


def set_value(cfg: Config, key: str, value) -> None:
    """Set a dotted key with type checking; an unknown key names the keys it is closest to, or
    lists the valid ones."""
    parts = key.split(".")
    target = cfg
    for p in parts[:-1]:
        sub = getattr(target, p, None)
        if not dataclasses.is_dataclass(sub):
            target = None
            break
        target = sub
    name = parts[-1]
    if target is None or not dataclasses.is_dataclass(target) \
            or name not in {f.name for f in dataclasses.fields(target)} \
            or dataclasses.is_dataclass(getattr(target, name)):
        close = close_keys(key, valid_keys(cfg))
        if close:
            shown = ", ".join(map(repr, close[:5])) + (", ..." if len(close) > 5 else "")
            guess = repr(close[0]) if len(close) == 1 else f"one of {shown}"
            raise ConfigError(f"unknown config key {key!r}; did you mean {guess}? "
                              "(`worldtune train --print-config` lists every key)")
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys(cfg))}")
    hint = typing.get_type_hints(type(target))[name]
    setattr(target, name, _coerce(value, hint, key))


def merge(cfg: Config, overrides: dict, source: str = "overrides") -> Config:
    """Apply a nested dict ({'train': {'lr': 1e-3}} or {'train.lr': 1e-3}) onto `cfg` in place."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {type(overrides).__name__}")

    def walk(d: dict, prefix: str):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                try:
                    set_value(cfg, key, v)
                except ConfigError as e:
                    raise ConfigError(f"{source}: {e}") from None
    walk(overrides, "")
    return cfg


class RawValue(str):
    """A `--set` value as typed; parsed as YAML unless the key is a string field."""


def parse_set(items: list[str]) -> dict:
    """['train.lr=1e-3', 'data.affine_scale=[0.5,1.5]'] -> {'train.lr': RawValue('1e-3'), ...}.

    Values are parsed when applied: as YAML for numbers, booleans and lists, verbatim for string
    fields (so `train.amp=off` or `model.weights=none` stay strings).
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=1e-3")
        key, text = item.split("=", 1)
        out[key.strip()] = RawValue(text.strip())
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(e)})") from None
    return data or {}


def _one_line(error: Exception) -> str:
    """PyYAML's message spans several lines (with a caret under the spot); the CLI prints one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def recipe_path(name: str) -> Path:
    """Alias (v2-l), official name, or a path to a YAML file -> the YAML file."""
    name = RECIPE_ALIASES.get(name, name)
    path = RECIPE_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    if Path(name).is_file():
        return Path(name)
    raise ConfigError(f"unknown recipe {name!r}; choose an alias ({', '.join(RECIPE_ALIASES)}), "
                      f"an official name ({', '.join(RECIPE_ALIASES.values())}) or a YAML file")


def load_recipe(name: str) -> Config:
    """Defaults + the recipe's overrides."""
    path = recipe_path(name)
    content = load_yaml(path)
    cfg = merge(Config(), content, str(path))
    if path.parent == RECIPE_DIR:
        cfg.recipe = path.stem
    elif not (isinstance(content, dict) and "recipe" in content):  # else the default's, v2-l's, name
        cfg.recipe = str(path.resolve())
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, source: str = "config") -> Config:
    return merge(Config(), d, source)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def dump(cfg: Config, path: str | Path) -> None:
    """Write `cfg` as YAML to `path` whole or not at all (a failure names the file)."""
    write_text(path, to_yaml(cfg))


def load(path: str | Path) -> Config:
    """A dumped (or hand-written) config file: defaults + its content."""
    return merge(Config(), load_yaml(path), str(path))


def batch_rule(world_size: int, batch_per_gpu: int, weight_decay: float | None = None,
               lr: float | None = None) -> tuple[float, str]:
    """The official weight-decay scaling for this total batch (REFERENCE.md §1.4) and a line saying
    what is applied. The factor comes from `worldtune.engine.optim.weight_decay_scale`, the same
    function the optimizer uses. The learning rate is never scaled. Given the recipe's
    `weight_decay` and `lr`, the line also states the values the optimizer gets. Returns (factor, message).
    """
    from worldtune.engine.optim import weight_decay_scale

    total = world_size * batch_per_gpu
    factor = weight_decay_scale(batch_per_gpu, world_size)
    # the values a user compares with the recipe (factor x1 leaves the decay as it is)
    decay = "" if weight_decay is None else f": {weight_decay:g} -> {weight_decay * factor:.6g}"
    msg = (f"batch rule: total batch {world_size} x {batch_per_gpu} = {total} -> weight decay x{factor:.10g}{decay} "
           f"(official YOLOv5 rule, base 64; the recipe's 8 x 16 = {OFFICIAL_TOTAL_BATCH} gives x2); "
           + ("lr not scaled" if lr is None else f"lr {lr:g} not scaled"))
    return factor, msg


# The words YAML 1.1 (PyYAML) reads as booleans, any case.
_YAML_BOOLS = {**dict.fromkeys(("true", "yes", "on"), "true"), **dict.fromkeys(("false", "no", "off"), "false")}
# Text keys whose choices include "true" and "false" (a YAML boolean is taken as that text).
BOOL_LIKE_CHOICES = ("data.cache_images",)
# Keys with a closed set of values; checked by `validate` (the model variant against worldtune.model.VARIANTS).
CHOICES = {"train.optimizer": ("adamw", "sgd"), "train.amp": ("bf16", "fp16", "none"),
           "train.bias_warmup": ("group2", "biases"), "data.on_bad_data": ("error", "skip"),
           "data.cache_images": ("auto", "true", "false")}


def validate(cfg: Config) -> Config:
    """Value checks that types cannot express; raises ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, bool) and key in BOOL_LIKE_CHOICES:  # set from Python as True/False
            value = "true" if value else "false"
            setattr(getattr(cfg, section), name, value)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(allowed)}")
    # here, not only in build_model: that comes after the data are read and the image cache is filled
    from worldtune.model import VARIANTS  # (imports torch, so not at the top of this light module)
    if cfg.model.variant not in VARIANTS:
        raise ConfigError(f"model.variant={cfg.model.variant!r}: choose one of {', '.join(VARIANTS)}")
    # an empty name would be read as the current folder, and the error would name neither key
    if not cfg.model.weights.strip():
        raise ConfigError("model.weights is empty: name a zoo model, a weights file, or none")
    if not cfg.model.text_model.strip():
        raise ConfigError("model.text_model is empty: name a Hugging Face hub id or a local CLIP folder")
    t, d = cfg.train, cfg.data
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size), ("data.num_texts", d.num_texts)):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key, value in (("train.val_interval", t.val_interval), ("train.val_interval_stage2", t.val_interval_stage2),
                       ("train.checkpoint_interval", t.checkpoint_interval),
                       ("train.save_every_steps", t.save_every_steps),
                       ("train.precise_bn_batches", t.precise_bn_batches)):
        if value < 0:  # 0 turns these off; a negative value would silently act as 0
            raise ConfigError(f"{key} must be >= 0 (0 = off), got {value}")
    if t.dynamic_interval_epoch < -1:  # any negative value acted as 0: the stage-2 interval from the start
        raise ConfigError(f"train.dynamic_interval_epoch must be >= 0, or -1 for epochs - close_mosaic_epochs - 1, "
                          f"got {t.dynamic_interval_epoch}")
    # numpy's generators refuse a negative seed and torch's one past 64 bits (the sampler adds the epoch)
    if not 0 <= t.seed < 2**63:
        raise ConfigError(f"train.seed={t.seed}: must be in [0, 2**63)")
    if not cfg.out:  # Path("") is the current folder: the run's files would land among the user's own
        raise ConfigError("out is empty: name the run folder (. for the current one)")
    if t.log_interval < 1:
        raise ConfigError(f"train.log_interval must be >= 1, got {t.log_interval}")
    if d.mosaic_pool < 0:
        raise ConfigError(f"data.mosaic_pool must be >= 0 (0 = off), got {d.mosaic_pool}")
    if not (math.isfinite(d.cache_max_gb) and d.cache_max_gb >= 0):  # NaN and inf crashed in int(gb * 2**30)
        raise ConfigError(f"data.cache_max_gb={d.cache_max_gb}: must be a finite number >= 0")
    if d.cache_dir and os.path.exists(d.cache_dir) and not os.path.isdir(d.cache_dir):  # failed late, unnamed
        raise ConfigError(f"data.cache_dir={d.cache_dir}: a file, not a folder")
    if d.workers < 0:  # torch's own refusal names no key
        raise ConfigError(f"data.workers={d.workers}: must be >= 0 (0 = load in the training process)")
    if d.min_size < 0:  # a negative size acted as 0 (keep every image)
        raise ConfigError(f"data.min_size={d.min_size}: must be >= 0")
    if d.imgsz < 32 or d.imgsz % 32:
        raise ConfigError(f"data.imgsz must be a positive multiple of 32, got {d.imgsz}")
    # (an infinite high crashed in the first mosaic's random scale, with a traceback)
    if len(d.affine_scale) != 2 or not 0 < d.affine_scale[0] <= d.affine_scale[1] < math.inf:
        raise ConfigError(f"data.affine_scale must be [low, high] with 0 < low <= high, finite, got {d.affine_scale}")
    if t.close_mosaic_epochs < 0:  # more than `epochs` is fine: the whole run is stage 2
        raise ConfigError(f"train.close_mosaic_epochs must be >= 0, got {t.close_mosaic_epochs}")
    # named here: the optimizer's own "Invalid learning rate: nan" names no key, and a probability
    # over 1 would silently act as 1
    if not (math.isfinite(t.lr) and t.lr > 0):
        raise ConfigError(f"train.lr must be a positive number, got {t.lr}")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        raise ConfigError(f"train.weight_decay must be >= 0, got {t.weight_decay}")
    # clip_grad_norm_ scales the gradients by grad_clip / norm: 0 zeroes every step, a negative value
    # flips the update's sign (both silently); .inf never clips
    if not t.grad_clip > 0:
        raise ConfigError(f"train.grad_clip must be > 0 (the max gradient norm; .inf turns clipping off), "
                          f"got {t.grad_clip}")
    # the EMA's per-step weight lies between ema_momentum and 1 only for a momentum in (0, 1] and gamma > 0
    if not (0 < t.ema_momentum <= 1 and t.ema_gamma > 0):
        raise ConfigError(f"train.ema_momentum must be in (0, 1] and train.ema_gamma > 0, got {t.ema_momentum}, "
                          f"{t.ema_gamma}")
    if not (math.isfinite(t.lr_factor) and t.lr_factor >= 0):  # a negative final lr factor steps uphill
        raise ConfigError(f"train.lr_factor must be >= 0, got {t.lr_factor}")
    # SGD's momentum and its warm-up start (AdamW has neither; checked anyway, so that a switch to SGD
    # cannot pick up a meaningless one): at 1 or more the velocity never decays and the steps grow
    # without bound, and Nesterov needs a momentum > 0 (torch's own refusal names no key).
    sgd = t.optimizer == "sgd"
    if not (0 < t.momentum < 1 if sgd else 0 <= t.momentum < 1):  # (False for NaN too)
        raise ConfigError(f"train.momentum={t.momentum}: must be in (0, 1) with train.optimizer=sgd"
                          if sgd else f"train.momentum={t.momentum}: must be in [0, 1)")
    if not 0 <= t.warmup_momentum < 1:
        raise ConfigError(f"train.warmup_momentum={t.warmup_momentum}: must be in [0, 1)")
    # 0 is no warm-up by epochs (min_warmup_iters then sets it); a negative value acted as 0, and NaN or
    # inf crashed in round() once the data had loaded
    if not (math.isfinite(t.warmup_epochs) and t.warmup_epochs >= 0):
        raise ConfigError(f"train.warmup_epochs={t.warmup_epochs}: must be a finite number >= 0")
    if t.min_warmup_iters < 0:
        raise ConfigError(f"train.min_warmup_iters={t.min_warmup_iters}: must be >= 0")
    # the lr the warm-up-bias groups start from: 0 starts them like the others; negative steps uphill
    if not (math.isfinite(t.warmup_bias_lr) and t.warmup_bias_lr >= 0):
        raise ConfigError(f"train.warmup_bias_lr={t.warmup_bias_lr}: must be a finite number >= 0")
    # a box is kept when more than this fraction of its (scaled) area stays in the image: 0 keeps all,
    # 1 or more (or NaN) drops every box, silently training on images without labels
    if not 0 <= d.min_area_ratio < 1:
        raise ConfigError(f"data.min_area_ratio={d.min_area_ratio}: must be in [0, 1)")
    if d.val_batch_size < 1:
        raise ConfigError(f"data.val_batch_size must be >= 1, got {d.val_batch_size}")
    for key, value in (("data.mixup_prob", d.mixup_prob), ("data.copypaste_prob", d.copypaste_prob)):
        if not 0 <= value <= 1:  # (False for NaN too)
            raise ConfigError(f"{key} is a probability, it must be in [0, 1], got {value}")
    return cfg


def unused_value_notes(cfg: Config) -> list[str]:
    """Lines for the start of a run about valid values that have no effect with the rest of `cfg`."""
    notes = []
    if cfg.data.copypaste_prob > 0 and not cfg.data.mask_refine:
        # the training set passes 0 then (data.presets): copy-paste fills the objects' polygons, which
        # only mask refinement loads; the official non-mask-refine pipeline has no copy-paste either
        notes.append(f"data.copypaste_prob={cfg.data.copypaste_prob:g} has no effect with data.mask_refine=false "
                     f"(copy-paste needs the polygons that mask refinement loads)")
    t, default = cfg.train, TrainConfig()
    changed = [f"train.{key}={getattr(t, key):g}" for key in ("momentum", "warmup_momentum")
               if getattr(t, key) != getattr(default, key)]
    if t.optimizer == "adamw" and changed:  # AdamW's betas are fixed (official); momentum is SGD's alone
        notes.append(f"{' and '.join(changed)} {'has' if len(changed) == 1 else 'have'} no effect with "
                     f"train.optimizer=adamw (SGD only)")
    return notes
