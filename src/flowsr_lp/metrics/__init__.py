"""SR metrics under the protocols of the papers we compare with (see each module)."""
from .fidelity import lr_psnr, psnr, ssim, to_uint8_like_srflow
from .generative import diversity, grid_score, inf_rate, sr_space_diversity
from .perceptual import LPIPSUnavailable, lpips

__all__ = ["sr_space_diversity", "diversity", "grid_score", "inf_rate", "lpips", "LPIPSUnavailable", "lr_psnr", "psnr", "ssim",
           "to_uint8_like_srflow"]
