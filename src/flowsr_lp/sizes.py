"""Output sizes as people write them, one grammar for the command line (`--size`) and the app
(its output-size box): `HEIGHTxWIDTH` in pixels, e.g. `512x768`; `X`, `*` or a comma may
stand for the `x`, and spaces around the numbers are ignored. Size limits are given in
megapixels (10^6 pixels) of the output image: `--max-megapixels` of `upscale` and `app`
(which also refuses an upload over the limit); `SuperResolver(max_output_pixels=)` is the
same limit in pixels."""
from __future__ import annotations

import re

from .errors import UsageError

_SIZE = re.compile(r"\s*(\d+)\s*[xX*,]\s*(\d+)\s*")


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768): (height, width), both positive; anything else is a `UsageError`."""
    m = _SIZE.fullmatch(text)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise UsageError(f"invalid size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 512x768")
    return int(m[1]), int(m[2])


def megapixels(hw: tuple[int, int]) -> float:
    """The size-limit unit: 10^6 pixels."""
    return hw[0] * hw[1] / 1e6
