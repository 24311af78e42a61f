"""engine.run_state: what a resume restores, where CUDA differs between the saving and the resuming machine."""
import torch

from worldtune.engine import run_state


def test_cuda_rng_states_of_more_gpus_than_this_machine_has_are_cut_to_its_gpus(monkeypatch):
    """rank 0 of an 8-GPU run saves 8 CUDA generator states; resuming where 1 GPU is visible must
    set one (setting the others indexes generators that do not exist)."""
    states = run_state.rng_states()
    states["cuda"] = [torch.zeros(16, dtype=torch.uint8) + i for i in range(8)]
    given = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda new: given.extend(new))
    run_state.set_rng_states(states)
    assert [int(s[0]) for s in given] == [0]
