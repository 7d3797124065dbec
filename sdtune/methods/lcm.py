"""LCM-LoRA (Luo et al. 2023): distil the sampler into a LoRA, so that 2-8 steps draw what 25-50 did.

A latent consistency model f maps any point z_t of a sampling trajectory straight to its end z_0. It is
parameterised so that f(z, t) = z at t = 0:

    f(z_t, t) = c_skip(t) z_t + c_out(t) x0_hat(z_t, t)
    c_skip(t) = s^2 / ((10 t)^2 + s^2),   c_out(t) = 10 t / sqrt((10 t)^2 + s^2),   s = 0.5
    x0_hat    = (z_t - sqrt(1 - abar_t) eps_theta(z_t, t)) / sqrt(abar_t)

and trained for self-consistency along the frozen teacher's ODE: from z at t_{n+k}, the teacher (the base model,
classifier-free guided with a random w) takes one DDIM step to t_n; the student at t_{n+k} must agree with
itself (no gradient) at t_n:

    x0_g  = x0_c + w (x0_c - x0_u),  eps_g = eps_c + w (eps_c - eps_u)     (teacher, guidance scale 1 + w)
    z_n   = sqrt(abar_{t_n}) x0_g + sqrt(1 - abar_{t_n}) eps_g                 (one DDIM step, k = T / 50)
    L     = huber( f_theta(z_{n+k}, t_{n+k}) - stopgrad f_theta(z_n, t_n) ),   huber(d) = sqrt(d^2 + c^2) - c

theta is a LoRA; the teacher is the same UNet with the LoRA switched off. Sample with `LCMScheduler`, 2-8
steps, guidance 1 (the guidance is distilled in). Being a LoRA, it combines with a style LoRA:
`pipe.set_adapters(["lcm", "style"], [1.0, 0.8])`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def boundary_scalings(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t): f = z at t = 0, f = x0_hat for large t."""
    scaled = TIMESTEP_SCALING * t.float()
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + SIGMA_DATA**2).sqrt()
    return c_skip, c_out


def ddim_timesteps(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The solver's grid t_n = (n + 1) k - 1, k = T / N: [19, 39, ..., 999] for T = 1000, N = 50."""
    k = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * k - 1


@contextlib.contextmanager
def adapters_off(unet) -> Iterator[None]:
    """The teacher: the same UNet with its LoRA switched off."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def _expand(x: torch.Tensor) -> torch.Tensor:
    return x.float().view(-1, 1, 1, 1)


def consistency_loss(eps: Callable, teacher_eps: Callable, z0: torch.Tensor, noise: torch.Tensor, cond, uncond,
                     alphas_cumprod: torch.Tensor, grid: torch.Tensor, index: torch.Tensor, w: torch.Tensor,
                     huber_c: float = 1e-3) -> torch.Tensor:
    """The LCM distillation loss of one batch. `eps(z, t, cond)` is the student (with grad), `teacher_eps` the
    frozen base model; `index` picks each item's t_{n+k} on the solver grid, `w` its guidance."""
    k = int(grid[1] - grid[0])                # the solver's skip: T / N timesteps
    t_start = grid[index]                     # t_{n+k}
    t_end = (t_start - k).clamp(min=0)        # t_n
    a_start, a_end = _expand(alphas_cumprod[t_start]).to(z0.device), _expand(alphas_cumprod[t_end]).to(z0.device)
    z_start = a_start.sqrt() * z0 + (1 - a_start).sqrt() * noise

    def consistency(z, t, a, eps_pred):  # f(z, t) = c_skip z + c_out x0_hat
        c_skip, c_out = boundary_scalings(t)
        x0 = (z - (1 - a).sqrt() * eps_pred) / a.sqrt()
        return _expand(c_skip).to(z.device) * z + _expand(c_out).to(z.device) * x0

    student = consistency(z_start, t_start, a_start, eps(z_start, t_start, cond))
    with torch.no_grad():
        eps_c, eps_u = teacher_eps(z_start, t_start, cond), teacher_eps(z_start, t_start, uncond)
        x0_c, x0_u = [(z_start - (1 - a_start).sqrt() * e) / a_start.sqrt() for e in (eps_c, eps_u)]
        w = _expand(w).to(z0.device)
        x0_g = x0_c + w * (x0_c - x0_u)
        eps_g = eps_c + w * (eps_c - eps_u)
        z_end = a_end.sqrt() * x0_g + (1 - a_end).sqrt() * eps_g   # one DDIM step of the guided teacher
        target = consistency(z_end, t_end, a_end, eps(z_end, t_end, cond))
    return (((student.float() - target.float()) ** 2 + huber_c**2).sqrt() - huber_c).mean()


def lcm_batch_loss(run, cfg) -> torch.Tensor:
    """One batch of consistency distillation against the UNet without its LoRA: instance images, random guidance
    w in [w_min, w_max], a random point t_{n+k} of the teacher's DDIM grid per image. `run` is the training loop's
    `sdtune.training.Run`; `cfg` an `LCMConfig`."""
    latents, gen, n = run.pools[0].latents, run.gen, cfg.batch_size
    grid = ddim_timesteps(run.noise_scheduler.config.num_train_timesteps, cfg.num_ddim_timesteps)
    batch = latents.draw(n, gen)  # z0 ~ q(z | x)
    noise = torch.randn(batch.latents.shape, generator=gen)
    index = torch.randint(0, len(grid), (n,), generator=gen)
    w = cfg.w_min + (cfg.w_max - cfg.w_min) * torch.rand(n, generator=gen)
    cond, uncond = run.condition(run.captions_of(batch)), run.condition([""] * n)
    time_ids, alphas = latents.time_ids(batch), run.noise_scheduler.alphas_cumprod
    as_eps = eps_from(run.noise_scheduler.config.prediction_type, alphas)

    def student(z, t, c):
        return as_eps(run.predict(run.unet, z, t, c, time_ids), z, t)

    def teacher(z, t, c):
        with adapters_off(run.base_unet):
            return as_eps(run.predict(run.base_unet, z, t, c, time_ids), z, t)

    with run.accelerator.autocast():
        return consistency_loss(student, teacher, batch.latents.to(run.device), noise.to(run.device), cond, uncond, alphas,
                                grid, index, w, cfg.huber_c)


def eps_from(prediction_type: str, alphas_cumprod: torch.Tensor) -> Callable:
    """The model's output as a noise prediction, for any prediction type (the consistency loss is written in eps):
    epsilon as it is; v = sqrt(abar) eps - sqrt(1 - abar) x0 gives eps = sqrt(abar) v + sqrt(1 - abar) z_t."""
    if prediction_type == "epsilon":
        return lambda output, z, t: output
    if prediction_type == "v_prediction":
        def eps(output, z, t):
            a = _expand(alphas_cumprod[t.cpu()]).to(z.device)
            return a.sqrt() * output.float() + (1 - a).sqrt() * z.float()
        return eps
    raise ValueError(f"LCM distillation reads epsilon or v-prediction models; this one predicts {prediction_type!r}.")
