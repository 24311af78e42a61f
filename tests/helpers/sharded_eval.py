"""Validation of a calibrated tiny model, whole or split over gloo processes (engine.validate tests)."""
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from tests.helpers.calibrated_model import make_calibrated_model
from worldtune.data.coco import CocoDetection
from worldtune.data.loader import build_eval_loader
from worldtune.data.presets import build_eval_dataset
from worldtune.engine.validate import evaluate_ema
from worldtune.model.text_encoder import CLIPTextEncoder


def setup(data: dict, text_folder: str, imgsz: int = 64, rank: int = 0, world_size: int = 1):
    """(CocoDetection, this rank's eval loader, model in an EMA-like wrapper) - the same model in
    every process (calibrated on the first batch of the whole set)."""
    torch.manual_seed(0)
    coco = CocoDetection(data["ann_file"], data["image_dir"])
    dataset = build_eval_dataset(coco, imgsz)
    tower = CLIPTextEncoder.from_pretrained(text_folder)
    batch = next(iter(build_eval_loader(dataset, batch_size=2)))
    feats = tower.encode_vocabulary(list(coco.class_names))
    images = batch["images"].float() / 255
    model = make_calibrated_model(images, feats.expand(len(images), -1, -1), text_model=tower)
    loader = build_eval_loader(dataset, batch_size=2, rank=rank, world_size=world_size)
    return coco, loader, SimpleNamespace(module=model)


def evaluate(coco, loader, ema) -> dict | None:
    cfg = SimpleNamespace(train=SimpleNamespace(precise_bn_batches=0))
    return evaluate_ema(ema, coco, loader, cfg, None, 0, torch.device("cpu"))[0]


def worker(rank: int, world_size: int, port: int, data: dict, text_folder: str, out: str,
           own_bn_stats: bool = False) -> None:
    """One gloo process: evaluate this rank's shard; rank 0 writes the gathered metrics to `out`.

    own_bn_stats: ranks other than 0 get other BatchNorm running statistics, as the EMA of a CPU
    DDP run has (no SyncBatchNorm there: each rank's last batch updates its own)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        coco, loader, ema = setup(data, text_folder, rank=rank, world_size=world_size)
        if own_bn_stats and rank != 0:
            for module in ema.module.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.running_var.mul_(4.0)
                    module.running_mean.add_(0.5)
        metrics = evaluate(coco, loader, ema)
        if rank == 0:
            torch.save(metrics, Path(out))
        else:
            assert metrics is None
    finally:
        torch.distributed.destroy_process_group()
