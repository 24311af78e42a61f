"""`torchrun --nproc_per_node 2 -m worldtune train ...` on CPU (gloo): both ranks train, rank 0 writes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_run import tiny_config
from worldtune.engine import checkpoint as ckpt_io
from worldtune.engine import dist

REPO = Path(__file__).resolve().parents[2]


def test_single_process_helpers():
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.is_main) == (0, 1, False, True)
    assert dist.is_main_process() and dist.get_world_size() == 1
    values = {"loss": torch.tensor(2.0)}
    assert dist.reduce_dict(values) is values
    assert dist.all_true(True, info.device) and not dist.all_true(False, info.device)
    assert dist.save_on_master(lambda x: x + 1, 1) == 2
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    assert isinstance(dist.convert_sync_bn(bn, 2, torch.device("cpu"))[0], torch.nn.BatchNorm2d)  # CPU: no SyncBN
    assert isinstance(dist.convert_sync_bn(bn, 1, torch.device("cuda"))[0], torch.nn.BatchNorm2d)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            dist.resolve_device("cuda")


def _torchrun_train(cfg, cwd: Path, *sets: str, entry=("-m", "worldtune"), returncode=0) -> str:
    """Train `cfg`'s tiny set for one epoch with 2 CPU processes (batch 2 each, one stage-1 epoch);
    returns the combined output. `entry`: what torchrun starts (a script taking worldtune's arguments)."""
    d = cfg.data
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *entry, "train", "--recipe", "v2-s", "--variant", "n", "--weights", "none",
           "--text-model", cfg.model.text_model, "--train-ann", d.train_ann, "--train-images", d.train_images,
           "--val-ann", d.val_ann, "--val-images", d.val_images,
           "--class-texts", d.class_texts, "--epochs", "1", "--batch-size", "2", "--imgsz", "64",
           "--device", "cpu", "--workers", "0", "--out", cfg.out,
           "--set", "data.num_texts=5", "--set", "train.min_warmup_iters=2", "--set", "train.log_interval=1",
           "--set", "data.mixup_prob=0", "--set", "data.copypaste_prob=0",
           "--set", "train.close_mosaic_epochs=0"]  # a stage-1 epoch, which reads the image cache
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_one_process_on_cuda_n_makes_that_gpu_current(monkeypatch):
    """`--device cuda:1` without torchrun: GPU 1 becomes the current device, so the loader's pin-memory
    thread (which pins for the current device) does not open a context on GPU 0."""
    chosen = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert dist.init_distributed("cuda:1").device == torch.device("cuda:1")
    assert chosen == [torch.device("cuda:1")]
    dist.init_distributed("cpu")
    assert len(chosen) == 1


def test_torchrun_two_processes_gloo(tmp_path):
    # 6 images, 2 ranks x batch 2 -> 2 iterations per rank (the sampler pads 6 -> 6 = 2 x 3 samples).
    cfg = tiny_config(tmp_path, epochs=1, batch_size=2)
    # both ranks start at once: one builds the cache file, one waits
    out = _torchrun_train(cfg, tmp_path, f"data.cache_dir={tmp_path / 'cache'}")
    assert "batch 2 x 2 process(es)" in out
    assert out.count("batch rule: total batch 2 x 2 = 4") == 1  # printed by rank 0 only
    run = Path(cfg.out)
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == ["best.pt", "config.yaml", "curves.png",
                                                                   "last.pt", "last_val.png", "metrics.jsonl"]
    # validation split over the two processes, scored once by rank 0
    assert out.count("epoch 1: AP") == 1
    val_records = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "val"' in line]
    assert len(val_records) == 1
    saved = ckpt_io.load_checkpoint_file(run / "last.pt")
    assert (saved["epoch"], saved["global_step"]) == (1, 2)
    # rank 0 alone logs, once per step
    train_records = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"kind": "train"' in line]
    assert len(train_records) == 2
    # the two ranks share one image-cache file; the lock is gone
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".npy", ".u8"]


def test_torchrun_ranks_agree_on_the_automatic_cache(tmp_path):
    import json

    cfg = tiny_config(tmp_path, epochs=1, batch_size=2)
    coco = json.loads(Path(cfg.data.train_ann).read_text())
    coco["annotations"][0].pop("segmentation")  # a data warning at start, which both ranks would give
    cfg.data.train_ann = str(tmp_path / "no_segm.json")
    Path(cfg.data.train_ann).write_text(json.dumps(coco))
    out = _torchrun_train(cfg, tmp_path)  # data.cache_images=auto: both ranks decide, then agree
    assert out.count("image cache: the 6 training images") == 1  # said by rank 0 only
    assert out.count("have no usable segmentation") == 1  # warned by rank 0 only
    assert "x 2 processes" in out and "epoch 1: AP" in out


# torchrun's worker script: rank 0 sends SIGTERM to torchrun in its first step, as SLURM or docker stop would.
SIGTERM_TO_TORCHRUN = """
import os, signal, sys, time
from worldtune.engine import train
real = train.batch_text_feats
def first_step(*args, **kwargs):
    if os.environ["RANK"] == "0" and not os.environ.get("SENT"):
        os.environ["SENT"] = "1"
        os.kill(os.getppid(), signal.SIGTERM)  # torchrun passes it on to both ranks
        time.sleep(1)  # it arrives within the step
    return real(*args, **kwargs)
train.batch_text_feats = first_step
from worldtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_to_torchrun_stops_both_ranks_after_the_step_with_last_pt(tmp_path):
    """torchrun passes a SIGTERM on to the ranks (and SIGKILLs them 30 s later): they finish the step
    and save, as on Ctrl-C, instead of dying with nothing saved. (Resuming is test_resume's.)"""
    cfg = tiny_config(tmp_path, epochs=1, batch_size=2)
    (tmp_path / "entry.py").write_text(SIGTERM_TO_TORCHRUN)
    # torchrun itself ends with its SignalException (exit status 1) once the ranks are done
    out = _torchrun_train(cfg, tmp_path, entry=(str(tmp_path / "entry.py"),), returncode=1)
    assert out.count("SIGTERM: finishing this step") == 1 and "stopped at epoch 1, step 1" in out
    assert "forcefully" not in out  # within torchrun's grace period
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 1, 1)


# torchrun's worker script: each rank plays a machine of its own (LOCAL_WORLD_SIZE 1), and only rank 1's
# gets a Ctrl-C, as it starts predicting its share of the validation.
CTRL_C_ON_ONE_MACHINE = """
import os, signal, sys
os.environ["LOCAL_WORLD_SIZE"] = "1"
from worldtune.eval import evaluate
real = evaluate.collect_detections
def predict(*args, **kwargs):
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGINT)
    return real(*args, **kwargs)
evaluate.collect_detections = predict
from worldtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_on_one_machine_stops_every_rank_in_a_validation(tmp_path):
    """Across machines a Ctrl-C reaches one machine's ranks only, and torchrun kills them 30 s later:
    the ranks agree before each validation batch, so all stop there, and last.pt is the one saved
    before the validation, which the resume repeats."""
    cfg = tiny_config(tmp_path, epochs=1, batch_size=2)
    (tmp_path / "entry.py").write_text(CTRL_C_ON_ONE_MACHINE)
    out = _torchrun_train(cfg, tmp_path, "data.val_batch_size=1", entry=(str(tmp_path / "entry.py"),),
                          returncode=1)  # a rank's exit status 130 is a failure to torchrun
    assert "aborted during a validation" in out and "epoch 1: AP" not in out
    saved = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert (saved["epoch"], saved["global_step"], saved["val_pending"]) == (1, 2, True)


def test_the_loss_is_scaled_by_the_process_count(tmp_path, monkeypatch):
    """The criterion gets the world size (official loss x batch x world size); without it, DDP's
    gradients would be W times smaller and the clip at 10 would act differently. Checked in one
    process that believes it is rank 0 of 2 (DDP itself stubbed out)."""
    import worldtune.loss.criterion as criterion_module
    from worldtune.engine import train as T

    seen = []

    class Stop(Exception):
        pass

    class Spy(criterion_module.YOLOWorldCriterion):
        def __init__(self, world_size=1, **kwargs):
            seen.append(world_size)
            raise Stop

    monkeypatch.setattr(criterion_module, "YOLOWorldCriterion", Spy)
    monkeypatch.setattr(dist, "init_distributed", lambda device: dist.DistInfo(world_size=2))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda model, **kwargs: model)
    with pytest.raises(Stop):
        T.fit(tiny_config(tmp_path, epochs=1))
    assert seen == [2]


def test_cuda_means_this_processs_local_gpu(monkeypatch):
    """Under torchrun `--device cuda` (or auto) puts each process on its own GPU, LOCAL_RANK's."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dist.resolve_device("cuda", local_rank=3) == torch.device("cuda:3")
    assert dist.resolve_device("auto", local_rank=1) == torch.device("cuda:1")
    assert dist.resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")  # named: kept


def test_all_true_and_reduce_dict_in_a_process_group(tmp_path):
    """The collective paths, in a one-process gloo group (a False vote is a stop)."""
    import torch.distributed as torch_dist

    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_dist()
        assert dist.all_true(True, torch.device("cpu")) and not dist.all_true(False, torch.device("cpu"))
        reduced = dist.reduce_dict({"b": torch.tensor(2.0), "a": torch.tensor([3.0])})
        assert list(reduced) == ["a", "b"] and [v.item() for v in reduced.values()] == [3.0, 2.0]
    finally:
        dist.cleanup()
    assert not dist.is_dist()


def _reduce_worker(rank: int, world_size: int, store: str, out: str) -> None:
    """One gloo process: rank r reduces {"loss": r + 1, "stop": r == 1} and votes; saves what it got."""
    import datetime

    import torch.distributed as torch_dist

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                                  timeout=datetime.timedelta(seconds=60))
    try:
        cpu = torch.device("cpu")
        values = {"loss": torch.tensor(rank + 1.0), "stop": torch.tensor(float(rank == 1))}
        result = {"average": {k: v.item() for k, v in dist.reduce_dict(values).items()},
                  "sum": {k: v.item() for k, v in dist.reduce_dict(values, average=False).items()},
                  "all_agree": dist.all_true(True, cpu), "one_disagrees": dist.all_true(rank == 0, cpu),
                  "world_size": dist.get_world_size()}
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.cleanup()


def test_reduce_dict_and_all_true_over_two_gloo_processes(tmp_path):
    """Two real processes (the one-process group above cannot tell a mean from a sum): the logged
    losses are the ranks' mean, and one rank's False vote reaches both. Forked, not spawned: a spawned
    process would spend seconds importing torch again."""
    import torch.multiprocessing as mp

    out = tmp_path / "result"
    mp.start_processes(_reduce_worker, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True,
                       start_method="fork")
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        assert got["world_size"] == 2
        assert got["average"] == {"loss": 1.5, "stop": 0.5}  # (1 + 2) / 2; one rank of two asks to stop
        assert got["sum"] == {"loss": 3.0, "stop": 1.0}
        assert got["all_agree"] is True and got["one_disagrees"] is False
