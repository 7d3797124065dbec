"""Chapter 13 exercises: LCM's boundary scalings, the teacher's DDIM skipping grid, and the timesteps LCMScheduler samples at."""

import numpy as np
import torch


def boundary_scalings(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t) = s^2 / ((10 t)^2 + s^2) and c_out(t) = 10 t / sqrt((10 t)^2 + s^2), s = sigma_data.

    At t = 0: c_skip = 1, c_out = 0, so f(z, 0) = z (the boundary condition). Already at t = 1, 10 t = 10 is 20 times
    sigma_data and c_skip = 0.0025: for every timestep the sampler uses, f is the model's x0 prediction.
    """
    scaled = timestep_scaling * t.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2).sqrt()
    return c_skip, c_out


def skipping_grid(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The teacher's DDIM grid t_n = (n + 1) k - 1, k = T / N: one solver step skips k timesteps.

    T = 1000, N = 50: k = 20, grid [19, 39, ..., 999]; the distillation pairs (t_{n+k}, t_n) are neighbours on it.
    """
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * k - 1


def lcm_sampling_timesteps(num_steps: int, num_train_timesteps: int = 1000, original_steps: int = 50) -> list[int]:
    """The timesteps LCMScheduler samples at: `num_steps` evenly spaced points of the distillation grid, from the top.

    The grid reversed ([999, 979, ..., 19]) is indexed at floor(linspace(0, N, num_steps, endpoint=False)):
    4 steps -> indices [0, 12, 25, 37] -> [999, 759, 499, 259]. Only timesteps the model was distilled at are used.
    """
    grid = skipping_grid(num_train_timesteps, original_steps).flip(0)
    indices = np.floor(np.linspace(0, original_steps, num=num_steps, endpoint=False)).astype(np.int64)
    return [int(grid[i]) for i in indices]
