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
