"""Exponential moving average of the model weights with the official YOLO ramp (ExpMomentumEMA).

After the update that follows global iteration s (s = number of earlier updates):

    s == 0:  ema <- model                          (a plain copy, integer buffers included)
    s >= 1:  ema <- ema + m(s) * (model - ema),    m(s) = (1 - momentum) * exp(-(s + 1) / gamma) + momentum

`m` is the weight of the *new* value: close to 1 early on (the average follows the model),
decaying towards `momentum` (1e-4) with time constant `gamma` (2000 updates). With
`update_buffers` (official), floating buffers such as BN running stats are averaged the same
way; integer buffers (`num_batches_tracked`) are only copied at s == 0, as upstream.
The loop calls `ema.update(model)` after every optimizer step and evaluates `ema.module`.

Frozen parameters (the CLIP text tower: 63M values, 250 MB in fp32) are never averaged, so the
average of each is the model's value itself: `ema.module` holds the model's own tensors for them
instead of copies (on a GPU, a quarter of a GB less per process), and its state_dict still lists them.
"""
import copy
import math

import torch
from torch import nn


def ema_momentum(steps: int, momentum: float = 1e-4, gamma: float = 2000) -> float:
    """Weight of the new model value at update `steps` (>= 1; step 0 is a copy)."""
    return (1 - momentum) * math.exp(-(1 + steps) / gamma) + momentum


class ExpMomentumEMA:
    """EMA copy of `model` (a deep copy, no gradients), updated with `update(model)`.

    The parameters that are frozen (requires_grad False) when the EMA is made are not copied: the
    copy's are the model's own Parameter objects. So loading weights into `ema.module` writes them into
    the model's frozen tensors too (a resume loads the same values into both), and a frozen parameter
    must stay frozen for the run: one unfrozen later would be trained, not averaged, in the EMA.

    Args:
        model: the model being trained (unwrapped from DDP / torch.compile).
        momentum: floor of the new-value weight (official 1e-4).
        gamma: ramp time constant in updates (official 2000).
        interval: average every `interval` updates (official 1); the step counter counts every call.
        update_buffers: average floating buffers too (official True); otherwise buffers are copied.
    """

    def __init__(self, model: nn.Module, momentum: float = 1e-4, gamma: float = 2000, interval: int = 1,
                 update_buffers: bool = True):
        if not 0 < momentum < 1 or gamma <= 0 or interval < 1:
            raise ValueError(f"ExpMomentumEMA needs 0 < momentum < 1, gamma > 0 and interval >= 1; got "
                             f"momentum={momentum}, gamma={gamma}, interval={interval}")
        # A deepcopy memo entry maps an object to its "copy": the frozen parameters map to themselves.
        shared = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.module = copy.deepcopy(model, shared).requires_grad_(False)
        self.momentum = momentum
        self.gamma = gamma
        self.interval = interval
        self.update_buffers = update_buffers
        self.steps = 0
        # Frozen parameters are shared with the model (see above): averaging them would be a no-op
        # that costs more than the rest of the update.
        self.frozen = {name for name, p in model.named_parameters() if not p.requires_grad}

    def _slots(self, model: nn.Module) -> list[tuple[str, dict, str]]:
        """(state_dict key, the owner's tensor table, attribute) for every tensor the update touches.

        The table is the owning module's `_parameters` or `_buffers` dict: reading `table[attr]` each
        step follows `.to()` or a replaced buffer, and costs a dict lookup where `getattr` on a
        module costs a `__getattr__` fallback (the update reads ~700 tensors per step).
        """
        names = [n for n, _ in model.named_parameters()]
        if self.update_buffers:
            names = list(model.state_dict(keep_vars=True))  # parameters and persistent buffers, in order
        slots = []
        for key in names:
            owner, _, attr = key.rpartition(".")
            module = model.get_submodule(owner)
            slots.append((key, module._parameters if attr in module._parameters else module._buffers, attr))
        return slots

    def _plan(self, model: nn.Module) -> tuple[list, list]:
        """(all pairs, averaged pairs) of ((EMA table, attr), (model table, attr)), matched by key.

        Found once per model object (walking state_dict() costs milliseconds, which a launch-bound
        GPU step feels); the tensors are read through the tables each time, so .to(),
        load_state_dict() or a replaced buffer can never leave stale references.
        """
        if getattr(self, "_cached_plan", None) is None or self._cached_plan[0] is not model:
            source = {key: (table, attr) for key, table, attr in self._slots(model)}
            average = {key: (table, attr) for key, table, attr in self._slots(self.module)}
            if source.keys() != average.keys():
                missing = sorted(average.keys() - source.keys())[:5]
                extra = sorted(source.keys() - average.keys())[:5]
                raise KeyError(f"ExpMomentumEMA.update: the model's keys differ from the EMA copy's "
                               f"(missing {missing}, unexpected {extra}); pass the unwrapped model")
            pairs = [(average[key], source[key]) for key in average]
            averaged = [(avg, src) for key, (avg, src) in zip(average, pairs)
                        if avg[0][avg[1]].is_floating_point() and key not in self.frozen]
            self._cached_plan = (model, pairs, averaged)
        return self._cached_plan[1], self._cached_plan[2]

    def lerp_tensors(self, model: nn.Module) -> tuple[list, list]:
        """(EMA tensors, matching model tensors) that the averaging step updates, in one list each.

        The tensors themselves, not detached views: the update runs under no_grad, and a detach per
        tensor is an allocation that a launch-bound GPU step feels."""
        averaged = self._plan(model)[1]
        averages = [table[attr] for (table, attr), _ in averaged]
        news = [table[attr] for _, (table, attr) in averaged]
        return averages, [n if n.dtype == a.dtype else n.to(a.dtype) for a, n in zip(averages, news)]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` into the average (call after each optimizer step)."""
        if self.steps == 0:
            for (avg_table, avg_attr), (src_table, src_attr) in self._plan(model)[0]:
                if avg_table[avg_attr] is not src_table[src_attr]:  # a shared frozen tensor is its own copy
                    avg_table[avg_attr].copy_(src_table[src_attr])
        elif self.steps % self.interval == 0:
            averages, news = self.lerp_tensors(model)
            if averages:
                torch._foreach_lerp_(averages, news, ema_momentum(self.steps, self.momentum, self.gamma))
        if not self.update_buffers:
            for avg_buf, buf in zip(self.module.buffers(), model.buffers()):
                avg_buf.copy_(buf)
        self.steps += 1

    def state_dict(self) -> dict:
        """Everything needed to resume: the averaged weights and the update counter."""
        return {"module": self.module.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "module" not in state or "steps" not in state:
            got = list(state)[:5] if isinstance(state, dict) else type(state).__name__
            raise KeyError("ExpMomentumEMA.load_state_dict expects a dict with 'module' and 'steps' "
                           f"(from ExpMomentumEMA.state_dict), got keys {got}")
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
