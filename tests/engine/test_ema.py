import json
import math

import pytest
import torch
from torch import nn

from worldtune.engine.ema import ExpMomentumEMA, ema_momentum


def _one_weight_model(value: float) -> nn.Module:
    model = nn.Module()
    model.w = nn.Parameter(torch.tensor([value], dtype=torch.float64))
    return model


def test_effective_momentum_matches_official_table(spec_fixtures):
    configs = json.loads((spec_fixtures / "optim_schedule.json").read_text())["configs"]
    for entry in configs.values():
        ema_ref = entry["ema"]
        assert (ema_ref["momentum"], ema_ref["gamma"], ema_ref["interval"], ema_ref["update_buffers"]) == (
            1e-4, 2000, 1, True)
        for row in ema_ref["table"]:
            # Read the weight the way the fixture did: average 0 towards 1 at the given step.
            ema = ExpMomentumEMA(_one_weight_model(0.0))
            ema.steps = row["step"]
            ema.update(_one_weight_model(1.0))
            assert ema.module.w.item() == pytest.approx(row["effective_momentum"], rel=1e-12), row
            assert ema_momentum(row["step"]) == pytest.approx(row["formula_value"], rel=1e-12)


def test_two_steps_by_hand_and_buffers():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    model[1].running_mean.fill_(0.5)
    model[1].num_batches_tracked.fill_(3)
    ema = ExpMomentumEMA(model)
    with torch.no_grad():
        model[0].weight.fill_(-7.0)  # the copy happens at the first update, not at construction
    ema.update(model)
    assert ema.module[0].weight.item() == -7.0 and ema.module[1].num_batches_tracked.item() == 3

    with torch.no_grad():
        model[0].weight.fill_(1.0)
    model[1].running_mean.fill_(1.5)
    model[1].num_batches_tracked.fill_(10)
    ema.update(model)
    m1 = 0.9999 * math.exp(-2 / 2000) + 1e-4
    assert ema.module[0].weight.item() == pytest.approx(-7.0 + m1 * 8.0, rel=1e-6)
    assert ema.module[1].running_mean.item() == pytest.approx(0.5 + m1 * 1.0, rel=1e-6)
    assert ema.module[1].num_batches_tracked.item() == 3  # integer buffers: copied at step 0 only

    with torch.no_grad():
        model[0].weight.fill_(3.0)
    ema.update(model)
    m2 = 0.9999 * math.exp(-3 / 2000) + 1e-4
    first = -7.0 + m1 * 8.0
    assert ema.module[0].weight.item() == pytest.approx(first + m2 * (3.0 - first), rel=1e-6)
    assert ema.steps == 3
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert model[0].weight.item() == 3.0  # the model itself is untouched


def test_resume_round_trip_and_errors():
    model = _one_weight_model(1.0)
    ema = ExpMomentumEMA(model)
    for value in (1.0, 2.0, 5.0):
        with torch.no_grad():
            model.w.fill_(value)
        ema.update(model)
    resumed = ExpMomentumEMA(_one_weight_model(0.0))
    resumed.load_state_dict(ema.state_dict())
    assert resumed.steps == 3 and resumed.module.w.item() == ema.module.w.item()
    with torch.no_grad():
        model.w.fill_(9.0)
    ema.update(model)
    resumed.update(model)
    assert resumed.module.w.item() == ema.module.w.item()

    with pytest.raises(KeyError, match="'module' and 'steps'"):
        resumed.load_state_dict({"w": torch.zeros(1)})
    with pytest.raises(KeyError, match="unwrapped"):
        resumed.update(nn.Linear(1, 1))
    with pytest.raises(ValueError, match="momentum"):
        ExpMomentumEMA(model, momentum=0.0)


def test_without_buffer_averaging_buffers_are_copied():
    model = nn.BatchNorm1d(1)
    ema = ExpMomentumEMA(model, update_buffers=False)
    ema.update(model)
    model.running_mean.fill_(4.0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.module.running_mean.item() == 4.0
    assert ema.module.weight.item() == pytest.approx(1.0 + ema_momentum(1) * 2.0)


def test_frozen_parameters_are_shared_with_the_model_and_not_averaged():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    ema = ExpMomentumEMA(model)
    # the frozen layer is the model's own tensors, not a copy; the trained one is a copy
    assert ema.module[0].weight is model[0].weight and ema.module[0].bias is model[0].bias
    assert ema.module[1].weight.data_ptr() != model[1].weight.data_ptr()
    assert list(ema.state_dict()["module"]) == list(model.state_dict())  # the frozen keys are still saved
    versions = [p._version for p in model[0].parameters()]
    ema.update(model)  # step 0 copies the rest; the shared tensors are not written (a text cache stays valid)
    assert torch.equal(ema.module[1].weight, model[1].weight)
    with torch.no_grad():
        model[1].weight.add_(1.0)
    before = ema.module[1].weight.clone()
    ema.update(model)
    assert [p._version for p in model[0].parameters()] == versions  # never written by an update
    expected = before + ema_momentum(1) * (model[1].weight - before)
    torch.testing.assert_close(ema.module[1].weight, expected)


def test_text_tower_is_shared_frozen_and_survives_a_resume():
    """The detector's frozen CLIP tower: the EMA holds the model's tensors (no second copy of its
    63M values), stays in eval mode, and a checkpoint round trip leaves it shared and intact."""
    from worldtune.config import Config
    from worldtune.engine.run_state import make_checkpoint, restore_checkpoint
    from worldtune.model import build_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    # A stand-in for the CLIP weights (no text is encoded here; importing transformers takes seconds):
    # the freezing, train/eval and state_dict rules under test are the encoder's own.
    tower = CLIPTextEncoder(nn.Sequential(nn.Embedding(64, 32), nn.Dropout(0.1), nn.Linear(32, 512)), tokenizer=None)
    model = build_model("n", tower, num_classes=5)
    ema = ExpMomentumEMA(model)
    pointers = {n: p.data_ptr() for n, p in model.text_model.named_parameters()}
    assert pointers == {n: p.data_ptr() for n, p in ema.module.text_model.named_parameters()}
    image_side = dict(model.backbone.image_model.named_parameters())
    assert all(p.data_ptr() != image_side[n].data_ptr() for n, p in ema.module.backbone.image_model.named_parameters())
    ema.module.train()
    assert not ema.module.text_model.model[1].training and not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in image_side.values())
    assert not any(p.requires_grad for p in model.text_model.parameters())

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ema.update(model)
    state = {"epoch": 1, "step_in_epoch": 0, "global_step": 1, "best_ap": -1.0, "best_epoch": -1}
    ckpt = make_checkpoint(model, ema, optimizer, torch.amp.GradScaler("cpu", enabled=False), state, Config())
    assert {k for k in ckpt["ema"] if k.startswith("backbone.text_model.")} == \
        {"backbone.text_model." + k for k in model.text_model.state_dict()}
    tower = {k: v.clone() for k, v in model.text_model.state_dict().items()}
    restore_checkpoint(ckpt, model, ema, optimizer, torch.amp.GradScaler("cpu", enabled=False), dict(state))
    assert pointers == {n: p.data_ptr() for n, p in ema.module.text_model.named_parameters()}
    assert all(torch.equal(v, tower[k]) for k, v in ema.module.text_model.state_dict().items())


def test_update_reads_replaced_tensors_not_stale_ones():
    """The EMA remembers where the tensors live, not the tensors: replaced ones are followed."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema = ExpMomentumEMA(model, momentum=0.5, gamma=1e-9)  # weight of the new value: 0.5 from step 1
    ema.update(model)  # step 0: copy (weight 2, running mean 0)
    model[1].running_mean = torch.tensor([4.0])  # a new buffer object, as Module.to() makes
    model[0].weight = nn.Parameter(torch.tensor([[6.0]]))  # a new parameter object
    ema.update(model)
    assert ema.module[1].running_mean.item() == pytest.approx(2.0)  # 0 + 0.5 * (4 - 0)
    assert ema.module[0].weight.item() == pytest.approx(4.0)  # 2 + 0.5 * (6 - 2)


def test_interval_averages_only_every_interval_th_update():
    """interval=2: step 0 copies, step 1 is skipped, step 2 averages with m(2), step 3 is skipped."""
    ema = ExpMomentumEMA(_one_weight_model(0.0), interval=2)
    for value in (4.0, 100.0):  # step 0 copies 4.0; step 1 (odd) leaves it
        ema.update(_one_weight_model(value))
    assert ema.module.w.item() == 4.0
    ema.update(_one_weight_model(10.0))  # step 2
    expected = 4.0 + ema_momentum(2) * 6.0
    assert ema.module.w.item() == pytest.approx(expected, rel=1e-12)
    ema.update(_one_weight_model(-50.0))  # step 3
    assert ema.module.w.item() == pytest.approx(expected, rel=1e-12) and ema.steps == 4
    with pytest.raises(ValueError, match="interval >= 1"):
        ExpMomentumEMA(_one_weight_model(0.0), interval=0)
