"""Data helpers: MATLAB-compatible bicubic resizing (the degradation every SR benchmark uses)."""
from .resize import imresize, modcrop

__all__ = ["imresize", "modcrop"]
