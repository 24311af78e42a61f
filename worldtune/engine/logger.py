"""What a training run shows and writes: tqdm bars, metrics.jsonl, TensorBoard, a curves PNG, a summary.

Only the main process logs (`RunLogger(enabled=False)` elsewhere does nothing). Records are plain
dicts with a `kind`: "train" (every log_interval steps), "epoch" (epoch means) and "val" (COCO
metrics); `metrics.jsonl` is appended to, so a resumed run continues the same file.

Both files are records, not the run's state (the checkpoints are): a failed write to either (a full
disk, a folder made read-only) is a warning and training goes on. A full disk then stops the run at
its next checkpoint, with a message that says what is safe; stopping at a log line instead would
lose every step since the last checkpoint.
"""
from __future__ import annotations

import json
import math
import threading
import warnings
from pathlib import Path

from worldtune.outputs import write_figure
from worldtune.progress import progress_bar


class RunLogger:
    """Writes `metrics.jsonl` (and TensorBoard events if tensorboard is importable) under `out_dir`."""

    def __init__(self, out_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None):
        """purge_step: the first step a resumed run logs. TensorBoard then drops the events that the
        interrupted run wrote from that step on (they are logged again), as `read_metrics` does."""
        self.enabled = enabled and out_dir is not None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writer = None
        self._jsonl_failed = False  # a write failed: the file may end in a cut line, and it was told
        if self.enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._end_cut_line()
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self.writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=purge_step)
                    _quiet_tensorboard_thread()
                except ImportError:  # tensorboard is optional: metrics.jsonl always has everything
                    self.writer = None

    def _end_cut_line(self) -> None:
        """Close a last line cut by a kill mid-write, so the resumed run's first record gets a line
        of its own instead of being glued to (and lost with) the broken one."""
        path = self.jsonl_path
        if path.is_file() and path.stat().st_size:
            with open(path, "rb+") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    @property
    def jsonl_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "metrics.jsonl"

    def log(self, kind: str, step: int, **values) -> None:
        """Append one record; numbers also go to TensorBoard as `<kind>/<name>` at `step`."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), **{k: _plain(v) for k, v in values.items()}}
        try:
            if self._jsonl_failed:
                self._end_cut_line()
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            if not self._jsonl_failed:
                warnings.warn(f"cannot write {self.jsonl_path}: {err.strerror or err}; its records are missing "
                              f"until a write succeeds; training goes on (the checkpoints hold the run's state)")
            self._jsonl_failed = True
        if self.writer is not None:
            try:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("step",) and v is not None:
                        self.writer.add_scalar(f"{kind}/{k}", v, int(step))
                self.writer.flush()
            except OSError as err:  # an optional view of metrics.jsonl: given up for the rest of the run
                warnings.warn(f"cannot write the TensorBoard events in {self.out_dir / 'tensorboard'}: "
                              f"{err.strerror or err}; TensorBoard logging stops, training goes on "
                              f"(metrics.jsonl has every record)")
                self.close()

    def progress(self, iterable, total: int, desc: str, initial: int = 0):
        """A tqdm bar on the main process (shows rate and ETA); the bare iterable elsewhere."""
        if not self.enabled:
            return iterable
        return progress_bar(iterable, total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError:  # its events could not be written: told when that happened
                pass


def _quiet_tensorboard_thread() -> None:
    """TensorBoard writes events in a thread that, on a failed write (a full disk), prints its
    traceback and ends; the writer raises the same error at the logger's next call, which tells
    it as one warning. Keep the thread's traceback off the console (once per process)."""
    previous = threading.excepthook
    if getattr(previous, "worldtune_quiet_tensorboard", False):
        return

    def hook(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError):
            return
        previous(args)

    hook.worldtune_quiet_tensorboard = True
    threading.excepthook = hook


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; for a resumed run, a later record replaces an earlier one with
    the same (kind, step), so repeated steps after a kill are counted once."""
    path = Path(path)
    if not path.is_file():
        return []
    latest = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            latest[(r.get("kind"), r.get("step"), r.get("epoch"))] = r
    return sorted(latest.values(), key=lambda r: (r["step"], r["kind"]))


def plot_curves(jsonl_path: str | Path, png_path: str | Path) -> Path | None:
    """Loss (per logged step) and AP (per validation) curves into one PNG; None if nothing to plot."""
    records = read_metrics(jsonl_path)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val" and r.get("AP") is not None]
    if not train and not val:
        return None
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "loss_cls", "loss_bbox", "loss_dfl"):
        pts = [(r["step"], r[key]) for r in train if r.get(key) is not None]
        if pts:
            ax_loss.plot(*zip(*pts), label=key)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")
    ax_loss.legend()
    for key in ("AP", "AP50", "AP75"):
        pts = [(r["epoch"] + 1, 100 * r[key]) for r in val if r.get(key) is not None]  # 1-based, as printed
        if pts:
            ax_ap.plot(*zip(*pts), marker="o", label=key)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_title("validation (EMA weights), %")
    if val:
        ax_ap.legend()
    fig.tight_layout()
    try:
        write_figure(fig, png_path)  # whole or not at all: a failed write leaves no cut-short picture
    finally:
        plt.close(fig)
    return Path(png_path)


def summary_table(jsonl_path: str | Path) -> str:
    """One row per epoch: mean losses, last lr, and AP/AP50 where validated."""
    records = read_metrics(jsonl_path)
    epochs = {r["epoch"]: r for r in records if r["kind"] == "epoch"}
    vals = {r["epoch"]: r for r in records if r["kind"] == "val"}
    lines = [f"{'epoch':>5} {'loss':>9} {'cls':>8} {'bbox':>8} {'dfl':>8} {'lr':>9} {'AP':>6} {'AP50':>6}"]

    def num(v, fmt):  # fmt starts with the column width, which the "-" of a missing value keeps too
        return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(int(fmt.split(".")[0]))

    for e in sorted(set(epochs) | set(vals)):
        r, v = epochs.get(e, {}), vals.get(e, {})
        ap = 100 * v["AP"] if v.get("AP") is not None else None
        ap50 = 100 * v["AP50"] if v.get("AP50") is not None else None
        lines.append(f"{e + 1:>5} {num(r.get('loss'), '9.3f')} {num(r.get('loss_cls'), '8.3f')} "
                     f"{num(r.get('loss_bbox'), '8.3f')} {num(r.get('loss_dfl'), '8.3f')} "
                     f"{num(r.get('lr'), '9.2e')} {num(ap, '6.1f')} {num(ap50, '6.1f')}")
    return "\n".join(lines)
