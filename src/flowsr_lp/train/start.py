"""The latent module a prior recipe starts from: `prior.checkpoint`, grown with the config
changes the recipe asks for (nets/scale_head.with_recipe_changes), and with
`prior.specialists_from: [PATH, ...]` each specialist's weights read from a module trained
for its scale (nets/scale_specialists.py), one file per `config.specialists` entry."""
from __future__ import annotations

import torch
from torch import nn

from ..checkpoints import load_prior
from ..nets.scale_head import with_recipe_changes


def start_prior(spec: dict, device: torch.device) -> nn.Module:
    """Raises CheckpointError for a file that does not load, ValueError for specialists that do
    not fit."""
    prior = with_recipe_changes(load_prior(spec["checkpoint"], device=device), spec)
    sources = spec.get("specialists_from")
    if sources is None:
        return prior
    anchors = getattr(prior.config, "specialists", ())
    if not isinstance(sources, list) or len(sources) != len(anchors):
        raise ValueError(f"specialists_from needs one checkpoint per specialist ({len(anchors)}: "
                         f"{list(anchors)}), got {sources!r}")
    for k, path in enumerate(sources):
        own, trained = prior.specialists[k], load_prior(path, device=device)
        theirs, mine = trained.config.to_dict(), own.config.to_dict()
        differ = sorted(key for key in {*theirs, *mine} if theirs.get(key) != mine.get(key))
        if type(trained) is not type(own) or differ:
            raise ValueError(f"{path} cannot be the specialist at x{anchors[k]:g}: its config differs in {differ}")
        own.load_state_dict(trained.state_dict())
    return prior
