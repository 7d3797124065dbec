"""Chapter 03 exercises: the min-SNR weight and the diffusion training loss."""

import torch


def min_snr_weight(abar_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """min(SNR_t, gamma) / SNR_t with SNR_t = abar_t / (1 - abar_t) (epsilon prediction)."""
    snr = abar_t / (1 - abar_t)
    return snr.clamp(max=gamma) / snr


def diffusion_loss(pred: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
    """Mean over images of each image's mean squared error, min-SNR weighted when gamma > 0."""
    per_image = (pred - eps).pow(2).mean(dim=tuple(range(1, pred.dim())))
    if gamma > 0:
        per_image = per_image * min_snr_weight(abar_t, gamma)
    return per_image.mean()
