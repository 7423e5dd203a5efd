"""Official checkpoints (pickles) to the project's format: one .safetensors file holding the
weights and the model's config, loadable without unpickling anything."""
from __future__ import annotations

from pathlib import Path

from ..checkpoints import checkpoint_kind, load_flow, load_prior, read_checkpoint, save_flow, save_prior
from ..errors import CheckpointError
from .resolve import resolve


def convert(spec: str | Path, out: str | Path, taps=None) -> tuple[Path, str]:
    """Write the flow or latent module `spec` (path, name, URL) to `out`; returns (out, kind)."""
    if Path(out).suffix != ".safetensors":  # before any download
        raise CheckpointError(f"{out}: the output must be a .safetensors file")
    path = resolve(spec)
    ck, meta = read_checkpoint(path)
    if checkpoint_kind(ck, meta) == "prior":
        return save_prior(load_prior(path), out, converted_from=str(spec)), "prior"
    return save_flow(load_flow(path, taps=taps), out, converted_from=str(spec)), "flow"
