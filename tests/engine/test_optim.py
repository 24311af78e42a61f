"""Parameter groups and weight decay against the official optimizer fixture (optim_schedule.json)."""
import json

import pytest
import torch
from torch import nn

from worldtune.engine.optim import OptimConfig, build_optimizer, build_param_groups, sgd_config, weight_decay_scale

S_ADAMW = "yolo_world_v2_s_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco"
L_SGD = "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco"


@pytest.fixture(scope="module")
def optim_fixture(spec_fixtures):
    return json.loads((spec_fixtures / "optim_schedule.json").read_text())["configs"]


def stand_in_model(param_groups: list) -> nn.Module:
    """A module tree whose named_parameters() are the fixture's names, in order (1-element params)."""
    root = nn.Module()
    for _, name, kind in param_groups:
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(torch.zeros(1), requires_grad=kind != "frozen"))
    return root


def config_from_fixture(entry: dict) -> OptimConfig:
    opt = entry["optim_wrapper_cfg"]["optimizer"]
    cfg = OptimConfig(name=opt["type"].lower(), lr=opt["lr"], weight_decay=opt["weight_decay"],
                      batch_size_per_gpu=opt["batch_size_per_gpu"],
                      custom_keys=entry["optim_wrapper_cfg"]["paramwise_cfg"]["custom_keys"])
    if "momentum" in opt:
        cfg.momentum, cfg.nesterov = opt["momentum"], opt["nesterov"]
    return cfg


def test_defaults_are_the_official_recipes(optim_fixture):
    for name, cfg in ((S_ADAMW, OptimConfig()), (L_SGD, sgd_config())):
        wrapper = optim_fixture[name]["optim_wrapper_cfg"]
        assert config_from_fixture(optim_fixture[name]) == cfg
        assert cfg.clip_grad_max_norm == wrapper["clip_grad"]["max_norm"] == 10.0


@pytest.mark.parametrize("config_name", [S_ADAMW, L_SGD])
@pytest.mark.parametrize("world", ["world_size_8", "world_size_1"])
def test_groups_match_official(optim_fixture, config_name, world):
    entry = optim_fixture[config_name]
    ref = entry[world]
    model = stand_in_model(entry["param_groups"])
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for _, n, _ in entry["param_groups"]]
    assert sum(p.requires_grad for p in model.parameters()) == entry["num_trainable_parameters"]

    optimizer = build_optimizer(model, config_from_fixture(entry), world_size=ref["world_size"])
    assert type(optimizer).__name__ == ref["optimizer_type"]
    assert len(optimizer.param_groups) == ref["num_groups"] == entry["num_parameters"]
    for key, value in ref["optimizer_defaults"].items():
        got = optimizer.defaults[key]
        if key == "fused":  # a kernel choice with the same update rule: ours is fused on CPU and GPU
            assert value is None and got is True
            continue
        assert (list(got) if isinstance(got, tuple) else got) == value, key

    kinds = {kind: spec for kind, spec in ref["group_kinds"].items()}
    for (index, name, kind), group in zip(entry["param_groups"], optimizer.param_groups):
        assert group["param_names"] == [name]
        spec = kinds[kind]
        assert group["params"][0].requires_grad == spec["requires_grad"]
        expected = dict(spec["settings_as_constructed"], **spec["keys_added_by_param_scheduler_hook_before_train"])
        for key, value in expected.items():
            got = group[key]
            if key == "fused":  # see above
                assert value is None and got is True
                continue
            assert (list(got) if isinstance(got, tuple) else got) == value, (index, name, key)
        assert sum(1 for _, _, k in entry["param_groups"] if k == kind) == spec["num_params"]


def test_weight_decay_scaling_rule(optim_fixture):
    for entry in optim_fixture.values():
        for world in ("world_size_8", "world_size_1"):
            ref = entry[world]
            assert weight_decay_scale(ref["batch_size_per_gpu"], ref["world_size"],
                                      ref["base_total_batch_size"]) == ref["weight_decay_scale_factor"]
    assert [weight_decay_scale(16, w) for w in (1, 2, 3, 4, 8)] == [1.0, 1.0, 0.75, 1.0, 2.0]
    # accumulate = round(64 / 24) = 3 -> factor 72 / 64; accumulate = max(round(64 / 128), 1) = 1.
    assert weight_decay_scale(24, 1) == 24 * 3 / 64
    assert weight_decay_scale(64, 2) == 2.0
    with pytest.raises(ValueError, match="batch_size_per_gpu"):
        weight_decay_scale(0, 1)


def test_custom_key_longest_match_and_trainable_text_tower():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.text_model = nn.Linear(2, 2)
    model.head = nn.Module()
    model.head.logit_scale = nn.Parameter(torch.zeros(()))
    cfg = OptimConfig(custom_keys={"backbone.text_model": {"lr_mult": 0.01}, "text_model": {"lr_mult": 0.5},
                                   "logit_scale": {"weight_decay": 0.0}})
    groups = {g["param_names"][0]: g for g in build_param_groups(model, cfg)}
    # The longer key wins; the decay of a custom-key group is the unscaled config decay (upstream).
    assert groups["backbone.text_model.weight"]["lr"] == pytest.approx(2e-6)
    assert groups["backbone.text_model.weight"]["weight_decay"] == 0.05
    assert groups["head.logit_scale"] == {"params": [model.head.logit_scale], "param_names": ["head.logit_scale"],
                                         "lr": 2e-4, "weight_decay": 0.0}
    optimizer = build_optimizer(model, cfg, world_size=8)
    assert optimizer.param_groups[0]["weight_decay"] == 0.05 and optimizer.defaults["weight_decay"] == 0.1


def test_longer_custom_key_wins_even_when_the_shorter_sorts_first():
    # "model" sorts before "text_model" alphabetically and both are substrings of the name,
    # so only longest-first matching gives text_model's lr_mult: 2e-4 * 0.01 = 2e-6 (not 1e-4).
    model = nn.Module()
    model.text_model = nn.Linear(2, 2)
    cfg = OptimConfig(custom_keys={"model": {"lr_mult": 0.5}, "text_model": {"lr_mult": 0.01}})
    groups = {g["param_names"][0]: g for g in build_param_groups(model, cfg)}
    assert groups["text_model.weight"]["lr"] == pytest.approx(2e-6)
    assert groups["text_model.bias"]["lr"] == pytest.approx(2e-6)


def test_frozen_groups_never_move_and_sgd_is_nesterov():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)
    optimizer = build_optimizer(model, sgd_config())
    frozen_before = model[1].weight.detach().clone()
    trained_before = model[0].weight.detach().clone()
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    assert torch.equal(model[1].weight, frozen_before)
    assert not torch.equal(model[0].weight, trained_before)
    assert optimizer.param_groups[0]["nesterov"] is True and optimizer.param_groups[0]["momentum"] == 0.937
    with pytest.raises(ValueError, match="'adamw' or 'sgd'"):
        build_optimizer(model, OptimConfig(name="lamb"))


def test_model_s_parameter_names_match_official(optim_fixture):
    """worldtune's YOLO-World-v2-S (with a text tower) has the official named_parameters, in order."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from worldtune.model import build_model
    from worldtune.model.text_encoder import CLIPTextEncoder

    # Parameter names do not depend on widths: a 12-layer tower of width 8 is enough and cheap.
    config = CLIPTextConfig(vocab_size=100, hidden_size=8, intermediate_size=16, projection_dim=8,
                            num_hidden_layers=12, num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=0, eos_token_id=2, pad_token_id=1)
    model = build_model("s", text_model=CLIPTextEncoder(CLIPTextModelWithProjection(config), None))
    entry = optim_fixture[S_ADAMW]
    got = [(name, p.requires_grad) for name, p in model.named_parameters()]
    assert got == [(name, kind != "frozen") for _, name, kind in entry["param_groups"]]
    optimizer = build_optimizer(model, OptimConfig(), world_size=8)
    assert optimizer.param_groups[2]["param_names"] == ["backbone.image_model.stem.bn.bias"]
    assert [g["weight_decay"] for g in optimizer.param_groups if "logit_scale" in g["param_names"][0]] == [0.0] * 3


@pytest.mark.parametrize("optimizer_name,bias_warmup", [("adamw", "group2"), ("sgd", "group2"), ("sgd", "biases")])
def test_merged_groups_give_the_same_updates_as_the_official_layout(optimizer_name, bias_warmup):
    from worldtune.engine.optim import merge_param_groups
    from worldtune.engine.schedule import ScheduleConfig, apply_schedule
    from worldtune.model import build_model

    torch.manual_seed(0)
    official_model = build_model("n")
    official_model.neck.top_down_layers[0].main_conv.requires_grad_(False)  # frozen parameters too
    merged_model = build_model("n")
    merged_model.load_state_dict(official_model.state_dict())
    merged_model.neck.top_down_layers[0].main_conv.requires_grad_(False)
    cfg = OptimConfig(name=optimizer_name, lr=0.01, weight_decay=0.05)
    official = build_optimizer(official_model, cfg)
    merged = build_optimizer(merged_model, cfg, merge_groups=True, bias_warmup=bias_warmup)
    assert len(merged.param_groups) <= 4 < len(official.param_groups)
    assert len(merge_param_groups(build_param_groups(official_model, cfg), bias_warmup)) == len(merged.param_groups)
    schedule = ScheduleConfig(max_epochs=3, min_warmup_iters=4, bias_warmup=bias_warmup)
    params = list(zip(official_model.parameters(), merged_model.parameters()))
    for step in range(8):  # warm-up (4 iterations) and beyond, across an epoch boundary
        for a, b in params:
            if a.requires_grad:
                grad = torch.randn_like(a)
                a.grad, b.grad = grad.clone(), grad.clone()
        for opt in (official, merged):
            apply_schedule(opt, step // 4, step, 4, schedule)
            opt.step()
    for (name, a), b in zip(official_model.named_parameters(), merged_model.parameters()):
        assert torch.equal(a, b), name
