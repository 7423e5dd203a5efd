"""FlowSR-LP: learned priors for flow-based super-resolution models."""
from .checkpoints import CheckpointError, load_flow, load_prior, save_flow, save_prior
from .flows import Flow, Latent
from .pipeline import LearnedPrior, SRResult, SuperResolver, TemperatureSampling

__version__ = "0.1.0"
__all__ = ["CheckpointError", "Flow", "Latent", "LearnedPrior", "SRResult", "SuperResolver", "TemperatureSampling",
           "load_flow", "load_prior", "save_flow", "save_prior", "__version__"]
