"""Distributed training the torchrun way: env:// init, rank helpers, save on master, logging reductions.

`torchrun --nproc_per_node N -m worldtune train ...` sets RANK, LOCAL_RANK and WORLD_SIZE; a plain
`worldtune train` runs as a single process without a process group. Only the main process writes
files; the other ranks train their shard of every batch (DistributedSampler in the loader).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local_rank> when CUDA is usable, else cpu; 'cuda' -> cuda:<local_rank>."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use --device cpu)")
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if the environment names one (nccl on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        # Also for one process on cuda:N: the loader's pin-memory thread and anything else that uses
        # "the current GPU" would otherwise open a context (hundreds of MB) on GPU 0.
        torch.cuda.set_device(dev)
    if world_size > 1 and not torch_dist.is_initialized():
        # 30 minutes (NCCL's default is 10): the other ranks wait at a barrier while rank 0 alone
        # scores a validation, which on full COCO with precise BN and a busy CPU can take a while.
        torch_dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                      world_size=world_size, rank=rank, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, local_rank, world_size, dev)


def cleanup() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def is_dist() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def get_rank() -> int:
    return torch_dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return torch_dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        torch_dist.barrier()


def save_on_master(fn, *args, **kwargs):
    """Call a writer (e.g. `save_checkpoint_atomic`) on rank 0 only."""
    if is_main_process():
        return fn(*args, **kwargs)
    return None


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if `flag` holds on every rank (so all ranks stop together, e.g. on a NaN loss)."""
    if not is_dist():
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    torch_dist.all_reduce(t)
    return t.item() == 0


def reduce_dict(values: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Average (or sum) scalar tensors over ranks. For logging only: gradients are synchronised by DDP."""
    if not is_dist() or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
    torch_dist.all_reduce(stacked)
    if average:
        stacked /= get_world_size()
    return dict(zip(names, stacked))


def convert_sync_bn(model: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """The official detector uses SyncBatchNorm when training on several processes.

    The frozen text tower has no BatchNorm, so this only touches the image side. PyTorch's
    SyncBatchNorm runs on GPUs only: CPU (gloo) runs keep per-process BatchNorm statistics, and DDP
    broadcasts rank 0's running stats each step.
    """
    if world_size > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def dist_unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (`model_without_ddp` in DETR)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
