"""engine.logger: only the main process writes, and tensor values are stored as plain numbers."""
import json

import torch

from worldtune.engine.logger import RunLogger


def test_a_disabled_logger_writes_nothing_even_with_a_folder(tmp_path):
    # every DDP process gets the run folder; only the main one may append to metrics.jsonl
    log = RunLogger(tmp_path / "run", enabled=False, tensorboard=False)
    log.log("train", 1, loss=1.0)
    assert not log.enabled and not (tmp_path / "run").exists()
    assert log.progress([1, 2], total=2, desc="x") == [1, 2]  # the bare iterable, no bar


def test_curves_that_fill_the_disk_leave_no_cut_short_picture_and_are_named(tmp_path, monkeypatch):
    import os

    import pytest

    from tests.helpers.full_disk import FullDisk
    from worldtune.engine.logger import plot_curves
    from worldtune.outputs import OutputWriteError

    log = RunLogger(tmp_path, tensorboard=False)
    log.log("train", 1, epoch=0, loss=2.0)
    log.log("val", 1, epoch=0, AP=0.25, AP50=0.5)
    log.close()
    png = tmp_path / "curves.png"
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k), keep=10))
    with pytest.raises(OutputWriteError, match=rf"^cannot write {png}: No space left on device$"):
        plot_curves(tmp_path / "metrics.jsonl", png)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # neither a cut-short picture nor a temporary file


def test_tensor_values_are_written_as_numbers_and_non_finite_ones_as_null(tmp_path):
    log = RunLogger(tmp_path, tensorboard=False)
    log.log("train", torch.tensor(3), loss=torch.tensor(2.5), lr=torch.tensor(float("inf")), n=torch.tensor(4))
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record == {"kind": "train", "step": 3, "loss": 2.5, "lr": None, "n": 4}


def test_a_failed_metrics_write_is_one_warning_and_the_next_record_gets_its_own_line(tmp_path, monkeypatch):
    """A full disk while appending: the run goes on (its checkpoints hold its state); a line the
    failure cut is closed before the next record, which would otherwise be glued to it and lost."""
    import builtins

    import pytest

    from tests.helpers.full_disk import FullDisk
    from worldtune.engine.logger import read_metrics

    log = RunLogger(tmp_path, tensorboard=False)
    log.log("train", 1, loss=1.0)
    real_open = builtins.open

    monkeypatch.setattr(builtins, "open", lambda *a, **k: FullDisk(real_open(*a, **k)))
    with pytest.warns(UserWarning, match=r"cannot write .*metrics.jsonl: No space left on device; its records are "
                                         r"missing until a write succeeds; training goes on") as caught:
        log.log("train", 2, loss=2.0)
        log.log("train", 3, loss=3.0)
    assert len(caught) == 1  # told once, not at every step
    monkeypatch.undo()
    log.log("train", 4, loss=4.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (4, 4.0)]


def test_tensorboard_that_cannot_write_is_dropped_with_one_warning_and_no_thread_traceback(tmp_path, capfd):
    """Its folder removed mid-run (or a full disk): TensorBoard's writer thread fails; the run warns
    once and goes on with metrics.jsonl, without the thread's traceback on the console."""
    import shutil

    import pytest

    pytest.importorskip("torch.utils.tensorboard")
    log = RunLogger(tmp_path)
    log.log("train", 1, loss=1.0)
    shutil.rmtree(tmp_path / "tensorboard")
    with pytest.warns(UserWarning, match="cannot write the TensorBoard events in .*TensorBoard logging stops"):
        for step in range(2, 5):  # the thread's failure surfaces at a later call
            log.log("train", step, loss=float(step))
    assert log.writer is None
    log.log("train", 5, loss=5.0)
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5]
    assert "Traceback" not in capfd.readouterr().err


def test_the_tensorboard_thread_hook_hides_its_write_errors_only_and_is_set_once(monkeypatch):
    import threading
    from types import SimpleNamespace

    from worldtune.engine.logger import _quiet_tensorboard_thread

    shown = []
    monkeypatch.setattr(threading, "excepthook", lambda args: shown.append(args.exc_type))
    _quiet_tensorboard_thread()
    hook = threading.excepthook
    _quiet_tensorboard_thread()
    assert threading.excepthook is hook  # not wrapped again by the next logger

    class _AsyncWriterThread:  # the name TensorBoard's writer thread has
        pass

    for thread, exc_type in ((_AsyncWriterThread(), OSError), (_AsyncWriterThread(), ValueError),
                             (threading.current_thread(), OSError)):
        hook(SimpleNamespace(thread=thread, exc_type=exc_type))
    assert shown == [ValueError, OSError]  # a bug in the writer thread, and another thread's error, still show
