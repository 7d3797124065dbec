"""Does the model draw what it is told? Judge agreement with the prompt, per attribute."""

from __future__ import annotations

from typing import Sequence

from ..data import toyworld
from ..sampling import TINY_GUIDANCE, TINY_STEPS, sample
from .judge import Judge, agreement


def prompt_accuracy(
    pipe,
    judge: Judge,
    scenes: Sequence[toyworld.Scene] | None = None,
    seeds: int = 2,
    num_inference_steps: int = TINY_STEPS,
    guidance_scale: float = TINY_GUIDANCE,
    attributes: Sequence[str] = ("shape", "colour", "background"),
) -> dict[str, float]:
    """Sample each scene's caption `seeds` times and return the fraction of images the judge agrees with.

    By default the scenes are every base shape x colour x background (72 prompts).
    """
    scenes = list(scenes or toyworld.base_prompts())
    prompts = [toyworld.caption(s) for s in scenes]
    images = []
    for seed in range(seeds):
        images += sample(pipe, prompts, num_inference_steps, guidance_scale, seed=1000 * seed, batch_size=len(prompts))
    scores = agreement(judge.predict(images), scenes * seeds)
    return {k: scores[k] for k in attributes}
