"""Sampling: prompts in, images out, reproducibly; plus an image grid for showing many at once."""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Iterator, Sequence

import torch
from PIL import Image

# The tiny model's sampling defaults: DDIM, 25 steps, guidance 4 (an under-trained model prefers lower
# guidance than SD's 7.5). Real models keep diffusers' own defaults unless told otherwise.
TINY_STEPS = 25
TINY_GUIDANCE = 4.0


def sampling_defaults(pipe) -> tuple[int, float]:
    """(steps, guidance) a model is drawn with by default: the tiny model's, or the pipeline's own (its __call__'s)."""
    from .defaults import model_family

    if model_family(pipe) == "tiny":
        return TINY_STEPS, TINY_GUIDANCE
    parameters = inspect.signature(pipe.__call__).parameters
    return parameters["num_inference_steps"].default, parameters["guidance_scale"].default


def sample(
    pipe,
    prompts: str | Sequence[str],
    num_inference_steps: int = TINY_STEPS,
    guidance_scale: float = TINY_GUIDANCE,
    seed: int = 0,
    batch_size: int = 64,
    **kwargs,
) -> list[Image.Image]:
    """Generate one image per prompt. The same seed gives the same images.

    Prompts are run in batches of `batch_size`; each batch's generator is seeded with `seed + batch index`.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("sample() got no prompts: pass a prompt or a list of prompts.")
    if num_inference_steps <= 0:
        raise ValueError(f"num_inference_steps must be positive, got {num_inference_steps}.")
    images: list[Image.Image] = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        generator = torch.Generator(device="cpu").manual_seed(seed + b)
        images += pipe(
            prompts[start : start + batch_size],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generator,
            **kwargs,
        ).images
    return images


@contextlib.contextmanager
def quiet_progress(pipe) -> Iterator[None]:
    """Hide the pipeline's progress bar inside the block, then give back the caller's setting."""
    before = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        yield
    finally:
        pipe.set_progress_bar_config(**before)


@contextlib.contextmanager
def counting_passes(modules: torch.nn.Module | Sequence[torch.nn.Module]) -> Iterator[dict[str, int]]:
    """Count what `modules` compute inside the `with` block: {"calls": forward calls, "rows": batch rows seen}.

    Work measured by counting, not by a clock: guidance runs the UNet once per step on a doubled batch, so
    25 guided steps for 4 images are 25 calls and 200 rows (50 UNet evaluations per image) on any machine."""
    modules = [modules] if isinstance(modules, torch.nn.Module) else list(modules)
    seen = {"calls": 0, "rows": 0}

    def hook(module, args, kwargs) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        seen["calls"] += 1
        seen["rows"] += first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 1

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def image_grid(images: Sequence[Image.Image], cols: int | None = None, scale: int = 1) -> Image.Image:
    """Tile images into one picture, row by row (`scale` enlarges small images without blurring)."""
    if not images:
        raise ValueError("image_grid() got no images.")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid.resize((cols * w * scale, rows * h * scale), Image.NEAREST) if scale != 1 else grid
