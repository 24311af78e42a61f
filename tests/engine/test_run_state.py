"""engine.run_state: what a resume restores, where CUDA differs between the saving and the resuming machine."""
import torch

from worldtune.engine import run_state
from worldtune.engine.run_state import make_checkpoint, restore_checkpoint, resume_loader

from tests.helpers.index_dataset import IndexDataset


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


def _tiny_run():
    from torch import nn

    from worldtune.engine.ema import ExpMomentumEMA
    model = nn.Linear(3, 2)
    ema = ExpMomentumEMA(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.05)
    return model, ema, optimizer


def test_a_checkpoint_restores_every_counter_weight_and_random_stream():
    """make_checkpoint -> restore_checkpoint into a fresh run gives back the weights, the EMA, the
    optimizer's momentum, the fp16 scaler's scale, the position and loss sums of the epoch, and the
    global random streams (the next draws are those the interrupted run would have made)."""
    import random

    import numpy as np

    from worldtune.config import Config
    model, ema, optimizer = _tiny_run()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    ema.update(model)
    ema.update(model)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    state = {"epoch": 3, "step_in_epoch": 5, "global_step": 41, "best_ap": 0.25, "best_epoch": 2,
             "val_pending": True, "loss_sums": {"loss_cls": 1.5}, "loss_count": 5}
    ckpt = make_checkpoint(model, ema, optimizer, scaler, state, Config())
    expected = (torch.rand(3), random.random(), np.random.rand(3))

    new_model, new_ema, new_optimizer = _tiny_run()
    new_scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    restored = {}
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # streams elsewhere
    restore_checkpoint(ckpt, new_model, new_ema, new_optimizer, new_scaler, restored)
    assert restored == state
    assert torch.equal(new_model.weight, model.weight)
    assert new_ema.steps == 2 and torch.equal(new_ema.module.weight, ema.module.weight)
    assert torch.equal(new_optimizer.state[new_model.weight]["momentum_buffer"],
                       optimizer.state[model.weight]["momentum_buffer"])
    assert new_scaler.get_scale() == 1024.0
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.array_equal(np.random.rand(3), expected[2])


def test_restore_keeps_the_weight_decay_of_this_run_and_takes_the_rest_of_the_optimizer():
    """The saved optimizer comes back, but the weight decay follows this run's batch rule (a resume
    with another process count changes it)."""
    from worldtune.config import Config
    model, ema, optimizer = _tiny_run()
    optimizer.param_groups[0]["weight_decay"] = 0.1  # the saving run's total batch
    optimizer.param_groups[0]["lr"] = 0.003
    state = {"epoch": 1, "step_in_epoch": 0, "global_step": 2, "best_ap": 0.0, "best_epoch": 0}
    ckpt = make_checkpoint(model, ema, optimizer, torch.amp.GradScaler("cpu", enabled=False), state, Config())
    new_model, new_ema, new_optimizer = _tiny_run()  # this run: weight decay 0.05
    restore_checkpoint(ckpt, new_model, new_ema, new_optimizer, torch.amp.GradScaler("cpu", enabled=False), {})
    assert new_optimizer.param_groups[0]["weight_decay"] == 0.05
    assert new_optimizer.param_groups[0]["lr"] == 0.003


def test_resume_loader_gives_the_rest_of_the_epoch_in_the_same_order():
    from worldtune.data.loader import build_train_loader

    loader = build_train_loader(IndexDataset(10), batch_size=3, seed=7)
    loader.loader.collate_fn = lambda batch: list(batch)
    loader.set_epoch(2)
    full = [i for batch in loader for i in batch]
    assert resume_loader(loader, 0) is loader
    rest = [i for batch in resume_loader(loader, 2) for i in batch]
    assert rest == full[6:]
    # a loader that drops the last partial batch still drops it after a resume: 10 samples, 3 full batches
    loader = build_train_loader(IndexDataset(10), batch_size=3, seed=7, drop_last=True)
    loader.loader.collate_fn = lambda batch: list(batch)
    loader.set_epoch(2)
    full = [batch for batch in loader]
    assert len(full) == 3 and [batch for batch in resume_loader(loader, 2)] == full[2:]
