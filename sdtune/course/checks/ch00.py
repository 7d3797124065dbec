"""Chapter 00's exercises: the forward process and classifier-free guidance."""

from __future__ import annotations

import torch

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch00 as solutions
from sdtune.models.tiny import new_sample_scheduler


def check_add_noise(fn) -> bool:
    """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, against the scheduler's own add_noise, one timestep per sample."""
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(4, 8, 8, 8, generator=g), torch.randn(4, 8, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    return check.close(fn(z0, eps, t), new_sample_scheduler().add_noise(z0, eps, t), name="add_noise(z0, eps, t)")


def check_guide(fn) -> bool:
    """eps = eps_uncond + w (eps_cond - eps_uncond): w = 0 is unconditional, w = 1 conditional, w = 4 extrapolates."""
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 8, 8, generator=g)
    ok = check.close(fn(u, c, 0.0), u, name="guide(u, c, w=0) is the unconditional prediction")
    ok &= check.close(fn(u, c, 1.0), c, name="guide(u, c, w=1) is the conditional prediction")
    return ok & check.close(fn(u, c, 4.0), u + 4 * (c - u), name="guide(u, c, w=4)")


_scheduler = new_sample_scheduler()


def _noised(z0, eps, a, root=True):
    """a z0 + (1 - a) eps (root: with square roots), `a` one value per sample."""
    a = a.view(-1, *([1] * (z0.dim() - 1)))
    return a.sqrt() * z0 + (1 - a).sqrt() * eps if root else a * z0 + (1 - a) * eps


ADD_NOISE = Exercise("add_noise", check_add_noise, solutions.add_noise, wrong={
    "no square roots": lambda z0, eps, t: _noised(z0, eps, _scheduler.alphas_cumprod[t], root=False),
    "z0 and eps swapped": lambda z0, eps, t: solutions.add_noise(eps, z0, t),
    "the first sample's timestep for the whole batch": lambda z0, eps, t: solutions.add_noise(z0, eps, t[:1].expand_as(t)),
    "alphas instead of their cumulative product": lambda z0, eps, t: _noised(z0, eps, _scheduler.alphas[t]),
})
GUIDE = Exercise("guide", check_guide, solutions.guide, wrong={
    "conditional and unconditional swapped": lambda u, c, w: c + w * (u - c),
    "the difference alone": lambda u, c, w: w * (c - u),
    "a weighted average": lambda u, c, w: (u + w * c) / (1 + w),
})
EXERCISES = [ADD_NOISE, GUIDE]
