"""Model families: what the loader knows about each kind of model, in one place.

A family (`family.Family`) names its config dataclass, its model class and, when the
authors released checkpoints in a layout of their own, how to recognise that layout and read
it into (config, state dict). `registry.FAMILIES` lists them; `checkpoints.load_flow` /
`load_prior` / `build_model` only ask the registry. Adding a family is one module here plus
one line in `registry.py` (see docs/architecture.md).
"""
