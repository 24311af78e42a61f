"""Warm-up and per-epoch decay against every row of the official schedule fixture."""
import json

import pytest
import torch
from torch import nn

from worldtune.engine.optim import OptimConfig, build_optimizer, sgd_config
from worldtune.engine.schedule import ScheduleConfig, apply_schedule, base_lr_group, lr_multiplier, warmup_iters

S_ADAMW = "yolo_world_v2_s_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"
L_SGD = "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco"


@pytest.fixture(scope="module")
def optim_fixture(spec_fixtures):
    return json.loads((spec_fixtures / "optim_schedule.json").read_text())["configs"]


def four_kind_model() -> tuple[nn.Module, dict[str, int]]:
    """Parameters laid out so that each fixture kind has a representative group.

    Group 2 is a bias (like the official stem.bn.bias); a later bias shows which groups the
    official group-2 rule leaves out.
    """
    model = nn.Module()
    model.stem = nn.Conv2d(1, 1, 1)  # groups 0 (weight), 1 (bias)
    model.bn = nn.BatchNorm2d(1)  # groups 2 (weight), 3 (bias)
    model.text = nn.Linear(1, 1)  # groups 4, 5: frozen
    model.text.requires_grad_(False)
    model.contrast = nn.Module()
    model.contrast.logit_scale = nn.Parameter(torch.zeros(()))  # group 6
    kinds = {"default": 0, "group_index_2": 2, "frozen": 4, "logit_scale": 6}
    return model, kinds


def _schedule_rows(optim_fixture):
    for config_name, sched_cfg, optim_cfg in ((S_ADAMW, ScheduleConfig(max_epochs=80), OptimConfig()),
                                              (L_SGD, ScheduleConfig(max_epochs=40), sgd_config())):
        for world in ("world_size_8", "world_size_1"):
            yield config_name, world, sched_cfg, optim_cfg, optim_fixture[config_name][world]


def test_hook_settings_match_official(optim_fixture):
    for config_name, world, cfg, _, ref in _schedule_rows(optim_fixture):
        hook = ref["hook"]
        assert (cfg.max_epochs, cfg.lr_factor, cfg.warmup_epochs, cfg.warmup_bias_lr, cfg.warmup_momentum,
                cfg.min_warmup_iters) == (hook["max_epochs"], hook["lr_factor"], hook["warmup_epochs"],
                                          hook["warmup_bias_lr"], hook["warmup_momentum"], hook["warmup_mim_iter"])
        assert warmup_iters(ref["iters_per_epoch"], cfg) == hook["warmup_total_iters"]
        assert ref["max_epochs"] * ref["iters_per_epoch"] == ref["total_iters"]


def test_every_recorded_row(optim_fixture):
    checked = 0
    for config_name, world, cfg, optim_cfg, ref in _schedule_rows(optim_fixture):
        model, kinds = four_kind_model()
        optimizer = build_optimizer(model, optim_cfg, world_size=ref["world_size"])
        # Fixture rows are not consecutive: the closed form must not depend on earlier calls.
        for row in ref["schedule"]:
            assert row["iter"] == row["epoch"] * ref["iters_per_epoch"] + row["iter_in_epoch"]
            apply_schedule(optimizer, row["epoch"], row["iter"], ref["iters_per_epoch"], cfg)
            for kind, expected in row["groups"].items():
                group = optimizer.param_groups[kinds[kind]]
                where = f"{config_name} {world} iter {row['iter']} {kind}"
                assert group["lr"] == pytest.approx(expected["lr"], rel=1e-12, abs=1e-20), where
                assert group["weight_decay"] == expected["weight_decay"], where
                if "momentum" in expected:
                    assert group["momentum"] == pytest.approx(expected["momentum"], rel=1e-12), where
                else:
                    assert "momentum" not in group and list(group["betas"]) == expected["betas"], where
                checked += 1
    assert checked == 4 * sum(len(r["schedule"]) for *_, r in _schedule_rows(optim_fixture))


def test_documented_key_values():
    # OPTIM.md table, world size 8 (925 iterations per epoch).
    model, _ = four_kind_model()
    optimizer = build_optimizer(model, sgd_config(), world_size=8)
    cfg = ScheduleConfig(max_epochs=40)
    apply_schedule(optimizer, 2, 2774, 925, cfg)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(9.501575e-4, rel=1e-6)
    assert optimizer.param_groups[2]["lr"] == pytest.approx(9.861935e-4, rel=1e-6)
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.9369506, rel=1e-7)
    apply_schedule(optimizer, 39, 36999, 925, cfg)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5.95e-5)
    assert lr_multiplier(78, 80) == pytest.approx(0.03475)


def test_short_epochs_use_min_warmup_and_lr_is_constant_within_epoch():
    model, _ = four_kind_model()
    optimizer = build_optimizer(model, OptimConfig())
    cfg = ScheduleConfig(max_epochs=20)
    ipe = 100  # W = max(300, 1000) = 1000: warm-up spans epochs 0..10
    assert warmup_iters(ipe, cfg) == 1000
    apply_schedule(optimizer, 10, 1000, ipe, cfg)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * lr_multiplier(10, 20))
    lrs = set()
    for it in range(1001, 1100):  # rest of epoch 10 keeps f(10); epoch 11 also trains with f(10)
        lrs.add(apply_schedule(optimizer, 10, it, ipe, cfg))
    lrs.add(apply_schedule(optimizer, 11, 1150, ipe, cfg))
    assert len(lrs) == 1 and lrs.pop() == pytest.approx(2e-4 * lr_multiplier(10, 20))
    assert apply_schedule(optimizer, 12, 1200, ipe, cfg) == pytest.approx(2e-4 * lr_multiplier(11, 20))


def test_bias_warmup_options():
    model, _ = four_kind_model()
    optimizer = build_optimizer(model, OptimConfig())
    apply_schedule(optimizer, 0, 0, 925, ScheduleConfig())
    # Official: only group index 2 (here bn.weight, upstream stem.bn.bias) starts at 0.1.
    assert [g["lr"] for g in optimizer.param_groups] == [0.0, 0.0, 0.1, 0.0, 0.0, 0.0, 0.0]
    apply_schedule(optimizer, 0, 0, 925, ScheduleConfig(bias_warmup="biases"))
    starts = {g["param_names"][0]: g["lr"] for g in optimizer.param_groups}
    assert starts == {"stem.weight": 0.0, "stem.bias": 0.1, "bn.weight": 0.0, "bn.bias": 0.1,
                      "text.weight": 0.0, "text.bias": 0.1, "contrast.logit_scale": 0.0}
    apply_schedule(optimizer, 0, 0, 925, ScheduleConfig(bias_warmup="none"))
    assert all(g["lr"] == 0.0 for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="bias_warmup"):
        apply_schedule(optimizer, 0, 0, 925, ScheduleConfig(bias_warmup="all"))
    # the lr the loop reports comes from a group that follows the base rate, never a bias group
    for mode in ("group2", "biases", "none"):
        apply_schedule(optimizer, 0, 0, 925, ScheduleConfig(bias_warmup=mode))
        assert optimizer.param_groups[base_lr_group(optimizer, mode)]["lr"] == 0.0, mode


def test_plain_optimizer_gets_clear_error():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(KeyError, match="initial_lr"):
        apply_schedule(optimizer, 0, 0, 10)


@pytest.mark.parametrize("iters_per_epoch", [7, 100, 333, 334, 400])
def test_closed_form_equals_stateful_hook(iters_per_epoch):
    """Replay the hook as OPTIM.md states it (stateful, epoch-end updates) and compare every step."""
    cfg = ScheduleConfig(max_epochs=12)
    model, _ = four_kind_model()
    optimizer = build_optimizer(model, sgd_config())
    total_warmup = warmup_iters(iters_per_epoch, cfg)
    base, warmup_ended, lr = 1e-3, False, 1e-3
    for epoch in range(cfg.max_epochs):
        for i in range(epoch * iters_per_epoch, (epoch + 1) * iters_per_epoch):
            if i <= total_warmup:
                lr = base * lr_multiplier(epoch, cfg.max_epochs) * i / total_warmup
            else:
                warmup_ended = True
            got = apply_schedule(optimizer, epoch, i, iters_per_epoch, cfg)
            assert got == pytest.approx(lr, rel=1e-12, abs=1e-20), (epoch, i)
        if warmup_ended:
            lr = base * lr_multiplier(epoch, cfg.max_epochs)


def test_after_warmup_momentum_is_set_from_scratch_not_left_as_found():
    """The schedule is closed-form: after warm-up every call sets momentum to its initial value, whatever
    the optimizer holds (a resumed or hand-modified optimizer must not keep a warm-up momentum)."""
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1, momentum=0.9)
    for g in optimizer.param_groups:
        g.update(initial_lr=0.01, initial_momentum=0.937, momentum=0.5)
    cfg = ScheduleConfig(max_epochs=10, min_warmup_iters=5, warmup_epochs=1)  # W = max(round(10), 5) = 10
    lr = apply_schedule(optimizer, 3, 35, 10, cfg)  # epoch 3 after warm-up trains with f(2) = 0.802
    assert lr == pytest.approx(0.01 * 0.802) and optimizer.param_groups[0]["momentum"] == 0.937
    apply_schedule(optimizer, 0, 5, 10, cfg)  # half-way through warm-up: 0.8 -> 0.937
    assert optimizer.param_groups[0]["momentum"] == pytest.approx(0.8 + 0.137 / 2)


def test_biases_mode_needs_every_parameter_of_a_group_to_be_a_bias():
    layer, other = nn.Linear(1, 1), nn.Linear(1, 1)
    optimizer = torch.optim.AdamW([{"params": [layer.weight, layer.bias], "param_names": ["fc.weight", "fc.bias"]},
                                   {"params": [other.bias], "param_names": ["other.bias"]}], lr=0.1)
    for g in optimizer.param_groups:
        g.update(initial_lr=0.01, initial_momentum=0.9)
    apply_schedule(optimizer, 0, 0, 10, ScheduleConfig(bias_warmup="biases"))
    # the mixed group starts at 0 like a weight; the bias-only group at warmup_bias_lr
    assert optimizer.param_groups[0]["lr"] == 0.0 and optimizer.param_groups[1]["lr"] == 0.1
