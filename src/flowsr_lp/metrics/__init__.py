"""Fidelity metrics (PSNR, SSIM, LR-consistency PSNR) matching the LINF and SRFlow protocols."""
from .fidelity import lr_psnr, psnr, ssim, to_uint8_like_srflow

__all__ = ["psnr", "ssim", "lr_psnr", "to_uint8_like_srflow"]
