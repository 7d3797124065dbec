"""Chapter 03's exercises: the min-SNR weight of a timestep, and the diffusion training loss."""

from __future__ import annotations

import torch

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch03 as solutions


def check_min_snr_weight(fn) -> bool:
    """min(SNR_t, gamma) / SNR_t with SNR_t = abar_t / (1 - abar_t), on values worked out by hand."""
    abar_t = torch.tensor([0.5, 5 / 6, 0.95, 0.1])  # SNR = 1, 5, 19, 1/9
    by_hand = torch.tensor([1.0, 1.0, 5 / 19, 1.0])
    return check.close(fn(abar_t, 5.0), by_hand, name="min_snr_weight(SNR = 1, 5, 19, 1/9; gamma = 5), worked by hand")


def check_diffusion_loss(fn) -> bool:
    """The mean over images of each image's mean squared error, min-SNR weighted when gamma > 0 and not when gamma = 0.

    Four images whose errors and timesteps differ, so that a missing or misplaced weight changes the value."""
    g = torch.Generator().manual_seed(0)
    pred, eps = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    pred[0] *= 3  # one image with a much larger error
    abar_t = torch.tensor([0.99, 0.7, 0.3, 0.02])  # SNR 99, 2.3, 0.43, 0.02
    per_image = torch.stack([((p - e) ** 2).mean() for p, e in zip(pred, eps)])
    snr = abar_t / (1 - abar_t)
    weight = torch.minimum(snr, torch.tensor(5.0)) / snr
    ok = check.close(fn(pred, eps, abar_t, 0.0), per_image.mean(), name="diffusion_loss(..., gamma=0): plain mean squared error")
    return ok & check.close(fn(pred, eps, abar_t, 5.0), (weight * per_image).mean(), name="diffusion_loss(..., gamma=5): min-SNR weighted")


def _weighted(pred, eps, abar_t, gamma, weight):
    per_image = (pred - eps).pow(2).mean(dim=tuple(range(1, pred.dim())))
    return (per_image * weight(abar_t, gamma)).mean() if gamma > 0 else per_image.mean()


MIN_SNR_WEIGHT = Exercise("min_snr_weight", check_min_snr_weight, solutions.min_snr_weight, wrong={
    "min(SNR, gamma) without dividing by SNR": lambda a, gamma: (a / (1 - a)).clamp(max=gamma),
    "SNR upside down, (1 - abar) / abar": lambda a, gamma: ((1 - a) / a).clamp(max=gamma) / ((1 - a) / a),
    "max instead of min": lambda a, gamma: (a / (1 - a)).clamp(min=gamma) / (a / (1 - a)),
})
DIFFUSION_LOSS = Exercise("diffusion_loss", check_diffusion_loss, solutions.diffusion_loss, wrong={
    "the weight never applied": lambda pred, eps, a, gamma: (pred - eps).pow(2).mean(),
    "the weight applied also when gamma = 0": lambda pred, eps, a, gamma: (
        (pred - eps).pow(2).mean(dim=(1, 2, 3)) * solutions.min_snr_weight(a, max(gamma, 1.0))).mean(),
    "the sum over images instead of the mean": lambda pred, eps, a, gamma: _weighted(pred, eps, a, gamma, solutions.min_snr_weight) * len(pred),
    "min(SNR, gamma) as the weight": lambda pred, eps, a, gamma: _weighted(
        pred, eps, a, gamma, lambda x, y: (x / (1 - x)).clamp(max=y)),
})
EXERCISES = [MIN_SNR_WEIGHT, DIFFUSION_LOSS]
