"""Official YOLOv5-style warm-up + per-epoch linear lr decay, as a closed-form function (and
`short_run_notes`: what that schedule means for a run much shorter than the recipe's).

The training loop calls `apply_schedule(optimizer, epoch, global_iter, iters_per_epoch, cfg)`
before every optimizer step. It sets each group's lr (and SGD momentum) to the value the
official hook would have in place at that iteration, computed from scratch, so resuming
needs no scheduler state. Weight decay is never touched.

With f(e) = (1 - e / E) * (1 - lr_factor) + lr_factor and W = max(round(warmup_epochs *
iters_per_epoch), min_warmup_iters):

- i <= W: lr = linear from a start value at i = 0 to initial_lr * f(current epoch) at i = W
  (the target steps down at each epoch boundary inside warm-up); start is 0, except for
  the warm-up-bias groups (below) which start at `warmup_bias_lr`. SGD momentum goes
  linearly from `warmup_momentum` to its initial value.
- i > W: lr changes only at epoch ends, to initial_lr * f(finished epoch); so epoch e
  trains with f(e - 1), and the epoch in which warm-up ended keeps f(that epoch).
  The last epoch therefore uses f(E - 2); the schedule never reaches lr_factor.

Warm-up-bias groups: upstream applies the bias start to the optimizer group at *index 2*,
which was "all biases" in YOLOv5's three-group layout but, with one group per parameter,
is the single parameter `backbone.image_model.stem.bn.bias` (starting at 0.1, i.e. 500x
the AdamW base lr). `bias_warmup="group2"` (default) reproduces that; `bias_warmup="biases"`
is the evidently intended behaviour: every group whose parameter name ends in "bias";
`bias_warmup="none"` gives every group the plain 0 start (sensible with AdamW).
"""
from dataclasses import dataclass

import torch


@dataclass
class ScheduleConfig:
    """Official YOLOv5ParamSchedulerHook settings (80-epoch recipes; SGD 40e sets max_epochs=40)."""

    max_epochs: int = 80
    lr_factor: float = 0.01
    warmup_epochs: float = 3.0
    min_warmup_iters: int = 1000
    warmup_bias_lr: float = 0.1
    warmup_momentum: float = 0.8
    bias_warmup: str = "group2"  # "group2" (official), "biases" (corrected) or "none"


def lr_multiplier(epoch: int, max_epochs: int, lr_factor: float = 0.01) -> float:
    """Linear decay f(epoch) = (1 - epoch / max_epochs) * (1 - lr_factor) + lr_factor."""
    return (1 - epoch / max_epochs) * (1.0 - lr_factor) + lr_factor


def warmup_iters(iters_per_epoch: int, cfg: ScheduleConfig) -> int:
    """W = max(round(warmup_epochs * iters_per_epoch), min_warmup_iters) (Python rounding)."""
    return max(round(cfg.warmup_epochs * iters_per_epoch), cfg.min_warmup_iters)


def _interp(start: float, end: float, i: int, total: int) -> float:
    # Same arithmetic as numpy.interp on [0, total], which the official hook uses; exact at the end.
    if i >= total:
        return end
    return (end - start) / total * i + start


def base_lr_group(optimizer: torch.optim.Optimizer, mode: str) -> int:
    """Index of a group that follows the base learning rate (not a warm-up-bias group): the lr to report."""
    bias = _bias_warmup_groups(optimizer, mode)
    return next((i for i in range(len(optimizer.param_groups)) if i not in bias), len(optimizer.param_groups) - 1)


def _bias_warmup_groups(optimizer: torch.optim.Optimizer, mode: str) -> set[int]:
    if any("warmup_bias_start" in g for g in optimizer.param_groups):  # merged groups carry the flag
        return {i for i, g in enumerate(optimizer.param_groups) if g["warmup_bias_start"]}
    if mode == "group2":
        return {2}
    if mode == "none":
        return set()
    if mode == "biases":
        found = set()
        for index, group in enumerate(optimizer.param_groups):
            names = group.get("param_names")
            if names is None:
                raise ValueError("bias_warmup='biases' needs param groups with 'param_names' "
                                 "(build the optimizer with worldtune.engine.optim.build_optimizer)")
            if all(n.endswith("bias") for n in names):
                found.add(index)
        return found
    raise ValueError(f"ScheduleConfig.bias_warmup must be 'group2', 'biases' or 'none', got {mode!r}")


def apply_schedule(optimizer: torch.optim.Optimizer, epoch: int, global_iter: int, iters_per_epoch: int,
                   cfg: ScheduleConfig | None = None) -> float:
    """Set lr (and momentum where the optimizer has one) for the coming step.

    Args:
        optimizer: groups must hold `initial_lr` and `initial_momentum` (set by build_optimizer).
        epoch: 0-based epoch of this iteration.
        global_iter: 0-based iteration counted from the start of training.
        iters_per_epoch: batches per epoch on this process (len of the train loader).
        cfg: ScheduleConfig; defaults to the official 80-epoch settings.
    Returns:
        The lr of group 0 (for logging).
    """
    cfg = cfg or ScheduleConfig()
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    total_warmup = warmup_iters(iters_per_epoch, cfg)
    in_warmup = global_iter <= total_warmup
    bias_groups = _bias_warmup_groups(optimizer, cfg.bias_warmup) if in_warmup else set()
    if in_warmup:
        factor = lr_multiplier(epoch, cfg.max_epochs, cfg.lr_factor)
    elif epoch * iters_per_epoch <= total_warmup:
        # Warm-up ended inside this epoch: its last warm-up step set f(epoch); nothing since.
        factor = lr_multiplier(epoch, cfg.max_epochs, cfg.lr_factor)
    else:
        # Set at the end of the previous epoch.
        factor = lr_multiplier(epoch - 1, cfg.max_epochs, cfg.lr_factor)

    for index, group in enumerate(optimizer.param_groups):
        if "initial_lr" not in group:
            raise KeyError(f"optimizer param group {index} has no 'initial_lr'; build the optimizer with "
                           "worldtune.engine.optim.build_optimizer or set initial_lr/initial_momentum")
        target = group["initial_lr"] * factor
        if in_warmup:
            start = cfg.warmup_bias_lr if index in bias_groups else 0.0
            group["lr"] = _interp(start, target, global_iter, total_warmup)
            if "momentum" in group:
                group["momentum"] = _interp(cfg.warmup_momentum, group["initial_momentum"], global_iter,
                                            total_warmup)
        else:
            group["lr"] = target
            if "momentum" in group:
                group["momentum"] = group["initial_momentum"]
    return optimizer.param_groups[0]["lr"]


def short_run_notes(t, iters_per_epoch: int, warmup: int) -> list[str]:
    """What the recipe's schedule does to a run much shorter than the recipe's (official values are
    kept, so a 5-epoch fine-tune otherwise learns at a tiny lr and never sees a mosaic, silently)."""
    notes = []
    total = t.epochs * iters_per_epoch
    if warmup >= total:
        by_epochs = round(t.warmup_epochs * iters_per_epoch)
        # name whichever term sets the length (both, when both reach the run's end)
        lower = [key for key, length in (("train.min_warmup_iters", t.min_warmup_iters),
                                         ("train.warmup_epochs", by_epochs)) if length >= total]
        notes.append(f"the lr warm-up lasts {warmup} iterations (max of train.warmup_epochs={t.warmup_epochs:g} "
                     f"epochs = {by_epochs} and train.min_warmup_iters={t.min_warmup_iters}), the whole run "
                     f"{total}: the lr never reaches train.lr={t.lr:g}. For a short run lower {' and '.join(lower)}")
    if t.close_mosaic_epochs >= t.epochs:
        notes.append(f"train.close_mosaic_epochs={t.close_mosaic_epochs} covers all {t.epochs} epochs: every epoch "
                     f"is the last stage, without mosaic, MixUp or copy-paste. Lower it for a short run")
    return notes


def vocabulary_note(num_classes: int, num_texts: int) -> str:
    """Said at the start of a run whose dataset has fewer classes than `data.num_texts` (the COCO
    recipes' 80): every image's text list is then padded with '' up to that count, as an unchanged
    official config does, while the official guide for custom datasets sets the count to the classes."""
    if num_classes >= num_texts:
        return ""
    return (f"data.num_texts={num_texts} but the dataset has {num_classes} classes: each image's "
            f"texts are padded with {num_texts - num_classes} empty ones, as the COCO recipe does; "
            f"for a custom dataset the official guide uses the class count: --set data.num_texts={num_classes}")


def batch_note(batch_size: int, images_per_process: int, world_size: int) -> str:
    """Said at the start of a run whose training set is smaller than one batch: the loader keeps the
    short last batch (drop_last=False, as the official loader), so an epoch is then a single step of
    fewer images than `train.batch_size`, while the weight-decay rule counts the configured batch.

    `images_per_process`: the sampler's share of one process (DistributedSampler pads it to
    ceil(images / world_size))."""
    if batch_size <= images_per_process:
        return ""
    where = " per process" if world_size > 1 else ""
    return (f"train.batch_size={batch_size} is more than the {images_per_process} training images{where}: each "
            f"epoch is one step of {images_per_process} images{where} (the weight-decay rule still counts "
            f"{batch_size})")
