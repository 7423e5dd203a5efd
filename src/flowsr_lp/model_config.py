"""The base of the models' config dataclasses: saved as JSON next to the weights."""
from __future__ import annotations

import typing
from dataclasses import asdict


class ModelConfig:
    def to_dict(self) -> dict:
        return asdict(self)  # tuples become JSON lists

    @classmethod
    def from_dict(cls, d: dict):
        """Inverse of `to_dict`: lists go back into the fields typed as tuples."""
        hints = typing.get_type_hints(cls)
        return cls(**{k: tuple(v) if isinstance(v, list) and _takes_tuple(hints.get(k)) else v for k, v in d.items()})


def _takes_tuple(hint) -> bool:
    """Whether a field typed `hint` holds tuples (`tuple[...]`, or a union with one)."""
    return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))
