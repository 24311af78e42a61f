"""The fine-tuning loop as functions: `train_one_epoch` (one pass over the loader) and `fit` (the run).

Per iteration, in this order (REFERENCE.md §1.2-§1.6):
    schedule (lr/momentum for this global iteration) -> text features of the batch (frozen CLIP,
    cached per vocabulary) -> forward [autocast on GPU] -> loss (official x batch x world scale)
    -> stop if non-finite -> backward -> clip total grad norm 10 -> optimizer step -> EMA update.
Per epoch: `loader.set_epoch(e)` (shuffle, augmentation seed, mosaic closed for the last N epochs),
then `last.pt`, optional `epoch_N.pt`, and COCO validation of the EMA weights when due (`best.pt`).

A run is resumable from any checkpoint: `last.pt` holds model, EMA, optimizer, GradScaler, epoch,
step within the epoch, RNG states and the config; data order and augmentation are functions of
(seed, epoch, index), so on CPU a resumed run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from worldtune.engine import dist
from worldtune.engine.dist import dist_unwrap
from worldtune.engine.logger import RunLogger, read_metrics
from worldtune.engine.run_state import make_checkpoint, read_resume, restore_checkpoint, resume_loader
from worldtune.engine.schedule import base_lr_group
from worldtune.engine.setup import build_datasets, load_start_weights, read_start_weights
from worldtune.engine.stopping import StopFlag, checkpoint_write_failure, resume_hint, stopped_note
from worldtune.engine.text_feats import batch_text_feats
from worldtune.engine.validate import evaluate_ema, validation_due
from worldtune.model.loading import TEXT_PREFIX, build_text_model
from worldtune.progress import end_progress_bars
from worldtune.zoo import resolve_weights
from worldtune.outputs import OutputWriteError, check_writable, writing


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the message names the step and the last good checkpoint."""


@functools.lru_cache(maxsize=None)  # asked every epoch; the CPU does not change
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX, read from /proc/cpuinfo on
    Linux). Elsewhere oneDNN emulates bf16 convolutions, which can be slower than fp32."""
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_settings(amp: str, device: torch.device, cpu_amp: bool = False) -> tuple[bool, torch.dtype | None]:
    """(enabled, dtype). AMP runs on CUDA, and with `cpu_amp` (train.cpu_amp) bf16 on a CPU that computes
    bf16 natively; fp16 needs a GradScaler, bf16 does not."""
    if amp not in ("bf16", "fp16", "none"):
        raise ValueError(f"train.amp must be bf16, fp16 or none, got {amp!r}")
    if device.type == "cpu" and cpu_amp and amp == "bf16" and cpu_has_native_bf16():
        return True, torch.bfloat16
    if device.type != "cuda" or amp == "none":
        return False, None
    # Native bf16 from Ampere (compute capability 8) on. `torch.cuda.is_bf16_supported()` is also true
    # on a T4 or V100, where bf16 is only emulated (slow, or no cuDNN kernel): fp16 + GradScaler there.
    native_bf16 = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    if amp == "bf16" and not native_bf16:
        return True, torch.float16
    return True, torch.bfloat16 if amp == "bf16" else torch.float16


def cpu_amp_note(t, device: torch.device) -> str | None:
    """Why train.cpu_amp=true has no effect on this run, if it has none."""
    if not t.cpu_amp:
        return None
    if device.type != "cpu":
        return "train.cpu_amp applies to CPU training only (train.amp sets the GPU's precision)"
    if t.amp != "bf16":
        return f"train.cpu_amp needs train.amp=bf16 (got {t.amp}): training runs in fp32"
    if not cpu_has_native_bf16():
        return "train.cpu_amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so training runs in fp32"
    return None


def channels_last_on(cfg, device: torch.device) -> bool:
    """NHWC activations and conv weights: cuDNN's fastest layout for tensor cores; no gain on CPU."""
    return cfg.train.channels_last and device.type == "cuda"


def train_one_epoch(model: nn.Module, text_model: nn.Module, criterion, loader, optimizer, ema, scaler,
                    epoch: int, state: dict, cfg, device: torch.device, schedule_fn, logger: RunLogger,
                    stop: StopFlag | None = None, on_step_end=None) -> dict:
    """One (possibly partial) epoch. `state` is updated in place: global_step, step_in_epoch.

    Args:
        model: the (maybe DDP-wrapped) detector; text_model: its frozen CLIP tower.
        loader: an iterable of training batches that starts at `state['step_in_epoch']`.
        schedule_fn: (optimizer, epoch, global_step) -> None, sets lr/momentum for this iteration.
        on_step_end: optional (state) -> None after every completed step (used to save mid-epoch).
    Returns:
        dict(mean losses over the epoch's steps (those before a resume included), 'interrupted': bool).
    """
    model.train()
    amp_on, amp_dtype = amp_settings(cfg.train.amp, device, cfg.train.cpu_amp)
    if state["step_in_epoch"] == 0 or "loss_sums" not in state:  # a resumed epoch keeps its sums
        state["loss_sums"], state["loss_count"] = {}, 0
    sums, images_seen = state["loss_sums"], 0
    start = time.perf_counter()
    total = state["iters_per_epoch"]
    bar = logger.progress(loader, total=total, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                          initial=state["step_in_epoch"])
    memory_format = torch.channels_last if channels_last_on(cfg, device) else torch.contiguous_format
    lr_group = base_lr_group(optimizer, cfg.train.bias_warmup)  # warm-up-bias groups start elsewhere
    lr = optimizer.param_groups[lr_group]["lr"]  # the last step's, for an epoch resumed after its last step
    for batch in bar:
        schedule_fn(optimizer, epoch, state["global_step"])
        # One kernel converts both the dtype and the layout (uint8 NCHW -> float32 NHWC on GPU).
        images = batch["images"].to(device, non_blocking=True).to(torch.float32, memory_format=memory_format)
        images.div_(255)
        text_feats = batch_text_feats(text_model, batch["texts"], device)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_on else nullcontext():
            outputs = model(images, text_feats)
        # The targets stay on the host: the criterion pads them there, without a device sync.
        losses = criterion([c.float() for c in outputs.cls_logits], [r.float() for r in outputs.box_dist_logits],
                           batch["bboxes_labels"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.grad is not None], cfg.train.grad_clip)

        # The step's one device->host copy: the logged values and the gradient norm, which are also
        # the NaN checks. It comes after backward, so the GPU has the whole backward queued, and
        # before the optimizer step, so a non-finite loss or gradient never reaches the weights. A NaN
        # on any rank survives the cross-rank mean (and gradients are already averaged), so every rank
        # stops together. Under torchrun a Ctrl-C travels in the same reduction (any rank's request
        # stops all of them after this step): a separate all-reduce would cost a second sync per step.
        to_reduce = {k: v.detach() for k, v in losses.items()}
        if dist.is_dist() and stop is not None:
            to_reduce["stop_requests"] = torch.full((), float(stop.requested), device=device)
        reduced = dist.reduce_dict(to_reduce)
        *values, grad_norm = torch.stack([v.float() for v in reduced.values()] + [grad_norm.float()]).tolist()
        logged = dict(zip(reduced, values))
        stop_voted = logged.pop("stop_requests", 0.0) > 0
        where = (f"at epoch {epoch + 1}, step {state['step_in_epoch'] + 1} (global step {state['global_step'] + 1}); "
                 f"{', '.join(f'{k}={v:.4g}' for k, v in logged.items())}")
        if not math.isfinite(logged["loss"]):
            raise NonFiniteLossError(f"non-finite loss ({logged['loss']}) {where}")
        if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips such steps itself
            raise NonFiniteLossError(f"non-finite gradient norm ({grad_norm}) {where}")
        state["updating"] = True  # until the counters say this step happened (see fit's Ctrl-C handling)
        scaler.step(optimizer)
        scaler.update()
        ema.update(dist_unwrap(model))
        state["global_step"] += 1
        state["step_in_epoch"] += 1
        state["updating"] = False

        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        state["loss_count"] += 1
        images_seen += images.shape[0] * dist.get_world_size()
        rate = images_seen / max(time.perf_counter() - start, 1e-9)
        lr = optimizer.param_groups[lr_group]["lr"]
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{logged['loss']:.2f}", cls=f"{logged['loss_cls']:.2f}",
                            bbox=f"{logged['loss_bbox']:.2f}", dfl=f"{logged['loss_dfl']:.2f}",
                            lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)  # shown at the bar's own pace
        if state["global_step"] % cfg.train.log_interval == 0 or state["step_in_epoch"] == total:
            logger.log("train", state["global_step"], epoch=epoch, **logged,
                       lr=lr, grad_norm=grad_norm, images_per_s=rate)
        if on_step_end is not None:
            on_step_end(state)
        if stop is not None and (stop_voted if dist.is_dist() else stop.requested):
            return {**{k: v / max(state["loss_count"], 1) for k, v in sums.items()}, "interrupted": True}
    if hasattr(bar, "close"):
        bar.close()
    return {**{k: v / max(state["loss_count"], 1) for k, v in sums.items()}, "interrupted": False, "lr": lr}


# ----------------------------------------------------------------------------- the run

def drawn(plot, *args, **kwargs):
    """plot(*args, **kwargs), the picture's path or None; a failure is a warning that names the picture."""
    try:
        return plot(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - after a finished run, any plotting failure is only a lost picture
        warnings.warn(f"could not draw {args[1]} ({type(err).__name__}: {err}); the run itself is complete")
        return None


def fit(cfg, resume=None, resume_changes: dict | None = None) -> dict:
    """Train `cfg` (a `worldtune.config.Config`) to the end, or continue the run of `resume`
    (its saved config, with `cfg`'s device and workers and `resume_changes` of RESUME_CHANGEABLE keys).

    Returns dict(status: "finished" | "interrupted", out, best_ap, best_epoch, last_metrics, epochs).
    On a CPU it turns on flush-to-zero for denormal floats (process-wide; see `_fit`).
    Raises NonFiniteLossError (last.pt keeps the last good state) and ValueError for bad input.
    """
    info = dist.init_distributed(cfg.train.device)
    try:
        return _fit(cfg, info, resume, resume_changes)
    finally:
        dist.cleanup()


def _fit(cfg, info: dist.DistInfo, resume, resume_changes: dict | None = None) -> dict:
    from worldtune.config import absolute_paths, batch_rule, dump, unused_value_notes, validate
    from worldtune.engine.checkpoint import save_checkpoint_atomic
    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.logger import plot_curves, summary_table
    from worldtune.engine.optim import OptimConfig, build_optimizer
    from worldtune.engine.schedule import (ScheduleConfig, apply_schedule, batch_note, short_run_notes, vocabulary_note,
                                           warmup_iters)
    from worldtune.loss.criterion import YOLOWorldCriterion
    from worldtune.model import build_model

    say = print if info.is_main else (lambda *a, **k: None)
    ckpt = None
    if resume is not None:
        ckpt, cfg, finished = read_resume(resume, cfg, info.world_size, say, resume_changes)
        if finished:
            return {"status": "finished", "out": Path(cfg.out), "best_ap": ckpt["best_ap"],
                    "best_epoch": ckpt["best_epoch"], "last_metrics": None, "epochs": ckpt["epoch"],
                    "global_step": ckpt["global_step"]}
    validate(cfg)
    if ckpt is None:
        absolute_paths(cfg)  # as saved: a resume from another working directory finds the same files
    out = Path(cfg.out)
    # Every rank looks before any can have written there (rank 0 writes config.yaml after the data
    # and weights load, and the agreement below is a collective every rank reaches first).
    taken = ckpt is None and (any((out / name).exists() for name in ("last.pt", "best.pt"))
                              or any(out.glob("epoch_*.pt")))
    if not dist.all_true(not taken, info.device):
        raise ValueError(f"run folder {out} already holds a run: continue it with --resume {out}, or choose "
                         f"another --out (a new run there would mix its logs and checkpoints with the old one's)")
    if info.is_main:  # now, not after the data is read and the images cached
        check_writable(out, "run folder")
    t = cfg.train
    torch.manual_seed(t.seed)
    if info.device.type == "cpu":
        # Gradients through the low-prior class bias (sigmoid(-11)) underflow to denormal floats,
        # which x86 CPUs process ~100x slower: flushing them halves a CPU training step.
        torch.set_flush_denormal(True)
    # bad data and bad weights fail here, early, before the run folder exists; a wrong weights name or
    # path before the data is read (reading and caching the images can take minutes)
    weights_path = None
    if ckpt is None and cfg.model.weights.lower() != "none":
        weights_path = resolve_weights(cfg.model.weights)
    if cfg.data.train_ann:
        say(f"reading {cfg.data.train_ann}" + (f" and {cfg.data.val_ann}" if cfg.data.val_ann else "") + " ...")
    with warnings.catch_warnings():
        if not info.is_main:  # every rank reads the same files: rank 0 reports their problems once
            warnings.simplefilter("ignore")
        train_set, train_loader, val_coco, val_loader = build_datasets(cfg, info, ckpt["epoch"] if ckpt else 0)
    start = read_start_weights(weights_path, cfg.model.variant) if weights_path else None
    tower_weights = ckpt["ema"] if ckpt else start[1] if start else None
    heads = (ckpt.get("text_tower") or {}).get("num_heads") if ckpt else start[2] if start else None
    model = build_model(cfg.model.variant, build_text_model(cfg.model.text_model, t.seed, tower_weights, heads),
                        num_classes=cfg.data.num_texts)
    if ckpt is not None and model.text_model is not None:
        # The frozen tower takes the checkpoint's own tensors (read_resume reads the file, it does not
        # map it; the tower never writes them): no second 242 MiB (ViT-B/32) while the checkpoint is
        # held. Whether they fit it all is restore_checkpoint's strict load's to say.
        model.text_model.load_state_dict({k[len(TEXT_PREFIX):]: v for k, v in ckpt["ema"].items()
                                          if k.startswith(TEXT_PREFIX)}, strict=False, assign=True)
    start_report = load_start_weights(model, start[0], start[1]) if start else None
    if ckpt is None and start is None:  # say it: a forgotten --weights none would otherwise go unnoticed
        start_report = "start weights: none (random initialisation)"
    if tower_weights and any(k.startswith(TEXT_PREFIX) for k in tower_weights):  # config.yaml names only the tokenizer
        start_report = (start_report + "\n" if start_report else "") + \
            (f"text tower: the frozen weights in {start[0] if start else 'the checkpoint'} "
             f"(model.text_model={cfg.model.text_model} gives the tokenizer)")
    del start, tower_weights  # the file's tensors (~0.5 GB for L): the model holds its own copies now
    if train_set.cache_report:
        say(train_set.cache_report)
    if info.is_main:
        with writing(out / "config.yaml"):  # a full disk's error names no file
            out.mkdir(parents=True, exist_ok=True)
            dump(cfg, out / "config.yaml")
        if ckpt is None and (out / "metrics.jsonl").exists():  # from a start that failed before any checkpoint
            say(f"{out / 'metrics.jsonl'}: the log of an earlier attempt that saved no checkpoint is replaced")
            (out / "metrics.jsonl").unlink()
    _, rule = batch_rule(info.world_size, t.batch_size, t.weight_decay, t.lr)
    say(rule)
    if start_report:
        say(start_report)
    model.to(info.device)
    if channels_last_on(cfg, info.device):
        model.to(memory_format=torch.channels_last)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: autotuned kernels pay off after one step
    model = dist.convert_sync_bn(model, info.world_size, info.device)
    text_model = model.text_model
    train_model = model
    if info.distributed:
        # On GPUs SyncBatchNorm keeps the running statistics equal on every rank, so DDP need not
        # broadcast rank 0's buffers before each forward (mmengine turns it off too). CPU processes
        # keep per-process BatchNorm: there the broadcast keeps them close.
        on_gpu = info.device.type == "cuda"
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if on_gpu else None, broadcast_buffers=not on_gpu)
    optimizer = build_optimizer(model, OptimConfig(
        name=t.optimizer, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
        batch_size_per_gpu=t.batch_size, clip_grad_max_norm=t.grad_clip), info.world_size,
        merge_groups=t.merge_param_groups, bias_warmup=t.bias_warmup)
    ema = ExpMomentumEMA(model, momentum=t.ema_momentum, gamma=t.ema_gamma)
    amp_on, amp_dtype = amp_settings(t.amp, info.device, t.cpu_amp)
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_on and amp_dtype == torch.float16)
    criterion = YOLOWorldCriterion(world_size=info.world_size)
    iters = len(train_loader)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best_ap": -1.0, "best_epoch": -1,
             "iters_per_epoch": iters}
    if ckpt is not None:
        restore_checkpoint(ckpt, model, ema, optimizer, scaler, state)  # weight decay: this run's batch rule
        del ckpt
        # Resumed from an older checkpoint (epoch_N.pt): best.pt may hold a better, later AP; keep it.
        logged = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "val" and r.get("AP") is not None]
        best = max(logged, key=lambda r: r["AP"], default=None)
        if best is not None and (out / "best.pt").is_file() and best["AP"] > state["best_ap"]:
            state["best_ap"], state["best_epoch"] = best["AP"], best["epoch"]
    sched = ScheduleConfig(max_epochs=t.epochs, lr_factor=t.lr_factor, warmup_epochs=t.warmup_epochs,
                           min_warmup_iters=t.min_warmup_iters, warmup_bias_lr=t.warmup_bias_lr,
                           warmup_momentum=t.warmup_momentum, bias_warmup=t.bias_warmup)

    def schedule_fn(opt, epoch, global_step):
        apply_schedule(opt, epoch, global_step, iters, sched)

    def save(name: str, evaluated=None) -> None:
        try:
            dist.save_on_master(save_checkpoint_atomic,
                                make_checkpoint(model, ema, optimizer, scaler, state, cfg, evaluated,
                                                vocabulary=train_set.dataset.class_names,
                                                category_ids=train_set.dataset.cat_ids), out / name)
        except OutputWriteError as err:  # a full disk, a folder made read-only or removed
            raise checkpoint_write_failure(err, resume_command) from err

    def save_epoch_end(epoch: int) -> None:
        """last.pt after `epoch` (0-based), then its epoch_N.pt when one is due (the same state)."""
        save("last.pt")
        if t.checkpoint_interval > 0 and (epoch + 1) % t.checkpoint_interval == 0:
            save(f"epoch_{epoch + 1}.pt")

    def on_step_end(s):
        if t.save_every_steps > 0 and s["global_step"] % t.save_every_steps == 0:
            save("last.pt")

    logger = RunLogger(out, enabled=info.is_main, purge_step=state["global_step"] + 1 if resume is not None else None)
    last_metrics, status = None, "finished"
    say(f"training {cfg.model.variant} for {t.epochs} epochs x {iters} iterations "
        f"({len(train_set)} images, batch {t.batch_size} x {info.world_size} process(es)) on {info.device}; "
        f"run folder {out}")
    for line in short_run_notes(t, iters, warmup_iters(iters, sched)) + \
            [vocabulary_note(train_set.dataset.num_classes, cfg.data.num_texts),
             batch_note(t.batch_size, len(train_loader.sampler), info.world_size),
             cpu_amp_note(t, info.device)] + unused_value_notes(cfg):
        if line:
            say(f"note: {line}")

    stop = StopFlag(announce=info.is_main)
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))  # processes on this machine
    resume_command = resume_hint(out, info.world_size, local_world_size, t.device)

    def validate(epoch: int) -> None:
        """Score the EMA weights after `epoch` (0-based), log it and keep best.pt (all ranks call it)."""
        nonlocal last_metrics
        # Ctrl-C stops a validation at once (a resume repeats it), on one machine: there every rank
        # gets the signal. Across machines the ranks that did not would wait in its collectives:
        # there the ranks agree before each prediction batch (evaluate_ema's `stop`) and stop together.
        state["validating"] = True
        stop.immediate = local_world_size == info.world_size
        if not dist.all_true(not stop.requested, info.device):  # pressed after the last step
            raise KeyboardInterrupt
        metrics, evaluated = evaluate_ema(ema, val_coco, val_loader, cfg, train_loader, epoch, info.device,
                                          stop=None if stop.immediate else stop)
        stop.immediate = False
        if info.is_main:
            last_metrics = metrics
            ap = last_metrics["AP"]  # None: no ground-truth box to score, so no epoch is better than another
            if ap is not None and ap > state["best_ap"]:
                state["best_ap"], state["best_epoch"] = ap, epoch
                save("best.pt", evaluated)  # the weights that scored this AP
            # logged after best.pt is written: a resume trusts the logged best AP (see above)
            logger.log("val", state["global_step"], epoch=epoch,
                       **{k: last_metrics[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")})
            if ap is None:
                say(f"epoch {epoch + 1}: AP n/a: the validation set has no ground-truth box to score (so no best.pt)")
            else:
                say(f"epoch {epoch + 1}: AP {100 * ap:.1f}  AP50 {100 * (last_metrics['AP50'] or 0):.1f} (EMA weights)")
        dist.barrier()
        state["validating"] = state["val_pending"] = False

    started, start_step = time.monotonic(), state["global_step"]  # the pace of this process's own steps
    in_epoch = False  # inside train_one_epoch: an error there may save the steps done so far
    try:
        with stop:
            if state.get("val_pending") and val_loader is not None:  # stopped during that validation
                validate(state["epoch"] - 1)
                save_epoch_end(state["epoch"] - 1)
            for epoch in range(state["epoch"], t.epochs):
                if not dist.all_true(not stop.requested, info.device):  # Ctrl-C between two epochs' steps
                    raise KeyboardInterrupt
                state["epoch"] = epoch
                train_loader.set_epoch(epoch)
                batches = resume_loader(train_loader, state["step_in_epoch"])
                in_epoch = True
                stats = train_one_epoch(train_model, text_model, criterion, batches, optimizer, ema, scaler,
                                        epoch, state, cfg, info.device, schedule_fn, logger, stop, on_step_end)
                in_epoch = False
                if stats.pop("interrupted"):
                    raise KeyboardInterrupt
                state["epoch"], state["step_in_epoch"] = epoch + 1, 0
                logger.log("epoch", state["global_step"], epoch=epoch, **stats)
                if val_loader is not None and validation_due(epoch + 1, cfg):
                    # Saved first: if validation fails (out of memory, bad data) or is aborted, the trained
                    # epoch is kept and a resume runs the validation before going on.
                    state["val_pending"] = True
                    save("last.pt")
                    validate(epoch)
                save_epoch_end(epoch)
                trained = state["global_step"] - start_step  # a resumed first epoch may be a few steps only
                if epoch + 1 < t.epochs and trained > 0:  # the bars give each epoch's ETA; this the whole run's
                    left = (time.monotonic() - started) / trained * iters * (t.epochs - epoch - 1)
                    say(f"epoch {epoch + 1}/{t.epochs} done; about {tqdm.format_interval(left)} left for the "
                        f"other {t.epochs - epoch - 1} epoch(s) at this pace, validations included")
    except KeyboardInterrupt:
        # Counters describe the last completed step (a step is committed by its EMA update and the
        # step count), so this checkpoint resumes exactly where training stopped; unless the abort
        # came in the middle of a weight update or of the epoch's validation: then the previous
        # last.pt is the consistent state to resume from.
        if state.get("updating") or state.get("validating"):
            kept = "was left as it was" if state.get("updating") else "was saved before it and resumes with it"
            say(f"\naborted during a {'weight update' if state.get('updating') else 'validation'}: "
                f"{out / 'last.pt'} {kept}; continue with: {resume_command}")
        else:
            save("last.pt")
            say(f"\nstopped at epoch {state['epoch'] + 1}, step {state['step_in_epoch']}: saved {out / 'last.pt'}; "
                f"continue with: {resume_command}")
        status = "interrupted"
    except NonFiniteLossError as e:
        logger.close()
        good = out / "last.pt"
        raise NonFiniteLossError(f"{e}. Training stopped; the last good checkpoint "
                                 f"{'is ' + str(good) if good.is_file() else 'was never written'} "
                                 "(try a lower train.lr or check the data)") from None
    except OutputWriteError:  # a checkpoint not written: its message says what is safe and how to go on
        logger.close()
        raise
    except Exception:
        logger.close()
        # An error between two weight updates (out of memory, an unreadable image with on_bad_data=error)
        # leaves the weights, optimizer and EMA at the last completed step: keep the steps trained since
        # the last checkpoint. One in the middle of an update keeps the previous last.pt.
        saved_now = False
        if in_epoch and not state.get("updating") and state["global_step"] > start_step:
            try:
                save("last.pt")
                saved_now = True
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        if info.is_main:  # the error itself follows (the command line prints it); this says what is safe
            end_progress_bars()
            print(stopped_note(out, state, resume_command, saved_now), file=sys.stderr, flush=True)
        raise
    logger.close()
    if info.is_main and status == "finished":
        # The run is done and its checkpoints are written: a picture that cannot be drawn or written
        # (a full disk, a plotting problem) is told, not made the run's failure.
        png = drawn(plot_curves, out / "metrics.jsonl", out / "curves.png")
        say("\n" + summary_table(out / "metrics.jsonl"))
        if png:
            say(f"curves: {png}")
        if last_metrics and last_metrics.get("pr_curves"):  # validated in this process: its PR curves and classes
            from worldtune.eval.plots import plot_eval

            png = drawn(plot_eval, last_metrics, out / "last_val.png",
                        title=f"{out.name}: last validation, EMA weights")
            if png:
                say(f"last validation, PR curves and per-class AP: {png}")
        if state["best_epoch"] >= 0:
            say(f"best AP {100 * state['best_ap']:.1f} after epoch {state['best_epoch'] + 1} ({out / 'best.pt'})")
    seen, limit = len(train_loader.warnings_seen), train_loader.reporter.limit  # each rank: its own shard's
    if seen:
        shown = "shown above" if limit is None or seen <= limit else f"the first {limit} shown above"
        print(f"{f'rank {info.rank}: ' if info.distributed else ''}loading the training data gave {seen} "
              f"distinct warning(s) (bad or mis-sized images and the like; {shown})", flush=True)
    return {"status": status, "out": out, "best_ap": state["best_ap"], "best_epoch": state["best_epoch"],
            "last_metrics": last_metrics, "epochs": state["epoch"], "global_step": state["global_step"]}
