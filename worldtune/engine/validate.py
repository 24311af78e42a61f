"""Validation during training: when it is due (`validation_due`), and COCO AP of the EMA weights,
split over the training processes.

With several processes each one predicts every world_size-th val image (`build_eval_loader` with
the rank and world size: a strided shard, no image repeated), the detections are gathered on rank 0,
and rank 0 alone scores them against the full ground truth. The metrics equal those of one process
evaluating the whole set, in 1/world_size of the time.
"""
import copy
from itertools import islice

import torch
from torch import nn

from worldtune.engine import dist
from worldtune.engine.text_feats import batch_text_feats


@torch.no_grad()
def precise_bn_copy(model: nn.Module, text_model: nn.Module, batches, device: torch.device) -> nn.Module:
    """A copy of `model` whose BatchNorm running statistics are the plain average over `batches`
    (training mode, no gradient). The trained model and its EMA are left untouched.

    The frozen text tower (a quarter of a billion bytes, no BatchNorm) is shared, not copied; its
    train/eval mode is left as it was."""
    tower = getattr(model, "text_model", None)
    was_training = tower.training if tower is not None else False
    model = copy.deepcopy(model, {id(tower): tower} if tower is not None else None)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an exponential one
    try:
        model.train()
        for batch in batches:
            model(batch["images"].to(device).float() / 255, batch_text_feats(text_model, batch["texts"], device))
        return model.eval()
    finally:
        if tower is not None:
            tower.train(was_training)


class StopChecked:
    """`loader`'s batches; before each of the first `common` (a count every rank reaches), the ranks
    agree on `stop.requested` and all raise KeyboardInterrupt if any rank's is set. For runs across
    machines, where a Ctrl-C reaches the ranks of one machine only: the others would otherwise go
    on predicting, and wait in the gather for ranks that torchrun kills 30 s after the signal."""

    def __init__(self, loader, stop, device: torch.device, common: int):
        self.loader, self.stop, self.device, self.common = loader, stop, device, common

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i < self.common and not dist.all_true(not self.stop.requested, self.device):
                raise KeyboardInterrupt
            yield batch


def common_batches(loader) -> int:
    """Batches that every rank's strided eval loader gives: the shortest shard's."""
    images = len(loader.dataset) // dist.get_world_size()
    return -(-images // loader.batch_size)


def evaluate_ema(ema, val_coco, val_loader, cfg, train_loader, epoch: int, device: torch.device,
                 stop=None) -> tuple:
    """COCO metrics of the EMA weights (optionally with precise BN statistics, see the config).

    Call on every rank with that rank's loader (`build_eval_loader(..., rank, world_size)`).
    With a `stop` flag (`engine.stopping.StopFlag`) under DDP, a stop requested on any rank ends the
    prediction on every rank (KeyboardInterrupt), within a batch (`StopChecked`).
    Returns (metrics, evaluated model): `coco_evaluate`'s metrics on rank 0 and None elsewhere, and
    the module that was scored (the EMA module itself, or its copy with precise BN statistics), so
    that `best.pt` can hold exactly the weights behind its AP.
    """
    from worldtune.eval.evaluate import collect_detections, score_detections

    model = ema.module
    if dist.is_dist() and cfg.train.precise_bn_batches <= 0:
        # The EMA's BatchNorm statistics differ between ranks where BatchNorm is not synchronised
        # (CPU/gloo): each rank's model ends every step with its own batch's update of them. Rank 0's
        # are the ones saved, so every rank scores its shard with those. Under SyncBatchNorm every rank
        # already holds the same statistics (each forward updates them from the all-gathered batch
        # moments); the broadcast is kept there too: a few hundred small tensors, milliseconds per validation,
        # and the scores then never depend on that staying true.
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    if cfg.train.precise_bn_batches > 0:
        # Same epoch seed as training: the augmented batches are the ones the model was trained on.
        # Under DDP each rank would average over its own batches: rank 0's statistics are sent to all.
        train_loader.set_epoch(epoch)
        model = precise_bn_copy(model, model.text_model, islice(iter(train_loader), cfg.train.precise_bn_batches),
                                device)
        if dist.is_dist():
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
    skipped: list[int] = []
    if stop is not None and dist.is_dist():
        val_loader = StopChecked(val_loader, stop, device, common_batches(val_loader))
    dets = collect_detections(model, val_loader, list(val_coco.cat_ids), list(val_coco.class_names),
                              skipped_ids=skipped, progress=dist.is_main_process())
    if dist.is_dist():
        gathered = [None] * dist.get_world_size() if dist.is_main_process() else None
        torch.distributed.gather_object((dets, skipped), gathered, dst=0)
        if dist.is_main_process():
            dets = [d for part, _ in gathered for d in part]
            skipped = [i for _, part in gathered for i in part]
    if not dist.is_main_process():
        return None, model
    return score_detections(val_coco, val_coco.ann_file, dets, skipped), model


def validation_due(completed: int, cfg) -> bool:
    """Official val schedule: every `val_interval` epochs, every `val_interval_stage2` epochs from the
    dynamic-interval epoch on (69 of 80), and always after the last epoch. Both intervals count
    completed epochs from the start of the run, as mmengine's loop does (`epoch % interval`); an
    interval of 0 turns its stage's validations off (the last epoch's stays)."""
    t = cfg.train
    start = t.dynamic_interval_epoch if t.dynamic_interval_epoch >= 0 else t.epochs - t.close_mosaic_epochs - 1
    if completed >= t.epochs:
        return True
    if completed >= start:
        return t.val_interval_stage2 > 0 and completed % t.val_interval_stage2 == 0
    return t.val_interval > 0 and completed % t.val_interval == 0
