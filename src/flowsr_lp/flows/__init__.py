"""Invertible SR flows behind one interface (see `base.Flow`)."""
from .base import Flow, Latent

__all__ = ["Flow", "Latent"]
