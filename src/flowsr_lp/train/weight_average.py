"""An exponential moving average of a model's trainable weights (`optim.ema`), as timm and
diffusers keep one: validation and the exported model use the average, training goes on with
the live weights. The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so
the early, fast-moving weights are forgotten quickly. Buffers (BatchNorm statistics) are the
live model's."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def check_decay(decay) -> None:
    """Raise ValueError unless `decay` is a number strictly between 0 and 1."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
        raise ValueError(f"optim.ema must be a decay between 0 and 1 (e.g. 0.999), or null; got {decay!r}")


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float):
        check_decay(decay)
        self.decay, self.updates = decay, 0
        self.params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        live = dict(model.named_parameters())
        for n, avg in self.params.items():
            avg.lerp_(live[n].detach(), 1.0 - d)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """`model` with the averaged weights inside the block, its own weights back after."""
        live = dict(model.named_parameters())
        saved = {n: live[n].detach().clone() for n in self.params}
        with torch.no_grad():
            for n, avg in self.params.items():
                live[n].copy_(avg)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in saved.items():
                    live[n].copy_(p)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "params": dict(self.params)}

    def load_state_dict(self, state: dict) -> None:
        if set(state["params"]) != set(self.params):
            raise ValueError("the checkpoint's weight average holds other parameters than this run's model")
        with torch.no_grad():
            for n, v in state["params"].items():
                self.params[n].copy_(v)
        self.decay, self.updates = float(state["decay"]), int(state["updates"])
