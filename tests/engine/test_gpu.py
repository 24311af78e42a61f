"""Checks that need a CUDA device: AMP training, resume, GPU-vs-CPU model numbers, the captured
CUDA-graph step against the loop's step, and the one host sync per training step.

They skip on machines without one (CI and the development VM). `benchmarks/gpu_checks.sh` runs
them on a lent GPU together with the GPU benchmarks.
"""
import os
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers.tiny_run import tiny_config
from worldtune.engine import checkpoint as ckpt_io
from worldtune.engine import train as T

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_training_on_gpu_is_interrupted_resumed_and_keeps_weights_finite(tmp_path, amp, monkeypatch):
    real, calls = T.batch_text_feats, [0]

    def interrupt_on_third_step(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # a real SIGINT in the middle of step 3 of 4
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "batch_text_feats", interrupt_on_third_step)
    cfg = tiny_config(tmp_path, epochs=2, device="cuda", amp=amp)  # 6 images, batch 3: 2 steps per epoch
    assert T.fit(cfg)["status"] == "interrupted"
    monkeypatch.setattr(T, "batch_text_feats", real)
    result = T.fit(cfg, resume=cfg.out)
    assert result["status"] == "finished" and result["global_step"] == 4
    ckpt = ckpt_io.load_checkpoint_file(Path(cfg.out) / "last.pt")
    assert ckpt["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["ema"].values() if v.is_floating_point())
    assert ("scale" in ckpt["scaler"]) == (amp == "fp16")  # the GradScaler only runs for fp16


def test_model_outputs_on_gpu_match_cpu():
    from worldtune.model import build_model

    torch.manual_seed(0)
    model = build_model("s").eval()
    images, texts = torch.rand(2, 3, 320, 320), torch.nn.functional.normalize(torch.randn(2, 7, 512), dim=-1)
    with torch.no_grad():
        cpu = model(images, texts)
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 on both sides
        try:
            gpu = model.cuda()(images.cuda(), texts.cuda())
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for a, b in zip(cpu.cls_logits + cpu.box_dist_logits, gpu.cls_logits + gpu.box_dist_logits):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)


def test_cuda_graph_step_replays_the_loop_step():
    """The captured whole-step graph (benchmarks/train_step.py --cuda-graph) must do the step it is
    timed against: its replays give the losses of the eager loop step, step after step (the first
    replay follows 3 real warm-up steps, so the eager step takes 3 first), and move the weights."""
    from benchmarks import train_step as B

    device = torch.device("cuda")
    data, tower = B.make_batch(2, 128, num_texts=6, objects=3), B.FixedEmbeddings(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        loop = B.worldtune_step("n", data, device, "none", tower)
        torch.manual_seed(0)
        graphed = B.graphed_worldtune_step("n", data, device, "none", tower, slots=8)
        for _ in range(3):
            loop()
        before = [p.detach().clone() for p in graphed.model.parameters()]
        for _ in range(3):
            torch.testing.assert_close(torch.tensor(graphed()), torch.tensor(loop()), rtol=1e-3, atol=1e-3)
        assert any(not torch.equal(a, p) for a, p in zip(before, graphed.model.parameters()))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def test_a_training_step_waits_for_the_gpu_once():
    """The loop's step (as benchmarks/train_step.py times it) syncs with the host once, for the logged
    losses: any other blocking copy or check stalls the launch-bound GPU step."""
    import warnings

    from benchmarks import train_step as B

    device = torch.device("cuda")
    data, tower = B.make_batch(2, 128, num_texts=6, objects=3), B.FixedEmbeddings(device)
    step = B.worldtune_step("n", data, device, "bf16", tower)
    for _ in range(2):  # text cache, optimizer state, cuDNN autotuning
        step()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchronizing" in str(w.message)]
    assert len(syncs) == 1, syncs
