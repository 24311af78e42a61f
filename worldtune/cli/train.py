"""Fine-tune YOLO-World-v2 with a published recipe.

  worldtune train --recipe v2-l --data-root data/coco
  worldtune train --recipe v2-s --train-ann a.json --train-images imgs/ --val-ann b.json --val-images val/ \\
      --class-texts texts.json --batch-size 8 --set train.lr=1e-4
  torchrun --nproc_per_node 8 -m worldtune train --recipe v2-l --data-root data/coco
  worldtune train --resume runs/train/v2-l        # continue an interrupted run

Recipes (aliases): v2-s, v2-m, v2-l, v2-x, v2-l-efficient, v2-l-sgd, or your own YAML of overrides.
Order of precedence: recipe < --config < flags < --set. A `recipe` key in the --config file or --set
chooses the recipe when --recipe is not given.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from worldtune.cli.argtypes import DEVICE_HELP, add_threads_argument, non_negative_int, positive_int, set_threads
from worldtune.config import (RECIPE_ALIASES, Config, ConfigError, absolute_paths, load_recipe, load_yaml, merge,
                              parse_set, recipe_path, set_value, to_yaml, validate)


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", help=f"alias ({', '.join(RECIPE_ALIASES)}), official name or YAML (default: v2-l)")
    parser.add_argument("--config", help="a YAML file of overrides applied after the recipe")
    parser.add_argument("--data-root", help="COCO 2017 folder: annotations/instances_{train,val}2017.json, "
                                            "train2017/, val2017/")
    parser.add_argument("--train-ann", help="training COCO JSON (instead of --data-root)")
    parser.add_argument("--train-images", help="training image folder")
    parser.add_argument("--val-ann", help="validation COCO JSON")
    parser.add_argument("--val-images", help="validation image folder")
    parser.add_argument("--class-texts", help="JSON list of synonym lists, or a text file (not .json) of one text "
                                              "per line; one per category in id order (default: the category names)")
    parser.add_argument("--text-model", help="CLIP text model: hub id or local folder ('random' for tests) (recipe: "
                                             "openai/clip-vit-base-patch32)")
    parser.add_argument("--weights", help="start weights: zoo name, official .pth, worldtune checkpoint, or none "
                                          "(default: the recipe's official pre-trained file)")
    parser.add_argument("--variant", help="model variant override (n, s, m, l, x, xl, l_efficient_neck)")
    parser.add_argument("--epochs", type=positive_int, help="training epochs (recipe: 80, SGD 40)")
    parser.add_argument("--batch-size", type=positive_int, help="images per GPU/process (recipe: 16)")
    parser.add_argument("--imgsz", type=int, help="training and validation size (recipe: 640)")
    parser.add_argument("--device", help=f"{DEVICE_HELP} (default: auto)")
    parser.add_argument("--workers", type=non_negative_int,
                        help="data-loading processes per training process (recipe: 8)")
    add_threads_argument(parser)
    parser.add_argument("--out", help="run folder (default runs/train/<recipe>, numbered if taken)")
    parser.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                        help="continue a run: its folder (from last.pt) or one of its checkpoints (e.g. epoch_N.pt), "
                             "in that folder, with its saved config (only --device, --workers and "
                             "--set data.val_batch_size may change)")
    parser.add_argument("--save-every-steps", type=non_negative_int,
                        help="also save last.pt every N steps (default 0: at the end of each epoch only)")
    parser.add_argument("--on-bad-data", choices=("error", "skip"),
                        help="error (default): stop at the first bad image or annotation, naming it; skip: drop "
                             "and count them (unreadable val images are left out of the scoring)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. train.lr=1e-4 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key --set accepts, with its value) and exit")


# flag -> config key
FLAG_KEYS = {"train_ann": "data.train_ann", "train_images": "data.train_images", "val_ann": "data.val_ann",
             "val_images": "data.val_images", "class_texts": "data.class_texts", "text_model": "model.text_model",
             "weights": "model.weights", "variant": "model.variant", "epochs": "train.epochs",
             "batch_size": "train.batch_size", "imgsz": "data.imgsz", "device": "train.device",
             "workers": "data.workers", "out": "out", "save_every_steps": "train.save_every_steps",
             "on_bad_data": "data.on_bad_data"}


def _short_name(recipe: str) -> str:
    for alias, name in RECIPE_ALIASES.items():
        if recipe in (alias, name):
            return alias
    return Path(recipe).stem


def _free_run_dir(base: Path) -> Path:
    """base, or base-2, base-3, ... : never train into a folder that already holds a run."""
    candidate, n = base, 1
    while (candidate / "last.pt").exists() or (candidate / "config.yaml").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _chosen_recipe(args, overrides, sets: dict) -> str:
    """--recipe, else the recipe a `recipe` key of the --config file or --set names (--set last), else
    v2-l. That key chooses the base rather than overriding a value: merged as a value it only renamed
    the run, which then trained with another recipe's model and values. Names that disagree are refused."""
    named = []  # (where, name)
    if isinstance(overrides, dict) and isinstance(overrides.get("recipe"), str):
        named.append((f"{args.config}: recipe={overrides['recipe']}", overrides["recipe"]))
    if "recipe" in sets:
        named.append((f"--set recipe={sets['recipe']}", str(sets["recipe"])))
    if args.recipe:
        chosen, source = args.recipe, f"--recipe {args.recipe}"
    elif named:
        (source, chosen), named = named[-1], named[:-1]
    else:
        return "v2-l"

    def path(where: str, name: str) -> Path:
        try:
            return recipe_path(name).resolve()
        except ConfigError as e:  # say where the name came from
            raise ConfigError(e if where.startswith("--recipe") else f"{where}: {e}") from None

    for where, name in named:
        if path(where, name) != path(source, chosen):
            raise ConfigError(f"{where} names another recipe than {source}")
    path(source, chosen)
    return chosen


def build_config(args):
    """Recipe -> --config -> flags -> --set, with type checks on every value."""
    overrides = load_yaml(args.config) if args.config else {}
    sets = parse_set(args.set)
    recipe = _chosen_recipe(args, overrides, sets)
    if isinstance(overrides, dict):
        overrides.pop("recipe", None)  # chose the recipe above; the run keeps its official name
    sets.pop("recipe", None)
    cfg = load_recipe(recipe)
    if cfg.out == Config().out:  # default folder: here, so that --config, --out and --set may still name one
        cfg.out = str(_free_run_dir(Path("runs/train") / _short_name(recipe)))
    if args.config:
        merge(cfg, overrides, args.config)
    if args.data_root:
        # --train-ann beside --data-root once replaced the root's file without a word, mixing two data sets
        mixed = [f"--{flag.replace('_', '-')}" for flag in ("train_ann", "train_images", "val_ann", "val_images")
                 if getattr(args, flag) is not None]
        if mixed:
            raise ConfigError(f"give either --data-root (the COCO 2017 layout) or --train-ann, --train-images, "
                              f"--val-ann and --val-images, not both ({', '.join(mixed)} with --data-root); to "
                              "replace one path of a data root, use --set, e.g. --set data.train_ann=FILE")
        root = Path(args.data_root)
        if not root.is_dir():
            raise ConfigError(f"--data-root {root}: no such folder")
        for key, rel in (("data.train_ann", "annotations/instances_train2017.json"),
                         ("data.train_images", "train2017"),
                         ("data.val_ann", "annotations/instances_val2017.json"), ("data.val_images", "val2017")):
            set_value(cfg, key, str(root / rel))
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            set_value(cfg, key, value)
    merge(cfg, sets, "--set")
    return cfg


def run(args) -> int:
    from worldtune.cli.errors import report, user_errors
    from worldtune.engine.run_state import RESUME_CHANGEABLE
    from worldtune.engine.train import NonFiniteLossError, fit

    set_threads(args.threads)
    try:
        if args.resume:
            cfg = Config()  # replaced by the run's saved config; only where-to-run flags apply
            for flag in ("device", "workers"):
                if getattr(args, flag) is not None:
                    set_value(cfg, FLAG_KEYS[flag], getattr(args, flag))
            ignored = [f"--{flag.replace('_', '-')}" for flag in FLAG_KEYS
                       if flag not in ("device", "workers") and getattr(args, flag, None) is not None]
            ignored += [f"--{flag.replace('_', '-')}" for flag in ("recipe", "config", "data_root")
                        if getattr(args, flag)]
            sets = parse_set(args.set)
            changes = {k: v for k, v in sets.items() if k in RESUME_CHANGEABLE}
            ignored += [f"--set {k}" for k in sets if k not in changes]
            if ignored:
                print(f"worldtune train: --resume continues the run with its saved config: {', '.join(ignored)} "
                      "ignored (start a new run with --weights RUN/last.pt to change them)", file=sys.stderr)
            if args.print_config:  # the config the resumed run goes on with
                from worldtune.engine.run_state import read_resume

                _, saved, _ = read_resume(args.resume, cfg, 1, say=lambda *a, **k: None, changes=changes)
                print(to_yaml(saved), end="")
                return 0
            result = fit(cfg, resume=args.resume, resume_changes=changes)
        else:
            cfg = build_config(args)
            if args.print_config:
                print(to_yaml(absolute_paths(validate(cfg))), end="")  # as the run would save it
                return 0
            result = fit(cfg)
    except NonFiniteLossError as e:
        # Every rank stops at the same step with the same (all-reduced) values: rank 0 says it once.
        # The process group is gone by now, so the rank comes from torchrun's environment.
        if os.environ.get("RANK", "0") == "0":
            print(f"worldtune train: {e}", file=sys.stderr)
        return 1
    except user_errors() as e:  # bad data, config, weights or text model (a DataLoader worker's too)
        return report("train", e)
    return 130 if result["status"] == "interrupted" else 0
