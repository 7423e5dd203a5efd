"""The record a model family registers, and what reading an official checkpoint gives."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..model_config import ModelConfig

log = logging.getLogger(__name__)


@dataclass
class Official:
    """An official checkpoint read by its family: the model's config, its state dict (key names
    as stored) and a phrase naming the model for messages ("an SRFlow x4 model (nb 23, ...)").
    `assumed`: config values the file does not store and the reader chose (logged by the loader)."""
    config: ModelConfig
    state_dict: dict
    what: str
    assumed: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """One model family.

    name: the `family` of project-format files and of `hub/models.json` entries.
    kind: "flow" or "prior" (a latent module).
    config / model: the config dataclass and the `nn.Module` built from it.
    detect(payload) -> bool: is `torch.load`'s result this family's official layout? Must not
        raise on any payload (it is asked about every file).
    read(payload, **options) -> Official: map that layout to a config and a state dict, without
        building anything; raise `errors.CheckpointError` (no path: the loader adds it), or
        KeyError / TypeError / ValueError for malformed fields.
    options: the loader options `read` accepts (e.g. SRFlow's "taps").
    defaults(config dict) -> dict: values for fields a config dict may leave out that depend on
        others (SRFlow's taps on its scale); used by `build` and logged.
    official_names: the model names the official layout uses (for "expected ..." messages).
    """
    name: str
    kind: str
    config: type[ModelConfig]
    model: Callable[[Any], nn.Module]
    detect: Callable[[Any], bool] | None = None
    read: Callable[..., Official] | None = None
    options: tuple[str, ...] = ()
    defaults: Callable[[dict], dict] | None = None
    official_names: tuple[str, ...] = ()

    def make_config(self, config: dict) -> ModelConfig:
        """The config dataclass from a (JSON) dict, missing dependent fields filled in and logged."""
        config = dict(config or {})
        if self.defaults is not None:
            for k, v in self.defaults(config).items():
                if k not in config:
                    log.info("%s config without %s: using %s", self.name, k, v)
                    config[k] = v
        return self.config.from_dict(config)

    def build(self, config: dict | ModelConfig) -> nn.Module:
        """A new model (random weights) from a config dataclass or dict."""
        return self.model(config if isinstance(config, ModelConfig) else self.make_config(config))


def is_state_dict(payload: Any) -> bool:
    """A non-empty dict of named tensors (a raw state dict, as SRFlow and HCFlow release)."""
    return (isinstance(payload, dict) and bool(payload)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in payload.items()))


def strip_prefix(sd: dict, prefix: str = "module.") -> dict:
    """Drop a prefix every key has (DataParallel's "module.")."""
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd
