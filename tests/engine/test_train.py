"""The training loop: it learns (AP rises on a tiny set), stops on NaN, and its helpers."""
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_run import tiny_config, tiny_text_model
from worldtune.config import Config
from worldtune.data import image_cache
from worldtune.engine import checkpoint as ckpt_io
from worldtune.engine import dist, stopping
from worldtune.engine import train as T
from worldtune.engine.validate import validation_due


pytestmark = pytest.mark.usefixtures("one_thread")


def test_batch_text_feats_match_per_image_encoding():
    from worldtune.model.text_encoder import CLIPTextEncoder

    tower = CLIPTextEncoder.from_pretrained(str(tiny_text_model()))
    texts = [["cat", "dog", ""], ["dog", "", "cat"]]
    feats = T.batch_text_feats(tower, texts, torch.device("cpu"))
    assert feats.shape == (2, 3, 512)
    torch.testing.assert_close(feats, tower(texts), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats[0, 0], feats[1, 2])  # same string, same embedding
    with pytest.raises(ValueError, match="same number of texts"):
        T.batch_text_feats(tower, [["a"], ["a", "b"]], torch.device("cpu"))


def test_validation_schedule_is_official():
    cfg = Config()  # 80 epochs, val every 5, every epoch from completed epoch 69
    due = [e for e in range(1, 81) if validation_due(e, cfg)]
    assert due == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65] + list(range(69, 81))
    cfg.train.epochs, cfg.train.close_mosaic_epochs = 40, 30  # SGD 40e: every epoch from 9
    assert [e for e in range(1, 41) if validation_due(e, cfg)] == [5] + list(range(9, 41))
    cfg.train.val_interval_stage2 = 2  # mmengine checks `completed % interval` once the interval changes
    assert [e for e in range(1, 41) if validation_due(e, cfg)] == [5] + list(range(10, 41, 2))
    # 0 = off, as the config's check says, in either stage (it acted as 1 in stage 2); the last epoch stays
    cfg.train.val_interval_stage2 = 0
    assert [e for e in range(1, 41) if validation_due(e, cfg)] == [5, 40]
    cfg.train.val_interval = 0
    assert [e for e in range(1, 41) if validation_due(e, cfg)] == [40]


def test_amp_is_gpu_only():
    assert T.amp_settings("bf16", torch.device("cpu")) == (False, None)
    assert T.amp_settings("none", torch.device("cuda")) == (False, None)
    with pytest.raises(ValueError, match="train.amp"):
        T.amp_settings("fp8", torch.device("cpu"))


def test_cpu_amp_is_bf16_on_a_cpu_with_native_bf16_only(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    assert T.amp_settings("bf16", cpu, cpu_amp=True) == (True, torch.bfloat16)
    assert T.amp_settings("bf16", cpu) == (False, None)  # off unless asked for: not official
    assert T.amp_settings("fp16", cpu, cpu_amp=True) == (False, None)  # slow on CPUs: fp32
    assert T.amp_settings("none", cpu, cpu_amp=True) == (False, None)
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)  # emulated bf16 can be slower than fp32
    assert T.amp_settings("bf16", cpu, cpu_amp=True) == (False, None)


def test_cpu_amp_note_says_why_it_has_no_effect(monkeypatch):
    cfg, cpu = Config(), torch.device("cpu")
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    assert T.cpu_amp_note(cfg.train, cpu) is None  # not asked for
    cfg.train.cpu_amp = True
    assert T.cpu_amp_note(cfg.train, cpu) is None  # in effect
    assert "CPU training only" in T.cpu_amp_note(cfg.train, torch.device("cuda:0"))
    cfg.train.amp = "fp16"
    assert "needs train.amp=bf16" in T.cpu_amp_note(cfg.train, cpu)
    cfg.train.amp = "bf16"
    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: False)
    assert "no native bf16" in T.cpu_amp_note(cfg.train, cpu)


def test_cpu_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    flags = {"avx512_bf16": True, "amx_bf16": True, "avx512f": False, "avx512_bf16x": False}
    for flag, native in flags.items():
        info = tmp_path / f"cpuinfo_{flag}"  # one file each: the answer is cached per file
        info.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flag} avx512bw\n")
        assert T.cpu_has_native_bf16(info) is native, flag
    assert T.cpu_has_native_bf16(tmp_path / "missing") is False  # not Linux: off


def test_cpu_amp_step_runs_the_model_in_bf16_and_keeps_fp32_weights(monkeypatch, one_thread):
    """train.cpu_amp: the forward's convolutions compute in bf16 (autocast), the weights, their
    gradients and the EMA stay fp32, and the step trains."""
    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.logger import RunLogger
    from worldtune.engine.optim import OptimConfig, build_optimizer
    from worldtune.engine.schedule import apply_schedule
    from worldtune.loss.criterion import YOLOWorldCriterion

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)  # the dtype, not the speed, is checked here
    model, text_model, batch = _one_image_step_inputs()
    conv_dtypes = []
    model.backbone.image_model.stem.conv.register_forward_hook(lambda m, i, out: conv_dtypes.append(out.dtype))
    cfg = Config()
    cfg.train.cpu_amp, cfg.train.log_interval = True, 1
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer, ema = build_optimizer(model, OptimConfig(batch_size_per_gpu=1)), ExpMomentumEMA(model)
    state = {"step_in_epoch": 0, "global_step": 0, "iters_per_epoch": 1}
    T.train_one_epoch(model, text_model, YOLOWorldCriterion(), [batch], optimizer, ema,
                      torch.amp.GradScaler("cpu", enabled=False), 0, state, cfg, torch.device("cpu"),
                      lambda opt, epoch, step: apply_schedule(opt, epoch, step, 1), RunLogger(None))
    assert conv_dtypes == [torch.bfloat16] and state["global_step"] == 1
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for v in ema.module.state_dict().values() if v.is_floating_point())
    assert not all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))


def test_bf16_falls_back_to_fp16_where_the_gpu_only_emulates_it(monkeypatch):
    """torch.cuda.is_bf16_supported() is true on a T4 or V100 (emulated bf16); those get fp16 + scaler."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert T.amp_settings("bf16", torch.device("cuda:0")) == (True, dtype)
        assert T.amp_settings("fp16", torch.device("cuda:0")) == (True, torch.float16)


def test_training_raises_ap_above_the_untrained_model(tmp_path, capsys):
    """Overfit the 6 generated images (train = val) with the official loop for 90 steps: AP rises.

    One merged class, no scale jitter and 64 px keep it short; PreciseBN gives the eval-mode
    BatchNorm statistics that 90 steps from random weights cannot (see `train.precise_bn_batches`).
    The run is deterministic (seeded data, CPU kernels), but at batch 2 the AP of this tiny set
    swings from one validation to the next (0.02-0.38 AP50 between epochs of one run) and any change
    of the last float bit moves the swings, so the test judges the best of six validations (the
    run's best.pt), as a user would, rather than the last one.
    """
    cfg = tiny_config(tmp_path, epochs=30, imgsz=64, batch_size=2, lr=1e-3, close_mosaic_epochs=30,
                      val_interval=5, dynamic_interval_epoch=100, precise_bn_batches=3, single_class=True)
    cfg.data.affine_scale = [1.0, 1.0]
    from worldtune.data.coco import CocoDetection
    from worldtune.data.loader import build_eval_loader
    from worldtune.data.presets import build_eval_dataset
    from worldtune.eval.evaluate import evaluate_model
    from worldtune.model import build_model

    torch.manual_seed(cfg.train.seed)  # the same start weights as fit()
    untrained = build_model("n", T.build_text_model(cfg.model.text_model), num_classes=cfg.data.num_texts)
    coco = CocoDetection(cfg.data.val_ann, cfg.data.val_images, cfg.data.class_texts or None)
    before = evaluate_model(untrained.eval(), build_eval_loader(build_eval_dataset(coco, 64)), coco)
    result = T.fit(cfg)
    assert result["status"] == "finished" and result["global_step"] == 30 * 3
    said = capsys.readouterr().out
    assert "epoch 1/30 done; about " in said and "left for the other 29 epoch(s)" in said
    assert "epoch 29/30 done" in said and "epoch 30/30 done" not in said
    run = Path(cfg.out)
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "curves.png", "last_val.png"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "epoch", "val"}
    vals = [r for r in records if r["kind"] == "val"]
    assert [r["epoch"] for r in vals] == [4, 9, 14, 19, 24, 29]
    best = max(vals, key=lambda r: r["AP"])
    assert result["best_ap"] == best["AP"] and result["best_epoch"] == best["epoch"]
    assert best["AP"] > before["AP"] + 0.03, (before["AP"], [r["AP"] for r in vals])
    # best.pt holds the weights that scored best_ap (here the EMA with precise BN statistics):
    # evaluating the file on its own gives the same AP
    from worldtune.model.loading import load_model

    reloaded = load_model(run / "best.pt", text_model=cfg.model.text_model)
    assert reloaded.trained_imgsz == 64  # the CLIs default --imgsz to it
    again = evaluate_model(reloaded, build_eval_loader(build_eval_dataset(coco, 64)), coco)
    assert again["AP"] == pytest.approx(result["best_ap"], abs=1e-9)
    assert max(r["AP50"] for r in vals) > before["AP50"] + 0.1, (before["AP50"], [r["AP50"] for r in vals])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from worldtune.loss.criterion import YOLOWorldCriterion

    real, calls = YOLOWorldCriterion.__call__, [0]

    def nan_on_third_step(self, *args):
        losses = real(self, *args)
        calls[0] += 1
        if calls[0] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(YOLOWorldCriterion, "__call__", nan_on_third_step)
    # 2 steps per epoch; the official one-group-per-parameter optimizer layout, for coverage
    cfg = tiny_config(tmp_path, epochs=2, batch_size=3, merge_param_groups=False)
    with pytest.raises(T.NonFiniteLossError, match=r"epoch 2, step 1 \(global step 3\).*last good checkpoint is"):
        T.fit(cfg)
    # the batch rule is printed: 1 x 3 images -> accumulate round(64 / 3) = 21 -> factor 63 / 64
    out = capsys.readouterr().out
    assert "batch rule: total batch 1 x 3 = 3 -> weight decay x0.984375" in out
    assert "start weights: none (random initialisation)" in out  # tiny_config starts from weights none
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["global_step"]) == (1, 2)
    model_params = len(saved["model"]) - sum(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                                             for k in saved["model"])
    assert len(saved["optimizer"]["param_groups"]) > model_params  # one per parameter, frozen text tower too
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_non_finite_gradient_stops_before_the_weights_change(tmp_path, monkeypatch):
    """A finite loss with an infinite gradient (no fp16 scaler to skip the step) must not reach the weights."""
    real, calls = torch.nn.utils.clip_grad_norm_, [0]

    def inf_on_third_step(params, max_norm):
        norm = real(params, max_norm)
        calls[0] += 1
        return norm * float("inf") if calls[0] == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", inf_on_third_step)
    cfg = tiny_config(tmp_path, epochs=2, batch_size=3)
    with pytest.raises(T.NonFiniteLossError,
                       match=r"non-finite gradient norm \(inf\) at epoch 2, step 1 \(global step 3\)"):
        T.fit(cfg)
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert saved["global_step"] == 2 and saved["ema_state"]["steps"] == 2
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_a_failed_validation_keeps_the_epoch_and_runs_again_on_resume(tmp_path, monkeypatch, capsys):
    real, calls = T.evaluate_ema, [0]

    def out_of_memory_once(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "evaluate_ema", out_of_memory_once)
    cfg = tiny_config(tmp_path, epochs=2, batch_size=3, checkpoint_interval=1)
    with pytest.raises(RuntimeError, match="out of memory"):
        T.fit(cfg)
    # the command line prints the error itself; this line says what is safe and how to go on
    assert (f"worldtune train: the validation after epoch 1 stopped with the error below; {cfg.out}/last.pt is "
            f"its latest checkpoint, saved before this validation, which a resume runs again; continue with: "
            f"worldtune train --resume {cfg.out} --device cpu") in capsys.readouterr().err
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["global_step"], saved["val_pending"]) == (1, 2, True)  # the epoch is kept
    assert not (Path(cfg.out) / "epoch_1.pt").exists()
    result = T.fit(cfg, resume=cfg.out)
    assert result["status"] == "finished" and calls[0] == 3  # epoch 1's validation first, then epoch 2's
    # the epoch's snapshot, written after its validation, is not skipped when the resume runs that validation
    assert ckpt_io.load_checkpoint_file(Path(cfg.out) / "epoch_1.pt")["global_step"] == 2
    val = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
           if '"kind": "val"' in line]
    assert [r["epoch"] for r in val] == [0, 1]
    assert ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")["val_pending"] is False


def test_a_best_checkpoint_that_cannot_be_written_stops_the_run_and_the_resume_writes_it(tmp_path, monkeypatch):
    """A full disk at best.pt: one line with what is safe; the resume repeats that validation (from
    the last.pt saved before it) and logs it once, and the epoch's snapshot is written after it."""
    import errno

    from worldtune.engine.logger import read_metrics
    from worldtune.outputs import OutputWriteError

    real = ckpt_io.save_checkpoint_atomic

    def full_at_best(obj, path, *args, **kwargs):
        if Path(path).name == "best.pt":
            raise OutputWriteError(f"cannot write {path}: No space left on device", Path(path),
                                   OSError(errno.ENOSPC, "No space left on device"))
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(ckpt_io, "save_checkpoint_atomic", full_at_best)
    cfg = tiny_config(tmp_path, epochs=1, batch_size=3, checkpoint_interval=1)
    run = Path(cfg.out)
    with pytest.raises(OutputWriteError) as info:
        T.fit(cfg)
    assert str(info.value) == (
        f"cannot write {run}/best.pt: No space left on device; no best.pt was written, and last.pt, saved before "
        f"this validation, runs it again on resume; free some space on the disk of {run}, then continue with: "
        f"worldtune train --resume {run} --device cpu")
    assert sorted(p.name for p in run.glob("*.pt")) == ["last.pt"]
    monkeypatch.undo()
    assert T.fit(cfg, resume=run)["status"] == "finished"
    assert sorted(p.name for p in run.glob("*.pt")) == ["best.pt", "epoch_1.pt", "last.pt"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if r["kind"] != "train"] == ["epoch", "val"]  # neither missing nor repeated
    assert ckpt_io.load_checkpoint_file(run / "best.pt")["best_ap"] == read_metrics(run / "metrics.jsonl")[-1]["AP"]


def test_a_checkpoint_write_failure_says_what_is_safe(tmp_path):
    """The message by file: last.pt (previous one kept, or none yet), an epoch snapshot (last.pt has it)."""
    import errno

    from worldtune.outputs import OutputWriteError

    def failure(name, code=errno.ENOSPC, cause="No space left on device"):
        err = OutputWriteError(f"cannot write {tmp_path / name}: {cause}", tmp_path / name, OSError(code, cause))
        return str(stopping.checkpoint_write_failure(err, "worldtune train --resume R"))

    assert failure("last.pt") == (f"cannot write {tmp_path}/last.pt: No space left on device; no last.pt was "
                                  f"written; free some space on the disk of {tmp_path}, then start the run again")
    assert failure("best.pt") == (f"cannot write {tmp_path}/best.pt: No space left on device; no best.pt was "
                                  f"written; free some space on the disk of {tmp_path}, then start the run again")
    (tmp_path / "last.pt").write_bytes(b"x")
    assert failure("last.pt", errno.EROFS, "Read-only file system") == (
        f"cannot write {tmp_path}/last.pt: Read-only file system; the previous last.pt is intact; make {tmp_path} "
        f"writable, then continue with: worldtune train --resume R")
    (tmp_path / "best.pt").write_bytes(b"x")
    assert failure("best.pt") == (
        f"cannot write {tmp_path}/best.pt: No space left on device; the previous best.pt is intact, and last.pt, "
        f"saved before this validation, runs it again on resume; free some space on the disk of {tmp_path}, then "
        f"continue with: worldtune train --resume R")
    assert failure("epoch_4.pt") == (
        f"cannot write {tmp_path}/epoch_4.pt: No space left on device; {tmp_path}/last.pt holds the same state "
        f"(copy it to epoch_4.pt); free some space on the disk of {tmp_path}, then continue with: "
        f"worldtune train --resume R")


def test_an_error_in_training_says_where_it_stopped_and_what_resumes(tmp_path):
    out = tmp_path / "run"
    state = {"epoch": 2, "step_in_epoch": 7}
    assert stopping.stopped_note(out, state, "worldtune train --resume R") == (
        "worldtune train: training at epoch 3, step 7 stopped with the error below, before any checkpoint was "
        "written")
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    assert stopping.stopped_note(out, state, "worldtune train --resume R") == (
        f"worldtune train: training at epoch 3, step 7 stopped with the error below; {out}/last.pt is its latest "
        f"checkpoint; continue with: worldtune train --resume R")


def test_a_plot_that_cannot_be_written_leaves_the_finished_run_finished(tmp_path, monkeypatch, capsys):
    """The pictures come after the last checkpoint: a full disk there is a warning, not a failed run."""
    import errno

    from worldtune.engine import logger
    from worldtune.eval import plots

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logger, "plot_curves", full)
    monkeypatch.setattr(plots, "plot_eval", full)
    cfg = tiny_config(tmp_path, epochs=1, batch_size=3)
    with pytest.warns(UserWarning) as caught:
        result = T.fit(cfg)
    assert result["status"] == "finished" and result["best_epoch"] == 0
    said = [str(w.message) for w in caught if "could not draw" in str(w.message)]
    assert said == [f"could not draw {cfg.out}/{name} (OSError: [Errno 28] No space left on device); the run "
                    f"itself is complete" for name in ("curves.png", "last_val.png")]
    assert (Path(cfg.out) / "best.pt").is_file() and "best AP" in capsys.readouterr().out


def test_an_unwritable_run_folder_is_told_before_the_data_is_read(tmp_path, monkeypatch):
    import errno

    from worldtune import outputs

    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", refused)
    monkeypatch.setattr(T, "build_datasets", lambda *a, **k: pytest.fail("the data was read first"))
    cfg = tiny_config(tmp_path, epochs=1)
    with pytest.raises(outputs.OutputWriteError, match=rf"^cannot write run folder {cfg.out}: Read-only file "
                                                        rf"system \(in {tmp_path}\)$"):
        T.fit(cfg)
    assert not Path(cfg.out).exists()


def test_a_config_that_cannot_be_saved_is_named(tmp_path, monkeypatch):
    import errno

    from worldtune import config
    from worldtune.outputs import OutputWriteError

    def full(cfg, path):
        raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file named

    monkeypatch.setattr(config, "dump", full)
    cfg = tiny_config(tmp_path, epochs=1)
    with pytest.raises(OutputWriteError, match=rf"^cannot write {cfg.out}/config.yaml: No space left on device$"):
        T.fit(cfg)


def test_resuming_an_older_checkpoint_keeps_a_better_best(tmp_path, capsys):
    """Resumed from epoch_1.pt after the run went on: the folder's best.pt (logged AP) is not
    replaced by a worse one just because the older checkpoint remembers a lower best AP."""
    cfg = tiny_config(tmp_path, epochs=2, batch_size=3)
    cfg.train.checkpoint_interval = 1
    T.fit(cfg)
    run = Path(cfg.out)
    older = ckpt_io.load_checkpoint_file(run / "epoch_1.pt")
    ckpt_io.save_checkpoint_atomic({**older, "world_size": 2}, run / "epoch_1.pt")  # as if trained on 2 GPUs
    with (run / "metrics.jsonl").open("a") as f:  # a later, better validation than any real one
        f.write(json.dumps({"kind": "val", "step": 99, "epoch": 1, "AP": 0.99}) + "\n")
    before = (run / "best.pt").stat().st_mtime_ns
    result = T.fit(cfg, resume=run / "epoch_1.pt")
    assert "trained with 2 process(es), resumed with 1" in capsys.readouterr().out
    assert result["status"] == "finished" and result["best_ap"] == 0.99
    assert (run / "best.pt").stat().st_mtime_ns == before


def test_a_validation_set_without_ground_truth_gives_no_best_checkpoint(tmp_path, capsys):
    """Its AP is undefined, not 0: best.pt would hold the first epoch's weights for good."""
    cfg = tiny_config(tmp_path, epochs=1, batch_size=3)
    val = json.loads(Path(cfg.data.val_ann).read_text())
    val["annotations"] = []
    cfg.data.val_ann = str(tmp_path / "val_without_boxes.json")
    Path(cfg.data.val_ann).write_text(json.dumps(val))
    cfg.train.val_interval = 1
    result = T.fit(cfg)
    assert result["status"] == "finished" and result["best_epoch"] == -1
    assert "epoch 1: AP n/a: the validation set has no ground-truth box" in capsys.readouterr().out
    assert not (Path(cfg.out) / "best.pt").exists() and (Path(cfg.out) / "last.pt").exists()


@pytest.mark.parametrize("cut, listed, shown", [(1, 1, "shown above"), (2, 1, "the first 1 shown above")])
def test_the_run_end_counts_the_training_data_warnings(tmp_path, capsys, monkeypatch, cut, listed, shown):
    """Each training JPEG cut short is warned about once (test_loader: over epochs and workers), the
    first `listed` of them are shown, and the run's end counts them all and says which were shown."""
    from worldtune.data import loader

    class Listing(loader.TrainLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs, list_warnings=listed)

    monkeypatch.setattr(loader, "TrainLoader", Listing)  # a limit of 1 (the run has 10): met, then passed
    cfg = tiny_config(tmp_path, epochs=1, batch_size=3)
    cfg.data.cache_images, cfg.data.val_ann, cfg.data.val_images = "false", "", ""  # decoded by the loader only
    for jpeg in sorted(Path(cfg.data.train_images).glob("*.jpg"), key=lambda p: -p.stat().st_size)[:cut]:
        jpeg.write_bytes(jpeg.read_bytes()[:-400])
    with pytest.warns(UserWarning, match="is cut short") as caught:
        T.fit(cfg)
    assert sum("is cut short" in str(w.message) for w in caught) == 1  # once, and no more than listed
    assert (f"loading the training data gave {cut} distinct warning(s) (bad or mis-sized images and the like; "
            f"{shown})") in capsys.readouterr().out


def test_resuming_with_another_process_count_applies_its_weight_decay_rule(tmp_path, capsys):
    """A run of 8 processes x 16 (weight decay x2 by the batch rule) resumed by one process: the
    batch rule line and the warning say the decay follows the new total batch, and so it must be, not
    the saved run's (the optimizer's state dict carries that)."""
    from worldtune.engine.optim import weight_decay_scale

    cfg = tiny_config(tmp_path, epochs=2, batch_size=3)
    cfg.train.checkpoint_interval = 1
    T.fit(cfg)
    run = Path(cfg.out)
    older = ckpt_io.load_checkpoint_file(run / "epoch_1.pt")
    fresh = [group["weight_decay"] for group in older["optimizer"]["param_groups"]]
    for group in older["optimizer"]["param_groups"]:  # as the 8-process run saved them
        group["weight_decay"] *= weight_decay_scale(3, 8) / weight_decay_scale(3, 1)
    ckpt_io.save_checkpoint_atomic({**older, "world_size": 8}, run / "epoch_1.pt")
    T.fit(cfg, resume=run / "epoch_1.pt")
    assert "trained with 8 process(es), resumed with 1" in capsys.readouterr().out
    resumed = ckpt_io.load_checkpoint_file(run / "last.pt")
    assert [group["weight_decay"] for group in resumed["optimizer"]["param_groups"]] == fresh


def test_duplicate_ctrl_c_is_not_an_abort(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(stopping.time, "monotonic", lambda: clock[0])
    flag = stopping.StopFlag()
    flag._handler(None, None)
    assert flag.requested
    clock[0] += 0.5
    flag._handler(None, None)  # torchrun forwarding the same Ctrl-C: ignored
    clock[0] += 2.0
    with pytest.raises(KeyboardInterrupt):  # a real second press aborts
        flag._handler(None, None)


def test_ctrl_c_during_validation_raises_once(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(stopping.time, "monotonic", lambda: clock[0])
    flag = stopping.StopFlag()
    flag.immediate = True
    with pytest.raises(KeyboardInterrupt):
        flag._handler(None, None)
    clock[0] += 0.5
    flag._handler(None, None)  # torchrun's forwarded copy must not interrupt the clean-up


def test_ctrl_c_is_announced_by_rank_0_and_the_resume_hint_keeps_the_process_count(capsys):
    stopping.StopFlag(announce=False)._handler(None, None)
    assert capsys.readouterr().out == ""
    stopping.StopFlag()._handler(None, None)
    assert "Ctrl-C: finishing this step" in capsys.readouterr().out
    assert stopping.resume_hint("runs/a", 1) == "worldtune train --resume runs/a"
    assert stopping.resume_hint("runs/a", 4) == "torchrun --nproc_per_node 4 -m worldtune train --resume runs/a"
    assert stopping.resume_hint("runs/a", 16, 8, "cuda") == \
        "torchrun --nnodes 2 ... --nproc_per_node 8 -m worldtune train --resume runs/a --device cuda"
    assert stopping.resume_hint("runs/a", 2, 2, "cpu").endswith("--resume runs/a --device cpu")


def test_logger_counts_repeated_steps_once_and_summarises(tmp_path):
    from worldtune.engine.logger import RunLogger, plot_curves, read_metrics, summary_table

    log = RunLogger(tmp_path, tensorboard=False)
    log.log("train", 1, epoch=0, loss=9.0)
    log.log("train", 2, epoch=0, loss=float("nan"))  # written as null, not NaN
    log.log("train", 2, epoch=0, loss=7.0)  # the same step again after a resume: the later one wins
    log.log("epoch", 2, epoch=0, loss=8.0, loss_cls=1.0, loss_bbox=2.0, loss_dfl=3.0, lr=1e-3)
    log.log("val", 2, epoch=0, AP=0.25, AP50=0.5)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # a line cut by a kill
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["kind"], r["step"], r.get("loss")) for r in records] == [
        ("train", 1, 9.0), ("epoch", 2, 8.0), ("train", 2, 7.0), ("val", 2, None)]
    table = summary_table(tmp_path / "metrics.jsonl").splitlines()
    assert table[1].split() == ["1", "8.000", "1.000", "2.000", "3.000", "1.00e-03", "25.0", "50.0"]
    log = RunLogger(tmp_path, tensorboard=False)  # the resumed run's logger, after the cut line
    log.log("epoch", 4, epoch=1, loss=6.0, loss_cls=1.0, loss_bbox=2.0, loss_dfl=3.0, lr=1e-3)  # not validated
    table = summary_table(tmp_path / "metrics.jsonl").splitlines()
    assert table[2].endswith("     -      -") and len(table[2]) == len(table[1])  # "-" under AP and AP50
    assert plot_curves(tmp_path / "metrics.jsonl", tmp_path / "c.png").stat().st_size > 1000
    assert not RunLogger(None).enabled


def test_progress_bars_refresh_rarely_into_a_log_file(tmp_path, monkeypatch, capsys):
    import io

    from worldtune.engine.logger import RunLogger

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    from worldtune.progress import progress_bar

    log = RunLogger(tmp_path, tensorboard=False)
    for stream, interval in ((io.StringIO(), 30.0), (Terminal(), 0.1)):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = log.progress(range(3), total=3, desc="epoch 1/1")
        assert bar.mininterval == interval
        list(bar)
        assert progress_bar(range(2), mininterval=2.0).mininterval == (30.0 if interval == 30.0 else 2.0)


def test_training_bar_into_a_log_file_is_not_redrawn_every_step(tmp_path, monkeypatch, capsys):
    """The loss postfix set after every step must not force a redraw: into a log file every redraw
    is a new line, and the bar is meant to refresh there every 30 s only."""
    from tqdm import tqdm

    real, redraws = tqdm.refresh, []

    def counting(self, *args, **kwargs):
        if str(self.desc).startswith("epoch"):
            redraws.append(self.n)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tqdm, "refresh", counting)
    cfg = tiny_config(tmp_path, epochs=1, batch_size=1)  # 6 steps; capsys: stderr is no terminal
    T.fit(cfg)
    assert len(redraws) <= 2, redraws  # the bar's first and last drawing, not one per step


def test_time_left_after_a_resumed_partial_epoch_follows_the_steps_trained(tmp_path, monkeypatch, capsys):
    """Resumed at step 5 of 6: the first epoch of the resumed process trains one step. The run's
    time left comes from the pace per step (1 s here), not per epoch: 12 steps left, not 2 epochs
    of one step's time."""
    import types

    from worldtune.loss.criterion import YOLOWorldCriterion

    real, clock, calls = YOLOWorldCriterion.__call__, [0.0], [0]

    def one_second_a_step(self, *args):
        calls[0] += 1
        if calls[0] == 6 and interrupt[0]:  # the first run stops before its 6th step
            raise KeyboardInterrupt
        clock[0] += 1.0
        return real(self, *args)

    interrupt = [True]
    monkeypatch.setattr(YOLOWorldCriterion, "__call__", one_second_a_step)
    monkeypatch.setattr(T, "time", types.SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter))
    cfg = tiny_config(tmp_path, epochs=3, batch_size=1)  # 6 steps per epoch
    assert T.fit(cfg)["status"] == "interrupted"
    assert ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")["step_in_epoch"] == 5
    interrupt[0] = False
    capsys.readouterr()
    T.fit(cfg, resume=cfg.out)
    assert "epoch 1/3 done; about 00:12 left" in capsys.readouterr().out


def test_tensorboard_of_a_resumed_run_drops_the_steps_it_logs_again(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from worldtune.engine.logger import RunLogger

    def logged(folder):
        events = EventAccumulator(str(folder / "tensorboard"))
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("train/loss")]

    for purge_step, name in ((None, "plain"), (4, "purged")):
        log = RunLogger(tmp_path / name)
        for step in range(1, 7):  # killed after logging step 6; its last checkpoint was at step 3
            log.log("train", step, loss=float(step))
        log.close()
        # A real resume starts in a later second. TensorBoard reads event files in name order, and the
        # name is <seconds>.<host>.<pid>.<per-process counter>: within one second, counter 10 sorts
        # before 9, so in a long test session the resumed file could be read first.
        time.sleep(1.0 - time.time() % 1.0 + 0.01)
        log = RunLogger(tmp_path / name, purge_step=purge_step)
        for step in range(4, 8):  # the resumed run logs steps 4-6 again, with other values
            log.log("train", step, loss=10.0 + step)
        log.close()
    assert [s for s, _ in logged(tmp_path / "plain")].count(5) == 2  # without purging: two curves overlap
    assert logged(tmp_path / "purged") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 14.0), (5, 15.0), (6, 16.0), (7, 17.0)]


def test_data_speed_options_reach_the_training_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "worker_start_method", lambda: "fork")  # auto caches only with forked workers
    monkeypatch.setattr(image_cache, "available_memory", lambda: 2**33)  # /proc/meminfo is Linux-only
    cfg = tiny_config(tmp_path)
    info = dist.init_distributed("cpu")
    assert cfg.data.cache_images == "auto"
    auto = T.build_datasets(cfg, info)[0]  # the 6 small images fit: cached in RAM
    assert auto.images.cached_count == 6 and auto.cache_report.startswith("image cache: the 6 training images")
    stage2 = cfg.train.epochs - cfg.train.close_mosaic_epochs
    resumed = T.build_datasets(cfg, info, start_epoch=stage2)[0]
    assert resumed.images is None  # resumed in stage 2, which never reads the cache: none is built
    with monkeypatch.context() as m:
        m.setattr(dist, "all_true", lambda flag, device: False)  # another rank found too little memory
        disagreed = T.build_datasets(cfg, info)[0]
    assert disagreed.images is None and "another training process" in disagreed.cache_report
    cfg.data.cache_images = "false"
    plain = T.build_datasets(cfg, info)[0]
    assert plain.mosaic_pool == 0 and plain.images is None and plain.cache_report == ""
    cfg.data.cache_images, cfg.data.cache_max_gb, cfg.data.mosaic_pool = "true", 0.5, 3
    fast = T.build_datasets(cfg, info)[0]
    assert fast.mosaic_pool == 3 and fast.images.cached_count == len(fast.dataset)  # all 6 images cached
    assert fast.images.cached.path is None  # in this process's RAM
    cfg.data.cache_images, cfg.data.cache_dir = "false", str(tmp_path / "cache")  # a folder turns the cache on
    shared = T.build_datasets(cfg, info)[0]
    assert shared.images.cached.path.parent == tmp_path / "cache" and shared.images.cached_count == 6
    assert T.build_datasets(cfg, info, start_epoch=stage2)[0].images.cached is None  # not even a named folder


def test_mosaic_closes_for_the_last_close_mosaic_epochs(tmp_path):
    # 5 epochs (0-based 0..4), the last 2 without mosaic: epochs 3 and 4 are stage 2, so the switch is 3.
    cfg = tiny_config(tmp_path, epochs=5, close_mosaic_epochs=2)
    cfg.data.cache_images = "false"
    train_set = T.build_datasets(cfg, dist.init_distributed("cpu"))[0]
    assert train_set.close_mosaic_epoch == 3
    stages = []
    for epoch in range(5):
        train_set.set_epoch(epoch)
        stages.append(train_set.stage)
    assert stages == [1, 1, 1, 2, 2]


class FixedTexts:
    """A frozen text tower stand-in: one fixed embedding per name."""

    def __init__(self, table: dict):
        self.table = table

    def encode(self, texts: list, per_string: bool = False) -> torch.Tensor:
        return torch.stack([self.table[t] for t in texts])


def _one_image_step_inputs():
    """(an `n` model of 2 classes, a FixedTexts tower, a one-image batch with one box), seeded."""
    from worldtune.model import build_model

    torch.manual_seed(0)
    model = build_model("n", num_classes=2)
    names = ["red", "green"]
    text_model = FixedTexts({n: torch.nn.functional.normalize(torch.randn(512), dim=0) for n in names})
    batch = {"images": torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8), "texts": [names],
             "bboxes_labels": torch.tensor([[0, 1, 8, 8, 40, 40]], dtype=torch.float32)}
    return model, text_model, batch


def test_fp16_amp_step_with_an_overflow_is_skipped_by_the_scaler_not_stopped(monkeypatch, one_thread):
    """The CUDA fp16 path of the loop, run on CPU (CPU autocast, a CPU GradScaler): a step whose scaled
    gradients overflow is skipped by the scaler (weights kept, scale halved) instead of stopping the
    run as non-finite; the next step trains. On a GPU the first fp16 steps often overflow this way."""
    from worldtune.config import Config
    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.logger import RunLogger
    from worldtune.engine.optim import OptimConfig, build_optimizer
    from worldtune.loss.criterion import YOLOWorldCriterion
    from worldtune.model import build_model
    from worldtune.engine.schedule import apply_schedule

    monkeypatch.setattr(T, "amp_settings", lambda *args: (True, torch.float16))
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("n", num_classes=4)
    names = ["red", "green", "blue", "black"]
    text_model = FixedTexts({n: torch.nn.functional.normalize(torch.randn(512), dim=0) for n in names})
    batch = {"images": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8), "texts": [names, names[::-1]],
             "bboxes_labels": torch.tensor([[0, 1, 8, 8, 40, 40], [1, 3, 20, 10, 60, 50]], dtype=torch.float32)}
    optimizer = build_optimizer(model, OptimConfig(batch_size_per_gpu=2))
    ema, scaler = ExpMomentumEMA(model), torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    real_unscale, calls = scaler.unscale_, [0]

    def overflow_on_first_step(opt):
        calls[0] += 1
        if calls[0] == 1:  # as an fp16 backward that overflowed
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("inf"))
        real_unscale(opt)

    monkeypatch.setattr(scaler, "unscale_", overflow_on_first_step)
    weights = [p.detach().clone() for p in model.parameters()]
    cfg = Config()
    cfg.train.amp, cfg.train.log_interval = "fp16", 1
    state = {"step_in_epoch": 0, "global_step": 0, "iters_per_epoch": 2}
    schedule = lambda opt, epoch, step: apply_schedule(opt, epoch, step, 2)  # noqa: E731
    T.train_one_epoch(model, text_model, YOLOWorldCriterion(), [batch], optimizer, ema, scaler,
                      0, state, cfg, device, schedule, RunLogger(None))
    assert state["global_step"] == 1 and scaler.get_scale() == 2.0 ** 7
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))
    T.train_one_epoch(model, text_model, YOLOWorldCriterion(), [batch], optimizer, ema, scaler,
                      0, state, cfg, device, schedule, RunLogger(None))
    assert state["global_step"] == 2 and scaler.get_scale() == 2.0 ** 7
    assert not all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))


def test_under_torchrun_a_stop_on_any_rank_travels_with_the_logged_losses(monkeypatch, one_thread):
    """Ctrl-C under torchrun: every rank must stop after the same step. The requests are averaged in
    the step's one loss reduction (a separate all-reduce would be a second host sync per step). Here
    as rank 0 of 2, the reduction stubbed: the other rank asks to stop during step 2, this one never."""
    from worldtune.config import Config
    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.logger import RunLogger
    from worldtune.engine.optim import OptimConfig, build_optimizer
    from worldtune.engine.schedule import apply_schedule
    from worldtune.loss.criterion import YOLOWorldCriterion

    model, text_model, batch = _one_image_step_inputs()
    reductions = []

    def reduce_as_rank0_of_2(values, average=True):
        reductions.append(sorted(values))
        other_rank_stops = 1.0 if len(reductions) == 2 else 0.0
        return {k: (v + (other_rank_stops if k == "stop_requests" else v)) / 2 for k, v in values.items()}

    monkeypatch.setattr(dist, "is_dist", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "reduce_dict", reduce_as_rank0_of_2)
    monkeypatch.setattr(dist, "all_true", lambda *a: pytest.fail("a second reduction in the step"))
    cfg = Config()
    cfg.train.log_interval = 1
    state = {"step_in_epoch": 0, "global_step": 0, "iters_per_epoch": 4}
    optimizer = build_optimizer(model, OptimConfig(batch_size_per_gpu=1))
    result = T.train_one_epoch(model, text_model, YOLOWorldCriterion(), [batch] * 4, optimizer, ExpMomentumEMA(model),
                               torch.amp.GradScaler("cpu", enabled=False), 0, state, cfg, torch.device("cpu"),
                               lambda opt, epoch, step: apply_schedule(opt, epoch, step, 4), RunLogger(None),
                               stop=stopping.StopFlag(announce=False))
    assert result["interrupted"] and state["global_step"] == 2 and len(reductions) == 2
    assert "stop_requests" in reductions[0] and "stop_requests" not in result  # voted, not logged as a loss


class _Recorder:
    """A RunLogger stand-in that keeps the logged records."""

    def __init__(self):
        self.records = []

    def progress(self, loader, **kwargs):
        return loader

    def log(self, kind, step, **values):
        self.records.append({"kind": kind, "step": step, **values})


def test_an_epochs_mean_losses_are_of_its_own_steps_and_its_last_step_is_logged(one_thread):
    """The epoch record averages that epoch's steps: a finished epoch's sums must not carry into the next
    (only an epoch resumed in its middle keeps the sums of its steps before the stop)."""
    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.optim import OptimConfig, build_optimizer
    from worldtune.engine.schedule import apply_schedule
    from worldtune.loss.criterion import YOLOWorldCriterion

    model, text_model, batch = _one_image_step_inputs()
    cfg = Config()
    cfg.train.log_interval = 7  # off the interval, an epoch's last step is logged all the same
    state = {"step_in_epoch": 0, "global_step": 0, "iters_per_epoch": 1}
    optimizer = build_optimizer(model, OptimConfig(batch_size_per_gpu=1))
    ema, logger = ExpMomentumEMA(model), _Recorder()
    for epoch in (0, 1):
        result = T.train_one_epoch(model, text_model, YOLOWorldCriterion(), [batch], optimizer, ema,
                                   torch.amp.GradScaler("cpu", enabled=False), epoch, state, cfg, torch.device("cpu"),
                                   lambda opt, e, step: apply_schedule(opt, e, step, 1), logger)
        state["step_in_epoch"] = 0  # as `fit` does after an epoch
        assert result["loss"] == pytest.approx(logger.records[-1]["loss"])  # its one step's loss
    assert [r["step"] for r in logger.records] == [1, 2]
    assert logger.records[0]["loss"] != logger.records[1]["loss"]  # the two steps differ: the test can tell


def test_the_logged_images_per_second_count_every_process(monkeypatch, one_thread):
    """Under torchrun each rank steps on its own batch: the logged rate is of all of them (the batch x the
    process count), here rank 0 of 2 with one image per step and a clock that ticks 1 s per reading."""
    from types import SimpleNamespace

    from worldtune.engine.ema import ExpMomentumEMA
    from worldtune.engine.optim import OptimConfig, build_optimizer
    from worldtune.engine.schedule import apply_schedule
    from worldtune.loss.criterion import YOLOWorldCriterion

    model, text_model, batch = _one_image_step_inputs()
    ticks = iter(range(100))
    monkeypatch.setattr(T, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)  # no process group: reduce_dict passes values on
    cfg = Config()
    cfg.train.log_interval = 1
    state = {"step_in_epoch": 0, "global_step": 0, "iters_per_epoch": 2}
    optimizer = build_optimizer(model, OptimConfig(batch_size_per_gpu=1))
    logger = _Recorder()
    T.train_one_epoch(model, text_model, YOLOWorldCriterion(), [batch] * 2, optimizer, ExpMomentumEMA(model),
                      torch.amp.GradScaler("cpu", enabled=False), 0, state, cfg, torch.device("cpu"),
                      lambda opt, epoch, step: apply_schedule(opt, epoch, step, 2), logger)
    assert [r["images_per_s"] for r in logger.records] == [2.0, 2.0]  # 2 images per 1 s tick
