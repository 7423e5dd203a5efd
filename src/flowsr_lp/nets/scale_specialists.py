"""Scale specialists (ours, beyond the paper). One arbitrary-scale latent module shares its
weights across every scale, and training it at one scale alone gains there and loses at the
others. A module with specialists keeps copies of itself, each trained for the images near
one scale (its anchor), and blends the predictions: at scale s, specialist k weighs

    w_k(s) = max(0, 1 - |ln(s / a_k)| / ln(reach))

and the module itself 1 - w_k. Reaches never overlap (consecutive anchors are at least
reach² apart), so at most two modules run for an image: at an anchor, the specialist alone;
beyond every reach, the module alone, exactly as without specialists."""
from __future__ import annotations

import math

#: weights this close to 0 or 1 are taken as 0 or 1, so a scale that reads an anchor up to
#: rounding runs its specialist alone
SNAP = 1e-9


def check_specialists(anchors: tuple[float, ...], reach: float) -> None:
    """Raise ValueError unless `anchors` are increasing positive scales whose reaches (a ratio
    > 1 either side) do not overlap."""
    if not reach > 1:
        raise ValueError(f"specialist_reach must be a scale ratio above 1, got {reach}")
    if any(a <= 0 for a in anchors) or list(anchors) != sorted(set(anchors)):
        raise ValueError(f"specialists must be increasing positive scales, got {anchors}")
    close = [(a, b) for a, b in zip(anchors, anchors[1:]) if b / a < reach * reach * (1 - 1e-9)]
    if close:
        raise ValueError(f"specialists {close} are closer than specialist_reach² = {reach * reach:g}: "
                         "their reaches would overlap")


def specialist_weights(scale: float, anchors: tuple[float, ...], reach: float) -> list[tuple[int | None, float]]:
    """(index, weight) of the modules that serve `scale`, those of weight 0 left out: None is
    the module itself, k the specialist at anchors[k]. The weights sum to 1."""
    for k, a in enumerate(anchors):
        w = 1.0 - abs(math.log(scale / a)) / math.log(reach)
        if w >= 1.0 - SNAP:  # an anchor, up to the rounding of a scale read from sizes
            return [(k, 1.0)]
        if w > SNAP:
            return [(None, 1.0 - w), (k, w)]
    return [(None, 1.0)]
