"""Chapter 13's exercises: LCM's boundary scalings, the teacher's DDIM skipping grid, and the timesteps LCMScheduler samples."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import LCMScheduler

from sdtune.course import check
from sdtune.course.check import Exercise
from sdtune.course.solutions import ch13 as solutions
from sdtune.methods import lcm
from sdtune.models.tiny import new_sample_scheduler


def lcm_scheduler() -> LCMScheduler:
    """The tiny model's sampler turned into diffusers' LCMScheduler (the same noise schedule)."""
    return LCMScheduler.from_config(new_sample_scheduler().config)


def check_boundary(fn) -> bool:
    """c_skip, c_out at every timestep against sdtune and diffusers, and the boundary condition f(z, 0) = z."""
    t = torch.arange(0, 1000)
    c_skip, c_out = fn(t)
    scheduler = lcm_scheduler()
    diffusers_scalings = torch.tensor([[float(v) for v in scheduler.get_scalings_for_boundary_condition_discrete(s)]
                                       for s in (0, 1, 19, 999)])
    ok = check.close(torch.stack([c_skip, c_out]).float(), torch.stack(lcm.boundary_scalings(t)), "c_skip, c_out vs sdtune")
    ok &= check.close(torch.stack([c_skip, c_out])[:, [0, 1, 19, 999]].T.float(), diffusers_scalings.float(),
                      "vs diffusers' LCMScheduler at t = 0, 1, 19, 999")
    if ok and not (c_skip[0] == 1 and c_out[0] == 0):
        print("✗ the boundary condition: at t = 0 expected c_skip = 1 and c_out = 0 (f(z, 0) = z).")
        return False
    return ok


def check_grid(fn) -> bool:
    """The teacher's grid t_n = (n + 1) k - 1 for several N, ascending, against sdtune."""
    ok = True
    for n in (50, 25, 100, 10):
        expected, got = lcm.ddim_timesteps(1000, n), fn(1000, n)
        same = isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.equal(got.long(), expected)
        shown = got[:3].tolist() if isinstance(got, torch.Tensor) else got
        print(f"{'✓' if same else '✗'} skipping_grid(1000, {n}): "
              f"{'matches' if same else f'expected {expected[:3].tolist()}..., got {shown}...'}")
        ok &= same
    return ok


def check_lcm_timesteps(fn) -> bool:
    """The timesteps LCMScheduler visits for 1 to 8 steps, asked of diffusers."""
    scheduler, ok = lcm_scheduler(), True
    for steps in range(1, 9):
        scheduler.set_timesteps(steps)
        expected, got = scheduler.timesteps.tolist(), [int(t) for t in fn(steps)]
        if got != expected:
            print(f"✗ {steps} steps: expected {expected}, got {got}")
            ok = False
    if ok:
        print("✓ lcm_sampling_timesteps(1..8) matches LCMScheduler, e.g. 4 steps:", [int(t) for t in fn(4)])
    return ok


def _scalings(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    s = scaling * t.float()
    return sigma_data**2 / (s**2 + sigma_data**2), s / (s**2 + sigma_data**2).sqrt()


def _grid_pick(steps: int, endpoint: bool = False, reverse: bool = True) -> list[int]:
    grid = solutions.skipping_grid(1000, 50)
    grid = grid.flip(0) if reverse else grid
    return [int(grid[i]) for i in np.floor(np.linspace(0, 49 if endpoint else 50, num=steps, endpoint=endpoint)).astype(int)]


BOUNDARY_SCALINGS = Exercise("boundary_scalings", check_boundary, solutions.boundary_scalings, wrong={
    "no timestep scaling (t instead of 10 t)": lambda t: _scalings(t, scaling=1.0),
    "sigma_d = 1 instead of 0.5": lambda t: _scalings(t, sigma_data=1.0),
    "c_skip and c_out swapped": lambda t: _scalings(t)[::-1],
})
SKIPPING_GRID = Exercise("skipping_grid", check_grid, solutions.skipping_grid, wrong={
    "t_n = n k (off by one: starts at 0)": lambda T, N: torch.arange(N) * (T // N),
    "descending": lambda T, N: solutions.skipping_grid(T, N).flip(0),
    "k = N / T computed as T // N + 1": lambda T, N: torch.arange(1, N + 1) * (T // N + 1) - 1,
})
LCM_SAMPLING_TIMESTEPS = Exercise("lcm_sampling_timesteps", check_lcm_timesteps, solutions.lcm_sampling_timesteps, wrong={
    "the grid not reversed (from the bottom)": lambda steps: _grid_pick(steps, reverse=False),
    "linspace with its endpoint": lambda steps: _grid_pick(steps, endpoint=True),
    "evenly spaced over 1000, not on the grid": lambda steps: [int(t) for t in np.linspace(999, 0, steps, endpoint=False)],
})
EXERCISES = [BOUNDARY_SCALINGS, SKIPPING_GRID, LCM_SAMPLING_TIMESTEPS]
