"""benchmarks/gpu_checks.sh, run with stand-ins for python3 and nvidia-smi: it runs only on a lent GPU,
where a mistake in its own logic would cost scarce device time."""
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_checks.sh"

# Records every call; `pip install` refuses wheels tagged cp399 (another Python), as pip does.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1 $2" = "-m pip" ]; then
    case "$*" in *cp399*) echo "ERROR: not a supported wheel on this platform."; exit 1;; esac
    exit 0
fi
[ "$1" = "-" ] && cat > /dev/null
exit 0
"""


def run_checks(tmp_path, wheels, budget=540):
    bin_dir, out = tmp_path / "bin", tmp_path / "out"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'Fake GPU, 80 GiB'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    (tmp_path / ".whl").mkdir()
    for name in wheels:
        (tmp_path / ".whl" / name).write_bytes(b"")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", OUT=str(out), CALLS=str(tmp_path / "calls"),
               GPU_CHECKS_BUDGET=str(budget))
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout, out, (tmp_path / "calls").read_text().splitlines()


def test_a_wheel_for_another_python_is_named_and_the_rest_still_installs_and_runs(tmp_path):
    stdout, out, calls = run_checks(tmp_path, ["orjson-3.13.0-cp399-cp399-manylinux2014_x86_64.whl",
                                               "ultralytics-8.4.190-py3-none-any.whl"])
    assert "NOT INSTALLED: orjson-3.13.0-cp399" in (out / "setup.txt").read_text()
    installs = [c for c in calls if c.startswith("-m pip install")]
    assert any("ultralytics-8.4.190-py3-none-any.whl" in c and "cp399" not in c for c in installs)
    # the benchmark needs only ultralytics: it runs; the first step is the number the issue needs
    benchmarks = [c for c in calls if "train_step.py" in c]
    assert "--variants s l" in benchmarks[0] and "--cuda-graph" not in benchmarks[0]
    assert len(benchmarks) == 4
    for name in ("train_step_bf16", "gpu_tests", "cuda_graph_bf16", "train_step_fp16", "compile_reduce_overhead"):
        assert (out / f"{name}.txt").is_file(), name
    assert "exit 0" in (out / "train_step_bf16.txt").read_text()


def test_steps_past_the_budget_are_skipped_and_say_so(tmp_path):
    stdout, out, calls = run_checks(tmp_path, [], budget=0)
    assert not any("train_step.py" in c for c in calls)
    assert "budget is spent" in (out / "train_step_bf16.txt").read_text()
    assert "no .whl/ carried" in (out / "setup.txt").read_text()


def test_graphed_step_body_takes_the_loop_step(one_thread):
    """The body of the CUDA-graph experiment (run eagerly on CPU) must be the training step it is timed
    against: the same losses step after step, the same weights and EMA after them (its targets are
    padded to fixed slots, its lr and EMA weight are tensors written before each step)."""
    import torch

    from benchmarks import train_step as B

    device = torch.device("cpu")
    data, tower = B.make_batch(2, 64, num_texts=6, objects=3), B.FixedEmbeddings(device)
    torch.manual_seed(0)
    loop = B.worldtune_step("n", data, device, "none", tower)
    torch.manual_seed(0)
    graphed = B.graphed_worldtune_step("n", data, device, "none", tower, slots=8)
    for _ in range(2):
        torch.testing.assert_close(torch.tensor(graphed()), torch.tensor(loop()), rtol=1e-5, atol=1e-5)
    for ours, ref in ((graphed.model, loop.model), (graphed.ema.module, loop.ema.module)):
        for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
            if a.is_floating_point():  # (the EMA's BatchNorm counters are not averaged, nor read)
                assert (a - b).abs().max() < 1e-5, name  # the warm-up-bias group moves ~0.1 per step


def test_cpu_amp_step_is_the_loops_bf16_step(monkeypatch, one_thread):
    """`--cpu-amp` times worldtune's step as the loop runs it with train.cpu_amp: bf16 convolutions."""
    import torch

    from benchmarks import train_step as B
    from worldtune.engine import train as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: True)
    device = torch.device("cpu")
    data, tower = B.make_batch(1, 64, num_texts=4, objects=2), B.FixedEmbeddings(device)
    step = B.worldtune_step("n", data, device, "bf16", tower, cpu_amp=True)
    dtypes = []
    step.model.backbone.image_model.stem.conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    losses = step()
    assert dtypes == [torch.bfloat16] and all(torch.isfinite(torch.tensor(losses)))
    fp32 = B.worldtune_step("n", data, device, "bf16", tower)  # train.amp=bf16 alone: CPU stays fp32
    fp32.model.backbone.image_model.stem.conv.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    fp32()
    assert dtypes == [torch.bfloat16, torch.float32]
