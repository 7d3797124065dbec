"""Chapter 00 exercises: the forward process and classifier-free guidance."""

import torch

from sdtune.models.tiny import new_sample_scheduler

_alphas_cumprod = new_sample_scheduler().alphas_cumprod


def add_noise(z0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, with abar_t broadcast over each sample."""
    abar = _alphas_cumprod[t].view(-1, *([1] * (z0.dim() - 1)))
    return abar.sqrt() * z0 + (1 - abar).sqrt() * eps


def guide(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: float) -> torch.Tensor:
    """eps = eps_uncond + w (eps_cond - eps_uncond): w = 0 ignores the prompt, w = 1 is the conditional model."""
    return eps_uncond + w * (eps_cond - eps_uncond)
