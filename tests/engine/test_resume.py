"""Resume: a run killed (SIGKILL, Ctrl-C, failed save) and resumed ends with exactly the weights of an
uninterrupted run (CPU, 2 epochs x 2 steps of the tiny `n` model)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers.call_hooks import before_call
from tests.helpers.tiny_run import tiny_config
from worldtune.config import dump
from worldtune.engine import checkpoint as ckpt_io
from worldtune.engine.train import fit

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(root, **train):
    # 6 images, batch 3 -> 2 steps per epoch; mosaic on in epoch 1 and closed in epoch 2; no validation.
    cfg = tiny_config(root, epochs=2, batch_size=3, close_mosaic_epochs=1, **train)
    cfg.data.val_ann = cfg.data.val_images = ""
    return cfg


def _assert_same_final_state(a: Path, b: Path):
    sa, sb = ckpt_io.load_checkpoint_file(a), ckpt_io.load_checkpoint_file(b)
    assert (sa["epoch"], sa["global_step"]) == (sb["epoch"], sb["global_step"]) == (2, 4)

    def tensors(obj, prefix=""):
        if isinstance(obj, torch.Tensor):
            yield prefix, obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from tensors(v, f"{prefix}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from tensors(v, f"{prefix}[{i}]")

    for part in ("model", "ema_state", "optimizer"):
        ta, tb = dict(tensors(sa[part])), dict(tensors(sb[part]))
        assert ta.keys() == tb.keys()
        diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    assert sa["ema_state"]["steps"] == sb["ema_state"]["steps"] == 4
    # the logged per-epoch mean losses cover the steps before the interruption too
    epochs = [{r["epoch"]: r for r in map(json.loads, (p.parent / "metrics.jsonl").read_text().splitlines())
               if r["kind"] == "epoch"} for p in (a, b)]
    assert epochs[0].keys() == epochs[1].keys() == {0, 1}
    for epoch in (0, 1):
        for key in ("loss", "loss_cls", "loss_bbox", "loss_dfl"):
            assert epochs[0][epoch][key] == pytest.approx(epochs[1][epoch][key], rel=1e-12), (epoch, key)


def _resume_from_and_compare(cfg, position: tuple, reference: Path):
    """last.pt of the interrupted run is at (epoch, step_in_epoch, global_step) == `position`, and
    resuming it ends with the uninterrupted run's state."""
    from worldtune.engine import train as train_mod

    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == position
    loggers = []
    real_logger = train_mod.RunLogger
    train_mod.RunLogger = lambda *a, **k: loggers.append(k) or real_logger(*a, **k)
    try:
        assert fit(cfg, resume=cfg.out)["status"] == "finished"
    finally:
        train_mod.RunLogger = real_logger
    assert loggers[0]["purge_step"] == position[2] + 1  # TensorBoard drops what the stopped run logged later
    _assert_same_final_state(reference, Path(cfg.out) / "last.pt")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    result = fit(_config(root))
    torch.set_num_threads(previous)
    assert result["status"] == "finished"
    return Path(result["out"]) / "last.pt"


# Runs a config in a fresh process and SIGKILLs it right after its N-th checkpoint write.
KILLER = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from worldtune.config import load
    from worldtune.engine import checkpoint
    from worldtune.engine.train import fit
    real, kill_after, count = checkpoint.save_checkpoint_atomic, int(sys.argv[2]), [0]
    def save_then_die(obj, path):
        real(obj, path)
        count[0] += 1
        if count[0] == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint.save_checkpoint_atomic = save_then_die
    fit(load(sys.argv[1]))
""")


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference):
    """Killed right after the step-1 save (--save-every-steps 1): resumes inside epoch 1.
    (Resuming at an epoch boundary is covered by the failed-save test below.)"""
    cfg = _config(tmp_path, save_every_steps=1)
    dump(cfg, tmp_path / "cfg.yaml")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.yaml"), "1"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = Path(cfg.out) / "last.pt"
    saved = ckpt_io.load_checkpoint_file(last)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 1, 1)
    result = fit(_config(tmp_path / "ignored"), resume=cfg.out)  # the run's own saved config is used
    assert result["status"] == "finished" and Path(result["out"]) == Path(cfg.out)
    _assert_same_final_state(reference, last)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_and_resumes(tmp_path, reference, monkeypatch, capsys, sig):
    """SIGTERM (torchrun passing on its own, SLURM, docker stop) stops the run like Ctrl-C."""
    from worldtune.engine import train as train_mod

    def send():
        # without a handler, SIGTERM would end this test process
        assert signal.getsignal(sig) not in (signal.SIG_DFL, None), f"{sig.name} would end the run unsaved"
        os.kill(os.getpid(), sig)

    real = train_mod.batch_text_feats
    monkeypatch.setattr(train_mod, "batch_text_feats", before_call(real, 3, send))  # in the middle of step 3
    cfg = _config(tmp_path)
    result = fit(cfg)
    assert result["status"] == "interrupted" and result["global_step"] == 3
    out = capsys.readouterr().out
    assert f"{'Ctrl-C' if sig == signal.SIGINT else 'SIGTERM'}: finishing this step" in out
    assert "continue with: worldtune train --resume" in out
    monkeypatch.setattr(train_mod, "batch_text_feats", real)
    _resume_from_and_compare(cfg, (1, 1, 3), reference)


def test_abort_in_the_middle_of_an_update_keeps_the_previous_checkpoint(tmp_path, reference, monkeypatch, capsys):
    """A second Ctrl-C after the optimizer step but before the EMA and the counters: saving then
    would apply that batch twice on resume, so last.pt stays the end of epoch 1."""
    from worldtune.engine.ema import ExpMomentumEMA

    real = ExpMomentumEMA.update

    def abort():
        raise KeyboardInterrupt

    monkeypatch.setattr(ExpMomentumEMA, "update", before_call(real, 3, abort))
    cfg = _config(tmp_path)
    assert fit(cfg)["status"] == "interrupted"
    assert "aborted during a weight update" in capsys.readouterr().out
    monkeypatch.setattr(ExpMomentumEMA, "update", real)
    _resume_from_and_compare(cfg, (1, 0, 2), reference)


@pytest.mark.parametrize("in_update", [False, True])
def test_an_error_in_a_step_saves_the_steps_done_unless_in_an_update(tmp_path, reference, monkeypatch, capsys,
                                                                     in_update):
    """An error in step 4 (out of memory, a bad image with on_bad_data=error). Before its update:
    last.pt takes step 3, which the previous last.pt (end of epoch 1, step 2) lacked, and the resume
    runs step 4 again. After the optimizer step, before the EMA and the counters: that state is no
    step's, so the previous last.pt stays."""
    from worldtune.engine import train as train_mod
    from worldtune.engine.ema import ExpMomentumEMA

    def fails():
        raise RuntimeError("out of memory (simulated)")

    owner, name = (ExpMomentumEMA, "update") if in_update else (train_mod, "batch_text_feats")
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, before_call(real, 4, fails))
    cfg = _config(tmp_path)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(cfg)
    saved_now = f"{cfg.out}/last.pt is saved at that step (a resume runs the failed step again)"
    assert (saved_now in capsys.readouterr().err) != in_update
    monkeypatch.setattr(owner, name, real)
    _resume_from_and_compare(cfg, (1, 0, 2) if in_update else (1, 1, 3), reference)


def test_an_error_in_the_first_step_of_a_run_writes_no_checkpoint(tmp_path, monkeypatch, capsys):
    """No step was trained: a last.pt would hold only the start weights, and would make the folder a run
    to resume rather than one to start again."""
    from worldtune.engine import train as train_mod

    def fails():
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(train_mod, "batch_text_feats", before_call(train_mod.batch_text_feats, 1, fails))
    cfg = _config(tmp_path)
    with pytest.raises(RuntimeError, match="simulated"):
        fit(cfg)
    assert not (Path(cfg.out) / "last.pt").exists()
    assert ("training at epoch 1, step 0 stopped with the error below, before any checkpoint was written"
            in capsys.readouterr().err)


def test_resume_with_a_scaler_the_saved_run_did_not_have():
    """bf16/CPU runs save an empty scaler state; resuming with fp16 (e.g. on a GPU without bf16) must work."""
    from torch import nn

    from worldtune.config import Config
    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.run_state import RESUME_KEYS, make_checkpoint, restore_checkpoint

    model = nn.Linear(2, 2)
    ema, optimizer = ExpMomentumEMA(model), torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"epoch": 1, "step_in_epoch": 0, "global_step": 2, "best_ap": 0.5, "best_epoch": 0}
    ckpt = make_checkpoint(model, ema, optimizer, torch.amp.GradScaler("cpu", enabled=False), state, Config())
    assert ckpt["scaler"] == {}
    restored = dict.fromkeys(state, None)
    restore_checkpoint(ckpt, model, ema, optimizer, torch.amp.GradScaler("cpu", enabled=True), restored)
    assert restored == {**state, "val_pending": False, "loss_sums": {}, "loss_count": 0}
    assert set(RESUME_KEYS) <= set(ckpt)  # what a resume requires is what a checkpoint holds
    assert ckpt["world_size"] == 1  # compared on resume: another process count changes the schedule


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, reference, monkeypatch):
    """The process dies while writing the end-of-epoch-2 checkpoint: last.pt is still the intact
    end-of-epoch-1 one, no temp file is left, and resuming from it ends where an uninterrupted run does."""
    real_save, calls = torch.save, [0]

    def save_half_then_fail(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:  # the end-of-epoch-2 save: write some bytes, then the disk "fills up"
            f.write(b"PK\x03\x04 partial")
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_io.torch, "save", save_half_then_fail)
    cfg = _config(tmp_path)
    with pytest.raises(OSError, match="No space left"):
        fit(cfg)
    monkeypatch.setattr(ckpt_io.torch, "save", real_save)
    run = Path(cfg.out)
    assert [p.name for p in run.iterdir() if p.suffix in (".pt", ".tmp")] == ["last.pt"]  # no stray temp file
    saved = ckpt_io.load_checkpoint_file(run / "last.pt")
    assert (saved["epoch"], saved["global_step"]) == (1, 2)  # the intact epoch-1 checkpoint
    fit(cfg, resume=run)
    _assert_same_final_state(reference, run / "last.pt")


def test_resume_refuses_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(_config(tmp_path), resume=tmp_path)
    torch.save({"state_dict": {}}, tmp_path / "official.pth")
    with pytest.raises(ValueError, match="not a worldtune training checkpoint"):
        fit(_config(tmp_path), resume=tmp_path / "official.pth")
    cfg = _config(tmp_path)
    torch.save({"ema_state": {}, "config": {}, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"partial.pt: this training checkpoint lacks \['ema', 'optimizer'"):
        fit(cfg, resume=tmp_path / "partial.pt")


def test_a_resume_whose_data_moved_names_the_config_key_and_what_to_do(tmp_path, reference):
    """The data paths cannot change on resume: a file moved since the run started is told as the run's
    saved data.* entry, not as a bare missing file the user never named in the resume command."""
    from worldtune.engine.train import read_resume

    ckpt = ckpt_io.load_checkpoint_file(reference)
    ckpt["epoch"] = 1  # one epoch left
    moved = tmp_path / "moved" / "train.json"
    ckpt["config"]["data"]["train_ann"] = str(moved)
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=rf"--resume {tmp_path / 'last.pt'}: the run's data.train_ann, {moved}, does "
                                         r"not exist \(moved or deleted\?\); a resumed run reads the files its saved "
                                         r"config names: put it back there"):
        read_resume(tmp_path, _config(tmp_path), 1, say=lambda *a, **k: None)
    moved.parent.mkdir()
    moved.write_text("{}")  # there again: the resume goes on (its data are read later)
    assert read_resume(tmp_path, _config(tmp_path), 1, say=lambda *a, **k: None)[2] is False


def test_ctrl_c_on_the_last_step_of_an_epoch(tmp_path, reference, monkeypatch):
    """Stopped after the epoch's last step but before its end-of-epoch bookkeeping: the resumed
    epoch has no step left, and its record still gets the lr (it was null)."""
    from worldtune.engine import train as train_mod

    sigint = before_call(train_mod.batch_text_feats, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    real = train_mod.batch_text_feats
    monkeypatch.setattr(train_mod, "batch_text_feats", sigint)  # during step 2 of 2 in epoch 1
    cfg = _config(tmp_path)
    assert fit(cfg)["status"] == "interrupted"
    monkeypatch.setattr(train_mod, "batch_text_feats", real)
    _resume_from_and_compare(cfg, (0, 2, 2), reference)
    records = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch" and r["lr"] is not None] == [0, 1]


def test_ctrl_c_during_validation_stops_it_at_once(tmp_path, monkeypatch, capsys):
    """The first Ctrl-C in a validation stops it (no further training step); the resume repeats it."""
    from worldtune.engine import train as train_mod

    cfg = tiny_config(tmp_path, epochs=2, batch_size=3, val_interval=1)
    sigint = before_call(train_mod.evaluate_ema, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(train_mod, "evaluate_ema", sigint)
    result = fit(cfg)
    assert result["status"] == "interrupted" and result["global_step"] == 2  # epoch 1's two steps only
    assert "aborted during a validation" in capsys.readouterr().out
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["global_step"], saved["val_pending"]) == (1, 2, True)
    monkeypatch.undo()
    assert fit(cfg, resume=cfg.out)["status"] == "finished"
    records = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [0, 1]


def test_ctrl_c_just_before_a_validation_skips_it(tmp_path, monkeypatch, capsys):
    """Pressed while the pre-validation last.pt is written: the run stops without validating."""
    from worldtune.engine import checkpoint as ckpt_module
    from worldtune.engine import train as train_mod

    cfg = tiny_config(tmp_path, epochs=2, batch_size=3, val_interval=1)
    validations = []
    monkeypatch.setattr(train_mod, "evaluate_ema", lambda *a, **k: validations.append(1))
    sigint = before_call(ckpt_module.save_checkpoint_atomic, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(ckpt_module, "save_checkpoint_atomic", sigint)
    result = fit(cfg)
    assert result["status"] == "interrupted" and result["global_step"] == 2 and validations == []
    assert "aborted during a validation" in capsys.readouterr().out
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["val_pending"]) == (1, True)


def test_ctrl_c_between_epochs_stops_before_the_next(tmp_path, reference, monkeypatch):
    """Pressed while epoch 1's last.pt is written: epoch 2 does not start, and the resume matches."""
    from worldtune.engine import checkpoint as ckpt_module

    real = ckpt_module.save_checkpoint_atomic
    sigint = before_call(real, 1, lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(ckpt_module, "save_checkpoint_atomic", sigint)
    cfg = _config(tmp_path)
    result = fit(cfg)
    assert result["status"] == "interrupted" and result["global_step"] == 2
    monkeypatch.setattr(ckpt_module, "save_checkpoint_atomic", real)
    _resume_from_and_compare(cfg, (1, 0, 2), reference)


# Runs a config (with DataLoader workers) in a fresh process that, in the middle of step 1, has
# `kill` send a signal to its whole process group, workers included (as SLURM's scancel does).
GROUP_SIGNAL = textwrap.dedent("""
    import os, subprocess, sys
    import torch
    torch.set_num_threads(1)
    from worldtune.config import load
    from worldtune.engine import train
    real, count = train.batch_text_feats, [0]
    def signal_group_then_feats(*args, **kwargs):
        count[0] += 1
        if count[0] == 1:
            subprocess.run(["kill", "-" + sys.argv[2], "--", f"-{os.getpgid(0)}"])  # ends itself too
        return real(*args, **kwargs)
    train.batch_text_feats = signal_group_then_feats
    result = train.fit(load(sys.argv[1]))
    sys.exit(130 if result["status"] == "interrupted" else 0)
""")


def test_sigterm_to_the_whole_process_group_stops_like_ctrl_c(tmp_path):
    """SIGTERM sent to every process of the run, DataLoader workers included, stops it after the
    step like a SIGTERM to the main process alone: last.pt, exit 130, no "DataLoader worker ... is
    killed by signal" error. (Workers ignore Ctrl-C: see tests/data/test_loader.py.)"""
    cfg = _config(tmp_path)
    cfg.data.workers = 2
    dump(cfg, tmp_path / "cfg.yaml")
    script = tmp_path / "group_signal.py"
    script.write_text(GROUP_SIGNAL)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "cfg.yaml"), "TERM"], env=env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "killed by signal" not in proc.stderr
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 1, 1)
