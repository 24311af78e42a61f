"""What a training checkpoint holds and how a run picks up from one.

`make_checkpoint` / `restore_checkpoint` round-trip everything a resume needs (weights, EMA,
optimizer, GradScaler, position in the run, RNG states, config); `read_resume` reads and checks the
checkpoint of `--resume` and the config the run goes on with; `resume_loader` replays the rest of an
interrupted epoch with the same order and augmentations.
"""
from __future__ import annotations

from pathlib import Path

import torch

from worldtune.engine import dist
from worldtune.engine.dist import dist_unwrap
from worldtune.model.loading import TEXT_PREFIX


def rng_states() -> dict:
    """Global RNG states as tensors and plain lists (loadable with torch.load(weights_only=True))."""
    import random

    import numpy as np
    np_state = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": list(map(_listify, random.getstate())),
              "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _listify(x):
    return list(x) if isinstance(x, tuple) else x


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "cuda" in states and torch.cuda.is_available():
        # One state per GPU the saving process saw: a run saved on 8 GPUs and resumed where fewer are
        # visible would index a generator that does not exist (an error at CUDA's lazy init).
        torch.cuda.set_rng_state_all(states["cuda"][:torch.cuda.device_count()])


def text_tower_info(model) -> dict:
    """What rebuilding the text tower from the checkpoint's weights cannot read off their shapes."""
    config = getattr(getattr(getattr(model, "text_model", None), "model", None), "config", None)
    return {"num_heads": int(config.num_attention_heads)} if config is not None else {}


def make_checkpoint(model, ema, optimizer, scaler, state: dict, cfg, evaluated=None, vocabulary=None,
                    category_ids=None) -> dict:
    """Everything a resume needs.

    `ema` holds the averaged weights (what `extract_model_state` prefers, what validation measures
    and what `worldtune predict/eval` load), including the frozen text tower. The resume-only
    entries `model` (raw weights) and `ema_state` leave the tower out: it is frozen, so it is the
    same tensor values in all three, and storing it once keeps checkpoints half the size.
    `evaluated`: the module validation scored, stored as `ema` instead (best.pt with precise BN:
    the EMA weights with the recomputed BatchNorm statistics); resuming still uses `ema_state`.
    `vocabulary`: the training class texts (first synonym of each), which `load_model` sets, so
    `predict` and `model.predict` need no vocabulary for the classes the run was trained on.
    `category_ids`: the training file's category id of each of those classes, which `worldtune predict`
    writes beside each label, so its detections are in the dataset's own ids.
    """
    from worldtune.config import to_dict

    def image_side(sd):
        return {k: v for k, v in sd.items() if not k.startswith(TEXT_PREFIX)}

    ema_state = ema.state_dict()
    scored = evaluated if evaluated is not None else ema.module
    return {"format": "worldtune-train-1", "model": image_side(dist_unwrap(model).state_dict()),
            "ema": scored.state_dict(), "ema_state": {**ema_state, "module": image_side(ema_state["module"])},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "epoch": state["epoch"],
            "step_in_epoch": state["step_in_epoch"], "global_step": state["global_step"],
            "best_ap": state["best_ap"], "best_epoch": state["best_epoch"],
            "val_pending": bool(state.get("val_pending", False)), "world_size": dist.get_world_size(),
            "loss_sums": dict(state.get("loss_sums", {})), "loss_count": int(state.get("loss_count", 0)),
            "rng": rng_states(),
            "text_tower": text_tower_info(dist_unwrap(model)),
            "config": to_dict(cfg), **({"vocabulary": list(vocabulary)} if vocabulary else {}),
            **({"category_ids": [int(c) for c in category_ids]} if vocabulary and category_ids else {})}


def restore_checkpoint(ckpt: dict, model, ema, optimizer, scaler, state: dict) -> None:
    """Inverse of `make_checkpoint` (strict: every weight must be present). The optimizer gets the
    saved per-parameter state, but keeps the weight decay it was built with: that follows this
    run's total batch (the batch rule), which a resume with another process count changes; lr and
    momentum are set by the schedule at every step."""
    text = {k: v for k, v in ckpt["ema"].items() if k.startswith(TEXT_PREFIX)}
    dist_unwrap(model).load_state_dict({**text, **ckpt["model"]})
    ema.load_state_dict({**ckpt["ema_state"], "module": {**text, **ckpt["ema_state"]["module"]}})
    decays = [group["weight_decay"] for group in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, decay in zip(optimizer.param_groups, decays):
        group["weight_decay"] = decay
    if ckpt["scaler"]:  # empty when the saved run had no fp16 scaler (bf16, fp32, CPU)
        scaler.load_state_dict(ckpt["scaler"])
    for key in ("epoch", "step_in_epoch", "global_step", "best_ap", "best_epoch"):
        state[key] = ckpt[key]
    state["val_pending"] = bool(ckpt.get("val_pending", False))  # absent before: validation had finished
    if "loss_sums" in ckpt:  # the epoch's logged-loss sums so far (absent before: the mean restarts)
        state["loss_sums"], state["loss_count"] = dict(ckpt["loss_sums"]), int(ckpt["loss_count"])
    set_rng_states(ckpt["rng"])


def resolve_resume(path) -> Path:
    """RUN_DIR (-> RUN_DIR/last.pt) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"--resume {path}: no checkpoint at {p} (pass a run folder holding last.pt, "
                                f"or a .pt file)")
    return p


# Keys a resumed run may change (`fit(..., resume_changes=)`, `--resume` with `--set`): they change how
# it is validated, not what it trains (device and workers come with `cfg`).
RESUME_CHANGEABLE = ("data.val_batch_size",)

# What `make_checkpoint` writes and a resume reads.
RESUME_KEYS = ("model", "ema", "ema_state", "optimizer", "scaler", "epoch", "step_in_epoch", "global_step",
               "best_ap", "best_epoch", "rng", "config")


def read_resume(resume, cfg, world_size: int, say, changes: dict | None = None) -> tuple[dict, object, bool]:
    """(checkpoint, its run's config, whether the run has finished) for `--resume RUN_DIR_OR_CKPT`,
    checked; `cfg` gives only where the run goes on (device, workers), `changes` values of
    RESUME_CHANGEABLE keys. Says what is resumed, or that nothing is left to train."""
    from worldtune.config import from_dict, merge
    from worldtune.engine.checkpoint import load_checkpoint_file

    path = resolve_resume(resume)
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "ema_state" not in ckpt or "config" not in ckpt:
        raise ValueError(f"--resume {path}: not a worldtune training checkpoint (use --weights to start "
                         f"from other weights)")
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"--resume {path}: this training checkpoint lacks {missing} (written by another "
                         f"version, or damaged); use --weights {path} to start a new run from its weights")
    saved = from_dict(ckpt["config"], f"{path} (saved config)")
    # The recipe and data come from the run; where it runs may change.
    saved.train.device, saved.data.workers, saved.out = cfg.train.device, cfg.data.workers, str(path.parent)
    other = sorted(set(changes or {}) - set(RESUME_CHANGEABLE))
    if other:
        raise ValueError(f"--resume: {', '.join(other)} cannot change in a resumed run (only "
                         f"{', '.join(RESUME_CHANGEABLE)}, --device and --workers may)")
    merge(saved, changes or {}, "--set")
    if ckpt["epoch"] >= saved.train.epochs and not ckpt.get("val_pending"):
        say(f"{path}: the run already finished its {saved.train.epochs} epochs; nothing is left to train "
            f"(start a new run with --weights {path} to train further)")
        return ckpt, saved, True
    # The run's data are where its saved config names them (they cannot change on resume): one moved
    # or deleted is told here as such, not as a bare missing file as if the user had named it.
    for key in ("train_ann", "train_images", "val_ann", "val_images", "class_texts"):
        where = getattr(saved.data, key)
        if where and not Path(where).exists():
            raise ValueError(f"--resume {path}: the run's data.{key}, {where}, does not exist (moved or "
                             "deleted?); a resumed run reads the files its saved config names: put it back "
                             "there (or a link to it)")
    if ckpt.get("val_pending"):  # stopped in the validation after its last completed epoch: that comes first
        left = f", then epoch {ckpt['epoch'] + 1}" if ckpt["epoch"] < saved.train.epochs else " (the run's last)"
        say(f"resuming {path}: the validation after epoch {ckpt['epoch']}{left}")
    else:
        say(f"resuming {path}: epoch {ckpt['epoch'] + 1}, step {ckpt['step_in_epoch']} of that epoch")
    saved_world = ckpt.get("world_size", world_size)
    if saved_world != world_size:
        say(f"warning: the run was trained with {saved_world} process(es), resumed with {world_size}: the "
            f"total batch, so the weight-decay rule and the iterations per epoch, change"
            + (", and the rest of this epoch skips a different set of images" if ckpt["step_in_epoch"] else ""))
    return ckpt, saved, False


def resume_loader(train_loader, skip_batches: int):
    """The epoch's batches from batch `skip_batches` on, in the same order with the same
    augmentations (the sampler's order for this epoch, minus what was already trained)."""
    if skip_batches == 0:
        return train_loader
    from torch.utils.data import DataLoader
    dl = train_loader.loader
    indices = list(train_loader.sampler)[skip_batches * dl.batch_size:]
    return train_loader.reporter.reported(DataLoader(dl.dataset, batch_size=dl.batch_size, sampler=indices,
                                                     num_workers=dl.num_workers, collate_fn=dl.collate_fn,
                                                     pin_memory=dl.pin_memory, drop_last=dl.drop_last,
                                                     worker_init_fn=dl.worker_init_fn))
