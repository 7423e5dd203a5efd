"""Latent modules (learned priors): LINF-LP and SRFlow-LP. Load and save them with
`flowsr_lp.load_prior` / `flowsr_lp.save_prior` (checkpoints.py)."""
from .linf_lp import LINFLatentModule, LINFPriorConfig
from .srflow_lp import SRFlowLatentModule, SRFlowPriorConfig

__all__ = ["LINFLatentModule", "LINFPriorConfig", "SRFlowLatentModule", "SRFlowPriorConfig"]
