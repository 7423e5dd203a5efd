"""Latent modules (learned priors): LINF-LP and SRFlow-LP."""
from ..checkpoints import load_prior, save_prior
from .linf_lp import LINFLatentModule, LINFPriorConfig
from .srflow_lp import SRFlowLatentModule, SRFlowPriorConfig

__all__ = ["LINFLatentModule", "LINFPriorConfig", "SRFlowLatentModule", "SRFlowPriorConfig", "load_prior", "save_prior"]
