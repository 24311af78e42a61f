"""DataLoaders: sharded like DistributedSampler, reproducible for any worker count.

Every augmentation draws from a generator seeded by (seed, epoch, index) inside the
dataset, and the order comes from DistributedSampler(seed, epoch); so a run resumed at
epoch e with `loader.set_epoch(e)` sees the same order and the same augmented images
as the uninterrupted run.

Warnings raised while a sample is built (an image cut short, or of another size than the
annotation file says) travel with its batch to the main process, which shows each one once per
loader, i.e. per run, the first few only, and counts them (`TrainLoader.warnings_seen`,
`EvalLoader.warnings_seen`): DataLoader workers are re-created every epoch and every validation
(forked or spawned), so a worker's own "already warned" memory lasts one pass only, and a limit
per worker would let N workers show N times as many.
"""
import os
import random
import signal
import threading
import warnings
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from worldtune.data.coco import every_file_warned
from worldtune.data.collate import collate_eval, collate_train


def _worker_init(worker_id: int, main_pid: int | None = None) -> None:
    """Signals and global seeds of a DataLoader worker; `main_pid`: the process that iterates the
    loader (by default the worker's parent, which it is when workers are forked)."""
    # cv2.setNumThreads() is deliberately NOT called here: in a forked worker it can deadlock on
    # the thread pool copied from the parent (seen with OpenCV 5.0). To limit cv2 threads, call
    # it in the main process before building the loader.
    # Ctrl-C is the main process's business (the training loop saves and stops, then shuts the
    # workers down): a worker killed by it would fail the batch the loop is waiting for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the training loop's SIGTERM handler (engine.stopping), which only sets
    # a flag: the worker would then outlive the SIGTERM that the DataLoader (and Python at exit)
    # uses to end it. The main process's SIGTERM ends a worker, as by default.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _end_on_sigterm_only_from(main_pid or os.getppid())
    # Nothing in worldtune uses global RNGs; seed them anyway so third-party code stays reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _end_on_sigterm_only_from(main_pid: int) -> None:
    """Lets this worker ignore a SIGTERM that another process than `main_pid` sends.

    SLURM's scancel and `kill -TERM -<pgid>` send SIGTERM to every process of the job: the main
    process then finishes its step (with the batch it holds), saves last.pt and shuts its workers
    down itself. Workers ended by that SIGTERM would fail the run instead: torch raises "DataLoader
    worker (pid N) is killed by signal: Terminated" in the main process wherever it is (its SIGCHLD
    handler), in a forward pass or while saving, and under DDP on each rank at another point.
    Where a signal's sender cannot be read (no sigwaitinfo: macOS, Windows), SIGTERM ends a worker.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return
    # Blocked in this thread, and so in every thread started from it later (the result queue's
    # feeder, OpenCV's pool): the thread below is the only one that takes a SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
            pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.kill(os.getpid(), signal.SIGTERM)  # taken by this thread, the only one open to it: the default, the end

    threading.Thread(target=wait, name="sigterm-from-main", daemon=True).start()


class WarningsWithSample(torch.utils.data.Dataset):
    """`dataset` whose samples (dicts) carry the warnings raised while they were built, as
    "warnings": [(category, message)], instead of showing them where they were raised (a worker).
    A CocoDetection inside then warns about every bad file, not its `warn_limit` first ones: the
    main process limits them (`WarningsReporter`), over all the workers."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        # What the filters let through is recorded instead of shown. Not `warnings.catch_warnings`: it
        # resets every module's "already shown" memory, which in the main process (no workers) would
        # repeat the training loop's own once-only warnings.
        caught, show = [], warnings.showwarning
        warnings.showwarning = lambda message, category, *args, **kwargs: caught.append((category, str(message)))
        try:
            with every_file_warned():
                sample = self.dataset[index]
        finally:
            warnings.showwarning = show
        if isinstance(sample, dict):
            if caught:
                sample["warnings"] = caught
        else:
            for category, message in caught:
                warnings.warn(message, category)
        return sample


class WarningsReporter:
    """Shows the warnings that batches carry ("warnings", see `WarningsWithSample`) in this process,
    each once: the first `limit` (None: all) of them, the last of those followed by `note`; the
    rest are only counted (`seen`: the distinct messages)."""

    def __init__(self, limit: int | None = None, note: str = ""):
        self.seen: set = set()
        self.limit, self.note = limit, note

    def reported(self, batches):
        """`batches` with the warnings they carry taken out and shown."""
        for batch in batches:
            for category, message in batch.pop("warnings", ()) if isinstance(batch, dict) else ():
                if message in self.seen:
                    continue
                self.seen.add(message)
                if self.limit is None or len(self.seen) <= self.limit:
                    last = len(self.seen) == self.limit
                    warnings.warn(message + (self.note if last else ""), category, stacklevel=2)
            yield batch


class TrainLoader:
    """Iterable over training batches (see `collate_train`). Call `set_epoch(epoch)` before each epoch.

    Warnings raised while building samples are shown here, in the main process, once per run:
    the first `list_warnings` of them, then only counted (`warnings_seen`).

    Attributes: dataset, sampler (DistributedSampler), loader (torch DataLoader), reporter
    (`WarningsReporter`; a resumed epoch's loader goes through it too), warnings_seen (its set of
    the distinct warning messages).
    """

    def __init__(self, dataset, batch_size: int, workers: int, seed: int, rank: int, world_size: int,
                 drop_last: bool, pin_memory: bool, list_warnings: int = 10):
        self.dataset = dataset
        self.reporter = WarningsReporter(list_warnings, " (further warnings about the training data are not "
                                                        "listed; the run's end says how many there were)")
        self.warnings_seen = self.reporter.seen
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                          drop_last=drop_last)
        # persistent_workers stays False: workers are re-created each epoch and so see set_epoch().
        self.loader = DataLoader(WarningsWithSample(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=workers,
                                 collate_fn=collate_train, pin_memory=pin_memory, drop_last=drop_last,
                                 worker_init_fn=partial(_worker_init, main_pid=os.getpid()),
                                 persistent_workers=False,
                                 generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        """Sets the shuffle order (sampler) and the augmentation seed and stage (dataset)."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        if getattr(self.dataset, "mosaic_pool", 0):  # pools are runs of this rank's loading order
            self.dataset.set_order(list(self.sampler))

    def __iter__(self):
        return self.reporter.reported(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def build_train_loader(dataset, batch_size: int, workers: int = 0, seed: int = 0, rank: int = 0,
                       world_size: int = 1, drop_last: bool = False, pin_memory: bool = False) -> TrainLoader:
    """Loader over a `TrainDataset`; each rank gets its own shard of a shared shuffled order."""
    return TrainLoader(dataset, batch_size, workers, seed, rank, world_size, drop_last, pin_memory)


class StridedSampler(Sampler):
    """Indices rank, rank + world_size, ...: every image exactly once over all ranks. Unlike
    DistributedSampler it never pads a shard with repeated images, which evaluation must not see."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices, self.num_replicas = range(rank, length, world_size), world_size

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EvalLoader:
    """Iterable over evaluation batches (see `collate_eval`), in dataset order or strided.

    Warnings raised while reading the images (a file cut short, of another size than the annotation
    file says, left out under on_bad_data="skip") are shown here, in the main process, each once per
    loader (a run validates with the same loader every time, while its workers are new each time):
    the first `list_warnings` of them, then only counted (`warnings_seen`), whatever the worker count.

    Attributes: dataset (the EvalDataset), batch_size, sampler (StridedSampler or None),
    loader (torch DataLoader), reporter (`WarningsReporter`), warnings_seen (its set of the distinct
    warning messages).
    """

    def __init__(self, dataset, batch_size: int, workers: int, rank: int, world_size: int, list_warnings: int = 10):
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = StridedSampler(len(dataset), rank, world_size) if world_size > 1 else None
        self.reporter = WarningsReporter(list_warnings, " (further warnings about the evaluation images are not "
                                                        "listed)")
        self.warnings_seen = self.reporter.seen
        self.loader = DataLoader(WarningsWithSample(dataset), batch_size=batch_size, shuffle=False,
                                 sampler=self.sampler, num_workers=workers, collate_fn=collate_eval,
                                 worker_init_fn=partial(_worker_init, main_pid=os.getpid()))

    def __iter__(self):
        return self.reporter.reported(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def build_eval_loader(dataset, batch_size: int = 1, workers: int = 0, rank: int = 0, world_size: int = 1) -> EvalLoader:
    """Loader over an `EvalDataset` in dataset order (a rank takes every world_size-th image)."""
    return EvalLoader(dataset, batch_size, workers, rank, world_size)
